"""change_id determinism and separation."""

from __future__ import annotations

import uuid

import pytest

from sources.postgres.change_id import ChangeIds, namespace_for

pytestmark = pytest.mark.unit


def test_streamed_ids_are_deterministic_uuid5() -> None:
    ids = ChangeIds(namespace_for("7711445309574004350", "source"))
    first = ids.streamed(100, 90, 0)
    assert first == ChangeIds(namespace_for("7711445309574004350", "source")).streamed(100, 90, 0)
    assert uuid.UUID(first).version == 5
    assert first == str(uuid.uuid5(ids.namespace, "100:90:0"))


def test_every_coordinate_matters() -> None:
    ids = ChangeIds(namespace_for("1", "db"))
    seen = {ids.streamed(100, 90, 0), ids.streamed(100, 90, 1), ids.streamed(101, 90, 0), ids.streamed(100, 91, 0)}
    assert len(seen) == 4
    other_db = ChangeIds(namespace_for("1", "db2"))
    other_server = ChangeIds(namespace_for("2", "db"))
    assert other_db.streamed(100, 90, 0) not in seen
    assert other_server.streamed(100, 90, 0) not in seen


def test_snapshot_ids_depend_on_point_table_and_key() -> None:
    ids = ChangeIds(namespace_for("1", "db"))
    a = ids.snapshot(500, "public", "t", ["1"])
    assert a == ids.snapshot(500, "public", "t", ("1",))
    assert a == str(uuid.uuid5(ids.namespace, 'snapshot:500:public.t:["1"]'))
    assert len({a, ids.snapshot(501, "public", "t", ["1"]), ids.snapshot(500, "public", "u", ["1"]),
                ids.snapshot(500, "public", "t", ["2"]), ids.snapshot(500, "public", "t", ["1", None])}) == 5


def test_fast_path_equals_the_standard_uuid5() -> None:
    ids = ChangeIds(namespace_for("7711445309574004350", "source"))
    for commit, lsn, ordinal in [(0, 0, 0), (2**64 - 1, 2**63, 10**6), (30816392, 30812880, 7)]:
        assert ids.streamed(commit, lsn, ordinal) == str(uuid.uuid5(ids.namespace, f"{commit}:{lsn}:{ordinal}"))
    name = 'snapshot:5:public.t:["é",null]'
    assert ids.snapshot(5, "public", "t", ["é", None]) == str(uuid.uuid5(ids.namespace, name))

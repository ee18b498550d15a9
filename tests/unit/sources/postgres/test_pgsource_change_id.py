"""change_id determinism, separation, layout and order (docs/event-format.md, "change_id")."""

from __future__ import annotations

import hashlib
import random
import uuid

import pytest

from core.change_ids import ordered_uuid, position_of
from sources.postgres.change_id import ChangeIds, namespace_for

pytestmark = pytest.mark.unit


def by_hand(namespace: uuid.UUID, position: int, name: str) -> str:
    """The layout as the contract writes it, in hex digits of the SHA-1 digest."""
    h = hashlib.sha1(namespace.bytes + name.encode()).hexdigest()
    text = f"{position >> 16:012x}8{h[:3]}{'89ab'[int(h[3], 16) & 3]}{h[4:19]}"
    return str(uuid.UUID(text))


def test_streamed_ids_are_deterministic_uuid8() -> None:
    ids = ChangeIds(namespace_for("7711445309574004350", "source"))
    first = ids.streamed(100, 90, 0)
    assert first == ChangeIds(namespace_for("7711445309574004350", "source")).streamed(100, 90, 0)
    assert uuid.UUID(first).version == 8
    assert uuid.UUID(first).variant == uuid.RFC_4122
    assert first == by_hand(ids.namespace, 100, "100:90:0")
    # Pinned: ids are stored in destinations' ledgers, the layout must never drift.
    assert ids.streamed(0x1_6B37_48, 0x1_6B37_00, 3) == "00000000-016b-8569-8ac2-a2eddad536c0"


def test_every_coordinate_matters() -> None:
    ids = ChangeIds(namespace_for("1", "db"))
    seen = {ids.streamed(100, 90, 0), ids.streamed(100, 90, 1), ids.streamed(101, 90, 0), ids.streamed(100, 91, 0),
            ids.key_change_delete(100, 90, 0)}
    assert len(seen) == 5
    other_db = ChangeIds(namespace_for("1", "db2"))
    other_server = ChangeIds(namespace_for("2", "db"))
    assert other_db.streamed(100, 90, 0) not in seen
    assert other_server.streamed(100, 90, 0) not in seen


def test_snapshot_ids_depend_on_point_table_and_key() -> None:
    ids = ChangeIds(namespace_for("1", "db"))
    a = ids.snapshot(500, "public", "t", ["1"])
    assert a == ids.snapshot(500, "public", "t", ("1",))
    assert a == by_hand(ids.namespace, 500, 'snapshot:500:public.t:["1"]')
    assert len({a, ids.snapshot(501, "public", "t", ["1"]), ids.snapshot(500, "public", "u", ["1"]),
                ids.snapshot(500, "public", "t", ["2"]), ids.snapshot(500, "public", "t", ["1", None])}) == 5
    assert ids.snapshot_complete(500, "public", "t") == by_hand(ids.namespace, 500, "snapshot-complete:500:public.t")


def test_the_fast_path_equals_the_layout_and_its_reference() -> None:
    ids = ChangeIds(namespace_for("7711445309574004350", "source"))
    for commit, lsn, ordinal in [(0, 0, 0), (2**64 - 1, 2**63, 10**6), (30816392, 30812880, 7)]:
        name = f"{commit}:{lsn}:{ordinal}"
        assert ids.streamed(commit, lsn, ordinal) == by_hand(ids.namespace, commit, name)
        assert ids.streamed(commit, lsn, ordinal) == str(ordered_uuid(ids.namespace, commit, name))
    name = 'snapshot:5:public.t:["é",null]'
    assert ids.snapshot(5, "public", "t", ["é", None]) == str(ordered_uuid(ids.namespace, 5, name))


def test_ids_ascend_with_the_commit_lsn() -> None:
    """Ids of transactions committed at least 64 KiB of WAL apart sort in commit order (as uuids and as text, the
    order PostgreSQL's uuid B-tree uses); closer ones share the leading 48 bits."""
    ids = ChangeIds(namespace_for("1", "db"))
    rng = random.Random(5)
    commits = sorted({rng.getrandbits(40) << 16 for _ in range(2000)} | {0, (2**48 - 1) << 16})
    streamed = [uuid.UUID(ids.streamed(c, c - 8, rng.randint(0, 10**6))) for c in commits]
    assert streamed == sorted(streamed)
    assert [str(u) for u in streamed] == sorted(str(u) for u in streamed)
    assert [position_of(u) for u in streamed] == commits
    one_window = [uuid.UUID(ids.streamed(0x5_0000 + d, 0x5_0000, i)) for i, d in enumerate(range(0, 0x1_0000, 997))]
    assert {u.int >> 80 for u in one_window} == {5}
    # A snapshot taken later sorts after the transactions before its consistent point.
    assert uuid.UUID(ids.snapshot(commits[-2] + 0x1_0000, "public", "t", ["1"])) > streamed[-2]


def test_ids_of_the_earlier_layout_carry_no_position() -> None:
    assert position_of(uuid.uuid5(uuid.NAMESPACE_URL, "x")) is None


def test_many_ids_of_one_window_do_not_collide() -> None:
    """Within one 64 KiB window (one transaction, one snapshot) ids differ by 74 digest bits: for n changes the
    chance of any collision is below n^2 / 2^75 (2.6e-11 for a million-change transaction); none in a sample."""
    ids = ChangeIds(namespace_for("1", "db"))
    minted = {ids.streamed(0x7_0000, 0x7_0000 + i, i) for i in range(50_000)}
    minted |= {ids.snapshot(0x7_0000, "public", "t", [str(i)]) for i in range(50_000)}
    assert len(minted) == 100_000

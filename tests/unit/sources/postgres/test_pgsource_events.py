"""Event building without services: the source block equals the schema layer's, ids and headers agree."""

from __future__ import annotations

import json

import pytest

from core.records import SNAPSHOT_COMPLETE_HEADER, Record
from schemas.catalog import ColumnInfo, PgType, TableInfo
from schemas.envelope import UNCHANGED_TOAST, build_table_schemas, source_block
from sources.postgres.change_id import ChangeIds, namespace_for
from sources.postgres.events import TableEvents
from sources.postgres.protocol import Delete, Insert, Update

pytestmark = pytest.mark.unit

INT4 = PgType(23, "integer", "int4", "pg_catalog", "b", "N")
TEXT = PgType(25, "text", "text", "pg_catalog", "b", "S")


def events(*, tombstones: bool = True, relation_columns: list[str] | None = None) -> TableEvents:
    table = TableInfo(
        "public", "t", 1, "d",
        (ColumnInfo("id", 1, 23, "integer", True, 1, "b", INT4),
         ColumnInfo("body", 2, 25, "text", False, None, "b", TEXT, toastable=True)),
        True,
    )  # fmt: skip
    schemas = build_table_schemas(table, topic="p.public.t", topic_prefix="p")
    return TableEvents(
        schemas, connector_name="c", db="db", ids=ChangeIds(namespace_for("1", "db")), tombstones=tombstones,
        relation_columns=relation_columns,
    )  # fmt: skip


def streamed(table: TableEvents, message: Insert | Update | Delete, **coords: int) -> list[Record]:
    return table.records(table.changes(message, **coords))


def test_insert_event_matches_the_contract() -> None:
    (record,) = streamed(events(), Insert(1, ("5", "hi")), lsn=90, commit_lsn=100, ordinal=3, xid=7, commit_ms=1000)
    value = record.value
    assert record.topic == "p.public.t" and record.key == {"id": 5}
    assert value["op"] == "c" and value["after"] == {"id": 5, "body": "hi"} and value["before"] is None
    expected = source_block(name="c", db="db", schema="public", table="t", ts_ms=1000, tx_id=7, lsn=90, commit_lsn=100)
    assert value["source"] == expected
    ids = ChangeIds(namespace_for("1", "db"))
    assert value["change_id"] == ids.streamed(100, 90, 3)
    assert dict(record.headers) == {"change_id": value["change_id"].encode(), "source_lsn": b"100:90"}


def test_delete_is_followed_by_a_tombstone_unless_disabled() -> None:
    message = Delete(1, ("5", None), True)
    delete, tombstone = streamed(events(), message, lsn=1, commit_lsn=2, ordinal=0, xid=1, commit_ms=0)
    assert delete.value["op"] == "d" and delete.value["before"]["id"] == 5
    assert tombstone.value is None and tombstone.key == {"id": 5} and tombstone.headers == delete.headers
    assert len(streamed(events(tombstones=False), message, lsn=1, commit_lsn=2, ordinal=0, xid=1, commit_ms=0)) == 1


def test_unchanged_toast_is_flagged_and_full_identity_fills_it() -> None:
    (record,) = streamed(events(),
        Update(1, ("5", UNCHANGED_TOAST), None, False), lsn=1, commit_lsn=2, ordinal=0, xid=1, commit_ms=0
    )
    assert record.value["unchanged_toast"] == ["body"]
    (full,) = streamed(events(),
        Update(1, ("5", UNCHANGED_TOAST), ("5", "long"), False), lsn=1, commit_lsn=2, ordinal=0, xid=1, commit_ms=0
    )
    assert full.value["unchanged_toast"] == [] and full.value["after"]["body"] == "long"


def test_relation_column_order_is_mapped() -> None:
    (record,) = streamed(events(relation_columns=["body", "id", "extra"]),
        Insert(1, ("hi", "5", "x")), lsn=1, commit_lsn=2, ordinal=0, xid=1, commit_ms=0
    )
    assert record.value["after"] == {"id": 5, "body": "hi"}


def test_snapshot_row_ids_come_from_point_and_key() -> None:
    table = events()
    (record,) = table.records((table.snapshot_row(["5", "hi"], 500, 1234, "last"),))
    assert record.value["op"] == "r" and record.value["source"]["snapshot"] == "last"
    assert record.value["source"]["lsn"] == record.value["source"]["commit_lsn"] == 500
    assert record.value["change_id"] == ChangeIds(namespace_for("1", "db")).snapshot(500, "public", "t", ["5"])


def test_key_change_becomes_delete_tombstone_create() -> None:
    message = Update(1, ("6", "hi"), ("5", None), True)
    delete, tombstone, create = streamed(events(), message, lsn=10, commit_lsn=20, ordinal=2, xid=1, commit_ms=0)
    ids = ChangeIds(namespace_for("1", "db"))
    assert (delete.key, delete.value["op"], delete.value["before"]["id"]) == ({"id": 5}, "d", 5)
    assert delete.value["change_id"] == ids.key_change_delete(20, 10, 2)
    assert tombstone.key == {"id": 5} and tombstone.value is None
    assert (create.key, create.value["op"], create.value["after"]) == ({"id": 6}, "c", {"id": 6, "body": "hi"})
    assert create.value["change_id"] == ids.streamed(20, 10, 2) != delete.value["change_id"]
    # An update whose old key tuple equals the new key stays one update.
    (same,) = streamed(events(), Update(1, ("5", "x"), ("5", None), True), lsn=1, commit_lsn=2, ordinal=0, xid=1,
                                commit_ms=0)  # fmt: skip
    assert same.value["op"] == "u"


def test_snapshot_complete_marker_has_no_key_nor_value_and_a_stable_id() -> None:
    record = events().snapshot_complete(500)
    assert record.topic == "p.public.t"
    assert (record.key, record.value, record.key_schema, record.value_schema) == (None, None, None, None)
    assert record.is_snapshot_complete
    ids = ChangeIds(namespace_for("1", "db"))
    headers = dict(record.headers)
    assert headers["change_id"] == ids.snapshot_complete(500, "public", "t").encode()
    assert headers["source_lsn"] == b"500:500"
    assert json.loads(headers[SNAPSHOT_COMPLETE_HEADER]) == {"schema": "public", "table": "t"}
    assert events().snapshot_complete(500) == record  # the same snapshot read again: the same id
    assert dict(events().snapshot_complete(501).headers)["change_id"] != headers["change_id"]
    assert ids.snapshot_complete(500, "public", "t") != ids.snapshot_complete(500, "public", "u")


def test_truncate_has_no_key_and_an_empty_envelope() -> None:
    table = events()
    (record,) = table.records((table.truncate(lsn=10, commit_lsn=20, ordinal=1, xid=3, commit_ms=99),))
    assert (record.key, record.key_schema) == (None, None)
    assert record.value["op"] == "t" and record.value["before"] is None and record.value["after"] is None
    assert record.value["change_id"] == ChangeIds(namespace_for("1", "db")).streamed(20, 10, 1)
    assert record.value["source"]["txId"] == 3 and dict(record.headers)["source_lsn"] == b"20:10"

"""Debezium's PostgreSQL envelopes: derived change ids and row-guard positions, and each of its encodings mapped
to a destination column type and value."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from core.change_ids import ordered_uuid
from core.errors import PoisonMessageError, SchemaError
from core.records import AvroSchema, Record
from sinks.postgres import debezium
from sinks.postgres.changes import to_changes
from sinks.postgres.types import DestinationType, column_type, source_column_type
from tests.support.debezium_types import (
    ADAPTIVE,
    CONNECT,
    PROPAGATED,
    TABLES,
    DebeziumColumn,
    field_of,
    key_schema,
    row_of,
    source_block,
    value_schema,
)

pytestmark = pytest.mark.unit

PREFIX = "dbz.public.items"
ENVELOPE = AvroSchema.of(value_schema(PREFIX, ADAPTIVE))
KEY = AvroSchema.of(key_schema(PREFIX, ADAPTIVE))


def source(lsn: int | None, *, commit: int | None = None, tx: int | None = 700, snapshot: str = "false",
           table: str = "items", db: str = "shop") -> dict[str, Any]:
    return source_block(db=db, schema="public", table=table, lsn=lsn or 0, last_commit=commit, tx=tx,
                        snapshot=snapshot) | ({} if lsn is not None else {"lsn": None})


def record(op: str, key: int, src: dict[str, Any], *, offset: int = 0, partition: int = 0) -> Record:
    row = row_of(ADAPTIVE, id=key)
    value = {"before": row if op == "d" else None, "after": None if op == "d" else row, "source": src,
             "transaction": None, "op": op, "ts_ms": 1_735_732_800_500, "ts_us": None, "ts_ns": None}
    return Record(PREFIX, {"id": key}, value, KEY, ENVELOPE, partition=partition, offset=offset)


def test_a_record_without_change_id_gets_one_derived_from_its_source_block() -> None:
    [change] = to_changes(record("c", 1, source(5000, commit=4000)))
    expected = ordered_uuid(debezium.NAMESPACE, 5000, 'debezium:shop:public.items:5000:700:c:{"id":1}')
    assert change.change_id == expected
    assert change.position == (5000, 5000)
    assert (change.source_schema, change.source_table, change.op) == ("public", "items", "c")


def test_derived_ids_ascend_with_the_lsn() -> None:
    """The ledger takes Debezium's derived ids at its right edge too: later WAL, higher id."""
    lsns = [0x10_0000 * i + 40 for i in range(1, 50)]
    ids = [to_changes(record("u", 1, source(lsn, commit=lsn - 10)))[0].change_id for lsn in lsns]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_the_derived_id_is_the_same_for_a_replayed_record() -> None:
    """Another offset, partition or consumer sees the same event: same id, same position."""
    first = to_changes(record("u", 3, source(5000, commit=4000), offset=10))[0]
    again = to_changes(record("u", 3, source(5000, commit=4000), offset=99, partition=2))[0]
    assert first.change_id == again.change_id
    assert first.position == again.position


@pytest.mark.parametrize(
    ("op", "key", "src"),
    [
        ("u", 1, source(5000, commit=4000)),  # another operation at the same place
        ("c", 2, source(5000, commit=4000)),  # another key (the create half of a key change)
        ("c", 1, source(5064, commit=4000)),  # another WAL record
        ("c", 1, source(5000, commit=4000, tx=701)),
        ("c", 1, source(5000, commit=4000, table="other")),
        ("c", 1, source(5000, commit=4000, db="elsewhere")),
        ("r", 1, source(5000, commit=None, snapshot="true")),
    ],
)
def test_the_derived_id_differs_per_change(op: str, key: int, src: dict[str, Any]) -> None:
    base = to_changes(record("c", 1, source(5000, commit=4000)))[0]
    other = to_changes(record(op, key, src))[0]
    assert other.change_id != base.change_id


def test_the_connector_name_and_the_last_commit_do_not_change_the_id() -> None:
    """Two connectors on the same database, or Debezium re-emitting a transaction, dedupe against each other."""
    renamed = {**source(5000, commit=4000), "name": "other-prefix"}
    later = source(5000, commit=4500)
    ids = {to_changes(record("c", 1, src))[0].change_id for src in (source(5000, commit=4000), renamed, later)}
    assert len(ids) == 1


def test_snapshot_reads_are_named_by_snapshot_and_key_and_positioned_below_any_streamed_change() -> None:
    first = to_changes(record("r", 1, source(5000, snapshot="first", tx=None)))[0]
    last = to_changes(record("r", 1, source(5000, snapshot="last", tx=None)))[0]
    assert first.change_id == last.change_id
    name = 'debezium:snapshot:shop:public.items:5000:{"id":1}'
    assert first.change_id == ordered_uuid(debezium.NAMESPACE, 5000, name)
    assert first.position == (0, 5000)
    # A transaction that began before the snapshot and committed after it: its changes lie below the snapshot's
    # LSN, and as the first transaction streamed its last-commit is unknown.
    straddling = to_changes(record("u", 1, source(4200, commit=None)))[0]
    assert straddling.position > first.position
    assert to_changes(record("r", 1, source(9000, snapshot="true")))[0].position > first.position


def test_positions_follow_commit_order_for_interleaved_transactions() -> None:
    """Transaction A writes at 300 and 500 and commits at 800; B writes at 400 and commits at 600. pgoutput sends
    B, then A; each event's sequence[0] is the last commit seen before its transaction."""
    b = to_changes(record("u", 1, source(400, commit=100)))[0]
    a1 = to_changes(record("u", 1, source(300, commit=600)))[0]
    a2 = to_changes(record("u", 1, source(500, commit=600)))[0]
    c = to_changes(record("u", 1, source(900, commit=800)))[0]
    assert b.position < a1.position < a2.position < c.position


@pytest.mark.parametrize("sequence", ["not json", '["x", "1"]'])
def test_an_unreadable_sequence_is_a_poison_message(sequence: str) -> None:
    with pytest.raises(PoisonMessageError, match="sequence"):
        to_changes(record("c", 1, {**source(5000, commit=1), "sequence": sequence}))


def test_no_lsn_and_no_change_id_is_a_poison_message() -> None:
    with pytest.raises(PoisonMessageError, match="no lsn"):
        to_changes(record("c", 1, {**source(None), "sequence": None}))


def test_an_envelope_of_ours_keeps_its_own_id_and_position() -> None:
    ours = record("c", 1, {**source(5000, commit=4000)})
    assert isinstance(ours.value, dict)
    with_id = Record(ours.topic, ours.key, ours.value, ours.key_schema, ours.value_schema, partition=0, offset=0,
                     headers=(("change_id", b"6f1e3c1a-8d0b-5c57-9b7e-2f0f2c8d4a11"),))
    [change] = to_changes(with_id)
    assert change.change_id == uuid.UUID("6f1e3c1a-8d0b-5c57-9b7e-2f0f2c8d4a11")
    assert change.position == (5000, 5000)  # no commit_lsn in the source block: the lsn, as before


ALL = [pytest.param(name, c, id=f"{name}-{c.name}") for name, columns in TABLES.items() for c in columns]


@pytest.mark.parametrize(("table", "column"), ALL)
def test_each_encoding_gives_the_destination_column_type(table: str, column: DebeziumColumn) -> None:
    mapped = column_type(field_of(column), f"{table}.{column.name}")
    assert str(mapped.pg_type) == column.destination_type
    assert mapped.nullable is not column.key


CONVERTED: dict[tuple[str, str], Any] = {
    ("adaptive", "c_date"): "2025-01-01",
    ("adaptive", "c_time_ms"): "12:34:56.789000",
    ("adaptive", "c_time_us"): "12:34:56.123456",
    ("adaptive", "c_time_ns"): "12:34:56.123456",
    ("adaptive", "c_ts_ms"): datetime(2025, 1, 1, 12, 0, 0, 123000),
    ("adaptive", "c_ts_us"): datetime(2025, 1, 1, 12, 0, 0, 123456),
    ("adaptive", "c_ts_ns"): datetime(2025, 1, 1, 12, 0, 0, 123456),
    ("adaptive", "c_numeric_any"): Decimal("-1234.567"),
    ("adaptive", "c_bits"): "00101",
    ("adaptive", "c_interval"): timedelta(days=1, hours=2, minutes=3, seconds=4.5),
    ("connect", "c_date"): "2025-01-01",
    ("connect", "c_time"): "12:34:56.789000",
    ("connect", "c_ts"): datetime(2025, 1, 1, 12, 0, 0, 123000),
    ("propagated", "c_bit"): "00101",
    ("propagated", "c_bit1"): "1",
}


@pytest.mark.parametrize(("table", "column"), ALL)
def test_each_encoding_converts_to_the_destination_value(table: str, column: DebeziumColumn) -> None:
    mapped = column_type(field_of(column), column.name)
    converted = column.value if mapped.convert is None else mapped.convert(column.value)
    assert converted == CONVERTED.get((table, column.name), column.value)
    if isinstance(converted, datetime):
        assert converted.tzinfo is None  # a timestamp without time zone: no zone to shift by


def test_connect_decimal_bytes_left_undecoded_are_scaled_by_the_schema_parameter() -> None:
    avro = {"type": "bytes", "connect.version": 1, "connect.parameters": {"scale": "2"},
            "connect.name": "org.apache.kafka.connect.data.Decimal"}
    mapped = column_type({"name": "n", "type": avro}, "n")
    assert mapped.pg_type == DestinationType("numeric")
    assert mapped.convert is not None
    assert mapped.convert((-12345).to_bytes(2, "big", signed=True)) == Decimal("-123.45")


def test_bits_need_their_length() -> None:
    with pytest.raises(SchemaError, match="length"):
        column_type({"name": "b", "type": {"type": "bytes", "connect.name": "io.debezium.data.Bits"}}, "b")


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({"__debezium.source.column.type": "VARCHAR", "__debezium.source.column.length": "40"},
         "character varying(40)"),
        ({"__debezium.source.column.type": "varchar", "__debezium.source.column.length": "2147483647"},
         "character varying"),
        ({"__debezium.source.column.type": "NUMERIC", "__debezium.source.column.length": "131089",
          "__debezium.source.column.scale": "0"}, "numeric"),
        ({"__debezium.source.column.type": "NUMERIC", "__debezium.source.column.length": "12",
          "__debezium.source.column.scale": "2"}, "numeric(12,2)"),
        ({"__debezium.source.column.type": "TIMESTAMPTZ", "__debezium.source.column.length": "35",
          "__debezium.source.column.scale": "6"}, "timestamp with time zone"),
        ({"__debezium.source.column.type": "_TEXT"}, "text[]"),
        ({"__debezium.source.column.type": "INT8"}, "bigint"),
    ],
)
def test_source_column_type_parameters_name_builtin_types(parameters: dict[str, str], expected: str) -> None:
    found = source_column_type(parameters)
    assert found is not None
    assert str(found) == expected


@pytest.mark.parametrize("name", ["MOOD", "public.mood", "int4); drop table x; --", ""])
def test_other_source_column_types_fall_back_to_the_encoding(name: str) -> None:
    assert source_column_type({"__debezium.source.column.type": name}) is None


def test_pg_type_of_our_own_schemas_still_wins_over_source_parameters() -> None:
    field = {"name": "v", "pg.type": "text",
             "type": ["null", {"type": "string", "connect.parameters": {"__debezium.source.column.type": "VARCHAR",
                                                                        "__debezium.source.column.length": "4"}}]}
    assert str(column_type(field, "v").pg_type) == "text"


def test_every_table_has_a_key_and_distinct_column_names() -> None:
    for columns in (ADAPTIVE, CONNECT, PROPAGATED):
        names = [c.name for c in columns]
        assert len(set(names)) == len(names)
        assert [c.name for c in columns if c.key] == ["id"]


def test_a_truncate_without_key_gets_a_derived_id_too() -> None:
    value = {"before": None, "after": None, "source": source(6000, commit=5000), "transaction": None, "op": "t",
             "ts_ms": 1_735_732_800_500, "ts_us": None, "ts_ns": None}
    [change] = to_changes(Record(PREFIX, None, value, None, ENVELOPE, partition=0, offset=5))
    assert change.op == "t"
    assert change.change_id == ordered_uuid(debezium.NAMESPACE, 6000, "debezium:shop:public.items:6000:700:t:null")
    assert change.position == (6000, 6000)


def test_a_debezium_tombstone_changes_nothing() -> None:
    assert to_changes(Record(PREFIX, {"id": 1}, None, KEY, None, partition=0, offset=6)) == []

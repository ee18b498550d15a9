"""Debezium's PostgreSQL encodings, one column per encoding: the source column, the Avro type Debezium's Avro
converter registers for it, the value Debezium sends, and what our sink must make of it.

Shared by the sink's unit tests (column types and value conversion), the integration test that produces
hand-built Debezium envelopes, and the end-to-end test against the real Debezium connector, which creates the
source tables from `source_type` / `literal` and checks the destination against `destination_type` / `text`.

Schema shapes are those of Debezium 3.x with the Confluent-style Avro converter (`AvroData`): Debezium's semantic
types carry `connect.name` and `connect.version: 1` and no `logicalType`; Connect's own logical types
(`time.precision.mode: connect`, `decimal.handling.mode: precise`) carry both; Connect parameters go to
`connect.parameters` (string values). Texts are PostgreSQL's `::text` output with `TimeZone` UTC.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

TIME_ZONE = "UTC"
"""The session time zone under which `text` of the zoned types is what PostgreSQL prints."""


@dataclass(frozen=True)
class DebeziumColumn:
    name: str
    source_type: str
    """The source column's type, as DDL (the real-Debezium test creates the table from it)."""
    literal: str
    """The source value as a PostgreSQL literal (inserted into the source table)."""
    avro: dict[str, Any]
    """The (non-null) Avro type Debezium's Avro converter registers for the column; the field is `["null", avro]`."""
    value: Any
    """The Avro value Debezium sends for `literal` (as our encoder takes it)."""
    destination_type: str
    """The destination column type our sink creates, as `format_type` prints it."""
    text: str
    """The destination value, as `::text` prints it (session time zone `TIME_ZONE`)."""
    key: bool = False
    debezium_only: dict[str, Any] = field(default_factory=dict)
    """Connector settings this column's encoding needs (empty: Debezium's defaults)."""
    lossy: str = ""
    """Why Debezium's encoding cannot carry the source value exactly (empty: it can); the real-connector test then
    compares the destination with `text`, not with the source's `::text`."""


def _unscaled(value: Decimal) -> bytes:
    """Java's `BigInteger.toByteArray()` of the unscaled value: big-endian two's complement, minimal length."""
    sign, digits, _ = value.as_tuple()
    unscaled = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
    return unscaled.to_bytes(max(1, (unscaled.bit_length() + 8) // 8), "big", signed=True)


def _semantic(kind: str, name: str, **parameters: str) -> dict[str, Any]:
    out: dict[str, Any] = {"type": kind, "connect.version": 1}
    if parameters:
        out["connect.parameters"] = parameters
    out["connect.name"] = name
    return out


def _connect_decimal(precision: int, scale: int, **parameters: str) -> dict[str, Any]:
    return {
        "type": "bytes", "scale": scale, "precision": precision, "connect.version": 1,
        "connect.parameters": {"scale": str(scale), "connect.decimal.precision": str(precision), **parameters},
        "connect.name": "org.apache.kafka.connect.data.Decimal", "logicalType": "decimal",
    }  # fmt: skip


VARIABLE_SCALE_DECIMAL: dict[str, Any] = {
    "type": "record", "name": "VariableScaleDecimal", "namespace": "io.debezium.data",
    "fields": [{"name": "scale", "type": "int"}, {"name": "value", "type": "bytes"}],
    "connect.doc": "Variable scaled decimal", "connect.version": 1,
    "connect.name": "io.debezium.data.VariableScaleDecimal",
}  # fmt: skip

ENUM_DDL = "CREATE TYPE {schema}.dbz_mood AS ENUM ('happy', 'sad')"
"""The enum type `c_enum` uses (`{schema}`: the source table's schema)."""

_ID = DebeziumColumn("id", "integer", "1", {"type": "int"}, 1, "integer", "1", key=True)

ADAPTIVE: tuple[DebeziumColumn, ...] = (
    _ID,
    DebeziumColumn("c_date", "date", "'2025-01-01'", _semantic("int", "io.debezium.time.Date"), 20089,
                   "date", "2025-01-01"),
    DebeziumColumn("c_time_ms", "time(3)", "'12:34:56.789'", _semantic("int", "io.debezium.time.Time"), 45_296_789,
                   "time without time zone", "12:34:56.789"),
    DebeziumColumn("c_time_us", "time", "'12:34:56.123456'", _semantic("long", "io.debezium.time.MicroTime"),
                   45_296_123_456, "time without time zone", "12:34:56.123456"),
    DebeziumColumn("c_time_ns", "time", "'12:34:56.123456'", _semantic("long", "io.debezium.time.NanoTime"),
                   45_296_123_456_000, "time without time zone", "12:34:56.123456"),
    DebeziumColumn("c_ts_ms", "timestamp(3)", "'2025-01-01 12:00:00.123'",
                   _semantic("long", "io.debezium.time.Timestamp"), 1_735_732_800_123,
                   "timestamp without time zone", "2025-01-01 12:00:00.123"),
    DebeziumColumn("c_ts_us", "timestamp", "'2025-01-01 12:00:00.123456'",
                   _semantic("long", "io.debezium.time.MicroTimestamp"), 1_735_732_800_123_456,
                   "timestamp without time zone", "2025-01-01 12:00:00.123456"),
    DebeziumColumn("c_ts_ns", "timestamp", "'2025-01-01 12:00:00.123456'",
                   _semantic("long", "io.debezium.time.NanoTimestamp"), 1_735_732_800_123_456_000,
                   "timestamp without time zone", "2025-01-01 12:00:00.123456"),
    DebeziumColumn("c_tstz", "timestamp with time zone", "'2025-01-01 12:00:00.123456+03'",
                   _semantic("string", "io.debezium.time.ZonedTimestamp"), "2025-01-01T09:00:00.123456Z",
                   "timestamp with time zone", "2025-01-01 09:00:00.123456+00"),
    DebeziumColumn("c_timetz", "time with time zone", "'12:00:00+03'",
                   _semantic("string", "io.debezium.time.ZonedTime"), "09:00:00Z",
                   "time with time zone", "09:00:00+00",
                   lossy="ZonedTime is the time in UTC: the source's offset (+03) is not sent"),
    DebeziumColumn("c_numeric", "numeric(12,2)", "12345.67", _connect_decimal(12, 2), Decimal("12345.67"),
                   "numeric(12,2)", "12345.67"),
    DebeziumColumn("c_numeric_any", "numeric", "-1234.567", VARIABLE_SCALE_DECIMAL,
                   {"scale": 3, "value": _unscaled(Decimal("-1234.567"))}, "numeric", "-1234.567"),
    DebeziumColumn("c_jsonb", "jsonb", """'{"a": [1, 2]}'""", _semantic("string", "io.debezium.data.Json"),
                   '{"a": [1, 2]}', "jsonb", '{"a": [1, 2]}'),
    DebeziumColumn("c_uuid", "uuid", "'0b1e6f6c-7c4e-4c59-9d6c-2f0c1d7e8a11'",
                   _semantic("string", "io.debezium.data.Uuid"), "0b1e6f6c-7c4e-4c59-9d6c-2f0c1d7e8a11",
                   "uuid", "0b1e6f6c-7c4e-4c59-9d6c-2f0c1d7e8a11"),
    # "00101" read as a binary number (5), little-endian, leading zero bytes dropped; `length` restores the width.
    DebeziumColumn("c_bits", "bit(5)", "B'00101'", _semantic("bytes", "io.debezium.data.Bits", length="5"),
                   b"\x05", "bit varying", "00101"),
    DebeziumColumn("c_enum", "dbz_mood", "'sad'", _semantic("string", "io.debezium.data.Enum", allowed="happy,sad"),
                   "sad", "text", "sad"),
    DebeziumColumn("c_xml", "xml", "'<a>1</a>'", _semantic("string", "io.debezium.data.Xml"), "<a>1</a>",
                   "xml", "<a>1</a>"),
    DebeziumColumn("c_interval", "interval", "'1 day 02:03:04.5'",
                   _semantic("long", "io.debezium.time.MicroDuration"), 93_784_500_000,
                   "interval", "1 day 02:03:04.5"),
    DebeziumColumn("c_text", "text", "'plain'", {"type": "string"}, "plain", "text", "plain"),
    DebeziumColumn("c_bool", "boolean", "true", {"type": "boolean"}, True, "boolean", "true"),
    DebeziumColumn("c_bigint", "bigint", "9007199254740993", {"type": "long"}, 9_007_199_254_740_993,
                   "bigint", "9007199254740993"),
    DebeziumColumn("c_bytea", "bytea", "'\\x00ff'", {"type": "bytes"}, b"\x00\xff", "bytea", "\\x00ff"),
)
"""Debezium's defaults: `time.precision.mode: adaptive`, `decimal.handling.mode: precise`. The real connector
writes `time` / `timestamp` (precision 6) as `MicroTime` / `MicroTimestamp`, so `c_time_ns` / `c_ts_ns` get those
from it; their `Nano*` encodings here are read only by the hand-built-envelope test."""

_CONNECT_MODE = {"time.precision.mode": "connect"}

CONNECT: tuple[DebeziumColumn, ...] = (
    _ID,
    DebeziumColumn("c_date", "date", "'2025-01-01'",
                   {"type": "int", "connect.version": 1, "connect.name": "org.apache.kafka.connect.data.Date",
                    "logicalType": "date"}, 20089, "date", "2025-01-01", debezium_only=_CONNECT_MODE),
    DebeziumColumn("c_time", "time(3)", "'12:34:56.789'",
                   {"type": "int", "connect.version": 1, "connect.name": "org.apache.kafka.connect.data.Time",
                    "logicalType": "time-millis"}, 45_296_789, "time without time zone", "12:34:56.789",
                   debezium_only=_CONNECT_MODE),
    DebeziumColumn("c_ts", "timestamp(3)", "'2025-01-01 12:00:00.123'",
                   {"type": "long", "connect.version": 1, "connect.name": "org.apache.kafka.connect.data.Timestamp",
                    "logicalType": "timestamp-millis"}, 1_735_732_800_123, "timestamp without time zone",
                   "2025-01-01 12:00:00.123", debezium_only=_CONNECT_MODE),
    DebeziumColumn("c_tstz", "timestamp with time zone", "'2025-01-01 12:00:00.123+03'",
                   _semantic("string", "io.debezium.time.ZonedTimestamp"), "2025-01-01T09:00:00.123Z",
                   "timestamp with time zone", "2025-01-01 09:00:00.123+00", debezium_only=_CONNECT_MODE),
    DebeziumColumn("c_numeric", "numeric(10,3)", "-12.345", _connect_decimal(10, 3), Decimal("-12.345"),
                   "numeric(10,3)", "-12.345", debezium_only=_CONNECT_MODE),
)
"""`time.precision.mode: connect`: Kafka Connect's Date, Time and Timestamp (millisecond precision)."""


def _source(kind: str, length: int | None = None, scale: int | None = None) -> dict[str, str]:
    out = {"__debezium.source.column.type": kind}
    if length is not None:
        out["__debezium.source.column.length"] = str(length)
    if scale is not None:
        out["__debezium.source.column.scale"] = str(scale)
    return out


_PROPAGATE = {"column.propagate.source.type": ".*"}

PROPAGATED: tuple[DebeziumColumn, ...] = (
    DebeziumColumn("id", "integer", "1", {"type": "int", "connect.parameters": _source("INT4", 10, 0)}, 1,
                   "integer", "1", key=True, debezium_only=_PROPAGATE),
    DebeziumColumn("c_varchar", "character varying(40)", "'forty'",
                   {"type": "string", "connect.parameters": _source("VARCHAR", 40, 0)}, "forty",
                   "character varying(40)", "forty", debezium_only=_PROPAGATE),
    DebeziumColumn("c_char", "character(3)", "'ab'",
                   {"type": "string", "connect.parameters": _source("BPCHAR", 3, 0)}, "ab ",
                   "character(3)", "ab", debezium_only=_PROPAGATE),  # `::text` of a character(n) drops the padding
    DebeziumColumn("c_int2", "smallint", "7",
                   {"type": "int", "connect.type": "int16", "connect.parameters": _source("INT2", 5, 0)}, 7,
                   "smallint", "7", debezium_only=_PROPAGATE),
    DebeziumColumn("c_numeric", "numeric(10,3)", "-12.345", _connect_decimal(10, 3, **_source("NUMERIC", 10, 3)),
                   Decimal("-12.345"), "numeric(10,3)", "-12.345", debezium_only=_PROPAGATE),
    DebeziumColumn("c_json", "json", """'{"b":1}'""",
                   _semantic("string", "io.debezium.data.Json", **_source("JSON", 2147483647, 0)), '{"b":1}',
                   "json", '{"b":1}', debezium_only=_PROPAGATE),
    DebeziumColumn("c_bit", "bit(5)", "B'00101'",
                   _semantic("bytes", "io.debezium.data.Bits", length="5", **_source("BIT", 5, 0)), b"\x05",
                   "bit(5)", "00101", debezium_only=_PROPAGATE),
    DebeziumColumn("c_bit1", "bit(1)", "B'1'", {"type": "boolean", "connect.parameters": _source("BIT", 1, 0)},
                   True, "bit(1)", "1", debezium_only=_PROPAGATE),
    DebeziumColumn("c_tstz", "timestamp with time zone", "'2025-01-01 12:00:00+00'",
                   _semantic("string", "io.debezium.time.ZonedTimestamp", **_source("TIMESTAMPTZ", 35, 6)),
                   "2025-01-01T12:00:00.000000Z", "timestamp with time zone", "2025-01-01 12:00:00+00",
                   debezium_only=_PROPAGATE),
    DebeziumColumn("c_int_array", "integer[]", "'{1,2}'",
                   {"type": "array", "items": ["null", "int"], "connect.parameters": _source("_INT4", 10, 0)},
                   [1, 2], "integer[]", "{1,2}", debezium_only=_PROPAGATE),
    DebeziumColumn("c_enum", "dbz_mood", "'happy'",
                   _semantic("string", "io.debezium.data.Enum", allowed="happy,sad",
                             **_source("DBZ_MOOD", 2147483647, 0)),
                   "happy", "text", "happy", debezium_only=_PROPAGATE),
)
"""`column.propagate.source.type`: the `__debezium.source.column.*` parameters name the destination type."""

TABLES: dict[str, tuple[DebeziumColumn, ...]] = {"adaptive": ADAPTIVE, "connect": CONNECT, "propagated": PROPAGATED}


def field_of(column: DebeziumColumn) -> dict[str, Any]:
    """The Value record's field for `column`, as Debezium's Avro converter writes it (key columns not null)."""
    if column.key:
        return {"name": column.name, "type": copy.deepcopy(column.avro)}
    return {"name": column.name, "type": ["null", copy.deepcopy(column.avro)], "default": None}


def row_of(columns: tuple[DebeziumColumn, ...], **changes: Any) -> dict[str, Any]:
    """The row image Debezium sends for the columns' literals, with `changes` replacing values."""
    return {c.name: changes.get(c.name, c.value) for c in columns}


def expected_texts(columns: tuple[DebeziumColumn, ...]) -> tuple[str, ...]:
    return tuple(c.text for c in columns)


# The envelope around the rows, as Debezium's PostgreSQL connector registers it (`{prefix}.{schema}.{table}`).
SOURCE_SCHEMA: dict[str, Any] = {
    "type": "record", "name": "Source", "namespace": "io.debezium.connector.postgresql",
    "fields": [
        {"name": "version", "type": "string"}, {"name": "connector", "type": "string"},
        {"name": "name", "type": "string"}, {"name": "ts_ms", "type": "long"},
        {"name": "snapshot", "type": [{"type": "string", "connect.version": 1,
                                       "connect.parameters": {"allowed": "true,first,first_in_data_collection,"
                                                              "last_in_data_collection,last,false,incremental"},
                                       "connect.default": "false", "connect.name": "io.debezium.data.Enum"},
                                      "null"], "default": "false"},
        {"name": "db", "type": "string"}, {"name": "sequence", "type": ["null", "string"], "default": None},
        {"name": "ts_us", "type": ["null", "long"], "default": None},
        {"name": "ts_ns", "type": ["null", "long"], "default": None},
        {"name": "schema", "type": "string"}, {"name": "table", "type": "string"},
        {"name": "txId", "type": ["null", "long"], "default": None},
        {"name": "lsn", "type": ["null", "long"], "default": None},
        {"name": "xmin", "type": ["null", "long"], "default": None},
    ],
    "connect.name": "io.debezium.connector.postgresql.Source",
}  # fmt: skip

TRANSACTION_SCHEMA: dict[str, Any] = {
    "type": "record", "name": "block", "namespace": "event",
    "fields": [{"name": "id", "type": "string"}, {"name": "total_order", "type": "long"},
               {"name": "data_collection_order", "type": "long"}],
    "connect.version": 1, "connect.name": "event.block",
}  # fmt: skip


def value_schema(name: str, columns: tuple[DebeziumColumn, ...]) -> dict[str, Any]:
    """The Envelope schema `{name}.Envelope` (`name` = `{prefix}.{schema}.{table}`) with its `Value`."""
    row = {"type": "record", "name": "Value", "namespace": name, "fields": [field_of(c) for c in columns],
           "connect.name": f"{name}.Value"}
    return {
        "type": "record", "name": "Envelope", "namespace": name,
        "fields": [
            {"name": "before", "type": ["null", row], "default": None},
            {"name": "after", "type": ["null", "Value"], "default": None},
            {"name": "source", "type": copy.deepcopy(SOURCE_SCHEMA)},
            {"name": "transaction", "type": ["null", copy.deepcopy(TRANSACTION_SCHEMA)], "default": None},
            {"name": "op", "type": "string"},
            {"name": "ts_ms", "type": ["null", "long"], "default": None},
            {"name": "ts_us", "type": ["null", "long"], "default": None},
            {"name": "ts_ns", "type": ["null", "long"], "default": None},
        ],
        "connect.version": 2, "connect.name": f"{name}.Envelope",
    }  # fmt: skip


def key_schema(name: str, columns: tuple[DebeziumColumn, ...]) -> dict[str, Any]:
    """The key schema `{name}.Key`: the key columns, not null."""
    return {"type": "record", "name": "Key", "namespace": name,
            "fields": [field_of(c) for c in columns if c.key], "connect.name": f"{name}.Key"}


def source_block(*, db: str, schema: str, table: str, lsn: int, last_commit: int | None, tx: int | None,
                 snapshot: str = "false", name: str = "dbz", ts_ms: int = 1_735_732_800_000) -> dict[str, Any]:
    """A `source` value, `sequence` being `[last_commit, lsn]` (the real connector writes its transaction's first
    change's LSN first, see docs/event-format.md; a larger first element here checks the sink takes the maximum)."""
    return {
        "version": "3.6.0.Final", "connector": "postgresql", "name": name, "ts_ms": ts_ms, "snapshot": snapshot,
        "db": db, "sequence": json.dumps([None if last_commit is None else str(last_commit), str(lsn)]),
        "ts_us": ts_ms * 1000, "ts_ns": ts_ms * 1_000_000, "schema": schema, "table": table, "txId": tx,
        "lsn": lsn, "xmin": None,
    }  # fmt: skip

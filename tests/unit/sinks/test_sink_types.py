"""Avro field -> destination column type, type widening rules, and value conversion for COPY."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from psycopg.adapt import PyFormat, Transformer

from core.errors import SchemaError
from schemas.types import decimal_to_bytes
from sinks.postgres.types import DestinationType, column_type, holds

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "text",
    ["integer", "numeric(10,2)", "character varying(20)", "timestamp(3) with time zone", "text[]",
     "time without time zone", "double precision", '"char"', "numeric", "bit varying(5)"],
)
def test_builtin_types_round_trip(text: str) -> None:
    parsed = DestinationType.parse(text)
    assert parsed is not None
    assert str(parsed) == text


@pytest.mark.parametrize(
    "text",
    ["integer); DROP TABLE x;--", "mood", "public.mood", "interval year to month", "numeric(10,2", "",
     "integer[] ; select 1"],
)
def test_anything_else_is_not_spliced_into_ddl(text: str) -> None:
    assert DestinationType.parse(text) is None


def t(text: str) -> DestinationType:
    parsed = DestinationType.parse(text)
    assert parsed is not None
    return parsed


@pytest.mark.parametrize(
    ("have", "want", "expected"),
    [
        ("bigint", "integer", True),
        ("integer", "bigint", False),
        ("numeric(12,2)", "numeric(10,2)", True),
        ("numeric(10,2)", "numeric(10,3)", False),
        ("numeric", "bigint", True),
        ("text", "character varying(20)", True),
        ("character varying(10)", "character varying(20)", False),
        ("double precision", "real", True),
        ("integer[]", "integer", False),
        ("text", "integer", False),
    ],
)
def test_holds(have: str, want: str, expected: bool) -> None:
    assert holds(t(have), t(want)) is expected


def test_pg_type_property_wins_and_nullability_follows_the_union() -> None:
    column = column_type({"name": "a", "type": ["null", "string"], "pg.type": "character varying(20)"}, "x")
    assert str(column.pg_type) == "character varying(20)"
    assert column.nullable
    assert not column_type({"name": "a", "type": "long"}, "x").nullable


@pytest.mark.parametrize(
    ("avro", "expected"),
    [
        ({"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}, "numeric(10,2)"),
        ({"type": "long", "logicalType": "timestamp-micros"}, "timestamp with time zone"),
        ({"type": "long", "logicalType": "local-timestamp-micros"}, "timestamp without time zone"),
        ({"type": "string", "logicalType": "uuid"}, "uuid"),
        ({"type": "string", "connect.name": "io.debezium.data.Json"}, "jsonb"),
        ({"type": "array", "items": ["null", "long"]}, "bigint[]"),
        ({"type": "enum", "name": "E", "symbols": ["a"]}, "text"),
        ({"type": "int", "logicalType": "date", "connect.name": "io.debezium.time.Date"}, "date"),
    ],
)
def test_avro_mapping_without_pg_type(avro: object, expected: str) -> None:
    assert str(column_type({"name": "a", "type": avro}, "x").pg_type) == expected


def test_union_of_decimal_and_string_maps_to_numeric() -> None:
    decimal = {"type": "bytes", "logicalType": "decimal", "precision": 5, "scale": 1}
    column = column_type({"name": "a", "type": ["null", decimal, "string"]}, "x")
    assert str(column.pg_type) == "numeric(5,1)"


def test_a_null_only_field_is_refused() -> None:
    with pytest.raises(SchemaError):
        column_type({"name": "a", "type": "null"}, "x")


def convert(avro: object, value: object) -> object:
    column = column_type({"name": "a", "type": avro}, "x")
    return column.convert(value) if column.convert else value


def test_temporal_values_convert_exactly_including_infinities_and_far_years() -> None:
    ts = {"type": "long", "logicalType": "timestamp-micros"}
    assert convert(ts, 0) == datetime(1970, 1, 1, tzinfo=UTC)
    assert convert(ts, 2**63 - 1) == "infinity"
    assert convert(ts, -(2**63)) == "-infinity"
    # Expected texts as PostgreSQL prints these instants (checked with psql).
    assert convert(ts, 146_000_000 * 86_400_000_000) == "401704-06-04 00:00:00.000000+00"
    assert convert(ts, -62_200_000_000_000_000) == "0003-12-17 14:13:20.000000+00 BC"
    date = {"type": "int", "logicalType": "date"}
    assert convert(date, 0) == "1970-01-01"
    assert convert(date, 2**31 - 1) == "infinity"
    assert convert(date, -719_529) == "0002-12-31 BC"
    time = {"type": "long", "logicalType": "time-micros"}
    assert convert(time, 86_400_000_000) == "24:00:00.000000"


def test_variable_scale_decimal_and_json_values() -> None:
    vsd = {"type": "record", "name": "VariableScaleDecimal", "connect.name": "io.debezium.data.VariableScaleDecimal",
           "fields": [{"name": "scale", "type": "int"}, {"name": "value", "type": "bytes"}]}
    assert convert(vsd, {"scale": 2, "value": (-12345).to_bytes(2, "big", signed=True)}) == Decimal("-123.45")
    assert convert(vsd, "NaN") == "NaN"
    assert convert({"type": "map", "values": "long"}, {"a": 1}) == '{"a":1}'


def _copy_text(value: object) -> bytes:
    """The bytes psycopg's COPY writes for `value` (the sink's `write_row` dumps each value in text format)."""
    dumped = Transformer().dump_sequence([value], [PyFormat.TEXT])[0]
    assert dumped is not None
    return bytes(dumped)


_VSD = {"type": "record", "name": "VariableScaleDecimal", "namespace": "io.debezium.data",
        "connect.name": "io.debezium.data.VariableScaleDecimal",
        "fields": [{"name": "scale", "type": "int"}, {"name": "value", "type": "bytes"}]}  # fmt: skip


def _vsd(text: str) -> dict[str, object]:
    unscaled, _, fraction = text.partition(".")
    number = int(unscaled + fraction)
    return {"scale": len(fraction), "value": decimal_to_bytes(number)}


def test_numeric_array_with_nan_and_null_elements_dumps_as_one_literal() -> None:
    decimal = {"type": "bytes", "logicalType": "decimal", "precision": 5, "scale": 1}
    field = {"name": "a", "type": ["null", {"type": "array", "items": ["null", decimal, "string"]}],
             "pg.type": "numeric(5,1)[]"}  # fmt: skip
    column = column_type(field, "x")
    assert str(column.pg_type) == "numeric(5,1)[]"
    assert column.convert is not None
    assert _copy_text(column.convert([Decimal("1.5"), "NaN", None, Decimal("-0.0")])) == b"{1.5,NaN,NULL,-0.0}"
    # Without special values the Decimals go as they are (psycopg's own numeric dumper).
    assert column.convert([Decimal("1.5"), None]) == [Decimal("1.5"), None]


def test_variable_scale_decimal_array_converts_exactly_with_specials() -> None:
    array = {"type": "array", "items": ["null", _VSD, "string"]}
    field = {"name": "a", "type": ["null", array], "pg.type": "numeric[]"}
    column = column_type(field, "x")
    assert str(column.pg_type) == "numeric[]"
    assert column.convert is not None
    digits = "3.14159265358979323846264338327950288419716939937510"
    values = [_vsd(digits), "NaN", None, "-Infinity", _vsd("0.00000000000000000001"), _vsd("-1.50")]
    assert _copy_text(column.convert(values)) == (
        f"{{{digits},NaN,NULL,-Infinity,0.00000000000000000001,-1.50}}".encode()
    )
    assert column.convert([_vsd("-1.50"), None]) == [Decimal("-1.50"), None]


def test_timestamp_array_mixing_datetimes_and_infinity_dumps() -> None:
    ts = {"type": "long", "logicalType": "timestamp-micros"}
    column = column_type({"name": "a", "type": {"type": "array", "items": ["null", ts]}}, "x")
    assert column.convert is not None
    converted = column.convert([0, 2**63 - 1, None, 146_000_000 * 86_400_000_000])
    assert _copy_text(converted) == (
        b'{"1970-01-01 00:00:00+00:00",infinity,NULL,"401704-06-04 00:00:00.000000+00"}'
    )


def test_box_array_uses_the_box_delimiter() -> None:
    field = {"name": "a", "type": ["null", {"type": "array", "items": ["null", "string"]}], "pg.type": "box[]"}
    column = column_type(field, "x")
    assert column.convert is not None
    assert column.convert(["(3,4),(1,2)", None, 'od"d\\']) == '{"(3,4),(1,2)";NULL;"od\\"d\\\\"}'


def test_json_arrays_stay_arrays_of_documents() -> None:
    json_string = {"type": "string", "connect.name": "io.debezium.data.Json"}
    field = {"name": "a", "type": ["null", {"type": "array", "items": ["null", json_string]}], "pg.type": "jsonb[]"}
    column = column_type(field, "x")
    assert str(column.pg_type) == "jsonb[]"
    documents = ['{"a": "x,y"}', None]
    assert (column.convert(documents) if column.convert else documents) == documents
    # Without `pg.type` (e.g. from another producer) such an array stays one jsonb document, as before.
    derived = column_type({"name": "a", "type": field["type"]}, "x")
    assert str(derived.pg_type) == "jsonb"


def _convert(avro: object, value: object, pg_type: str | None = None) -> object:
    field: dict[str, object] = {"name": "c", "type": avro}
    if pg_type is not None:
        field["pg.type"] = pg_type
    convert = column_type(field, "t.c").convert
    return value if convert is None else convert(value)


def test_debezium_style_values_beyond_what_python_and_java_share() -> None:
    zoned = {"type": "string", "connect.version": 1, "connect.name": "io.debezium.time.ZonedTimestamp"}
    assert _convert(zoned, "+12345-06-07T01:00:00.000000Z") == "12345-06-07T01:00:00.000000Z"
    assert _convert(zoned, "-0043-03-15T10:00:00.000000Z") == "0044-03-15 10:00:00.000000+00 BC"
    assert _convert(zoned, "0000-12-31T23:00:00Z") == "0001-12-31 23:00:00+00 BC"
    assert _convert(zoned, "2025-01-01T09:00:00.1Z") == "2025-01-01T09:00:00.1Z"
    assert _convert(zoned, "-infinity") == "-infinity"
    micro_ts = {"type": "long", "connect.version": 1, "connect.name": "io.debezium.time.MicroTimestamp"}
    assert _convert(micro_ts, 9223372036825200000) == "infinity"
    assert _convert(micro_ts, -9223372036832400000) == "-infinity"
    millis_ts = {"type": "long", "connect.version": 1, "connect.name": "io.debezium.time.Timestamp"}
    assert _convert(millis_ts, 9223372036825200) == "infinity"
    duration = {"type": "long", "connect.version": 1, "connect.name": "io.debezium.time.MicroDuration"}
    assert _convert(duration, -(2**63)) == timedelta(days=-106751992, microseconds=71945224192)
    point = {"type": "record", "name": "Point", "namespace": "io.debezium.data.geometry",
             "fields": [{"name": "x", "type": "double"}, {"name": "y", "type": "double"}],
             "connect.name": "io.debezium.data.geometry.Point"}  # fmt: skip
    assert _convert(point, {"x": 1.0, "y": -2.5, "wkb": b"", "srid": None}, "point") == "(1.0,-2.5)"
    assert _convert("boolean", True, "bit(1)") == "1"
    varbit = {"type": "bytes", "connect.version": 1, "connect.parameters": {"length": "2147483647"},
              "connect.name": "io.debezium.data.Bits"}  # fmt: skip
    assert _convert(varbit, b"\x05", "bit varying") == "101"

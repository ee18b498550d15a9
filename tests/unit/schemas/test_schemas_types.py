"""Every mapped PostgreSQL type: its Avro type, and its text -> Python conversion on representative values."""

from __future__ import annotations

import io
from decimal import Decimal
from typing import Any

import fastavro
import pytest

from core.errors import SchemaError
from schemas.serde import without_raw_logical_types
from schemas.types import (
    DATE_NEGATIVE_INFINITY,
    DATE_POSITIVE_INFINITY,
    TIMESTAMP_NEGATIVE_INFINITY,
    TIMESTAMP_POSITIVE_INFINITY,
    UNAVAILABLE_BYTES,
    UNAVAILABLE_VALUE,
    VARIABLE_SCALE_DECIMAL_NAME,
    ColumnCodec,
    DecimalHandling,
    avro_name,
    column_codec,
    days_from_civil,
    numeric_precision_scale,
    parse_array,
    variable_scale_decimal,
)
from tests.unit.schemas.schemas_support import array_of, column, numeric_typmod, pg_type, table

pytestmark = pytest.mark.unit

PRECISE = DecimalHandling.PRECISE


def codec_for(typname: str, *, handling: DecimalHandling = PRECISE, typmod: int = -1, key: bool = False,
              not_null: bool = False, toastable: bool = False, **type_args: Any) -> ColumnCodec:  # fmt: skip
    col = column("c", pg_type(typname, **type_args), typmod=typmod, not_null=not_null, toastable=toastable,
                 key_position=1 if key else None)  # fmt: skip
    return column_codec(table(col), col, decimal_handling=handling)


def roundtrip(codec: ColumnCodec, value: Any) -> Any:
    """Write `value` in a one-field record with fastavro and read it back (raw, no logical conversion)."""
    schema = {"type": "record", "name": "R", "fields": [codec.field]}
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(schema), {codec.field_name: value})
    buffer.seek(0)
    reader = fastavro.parse_schema(without_raw_logical_types(schema))
    return fastavro.schemaless_reader(buffer, reader, None)[codec.field_name]


CASES: list[tuple[str, dict[str, Any], str, Any]] = [
    ("int2", {}, "-32768", -32768),
    ("int4", {}, "2147483647", 2147483647),
    ("int8", {}, "-9223372036854775808", -9223372036854775808),
    ("oid", {}, "4294967295", 4294967295),
    ("bool", {}, "t", True),
    ("bool", {}, "f", False),
    ("bool", {}, "true", True),  # `col::text` spelling
    ("bool", {}, "false", False),
    ("text", {}, "héllo\nworld", "héllo\nworld"),
    ("varchar", {}, "", ""),
    ("bpchar", {}, "ab  ", "ab  "),
    ("name", {}, "pg_class", "pg_class"),
    ("citext", {"schema": "public"}, "MiXeD", "MiXeD"),
    ("bytea", {}, "\\xdeadbeef00", b"\xde\xad\xbe\xef\x00"),
    ("bytea", {}, "\\x", b""),
    ("bytea", {}, "a\\\\b\\000\\377", b"a\\b\x00\xff"),
    ("uuid", {}, "6ba7b810-9dad-11d1-80b4-00c04fd430c8", "6ba7b810-9dad-11d1-80b4-00c04fd430c8"),
    ("date", {}, "1970-01-02", 1),
    ("date", {}, "1969-12-31", -1),
    ("date", {}, "2024-02-29", 19782),
    ("date", {}, "0044-03-15 BC", days_from_civil(-43, 3, 15)),
    ("date", {}, "12345-01-01", days_from_civil(12345, 1, 1)),
    ("date", {}, "infinity", DATE_POSITIVE_INFINITY),
    ("date", {}, "-infinity", DATE_NEGATIVE_INFINITY),
    ("time", {}, "04:05:06.789", ((4 * 60 + 5) * 60 + 6) * 1_000_000 + 789_000),
    ("time", {}, "00:00:00", 0),
    ("time", {}, "24:00:00", 86_400_000_000),
    ("time", {}, "23:59:59.999999", 86_399_999_999),
    ("timetz", {}, "04:05:06.789+05:30", "04:05:06.789+05:30"),
    ("timetz", {}, "04:05:06+05", "04:05:06+05:00"),
    ("timetz", {}, "04:05:06-03:30:15", "04:05:06-03:30:15"),
    ("timestamp", {}, "1970-01-01 00:00:01", 1_000_000),
    ("timestamp", {}, "2024-01-02 03:04:05.123456", 1704164645123456),
    ("timestamp", {}, "1969-12-31 23:59:59.5", -500_000),
    ("timestamp", {}, "0044-03-15 10:00:00 BC", days_from_civil(-43, 3, 15) * 86_400_000_000 + 36_000_000_000),
    ("timestamp", {}, "infinity", TIMESTAMP_POSITIVE_INFINITY),
    ("timestamp", {}, "-infinity", TIMESTAMP_NEGATIVE_INFINITY),
    ("timestamp", {}, "294276-12-31 23:59:59.999999", TIMESTAMP_POSITIVE_INFINITY - 1),
    ("timestamptz", {}, "2024-01-02 03:04:05.123456+05:30", 1704164645123456 - 19_800_000_000),
    ("timestamptz", {}, "2024-01-02 03:04:05+00", 1704164645000000),
    ("timestamptz", {}, "1900-01-01 05:21:10+05:21:10", days_from_civil(1900, 1, 1) * 86_400_000_000),
    ("timestamptz", {}, "0044-03-15 15:53:28+05:53:28 BC", days_from_civil(-43, 3, 15) * 86_400_000_000
     + 36_000_000_000),
    ("timestamptz", {}, "12345-06-07 00:00:00-01", days_from_civil(12345, 6, 7) * 86_400_000_000 + 3_600_000_000),
    ("timestamptz", {}, "infinity", TIMESTAMP_POSITIVE_INFINITY),
    ("interval", {}, "1 year 2 mons 3 days 04:05:06.789", "P1Y2M3DT4H5M6.789S"),
    ("interval", {}, "-1 days +02:03:00", "P-1DT2H3M"),
    ("interval", {}, "1 day -00:00:01", "P1DT-1S"),
    ("interval", {}, "00:00:00", "PT0S"),
    ("interval", {}, "-178000000 years", "P-178000000Y"),
    ("interval", {}, "-00:00:00.000001", "PT-0.000001S"),
    ("interval", {}, "100:00:00", "PT100H"),
    ("interval", {}, "-1 years -2 mons", "P-1Y-2M"),
    ("interval", {}, "P1Y2M", "P1Y2M"),
    ("json", {}, '{"a": [1, 2]}', '{"a": [1, 2]}'),
    ("jsonb", {}, '{"a": 1}', '{"a": 1}'),
    ("xml", {}, "<a>1</a>", "<a>1</a>"),
    ("inet", {}, "192.168.0.1/24", "192.168.0.1/24"),
    ("cidr", {}, "10.0.0.0/8", "10.0.0.0/8"),
    ("macaddr", {}, "08:00:2b:01:02:03", "08:00:2b:01:02:03"),
    ("macaddr8", {}, "08:00:2b:01:02:03:04:05", "08:00:2b:01:02:03:04:05"),
    ("money", {}, "$1,234.50", "$1,234.50"),
    ("bit", {}, "101", "101"),
    ("varbit", {}, "1", "1"),
    ("tsvector", {}, "'a' 'b'", "'a' 'b'"),
    ("point", {}, "(1,2)", "(1,2)"),
    ("pg_lsn", {}, "16/B374D848", "16/B374D848"),
    ("hstore", {"schema": "public"}, '"a"=>"1"', '"a"=>"1"'),
    ("mood", {"kind": "e", "schema": "public", "labels": ("sad", "ok")}, "ok", "ok"),
    ("int4range", {"kind": "r"}, "[1,5)", "[1,5)"),
    ("pair", {"kind": "c", "schema": "public"}, "(1,abc)", "(1,abc)"),
]


@pytest.mark.parametrize(("typname", "type_args", "text", "expected"), CASES,
                         ids=[f"{c[0]}:{c[2]}" for c in CASES])  # fmt: skip
def test_text_conversion_and_avro_round_trip(typname: str, type_args: dict[str, Any], text: str, expected: Any) -> None:
    codec = codec_for(typname, **type_args)
    value = codec.from_text(text)
    assert value == expected
    assert type(value) is type(expected)
    assert codec.from_text(None) is None
    assert roundtrip(codec, value) == expected


@pytest.mark.parametrize(
    ("typname", "avro"),
    [
        ("int2", "int"),
        ("int4", "int"),
        ("int8", "long"),
        ("float4", "float"),
        ("float8", "double"),
        ("bool", "boolean"),
        ("text", "string"),
        ("bytea", "bytes"),
        ("uuid", {"type": "string", "logicalType": "uuid"}),
        ("date", {"type": "int", "logicalType": "date", "connect.name": "io.debezium.time.Date"}),
        ("time", {"type": "long", "logicalType": "time-micros", "connect.name": "io.debezium.time.MicroTime"}),
        ("timestamp", {"type": "long", "logicalType": "local-timestamp-micros",
                       "connect.name": "io.debezium.time.MicroTimestamp"}),
        ("timestamptz", {"type": "long", "logicalType": "timestamp-micros"}),
        ("timetz", {"type": "string", "connect.name": "io.debezium.time.ZonedTime"}),
        ("interval", {"type": "string", "connect.name": "io.debezium.time.Interval"}),
        ("jsonb", {"type": "string", "connect.name": "io.debezium.data.Json"}),
    ],
)  # fmt: skip
def test_avro_types(typname: str, avro: Any) -> None:
    key = codec_for(typname, key=True, not_null=True)
    assert key.avro == avro
    assert not key.nullable
    other = codec_for(typname)
    assert other.avro == ["null", avro]
    assert other.nullable
    assert other.field["default"] is None
    assert other.field["pg.type"] == typname


@pytest.mark.parametrize("text", ["3.5", "-0.0", "NaN", "Infinity", "-Infinity", "1e-05", "1e+300"])
def test_floats(text: str) -> None:
    codec = codec_for("float8")
    value = codec.from_text(text)
    assert isinstance(value, float)
    assert repr(roundtrip(codec, value)) == repr(value)
    assert repr(value) == repr(float(text))


def test_float4_is_avro_float() -> None:
    codec = codec_for("float4")
    assert roundtrip(codec, codec.from_text("1.5")) == 1.5


def test_numeric_precise_constrained() -> None:
    codec = codec_for("numeric", typmod=numeric_typmod(10, 2))
    decimal = {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}
    assert codec.value_type == [decimal, "string"]
    assert codec.avro == ["null", decimal, "string"]
    assert codec.from_text("-12345678.90") == Decimal("-12345678.90")
    assert roundtrip(codec, codec.from_text("-12345678.90")) == Decimal("-12345678.90")
    assert codec.from_text("NaN") == "NaN"
    assert roundtrip(codec, "NaN") == "NaN"


def test_numeric_negative_scale_and_scale_above_precision() -> None:
    assert numeric_precision_scale(numeric_typmod(5, -2)) == (5, -2)
    codec = codec_for("numeric", typmod=numeric_typmod(5, -2))
    assert codec.value_type[0] == {"type": "bytes", "logicalType": "decimal", "precision": 7, "scale": 0}
    assert roundtrip(codec, codec.from_text("1234500")) == Decimal("1234500")
    codec = codec_for("numeric", typmod=numeric_typmod(3, 5))
    assert codec.value_type[0] == {"type": "bytes", "logicalType": "decimal", "precision": 5, "scale": 5}
    assert roundtrip(codec, codec.from_text("0.00123")) == Decimal("0.00123")


@pytest.mark.parametrize("text", ["0", "1", "-1", "127", "-128", "128", "3.14159265358979323846264338327950288",
                                  "-0.000001230", "123456789012345678901234567890", "NaN", "Infinity", "-Infinity"])
def test_numeric_precise_unconstrained_is_variable_scale(text: str) -> None:
    codec = codec_for("numeric")
    assert codec.value_type[0]["connect.name"] == VARIABLE_SCALE_DECIMAL_NAME
    value = roundtrip(codec, codec.from_text(text))
    if text in ("NaN", "Infinity", "-Infinity"):
        assert value == text
    else:
        decoded = variable_scale_decimal(value)
        assert decoded == Decimal(text)
        assert str(decoded) == str(Decimal(text))  # the scale survives: 1.50 stays 1.50


def test_numeric_string_and_double_modes() -> None:
    string = codec_for("numeric", handling=DecimalHandling.STRING, typmod=numeric_typmod(10, 2))
    assert string.value_type == "string"
    assert string.from_text("12.50") == "12.50"
    assert string.placeholder == UNAVAILABLE_VALUE
    double = codec_for("numeric", handling=DecimalHandling.DOUBLE)
    assert double.value_type == "double"
    assert double.from_text("12.5") == 12.5
    assert repr(double.from_text("NaN")) == "nan"
    assert double.from_text("-Infinity") == float("-inf")


def test_enum_carries_labels() -> None:
    codec = codec_for("mood", kind="e", schema="public", labels=("sad", "ok"))
    assert codec.value_type == {
        "type": "string",
        "connect.name": "io.debezium.data.Enum",
        "pg.enum.labels": ["sad", "ok"],
    }


@pytest.mark.parametrize(
    ("element", "text", "expected"),
    [
        ("int4", "{1,2,NULL,-3}", [1, 2, None, -3]),
        ("int4", "{}", []),
        ("int4", "[0:1]={1,2}", [1, 2]),
        ("text", '{"a b","x\\"y",NULL,"NULL",""," s ","back\\\\slash",plain}',
         ["a b", 'x"y', None, "NULL", "", " s ", "back\\slash", "plain"]),
        ("text", '{"{braces}","a,b"}', ["{braces}", "a,b"]),
        ("float8", "{NaN,1.5}", None),
        ("bool", "{t,f}", [True, False]),
        ("date", "{2024-02-29,infinity}", [19782, DATE_POSITIVE_INFINITY]),
        ("uuid", "{6ba7b810-9dad-11d1-80b4-00c04fd430c8}", ["6ba7b810-9dad-11d1-80b4-00c04fd430c8"]),
        ("timestamptz", '{"2024-01-02 03:04:05+00"}', [1704164645000000]),
        ("bytea", '{"\\\\xdead"}', [b"\xde\xad"]),
        ("jsonb", '{"{\\"a\\": 1}"}', ['{"a": 1}']),
        ("box", "{(3,4),(1,2);(7,8),(5,6)}", ["(3,4),(1,2)", "(7,8),(5,6)"]),
    ],
)  # fmt: skip
def test_arrays(element: str, text: str, expected: Any) -> None:
    col = column("c", array_of(pg_type(element)))
    codec = column_codec(table(col), col, decimal_handling=PRECISE)
    assert codec.value_type["type"] == "array"
    assert codec.value_type["items"][0] == "null"
    value = codec.from_text(text)
    if expected is None:  # NaN != NaN
        assert repr(value) == "[nan, 1.5]"
    else:
        assert value == expected
        assert roundtrip(codec, value) == expected


def test_array_of_numeric_flattens_union() -> None:
    col = column("c", array_of(pg_type("numeric")), typmod=numeric_typmod(5, 1))
    codec = column_codec(table(col), col, decimal_handling=PRECISE)
    assert codec.value_type["items"] == ["null", {"type": "bytes", "logicalType": "decimal", "precision": 5,
                                                  "scale": 1}, "string"]  # fmt: skip
    assert roundtrip(codec, codec.from_text("{1.5,NULL,NaN}")) == [Decimal("1.5"), None, "NaN"]


def test_multidimensional_array_value_is_refused() -> None:
    with pytest.raises(ValueError, match="multidimensional"):
        parse_array("{{1,2},{3,4}}", int)


def test_unsupported_type_names_column_and_fix() -> None:
    col = column("shape", pg_type("geometry", schema="public"), type_name="geometry(Point,4326)")
    with pytest.raises(SchemaError) as caught:
        column_codec(table(col, schema="gis", name="places"), col, decimal_handling=PRECISE)
    assert "cannot map column gis.places.shape of type geometry(Point,4326)" in caught.value.message
    assert "skip_unsupported_columns" in (caught.value.hint or "")


def test_toast_placeholders_and_nullability() -> None:
    text_key = codec_for("text", key=True, not_null=True, toastable=True)
    assert text_key.placeholder == UNAVAILABLE_VALUE
    assert not text_key.nullable
    assert codec_for("bytea", toastable=True).placeholder == UNAVAILABLE_BYTES
    # A TOAST-able key column of a non-string type must be nullable: an unchanged value is null.
    numeric_key = codec_for("numeric", key=True, not_null=True, toastable=True, typmod=numeric_typmod(10, 2))
    assert numeric_key.nullable
    assert numeric_key.placeholder is None
    # Non-key columns are nullable even when NOT NULL: deletes under REPLICA IDENTITY DEFAULT send only the key.
    not_null = codec_for("int4", not_null=True)
    assert not_null.nullable
    assert not_null.field["pg.not_null"] is True
    assert "pg.not_null" not in codec_for("int4").field
    assert "pg.not_null" not in codec_for("int4", not_null=True, key=True).field


def test_field_names_are_avro_names() -> None:
    assert avro_name("Order Id") == "Order_Id"
    assert avro_name("1st") == "_1st"
    assert avro_name("ünï") == "_n_"
    col = column("Order Id", "int4")
    codec = column_codec(table(col), col, decimal_handling=PRECISE)
    assert codec.field["name"] == "Order_Id"
    assert codec.field["pg.name"] == "Order Id"


def test_domain_maps_to_base_type() -> None:
    col = column("amount", pg_type("numeric"), type_name="public.money_amount", base_kind="d",
                 typmod=numeric_typmod(12, 2), not_null=True, key_position=1)  # fmt: skip
    codec = column_codec(table(col), col, decimal_handling=PRECISE)
    assert codec.field["pg.type"] == "public.money_amount"
    assert codec.value_type[0]["precision"] == 12

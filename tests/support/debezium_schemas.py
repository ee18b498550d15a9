"""What Debezium's PostgreSQL connector registers and sends for a table with a column of every type of
docs/types.md, read from the real connector (Debezium 3.6.0.Final, Kafka Connect 4.3.1, Apicurio's Connect Avro
converter 2.6.13 in Confluent mode) under its defaults: `time.precision.mode=adaptive`,
`decimal.handling.mode=precise`, `binary.handling.mode=bytes`, `schema.name.adjustment.mode=avro`.

`schema_style: debezium` must produce the same fields and values (tests/unit/schemas/test_schemas_debezium_style.py);
tests/integration/debezium/test_debezium_schemas.py checks the same against the live connector. Each column: its DDL,
the text pgoutput sends for the first row's value, the value Debezium sends for it, the field Debezium registers in
`Value` (key columns are in `Key` too), and for columns whose second row holds a special value (NaN, infinity, 24:00,
a timetz west of UTC): `(text, Debezium's value in a snapshot, Debezium's value when streamed)`; `ours` where we
deliberately write something else (docs/event-format.md, Debezium compatibility). Columns Debezium does not capture
carry no field (it drops them from its schema and values; we keep them as strings).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

NAN = float("nan")
INF = float("inf")
ENUM = "ENUM"
"""The enum type `mood` with labels ('happy', 'sad') in the table's schema."""
DOMAIN = "DOMAIN"
"""The domain `dnum` over numeric(8,2) in the table's schema."""

ENUM_DDL = "CREATE TYPE {schema}.mood AS ENUM ('happy', 'sad')"
DOMAIN_DDL = "CREATE DOMAIN {schema}.dnum AS numeric(8,2)"
ENUM_LABELS = ("happy", "sad")

_ABSENT = object()


@dataclass(frozen=True)
class DebeziumField:
    name: str
    ddl: str
    """The column's type as `format_type` prints it (`mood` and `dnum` unqualified)."""
    typname: str
    """The (element's) type name in the catalog, or ENUM / DOMAIN."""
    typmod: int = -1
    array: bool = False
    not_null: bool = False
    default: str | None = None
    """The column's constant default, as PostgreSQL prints the value."""
    text: str = ""
    value: Any = _ABSENT
    """Debezium's value for `text` (absent: Debezium does not capture the column)."""
    field: Any = None
    """Debezium's registered field, without its name (`{"type": ..., "default": ...}`)."""
    special: tuple[str, Any, Any] | None = None
    ours: Any = _ABSENT
    """What we write for `special`'s text where it differs from Debezium's (documented)."""
    ours_value: Any = _ABSENT
    """What we write for `text` where it differs from Debezium's (documented)."""
    ours_field: Any = None
    """Our field where it differs from Debezium's (documented), without our `pg.*` properties."""

    @property
    def captured(self) -> bool:
        return self.value is not _ABSENT

    @property
    def ours_first(self) -> Any:
        return self.value if self.ours_value is _ABSENT else self.ours_value

    @property
    def ours_special(self) -> Any:
        assert self.special is not None
        return self.special[1] if self.ours is _ABSENT else self.ours


KEY = ("id", "k2")


def _nullable(avro_type: str, connect_name: str | None = None) -> dict[str, Any]:
    """An optional field as Debezium registers it: `["null", type]` with default null, the type named for Connect."""
    named: Any = (
        avro_type if connect_name is None else {"type": avro_type, "connect.version": 1, "connect.name": connect_name}
    )
    return {"type": ["null", named], "default": None}


COLUMNS: tuple[DebeziumField, ...] = (
    DebeziumField("id", "integer", "int4", not_null=True, text="1", value=1, field={"type": "int"}),
    DebeziumField("k2", "text", "text", not_null=True, text="a", value="a", field={"type": "string"}),
    DebeziumField(
        "c_int2",
        "smallint",
        "int2",
        text="7",
        value=7,
        field={"type": ["null", {"type": "int", "connect.type": "int16"}], "default": None},
    ),
    DebeziumField(
        "c_int2_nn",
        "smallint",
        "int2",
        not_null=True,
        default="3",
        text="8",
        value=8,
        field={"type": {"type": "int", "connect.default": 3, "connect.type": "int16"}, "default": 3},
    ),
    DebeziumField("c_int4", "integer", "int4", text="42", value=42, field=_nullable("int")),
    DebeziumField(
        "c_int8",
        "bigint",
        "int8",
        text="9007199254740993",
        value=9007199254740993,
        field=_nullable("long"),
    ),
    DebeziumField("c_oid", "oid", "oid", text="4000000000", value=4000000000, field=_nullable("long")),
    DebeziumField(
        "c_float4",
        "real",
        "float4",
        text="1.5",
        value=1.5,
        field=_nullable("float"),
        special=("NaN", NAN, NAN),
    ),
    DebeziumField(
        "c_float8",
        "double precision",
        "float8",
        text="2.25",
        value=2.25,
        field=_nullable("double"),
        special=("-Infinity", -INF, -INF),
    ),
    DebeziumField(
        "c_num",
        "numeric(12,2)",
        "numeric",
        typmod=786438,
        text="12345.67",
        value=Decimal("12345.67"),
        field={
            "type": [
                "null",
                {
                    "type": "bytes",
                    "scale": 2,
                    "precision": 12,
                    "connect.version": 1,
                    "connect.parameters": {"scale": "2", "connect.decimal.precision": "12"},
                    "connect.name": "org.apache.kafka.connect.data.Decimal",
                    "logicalType": "decimal",
                },
            ],
            "default": None,
        },
        special=("NaN", None, None),
    ),
    DebeziumField(
        "c_num_any",
        "numeric",
        "numeric",
        text="-1234.567",
        value={"scale": 3, "value": b"\xed)y"},
        field={
            "type": [
                "null",
                {
                    "type": "record",
                    "name": "VariableScaleDecimal",
                    "namespace": "io.debezium.data",
                    "fields": [{"name": "scale", "type": "int"}, {"name": "value", "type": "bytes"}],
                    "connect.doc": "Variable scaled decimal",
                    "connect.version": 1,
                    "connect.name": "io.debezium.data.VariableScaleDecimal",
                },
            ],
            "default": None,
        },
        special=("Infinity", None, None),
    ),
    DebeziumField("c_bool", "boolean", "bool", text="t", value=True, field=_nullable("boolean")),
    DebeziumField("c_text", "text", "text", text="plain", value="plain", field=_nullable("string")),
    DebeziumField(
        "c_text_nn",
        "text",
        "text",
        not_null=True,
        default="dflt",
        text="nn",
        value="nn",
        field={"type": {"type": "string", "connect.default": "dflt"}, "default": "dflt"},
    ),
    DebeziumField(
        "c_varchar",
        "character varying(40)",
        "varchar",
        typmod=44,
        text="forty",
        value="forty",
        field=_nullable("string"),
    ),
    DebeziumField(
        "c_char",
        "character(3)",
        "bpchar",
        typmod=7,
        text="ab ",
        value="ab ",
        field=_nullable("string"),
    ),
    DebeziumField(
        "c_name",
        "name",
        "name",
        text="nm",
        value="nm",
        field=_nullable("string"),
        special=("nm", "nm", None),
        ours="nm",
    ),
    DebeziumField("c_qchar", '"char"', "char", text="x", value="x", field=_nullable("string")),
    DebeziumField(
        "c_bytea",
        "bytea",
        "bytea",
        text="\\x00ff",
        value=b"\x00\xff",
        field=_nullable("bytes"),
    ),
    DebeziumField(
        "c_uuid",
        "uuid",
        "uuid",
        text="0b1e6f6c-7c4e-4c59-9d6c-2f0c1d7e8a11",
        value="0b1e6f6c-7c4e-4c59-9d6c-2f0c1d7e8a11",
        field=_nullable("string", "io.debezium.data.Uuid"),
    ),
    DebeziumField(
        "c_date",
        "date",
        "date",
        text="2025-01-01",
        value=20089,
        field=_nullable("int", "io.debezium.time.Date"),
        special=("infinity", -622191234, -2147472692),
        ours=2147483647,
    ),
    DebeziumField(
        "c_time",
        "time without time zone",
        "time",
        text="12:34:56.123456",
        value=45296123456,
        field=_nullable("long", "io.debezium.time.MicroTime"),
        special=("24:00:00", 86400000000, 86400000000),
    ),
    DebeziumField(
        "c_time3",
        "time(3) without time zone",
        "time",
        typmod=3,
        text="12:34:56.789",
        value=45296789,
        field=_nullable("int", "io.debezium.time.Time"),
    ),
    DebeziumField(
        "c_timetz",
        "time with time zone",
        "timetz",
        text="12:00:00.5+03",
        value="09:00:00.5Z",
        field=_nullable("string", "io.debezium.time.ZonedTime"),
        special=("23:30:00-05:30", "05:00:00Z", "05:00:00Z"),
    ),
    DebeziumField(
        "c_ts",
        "timestamp without time zone",
        "timestamp",
        text="2025-01-01 12:00:00.123456",
        value=1735732800123456,
        field=_nullable("long", "io.debezium.time.MicroTimestamp"),
        special=("-infinity", -9223372036832400000, -9223372036832400000),
    ),
    DebeziumField(
        "c_ts3",
        "timestamp(3) without time zone",
        "timestamp",
        typmod=3,
        text="2025-01-01 12:00:00.123",
        value=1735732800123,
        field=_nullable("long", "io.debezium.time.Timestamp"),
        special=("infinity", 9223372036825200, 9223372036825200),
    ),
    DebeziumField(
        "c_tstz",
        "timestamp with time zone",
        "timestamptz",
        text="2025-01-01 09:00:00.123456+00",
        value="2025-01-01T09:00:00.123456Z",
        field={
            "type": [
                "null",
                {"type": "string", "connect.version": 1, "connect.name": "io.debezium.time.ZonedTimestamp"},
            ],
            "default": None,
        },
        special=("infinity", "infinity", "infinity"),
    ),
    DebeziumField(
        "c_tstz3",
        "timestamp(3) with time zone",
        "timestamptz",
        typmod=3,
        text="2025-01-01 09:00:00.1+00",
        value="2025-01-01T09:00:00.100Z",
        field={
            "type": [
                "null",
                {"type": "string", "connect.version": 1, "connect.name": "io.debezium.time.ZonedTimestamp"},
            ],
            "default": None,
        },
        special=("-infinity", "-infinity", "-infinity"),
    ),
    DebeziumField(
        "c_interval",
        "interval",
        "interval",
        text="1 year 2 mons 3 days 04:05:06.5",
        value=37091106500000,
        field=_nullable("long", "io.debezium.time.MicroDuration"),
        special=("-1 days +02:03:00", -79020000000, -79020000000),
    ),
    DebeziumField(
        "c_json",
        "json",
        "json",
        text='{"b": 1}',
        value='{"b": 1}',
        field=_nullable("string", "io.debezium.data.Json"),
    ),
    DebeziumField(
        "c_jsonb",
        "jsonb",
        "jsonb",
        text='{"a": [1, 2]}',
        value='{"a": [1, 2]}',
        field=_nullable("string", "io.debezium.data.Json"),
    ),
    DebeziumField(
        "c_xml",
        "xml",
        "xml",
        text="<a>1</a>",
        value="<a>1</a>",
        field=_nullable("string", "io.debezium.data.Xml"),
    ),
    DebeziumField(
        "c_enum",
        "mood",
        ENUM,
        text="sad",
        value="sad",
        field={
            "type": [
                "null",
                {
                    "type": "string",
                    "connect.version": 1,
                    "connect.parameters": {"allowed": "happy,sad"},
                    "connect.name": "io.debezium.data.Enum",
                },
            ],
            "default": None,
        },
    ),
    DebeziumField(
        "c_domain",
        "dnum",
        DOMAIN,
        typmod=524294,
        text="12.50",
        value=Decimal("12.50"),
        field={
            "type": [
                "null",
                {
                    "type": "bytes",
                    "scale": 2,
                    "precision": 8,
                    "connect.version": 1,
                    "connect.parameters": {"scale": "2", "connect.decimal.precision": "8"},
                    "connect.name": "org.apache.kafka.connect.data.Decimal",
                    "logicalType": "decimal",
                },
            ],
            "default": None,
        },
    ),
    DebeziumField(
        "c_money",
        "money",
        "money",
        text="$12.50",
        value=Decimal("12.50"),
        field={
            "type": [
                "null",
                {
                    "type": "bytes",
                    "scale": 2,
                    "precision": 64,
                    "connect.version": 1,
                    "connect.parameters": {"scale": "2"},
                    "connect.name": "org.apache.kafka.connect.data.Decimal",
                    "logicalType": "decimal",
                },
            ],
            "default": None,
        },
    ),
    DebeziumField(
        "c_inet",
        "inet",
        "inet",
        text="192.168.0.1",
        value="192.168.0.1",
        field=_nullable("string"),
    ),
    DebeziumField(
        "c_cidr",
        "cidr",
        "cidr",
        text="10.0.0.0/8",
        value="10.0.0.0/8",
        field=_nullable("string"),
    ),
    DebeziumField(
        "c_macaddr",
        "macaddr",
        "macaddr",
        text="08:00:2b:01:02:03",
        value="08:00:2b:01:02:03",
        field=_nullable("string"),
    ),
    DebeziumField(
        "c_macaddr8",
        "macaddr8",
        "macaddr8",
        text="08:00:2b:01:02:03:04:05",
        value="08:00:2b:01:02:03:04:05",
        field=_nullable("string"),
    ),
    DebeziumField(
        "c_bit5",
        "bit(5)",
        "bit",
        typmod=5,
        text="00101",
        value=b"\x05",
        field={
            "type": [
                "null",
                {
                    "type": "bytes",
                    "connect.version": 1,
                    "connect.parameters": {"length": "5"},
                    "connect.name": "io.debezium.data.Bits",
                },
            ],
            "default": None,
        },
    ),
    DebeziumField("c_bit1", "bit(1)", "bit", typmod=1, text="1", value=True, field=_nullable("boolean")),
    DebeziumField(
        "c_varbit",
        "bit varying",
        "varbit",
        text="101",
        value=b"\x05",
        field={
            "type": [
                "null",
                {
                    "type": "bytes",
                    "connect.version": 1,
                    "connect.parameters": {"length": "2147483647"},
                    "connect.name": "io.debezium.data.Bits",
                },
            ],
            "default": None,
        },
    ),
    DebeziumField(
        "c_tsvector",
        "tsvector",
        "tsvector",
        text="'a' 'cat' 'fat'",
        value="'a' 'cat' 'fat'",
        field=_nullable("string", "io.debezium.data.Tsvector"),
    ),
    DebeziumField("c_tsquery", "tsquery", "tsquery", text="'fat' & 'rat'"),  # not captured by Debezium
    DebeziumField(
        "c_point",
        "point",
        "point",
        text="(1,2)",
        value={
            "x": 1.0,
            "y": 2.0,
            "wkb": b"\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\xf0?\x00\x00\x00\x00\x00\x00\x00@",
            "srid": None,
        },
        field={
            "type": [
                "null",
                {
                    "type": "record",
                    "name": "Point",
                    "namespace": "io.debezium.data.geometry",
                    "fields": [
                        {"name": "x", "type": "double"},
                        {"name": "y", "type": "double"},
                        {"name": "wkb", "type": ["null", "bytes"], "default": None},
                        {"name": "srid", "type": ["null", "int"], "default": None},
                    ],
                    "connect.doc": "Geometry (POINT)",
                    "connect.version": 1,
                    "connect.name": "io.debezium.data.geometry.Point",
                },
            ],
            "default": None,
        },
    ),
    DebeziumField("c_line", "line", "line", text="{1,2,3}"),  # not captured by Debezium
    DebeziumField("c_lseg", "lseg", "lseg", text="[(1,2),(3,4)]"),  # not captured by Debezium
    DebeziumField("c_box", "box", "box", text="(3,4),(1,2)"),  # not captured by Debezium
    DebeziumField("c_path", "path", "path", text="((1,2),(3,4))"),  # not captured by Debezium
    DebeziumField("c_polygon", "polygon", "polygon", text="((1,2),(3,4),(5,6))"),  # not captured by Debezium
    DebeziumField("c_circle", "circle", "circle", text="<(1,2),3>"),  # not captured by Debezium
    DebeziumField("c_pglsn", "pg_lsn", "pg_lsn", text="16/B374D848"),  # not captured by Debezium
    DebeziumField("c_xid", "xid", "xid", text="1234"),  # not captured by Debezium
    DebeziumField(
        "c_int4range",
        "int4range",
        "int4range",
        text="[1,5)",
        value="[1,5)",
        field=_nullable("string"),
    ),
    DebeziumField(
        "c_tstzrange",
        "tstzrange",
        "tstzrange",
        text='["2025-01-01 00:00:00+00","2025-01-02 00:00:00+00")',
        value='["2025-01-01 00:00:00+00","2025-01-02 00:00:00+00")',
        field=_nullable("string"),
    ),
    DebeziumField(
        "c_int4multirange", "int4multirange", "int4multirange", text="{[1,3),[5,7)}"
    ),  # not captured by Debezium
    DebeziumField(
        "c_int_arr",
        "integer[]",
        "int4",
        array=True,
        text="{1,NULL,3}",
        value=[1, None, 3],
        field={"type": ["null", {"type": "array", "items": ["null", "int"]}], "default": None},
    ),
    DebeziumField(
        "c_text_arr",
        "text[]",
        "text",
        array=True,
        text='{a,"b c",NULL}',
        value=["a", "b c", None],
        field={"type": ["null", {"type": "array", "items": ["null", "string"]}], "default": None},
    ),
    DebeziumField(
        "c_num_arr",
        "numeric(6,2)[]",
        "numeric",
        typmod=393222,
        array=True,
        text="{1.50,NULL}",
        value=[Decimal("1.50"), None],
        field={
            "type": [
                "null",
                {
                    "type": "array",
                    "items": [
                        "null",
                        {
                            "type": "bytes",
                            "scale": 2,
                            "precision": 6,
                            "connect.version": 1,
                            "connect.parameters": {"scale": "2", "connect.decimal.precision": "6"},
                            "connect.name": "org.apache.kafka.connect.data.Decimal",
                            "logicalType": "decimal",
                        },
                    ],
                },
            ],
            "default": None,
        },
    ),
    DebeziumField(
        "c_date_arr",
        "date[]",
        "date",
        array=True,
        text="{2025-01-01,infinity}",
        value=[20089, -622191234],
        ours_value=[20089, 2147483647],
        field={
            "type": [
                "null",
                {
                    "type": "array",
                    "items": ["null", {"type": "int", "connect.version": 1, "connect.name": "io.debezium.time.Date"}],
                },
            ],
            "default": None,
        },
    ),
    DebeziumField(
        "c_uuid_arr",
        "uuid[]",
        "uuid",
        array=True,
        text="{0b1e6f6c-7c4e-4c59-9d6c-2f0c1d7e8a11}",
        value=["0b1e6f6c-7c4e-4c59-9d6c-2f0c1d7e8a11"],
        field={
            "type": [
                "null",
                {
                    "type": "array",
                    "items": [
                        "null",
                        {"type": "string", "connect.version": 1, "connect.name": "io.debezium.data.Uuid"},
                    ],
                },
            ],
            "default": None,
        },
    ),
    DebeziumField(
        "c_tstz_arr",
        "timestamp with time zone[]",
        "timestamptz",
        array=True,
        text='{"2025-01-01 09:00:00+00"}',
        value=["2025-01-01T09:00:00.000000Z"],
        field={
            "type": [
                "null",
                {
                    "type": "array",
                    "items": [
                        "null",
                        {"type": "string", "connect.version": 1, "connect.name": "io.debezium.time.ZonedTimestamp"},
                    ],
                },
            ],
            "default": None,
        },
    ),
    DebeziumField(
        "c_jsonb_arr",
        "jsonb[]",
        "jsonb",
        array=True,
        text='{"{\\"x\\": 1}"}',
        value=['{"x": 1}'],
        field={
            "type": [
                "null",
                {
                    "type": "array",
                    "items": [
                        "null",
                        {"type": "string", "connect.version": 1, "connect.name": "io.debezium.data.Json"},
                    ],
                },
            ],
            "default": None,
        },
    ),
    DebeziumField(
        "c_enum_arr",
        "mood[]",
        ENUM,
        array=True,
        text="{happy,sad}",
        value=["happy", "sad"],
        field={
            "type": [
                "null",
                {
                    "type": "array",
                    "items": {
                        "type": "string",
                        "connect.version": 1,
                        "connect.parameters": {"allowed": "happy,sad"},
                        "connect.name": "io.debezium.data.Enum",
                    },
                },
            ],
            "default": None,
        },
        ours_field={
            "type": [
                "null",
                {
                    "type": "array",
                    "items": [
                        "null",
                        {
                            "type": "string",
                            "connect.version": 1,
                            "connect.parameters": {"allowed": "happy,sad"},
                            "connect.name": "io.debezium.data.Enum",
                        },
                    ],
                },
            ],
            "default": None,
        },  # Debezium's non-null elements cannot carry a NULL element
    ),
    DebeziumField(
        "c_bool_arr",
        "boolean[]",
        "bool",
        array=True,
        text="{t,f}",
        value=[True, False],
        field={"type": ["null", {"type": "array", "items": ["null", "boolean"]}], "default": None},
    ),
    DebeziumField(
        "c_float8_arr",
        "double precision[]",
        "float8",
        array=True,
        text="{1.5,NaN}",
        value=[1.5, NAN],
        field={"type": ["null", {"type": "array", "items": ["null", "double"]}], "default": None},
    ),
    DebeziumField(
        "c_bytea_arr",
        "bytea[]",
        "bytea",
        array=True,
        text='{"\\\\x00ff"}',
        value=[b"\x00\xff"],
        field={"type": ["null", {"type": "array", "items": ["null", "bytes"]}], "default": None},
    ),
)

NOT_CAPTURED = tuple(c.name for c in COLUMNS if not c.captured)
"""Types Debezium 3.6 skips (no field, no value): tsquery, line, lseg, box, path, polygon, circle, pg_lsn, xid,
multiranges."""


def key_schema(namespace: str) -> dict[str, Any]:
    return {"type": "record", "name": "Key", "namespace": namespace,
            "fields": [{"name": "id", "type": "int"}, {"name": "k2", "type": "string"}],
            "connect.name": f"{namespace}.Key"}  # fmt: skip


SOURCE: dict[str, Any] = {
    "type": "record", "name": "Source", "namespace": "io.debezium.connector.postgresql",
    "fields": [
        {"name": "version", "type": "string"}, {"name": "connector", "type": "string"},
        {"name": "name", "type": "string"}, {"name": "ts_ms", "type": "long"},
        {"name": "snapshot", "type": [
            {"type": "string", "connect.version": 1,
             "connect.parameters": {"allowed": "true,first,first_in_data_collection,last_in_data_collection,last,"
                                               "false,incremental"},
             "connect.default": "false", "connect.name": "io.debezium.data.Enum"}, "null"], "default": "false"},
        {"name": "db", "type": "string"}, {"name": "sequence", "type": ["null", "string"], "default": None},
        {"name": "ts_us", "type": ["null", "long"], "default": None},
        {"name": "ts_ns", "type": ["null", "long"], "default": None},
        {"name": "schema", "type": "string"}, {"name": "table", "type": "string"},
        {"name": "txId", "type": ["null", "long"], "default": None},
        {"name": "lsn", "type": ["null", "long"], "default": None},
        {"name": "xmin", "type": ["null", "long"], "default": None},
        {"name": "origin", "type": ["null", "string"], "default": None},
        {"name": "origin_lsn", "type": ["null", "long"], "default": None},
    ],
    "connect.version": 1, "connect.name": "io.debezium.connector.postgresql.Source",
}  # fmt: skip

TRANSACTION: dict[str, Any] = {
    "type": "record", "name": "block", "namespace": "event",
    "fields": [{"name": "id", "type": "string"}, {"name": "total_order", "type": "long"},
               {"name": "data_collection_order", "type": "long"}],
    "connect.version": 1, "connect.name": "event.block",
}  # fmt: skip

ENVELOPE_FIELDS = ("before", "after", "source", "transaction", "op", "ts_ms", "ts_us", "ts_ns")
"""The Envelope's fields in order (`transaction`, `ts_*` as `["null", ...]` with default null;
Envelope `connect.version` 2)."""

OUR_EXTRAS: dict[str, Any] = {
    "envelope": {"change_id": {"type": "string", "connect.version": 1, "connect.name": "io.debezium.data.Uuid"},
                 "unchanged_toast": {"type": "array", "items": "string"}},
    "source": {"commit_lsn": ["null", "long"]},
    "field properties": ("pg.type", "pg.not_null", "pg.name", "pg.default", "aliases"),
}  # fmt: skip
"""Everything `schema_style: debezium` adds to what Debezium registers (docs/event-format.md): envelope fields after
Debezium's, `source.commit_lsn` after Debezium's source fields, field-level properties (Connect's converter
ignores field properties other than `default` and `doc`)."""

SOURCE_VALUE_DIFFERENCES = ("version", "name", "ts_ms", "ts_us", "ts_ns", "sequence", "snapshot", "txId", "lsn")
"""`source` values that differ between two connectors capturing the same change: versions and logical names,
times, and for snapshots our own snapshot transaction and position (streamed changes have the same `txId` and
`lsn`; `sequence` is ours `[commit lsn, lsn]`, Debezium's `[first lsn of the transaction, lsn]`; our snapshot
marks are `true`/`last`, Debezium's `first`/`true`/`last`)."""

"""The text-format path end to end, per type: PostgreSQL value -> `col::text` -> codec -> wire format -> decode.

Each decoded value is checked against an oracle computed by PostgreSQL itself (epoch arithmetic for
temporal types, IntervalStyle iso_8601 for intervals) or psycopg's own exact conversion, so a converter
cannot agree with itself and still be wrong.
"""

from __future__ import annotations

import random
import struct
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import sql

from connector.config import SchemaRegistryConfig
from schemas.catalog import ColumnInfo, PgType, TableInfo, describe_tables
from schemas.envelope import build_table_schemas, source_block
from schemas.registry import SchemaRegistry
from schemas.serde import Decoder, Encoder
from schemas.types import (
    DATE_NEGATIVE_INFINITY,
    DATE_POSITIVE_INFINITY,
    SESSION_SETTINGS,
    TIMESTAMP_NEGATIVE_INFINITY,
    TIMESTAMP_POSITIVE_INFINITY,
    DecimalHandling,
    column_codec,
    output_text,
    variable_scale_decimal,
)
from tests.support.helpers import scratch_schema
from tests.support.stack import Stack

pytestmark = pytest.mark.integration

# column type, SQL literals (one per row; rows beyond a list are NULL), oracle kind
TYPES: list[tuple[str, list[str], str]] = [
    ("smallint", ["-32768", "32767"], "python"),
    ("integer", ["-2147483648", "0"], "python"),
    ("bigint", ["9223372036854775807", "-1"], "python"),
    ("real", ["'NaN'", "'Infinity'", "1.5e-30", "'-Infinity'", "3.4028235e38"], "float"),
    ("double precision", ["'NaN'", "'-Infinity'", "0.1", "1e308", "-0.0"], "float"),
    ("numeric(10,2)", ["12345678.90", "'NaN'", "-0.01"], "numeric"),
    ("numeric", ["3.141592653589793238462643383279502884197", "'Infinity'", "'-Infinity'", "'NaN'", "-1.50",
                 "1e-20"], "numeric"),
    ("numeric(5,-2)", ["1234500"], "numeric"),
    ("boolean", ["true", "false"], "python"),
    ("text", ["'héllo ''world'' \\ \n tab\t'", "''", "'NULL'"], "python"),
    ("character varying(20)", ["'abc'"], "python"),
    ("character(4)", ["'ab'"], "python"),
    ('"char"', ["'x'"], "text"),
    ("name", ["'pg_class'"], "python"),
    ("bytea", ["'\\xdeadbeef00'::bytea", "''::bytea", "'\\x5c22'::bytea"], "python"),
    ("uuid", ["'6ba7b810-9dad-11d1-80b4-00c04fd430c8'"], "uuid"),
    ("date", ["'2024-02-29'", "'infinity'", "'-infinity'", "'0044-03-15 BC'", "'12345-01-01'", "'4713-01-01 BC'",
              "'5874897-12-31'", "'1969-12-31'"], "date"),
    ("time", ["'04:05:06.789'", "'24:00:00'", "'00:00:00'", "'23:59:59.999999'"], "time"),
    ("time(3)", ["'04:05:06.7891'"], "time"),
    ("time with time zone", ["'04:05:06.789+05:30'", "'04:05:06-03:30:15'", "'23:59:59+14'"], "timetz"),
    ("timestamp", ["'2024-01-02 03:04:05.123456'", "'infinity'", "'-infinity'", "'0044-03-15 10:00:00 BC'",
                   "'12345-06-07 08:09:10'", "'1969-12-31 23:59:59.5'", "'4713-01-01 00:00:00 BC'"], "epoch"),
    ("timestamp with time zone", ["'2024-01-02 03:04:05.123456+05:30'", "'infinity'", "'1900-01-01 00:00:00+00'",
                                  "'0044-03-15 10:00:00+00 BC'", "'12345-06-07 00:00:00-01'", "'-infinity'"],
     "epoch"),
    ("interval", ["'1 year 2 mons 3 days 04:05:06.789'", "'-1 days +02:03:00'", "'1 day -00:00:01'", "'0'",
                  "'-178000000 years'", "'-00:00:00.000001'", "'100 hours'", "'-1 year -2 mons -3 days -04:05:06'"],
     "interval"),
    ("json", ["'{\"b\": 1,  \"a\": [1, 2]}'"], "text"),
    ("jsonb", ["'{\"b\": 1, \"a\": [1, 2, null], \"s\": \"\\u00e9\"}'"], "text"),
    ("xml", ["'<a>1</a>'"], "text"),
    ("inet", ["'192.168.0.1/24'", "'::1'"], "text"),
    ("cidr", ["'10.0.0.0/8'"], "text"),
    ("macaddr", ["'08:00:2b:01:02:03'"], "text"),
    ("macaddr8", ["'08:00:2b:01:02:03:04:05'"], "text"),
    ("money", ["12.5"], "text"),
    ("bit(3)", ["B'101'"], "text"),
    ("bit varying", ["B'1'"], "text"),
    ("tsvector", ["'a fat cat'"], "text"),
    ("point", ["'(1,2)'"], "text"),
    ("box", ["'(1,2),(3,4)'"], "text"),
    ("int4range", ["'[1,5)'", "'empty'"], "text"),
    ("pg_lsn", ["'16/B374D848'"], "text"),
    ("{enum}", ["'ok'", "'a ''quoted'' label'"], "text"),
    ("{domain}", ["42.50"], "numeric"),
    ("integer[]", ["'{1,NULL,-3}'", "'{}'", "'[0:1]={7,8}'"], "array"),
    ("text[]", ["ARRAY['a b', 'x\"y', NULL, 'NULL', '', ' s ', 'back\\slash', '{}', 'a,b']"], "array"),
    ("numeric(5,1)[]", ["'{1.5,NaN,NULL}'"], "array"),
    ("date[]", ["'{2024-02-29,infinity}'"], "text_array"),
    ("timestamp with time zone[]", ["ARRAY['2024-01-02 03:04:05+02'::timestamptz, 'infinity']"], "text_array"),
    ("uuid[]", ["'{6ba7b810-9dad-11d1-80b4-00c04fd430c8}'"], "text_array"),
    ("bytea[]", ["ARRAY['\\xdead'::bytea, NULL]"], "array"),
    ("box[]", ["ARRAY['(1,2),(3,4)'::box, '(5,6),(7,8)'::box]"], "text_array"),
    ("{enum}[]", ["ARRAY['ok', 'a ''quoted'' label']::{enum}[]"], "array_text"),
    ("jsonb[]", ["ARRAY['{\"a\": \"x,y\"}'::jsonb]"], "text_array"),
]


@pytest.fixture
def source(stack: Stack, unique_name: Callable[[str], str]) -> Iterator[tuple[psycopg.Connection[Any], str]]:
    schema = unique_name("schemas_types")
    conn = psycopg.connect(stack.source_dsn, autocommit=True)
    for name, value in SESSION_SETTINGS.items():
        conn.execute(sql.SQL("SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
    conn.execute("SET TimeZone = 'Asia/Kolkata'")  # offsets with minutes; output differs from UTC
    with conn, scratch_schema(conn, schema):
        yield conn, schema


def _epoch_oracle(conn: psycopg.Connection[Any], table: sql.Composable, column: str, kind: str) -> list[Any]:
    col = sql.Identifier(column)
    exprs = {
        "date": sql.SQL("CASE WHEN isfinite({c}) THEN ({c} - DATE '1970-01-01')::bigint "
                        "WHEN {c} > 'epoch' THEN {pi} WHEN {c} < 'epoch' THEN {ni} END"),
        "epoch": sql.SQL("CASE WHEN isfinite({c}) THEN (extract(epoch FROM {c}) * 1000000)::bigint "
                         "WHEN {c} > 'epoch' THEN {pt} WHEN {c} < 'epoch' THEN {nt} END"),
        "time": sql.SQL("(extract(epoch FROM {c}) * 1000000)::bigint"),
    }  # fmt: skip
    query = sql.SQL("SELECT {} FROM {} ORDER BY id").format(
        exprs[kind].format(c=col, pi=DATE_POSITIVE_INFINITY, ni=DATE_NEGATIVE_INFINITY,
                           pt=TIMESTAMP_POSITIVE_INFINITY, nt=TIMESTAMP_NEGATIVE_INFINITY),
        table,
    )  # fmt: skip
    return [r[0] for r in conn.execute(query).fetchall()]


def _float32(value: Any) -> Any:
    return value if value is None else struct.unpack("<f", struct.pack("<f", value))[0]


def _nan_safe(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return "float-nan"
    if isinstance(value, dict):
        return {k: _nan_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_safe(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    """A decoded Avro value as a comparable Python value (variable-scale decimals -> Decimal)."""
    if isinstance(value, dict) and set(value) == {"scale", "value"}:
        return variable_scale_decimal(value)
    return value


def test_every_type_survives_the_text_path(
    source: tuple[psycopg.Connection[Any], str], stack: Stack, request: pytest.FixtureRequest
) -> None:
    conn, schema = source
    enum = sql.Identifier(schema, "mood")
    domain = sql.Identifier(schema, "amount")
    conn.execute(sql.SQL("CREATE TYPE {} AS ENUM ('ok', 'a ''quoted'' label')").format(enum))
    conn.execute(sql.SQL("CREATE DOMAIN {} AS numeric(8,2) NOT NULL CHECK (VALUE > 0)").format(domain))
    enum_sql, domain_sql = enum.as_string(conn), domain.as_string(conn)

    def type_sql(text: str) -> str:
        return text.replace("{enum}", enum_sql).replace("{domain}", domain_sql)

    table = sql.Identifier(schema, "every_type")
    columns = [f"c{i}" for i in range(len(TYPES))]
    conn.execute(
        sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, {})").format(
            table,
            sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(type_sql(t)))  # type: ignore[arg-type]
                for c, (t, _, _) in zip(columns, TYPES, strict=True)
            ),
        )
    )
    rows = max(len(values) for _, values, _ in TYPES)
    for row in range(rows):
        literals = [
            sql.SQL(type_sql(values[row]) if row < len(values) else "NULL")  # type: ignore[arg-type]
            if not t.startswith("{domain}") else sql.SQL(values[min(row, len(values) - 1)])  # type: ignore[arg-type]
            for t, values, _ in TYPES
        ]  # fmt: skip
        conn.execute(sql.SQL("INSERT INTO {} VALUES ({}, {})").format(table, row, sql.SQL(", ").join(literals)))

    info = describe_tables(conn, [(schema, "every_type")])[(schema, "every_type")]
    schemas = build_table_schemas(info, topic=f"p.{schema}.every_type", topic_prefix="p",
                                  decimal_handling=DecimalHandling.PRECISE)  # fmt: skip
    texts = conn.execute(
        sql.SQL("SELECT id::text, {} FROM {} ORDER BY id").format(
            sql.SQL(", ").join(output_text(c) for c in columns), table
        )
    ).fetchall()
    # psycopg's own conversions where they are exact (it cannot load infinite dates: those use SQL oracles)
    native_kinds = {"python", "float", "numeric", "uuid", "array"}
    natives = conn.execute(
        sql.SQL("SELECT id, {} FROM {} ORDER BY id").format(
            sql.SQL(", ").join(
                sql.SQL("{}" if kind in native_kinds else "array_to_json({})" if kind == "array_text" else "{}::text")
                .format(sql.Identifier(c))
                for c, (_, _, kind) in zip(columns, TYPES, strict=True)
            ),
            table,
        )
    ).fetchall()
    conn.execute("SET IntervalStyle = iso_8601")
    iso = conn.execute(
        sql.SQL("SELECT id, {} FROM {} ORDER BY id").format(
            sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns), table
        )
    ).fetchall()
    conn.execute("SET IntervalStyle = postgres")

    with SchemaRegistry(SchemaRegistryConfig(url=stack.registry_url)) as registry:
        schema_id = registry.register(f"p.{schema}.every_type-value", schemas.value_schema)
    reader_registry = SchemaRegistry(SchemaRegistryConfig(url=stack.registry_url))  # a fresh cache: ids resolve
    request.addfinalizer(reader_registry.close)
    encoder, decoder = Encoder(), Decoder(reader_registry)
    decoded_rows = []
    float32_fields = {c.field_name for c in schemas.codecs if c.value_type == "float"}
    for text_row in texts:
        row, unchanged = schemas.row(list(text_row))
        assert unchanged == ()
        event = schemas.envelope(op="r", before=None, after=row, ts_ms=0, change_id=str(uuid.uuid4()),
                                 source=source_block(name="t", db="source", schema=schema, table="every_type",
                                                     ts_ms=0, snapshot="true"))  # fmt: skip
        value, writer_schema, decoded_id = decoder.decode(encoder.encode(schema_id, schemas.value_schema, event))
        assert decoded_id == schema_id
        assert writer_schema.name == schemas.value_schema.name
        # Avro `float` is 32-bit, like `real`: what comes back is the float32 PostgreSQL stores.
        expected = {k: _float32(v) if k in float32_fields else v for k, v in row.items()}
        assert _nan_safe(value["after"]) == _nan_safe(expected)
        decoded_rows.append(value["after"])

    oracles: dict[str, list[Any]] = {}
    for index, (_, _, kind) in enumerate(TYPES):
        column = columns[index]
        if kind in ("date", "epoch", "time"):
            oracles[column] = _epoch_oracle(conn, table, column, kind)
    for index, (type_text, _, kind) in enumerate(TYPES):
        column = columns[index]
        codec_field = schemas.codecs[index + 1].field_name
        for r, decoded_row in enumerate(decoded_rows):
            got = _plain(decoded_row[codec_field])
            native = natives[r][index + 1]
            where = f"{type_text} row {r}: {texts[r][index + 1]!r} -> {got!r}"
            if native is None and kind not in ("date", "epoch"):
                assert got is None, where
            elif kind == "python":
                assert got == native, where
            elif kind == "float":
                want = _float32(float(native)) if codec_field in float32_fields else float(native)
                assert repr(got) == repr(want), where
            elif kind == "numeric":
                assert str(got) == str(native) if isinstance(got, Decimal) else got == str(native), where
            elif kind == "uuid":
                assert got == str(native), where
            elif kind in ("date", "epoch", "time"):
                assert got == oracles[column][r], where
            elif kind == "timetz":
                same = conn.execute(sql.SQL("SELECT %s::timetz::text = {}::text FROM {} WHERE id = %s").format(
                    sql.Identifier(column), table), (got, r)).fetchone()  # fmt: skip
                assert same == (True,), where
            elif kind == "interval":
                assert got == iso[r][index + 1], where
            elif kind in ("text", "text_array"):
                assert got == texts[r][index + 1] or kind == "text_array", where
                if kind == "text_array":
                    assert isinstance(got, list), where
            elif kind == "array":
                assert [_plain(x) for x in got] == [x if not isinstance(x, Decimal) or x.is_finite() else "NaN"
                                                    for x in native], where  # fmt: skip
            elif kind == "array_text":
                assert got == native, where
            else:
                raise AssertionError(f"no oracle {kind}")


def test_random_intervals_and_timestamps_match_postgresql(source: tuple[psycopg.Connection[Any], str]) -> None:
    """Thousands of random values: our interval text equals PostgreSQL's iso_8601 output, our epoch
    micros equal PostgreSQL's own epoch arithmetic (BC, far future, a zone with a -03:30 offset)."""
    conn, _ = source
    rng = random.Random(20261123)
    units = ["years", "mons", "days", "hours", "minutes", "seconds", "microseconds"]
    literals = []
    for _ in range(3000):
        parts = [f"{rng.randint(-10**9, 10**9) if u == 'microseconds' else rng.randint(-10**5, 10**5)} {u}"
                 for u in units if rng.random() < 0.5]  # fmt: skip
        literals.append(" ".join(parts) or "0")
    query = sql.SQL("SELECT {} FROM unnest(%s::interval[]) AS v").format(output_text("v"))
    postgres_style = [r[0] for r in conn.execute(query, (literals,)).fetchall()]
    conn.execute("SET IntervalStyle = iso_8601")
    iso = [r[0] for r in conn.execute(query, (literals,)).fetchall()]
    conn.execute("SET IntervalStyle = postgres")
    interval = build_codec_for(conn, "interval")
    assert [interval(text) for text in postgres_style] == iso

    conn.execute("SET TimeZone = 'America/St_Johns'")
    rows = conn.execute(
        "SELECT format('%s', t), format('%s', t::timestamp), (extract(epoch FROM t) * 1000000)::bigint, "
        "(extract(epoch FROM t::timestamp) * 1000000)::bigint, format('%s', t::date), t::date - DATE '1970-01-01' "
        "FROM (SELECT TIMESTAMPTZ '4713-01-01 00:00:00+00 BC' + (i / 5000.0) * "
        "(TIMESTAMPTZ '200000-01-01 00:00:00+00' - TIMESTAMPTZ '4713-01-01 00:00:00+00 BC') AS t "
        "FROM generate_series(1, 5000) AS i) AS s"
    ).fetchall()
    timestamptz, timestamp, day = (build_codec_for(conn, t) for t in ("timestamptz", "timestamp", "date"))
    for tz_text, ts_text, tz_micros, ts_micros, date_text, days in rows:
        assert (timestamptz(tz_text), timestamp(ts_text), day(date_text)) == (tz_micros, ts_micros, days), tz_text


def build_codec_for(conn: psycopg.Connection[Any], type_name: str) -> Callable[[str | None], Any]:
    """The converter of a column of `type_name` (described by the live catalog)."""
    row = conn.execute(
        "SELECT t.oid, format_type(t.oid, NULL), t.typname, n.nspname, t.typcategory FROM pg_type t "
        "JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.oid = %s::regtype",
        (type_name,),
    ).fetchone()
    assert row is not None
    element = None
    if row[4] == "A":
        element_row = conn.execute(
            "SELECT e.oid, format_type(e.oid, NULL), e.typname, n.nspname, e.typcategory FROM pg_type t "
            "JOIN pg_type e ON e.oid = t.typelem JOIN pg_namespace n ON n.oid = e.typnamespace WHERE t.oid = %s",
            (row[0],),
        ).fetchone()
        assert element_row is not None
        element = PgType(oid=element_row[0], name=element_row[1], typname=element_row[2], schema=element_row[3],
                         kind="b", category=element_row[4])  # fmt: skip
    resolved = PgType(oid=row[0], name=row[1], typname=row[2], schema=row[3], kind="a" if element else "b",
                      category=row[4], element=element)  # fmt: skip
    column = ColumnInfo(name="c", attnum=1, type_oid=row[0], type_name=row[1], not_null=False, key_position=None,
                        base_kind="b", resolved=resolved)  # fmt: skip
    info = TableInfo(schema="s", name="t", oid=0, replica_identity="d", columns=(column,), has_primary_key=False)
    return column_codec(info, column, decimal_handling=DecimalHandling.PRECISE).from_text


def test_random_text_arrays_match_postgresql(source: tuple[psycopg.Connection[Any], str]) -> None:
    """Array literals with quotes, backslashes, braces, delimiters, blanks, `NULL` words and NULLs."""
    conn, _ = source
    rng = random.Random(5)
    alphabet = ['"', "\\", "{", "}", ",", " ", "\t", "a", "é", "😀", "NULL", "null", "'", ";", "\n", "x"]
    arrays = [
        [None if rng.random() < 0.1 else "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
         for _ in range(rng.randint(0, 6))]
        for _ in range(500)
    ]  # fmt: skip
    text_array = build_codec_for(conn, "text[]")
    for array in arrays:
        # concat() prints the value with the type's output function, as pgoutput does
        literal = conn.execute("SELECT concat(%s::text[])", (array,)).fetchone()
        assert literal is not None
        assert text_array(literal[0]) == array, literal[0]

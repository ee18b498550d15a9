"""Every mapped type end to end: source table -> `cdc run` (source, Kafka, sink) -> destination table, by value.

One source table has a column of every type in docs/types.md and, next to it, an array of that type
(`a_<column>`), filled with ordinary and awkward values (numeric NaN/±Infinity, timestamps ±infinity and
years > 9999, BC dates, `24:00:00`, intervals with mixed signs, money, enums, json with unicode and `\\u0000`,
bytea with zero bytes, text with odd unicode, NULLs and NULL array elements, empty arrays). The destination
must equal the source after the snapshot, and again after streamed inserts and updates that move every
value through pgoutput.

How values are compared: every column is read as its type's **output function** prints it
(`schemas.types.output_text`, NULL stays NULL) under the same session settings in both databases. Two
values are equal when PostgreSQL prints them identically. That is stricter than `=` (numeric `1.5` vs
`1.50`, float `-0` vs `0`, json whitespace all count) and works where the destination column has another
type than the source (an enum, domain, `citext` or `reg*` column arrives as text; an enum array as
`text[]`), where `IS NOT DISTINCT FROM` would need casts that themselves change values. Every mismatch is
reported with its row, column and both values.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from schemas.types import SESSION_SETTINGS, output_text
from tests.integration.pipeline_support import (
    drop_replication_state,
    drop_tables,
    free_port,
    start_connector,
    stop_connector,
    wait_until,
    write_config,
)
from tests.support.helpers import http_get
from tests.support.stack import Stack

pytestmark = pytest.mark.integration

_BIG = "(SELECT string_agg(md5(g::text), '') FROM generate_series(1, 400) g)"  # ~12 kB: stored out of line

# column, type ({t} is the table name, for the types the test creates), SQL values (row i gets value i,
# later rows NULL; at most 4 so that the fifth snapshot row is all NULL).
COLUMNS: list[tuple[str, str, list[str]]] = [
    ("c_int2", "smallint", ["-32768", "32767", "0"]),
    ("c_int4", "integer", ["-2147483648", "2147483647"]),
    ("c_int8", "bigint", ["-9223372036854775808", "9223372036854775807"]),
    ("c_oid", "oid", ["0", "4294967295"]),
    ("c_real", "real", ["'NaN'", "'Infinity'", "'-Infinity'", "1.5e-30"]),
    ("c_real_extreme", "real", ["3.4028235e38", "1e-45", "-0", "0.1"]),
    ("c_float8", "double precision", ["'NaN'", "'-Infinity'", "0.1", "-0.0"]),
    ("c_float8_extreme", "double precision", ["1.7976931348623157e308", "5e-324", "'Infinity'"]),
    ("c_numeric_ps", "numeric(10,2)", ["12345678.90", "'NaN'", "-0.01", "0"]),
    ("c_numeric", "numeric", ["'NaN'", "'Infinity'", "'-Infinity'", "-3.14159265358979323846264338327950288419716939"]),
    ("c_numeric_small", "numeric", ["1e-20", "-1.50", "0.000", "123456789012345678901234567890"]),
    ("c_numeric_neg", "numeric(5,-2)", ["1234500"]),
    ("c_bool", "boolean", ["true", "false"]),
    ("c_text", "text", [
        "E'caf\\u00e9 \\u2028 \\U0001F600 zw\\u200dj \\u202ertl\\u202c \\ufeff \\u0301'",
        "''",
        "'NULL'",
        "E'q\"uote back\\\\slash {a,b} \\t\\n\\r end '",
    ]),
    ("c_text_unicode", "text", ["E'\\u0085 \\u2029 \\u00a0 \\ud7ff \\ue000 \\U0010FFFF'", "'ǅ ß ﬁ İ'"]),
    ("c_big_text", "text", [_BIG]),
    ("c_text_control", "text", ["E'\\x01\\x02\\x1b\\x7f \\b\\f\\v'", "E'\\\\.'", "E'\\\\.\\n\\\\.'", "'  '"]),
    ("c_varchar", "character varying(20)", ["'abc'", "''"]),
    ("c_bpchar", "character(4)", ["'ab'", "'é'"]),
    ("c_name", "name", ["'pg_class'"]),
    ("c_char", '"char"', ["'x'"]),
    ("c_citext", "citext", ["'MiXeD Çase'"]),
    ("c_bytea", "bytea", ["'\\x00'::bytea", "'\\x00ff005c22'::bytea", "''::bytea", "decode(" + _BIG + ", 'hex')"]),
    ("c_uuid", "uuid", ["'6ba7b810-9dad-11d1-80b4-00c04fd430c8'"]),
    ("c_date", "date", ["'infinity'", "'-infinity'", "'12345-01-01'", "'0044-03-15 BC'"]),
    ("c_date_extreme", "date", ["'5874897-12-31'", "'4713-01-01 BC'", "'0001-01-01'", "'9999-12-31'"]),
    ("c_time", "time", ["'24:00:00'", "'23:59:59.999999'", "'00:00:00'"]),
    ("c_time3", "time(3)", ["'04:05:06.789'"]),
    ("c_timetz", "time with time zone", ["'04:05:06.789+05:30'", "'04:05:06-03:30:15'", "'23:59:59+14'"]),
    ("c_timetz_extreme", "time with time zone", ["'24:00:00-15:59'", "'00:00:00+15:59'"]),
    ("c_ts", "timestamp", [
        "'infinity'", "'-infinity'", "'12345-06-07 08:09:10.5'", "'0044-03-15 10:00:00.000001 BC'",
    ]),
    ("c_ts_ordinary", "timestamp", ["'2024-01-02 03:04:05.123456'", "'1969-12-31 23:59:59.5'"]),
    ("c_ts_extreme", "timestamp", [
        "'4713-01-01 00:00:00 BC'", "'9999-12-31 23:59:59.999999'", "'10000-01-01 00:00:00'", "'0001-01-01 00:00:00'",
    ]),
    ("c_tstz", "timestamp with time zone", [
        "'-infinity'", "'infinity'", "'12345-06-07 00:00:00-01'", "'0044-03-15 10:00:00+00 BC'",
    ]),
    ("c_tstz_ordinary", "timestamp with time zone", ["'2024-01-02 03:04:05.123456+05:30'"]),
    ("c_tstz3", "timestamp(3) with time zone", ["'2024-01-02 03:04:05.123+00'"]),
    ("c_tstz_extreme", "timestamp with time zone", [
        "'4713-01-01 00:00:00+00 BC'", "'9999-12-31 23:59:59.999999+00'", "'1800-01-01 00:00:00+05:53:28'",
        "'10000-01-01 00:00:00+00'",
    ]),
    ("c_interval", "interval", [
        "'1 year 2 mons 3 days 04:05:06.789'", "'-1 days +02:03:00'", "'1 day -00:00:01'", "'-178000000 years'",
    ]),
    ("c_interval_more", "interval", ["'0'", "'-00:00:00.000001'", "'100 hours'", "'-1 year -2 mons +3 days'"]),
    ("c_interval_extreme", "interval", [
        "'-178956970 years -8 mons'", "'178956970 years 7 mons 2147483647 days'", "'2562047788:00:54.775807'",
        "'-2562047788:00:54.775807'",
    ]),
    ("c_json", "json", ["'{\"b\": 1,  \"é\": \"\\u00e9 ☃ 😀 \\u0000 \\ud83d\\ude00\"}'", "'[]'", "'\"\"'"]),
    ("c_big_jsonb", "jsonb", ["jsonb_build_object('k', " + _BIG + ")"]),
    ("c_jsonb", "jsonb", ["'{\"b\": 1, \"a\": [1, 2, null], \"s\": \"\\u00e9 ☃ 😀 \\u2028\"}'", "'null'"]),
    ("c_xml", "xml", ["'<a b=\"é\">x &amp; y</a>'"]),
    ("c_enum", "{t}_mood", ["'ok'", "'a ''quoted'', label'", "'NULL'"]),
    ("c_domain", "{t}_amount", ["42.50", "-0.01"]),
    ("c_composite", "{t}_pair", ["ROW(1, 'a b')", "ROW(NULL, '\"q\",')"]),
    ("c_money", "money", ["12.5", "-1234567.89", "0"]),
    ("c_money_extreme", "money", ["'-92233720368547758.08'", "'92233720368547758.07'"]),
    ("c_inet", "inet", ["'192.168.0.1/24'", "'::1'", "'10.0.0.1'"]),
    ("c_cidr", "cidr", ["'10.0.0.0/8'"]),
    ("c_macaddr", "macaddr", ["'08:00:2b:01:02:03'"]),
    ("c_macaddr8", "macaddr8", ["'08:00:2b:01:02:03:04:05'"]),
    ("c_bit", "bit(3)", ["B'101'"]),
    ("c_varbit", "bit varying", ["B''", "B'1'"]),
    ("c_tsvector", "tsvector", ["'a fat cat:3A'"]),
    ("c_tsquery", "tsquery", ["'fat & (rat | cat)'"]),
    ("c_point", "point", ["'(1,2)'"]),
    ("c_line", "line", ["'{1,2,3}'"]),
    ("c_lseg", "lseg", ["'[(1,2),(3,4)]'"]),
    ("c_box", "box", ["'(1,2),(3,4)'"]),
    ("c_path", "path", ["'[(1,2),(3,4)]'"]),
    ("c_polygon", "polygon", ["'((1,2),(3,4),(5,6))'"]),
    ("c_circle", "circle", ["'<(1,2),3>'"]),
    ("c_pg_lsn", "pg_lsn", ["'16/B374D848'"]),
    ("c_xid", "xid", ["'4294967295'"]),
    ("c_xid8", "xid8", ["'18446744073709551615'"]),
    ("c_cid", "cid", ["'7'"]),
    ("c_tid", "tid", ["'(4294967295,65535)'"]),
    ("c_txid_snapshot", "txid_snapshot", ["'10:20:10,14,15'"]),
    ("c_pg_snapshot", "pg_snapshot", ["'10:20:10,14,15'"]),
    ("c_jsonpath", "jsonpath", ["'$.a[*] ? (@ > 1)'"]),
    ("c_regclass", "regclass", ["'pg_class'"]),
    ("c_regtype", "regtype", ["'integer'"]),
    ("c_regproc", "regproc", ["'now'"]),
    ("c_regprocedure", "regprocedure", ["'abs(integer)'"]),
    ("c_regoper", "regoper", ["'||/'"]),
    ("c_regoperator", "regoperator", ["'+(integer,integer)'"]),
    ("c_regnamespace", "regnamespace", ["'pg_catalog'"]),
    ("c_regrole", "regrole", ["'pg_monitor'"]),
    ("c_regconfig", "regconfig", ["'english'"]),
    ("c_regdictionary", "regdictionary", ["'simple'"]),
    ("c_regcollation", "regcollation", ["'\"C\"'"]),
    ("c_int4range", "int4range", ["'[1,5)'", "'empty'"]),
    ("c_numrange", "numrange", ["'(,1.50]'"]),
    ("c_tstzrange", "tstzrange", ["'[2024-01-01 00:00:00+00,infinity)'"]),
    ("c_daterange", "daterange", ["'[2024-01-01,2024-02-01)'"]),
    ("c_multirange", "int4multirange", ["'{[1,3),[5,7)}'", "'{}'"]),
    ("c_hstore", "hstore", ["'a=>1, \"b c\"=>NULL'"]),
    ("c_ltree", "ltree", ["'top.sci.astro'"]),
]  # fmt: skip

SNAPSHOT_ROWS = 5
STREAMED_IDS = range(101, 101 + SNAPSHOT_ROWS)
LAST_ID = 200
_EXTENSIONS = ("citext", "hstore", "ltree")


def _type(type_text: str, table: str) -> sql.Composable:
    # The test's own type texts (and a table name from `unique_name`), never outside input.
    return sql.SQL(type_text.replace("{t}", table))  # type: ignore[arg-type]


def _value(literal: str, type_sql: sql.Composable) -> sql.Composable:
    return sql.SQL("({})::{}").format(sql.SQL(literal), type_sql)  # type: ignore[arg-type]


def _array(literals: list[str], variant: int, type_sql: sql.Composable) -> sql.Composable:
    """Five array shapes: every value plus a NULL element, empty, NULL element first, NULL, one value."""
    array_type = sql.SQL("{}[]").format(type_sql)
    values = [_value(v, type_sql) for v in literals]
    null = sql.SQL("NULL")
    if variant == 0:
        items = [*values, null]
    elif variant == 1:
        items = []
    elif variant == 2:
        items = [null, values[-1]]
    elif variant == 3:
        return sql.SQL("NULL::{}").format(array_type)
    else:
        items = [values[variant % len(values)]]
    return sql.SQL("ARRAY[{}]::{}").format(sql.SQL(", ").join(items), array_type)


def _row(table: str, row_id: int, index: int) -> sql.Composable:
    """An INSERT of row `row_id` holding each column's value number `index` and array shape `index`."""
    names: list[sql.Composable] = [sql.Identifier("id")]
    values: list[sql.Composable] = [sql.Literal(row_id)]
    for column, type_text, literals in COLUMNS:
        type_sql = _type(type_text, table)
        names += [sql.Identifier(column), sql.Identifier(f"a_{column}")]
        scalar = _value(literals[index], type_sql) if index < len(literals) else sql.SQL("NULL")
        values += [scalar, _array(literals, index % 5, type_sql)]
    return sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        sql.Identifier(table), sql.SQL(", ").join(names), sql.SQL(", ").join(values)
    )


def _column_names() -> list[str]:
    return [name for column, _, _ in COLUMNS for name in (column, f"a_{column}")]


# What `schema_style: debezium` cannot carry (docs/event-format.md, Debezium compatibility), as the SQL expression
# of the value the destination then holds, computed from the source column `{c}` (`{e}`: an array's element).
_NAN_TO_NULL = "CASE WHEN {e} IN ('NaN', 'Infinity', '-Infinity') THEN NULL ELSE {e} END"
_IN_UTC = "{e} AT TIME ZONE 'UTC'"
_NO_LEADING_ZEROS = "CASE WHEN {e} IS NOT NULL THEN coalesce(nullif(ltrim({e}::text, '0'), ''), '0')::varbit END"
# MicroDuration: Debezium's double arithmetic (a month is 30.4375 days, fractional seconds as whole + micros / 1e6),
# truncated and saturated like Java's (long) cast; the sink writes whole days and the rest.
_SECONDS = "extract(second from {e})"
_MICROS = (
    "((((extract(year from {e})::float8 * 12 + extract(month from {e})::float8) * 30.4375"
    " + extract(day from {e})::float8) * 24 + extract(hour from {e})::float8) * 60"
    " + extract(minute from {e})::float8) * 60"
    f" + trunc({_SECONDS})::float8 + (({_SECONDS} - trunc({_SECONDS})) * 1000000)::float8 / 1000000"
)
_MICRO_DURATION = (
    "CASE WHEN {e} IS NOT NULL THEN (SELECT make_interval(days => floor(m / 86400000000)::int,"
    " secs => (m - floor(m / 86400000000) * 86400000000) / 1000000.0)"
    " FROM (SELECT (CASE WHEN f >= 9223372036854775807::float8 THEN 9223372036854775807"
    " WHEN f <= -9223372036854775808::float8 THEN -9223372036854775808"
    f" ELSE trunc(f)::bigint END)::numeric AS m FROM (SELECT ({_MICROS}) * 1000000 AS f) AS a) AS b) END"
)
DEBEZIUM_LOSSY: dict[str, tuple[str, str]] = {
    "c_numeric_ps": (_NAN_TO_NULL, "numeric NaN is null (Debezium's Connect Decimal has no NaN)"),
    "c_numeric": (_NAN_TO_NULL, "numeric NaN and ±Infinity are null (as Debezium writes them)"),
    "c_timetz": (_IN_UTC, "time with time zone arrives in UTC (ZonedTime keeps no offset)"),
    "c_timetz_extreme": (_IN_UTC, "time with time zone arrives in UTC (ZonedTime keeps no offset)"),
    "c_varbit": (_NO_LEADING_ZEROS, "bit varying without a length loses leading zero bits (Bits without a width)"),
    "c_interval": (_MICRO_DURATION, "interval as MicroDuration: 30.4375-day months, saturating beyond ±292k years"),
    "c_interval_more": (_MICRO_DURATION, "interval as MicroDuration (as c_interval)"),
    "c_interval_extreme": (_MICRO_DURATION, "interval as MicroDuration (as c_interval)"),
}


def _expected(name: str, lossy: dict[str, tuple[str, str]]) -> sql.Composable:
    """The select-list expression of column `name` as the destination should print it."""
    scalar = name.removeprefix("a_")
    if scalar not in lossy:
        return output_text(name)
    template = lossy[scalar][0]
    ident = sql.Identifier(name)
    if name == scalar:
        expression = sql.SQL(template.format(e="{c}")).format(c=ident)
    else:
        element = sql.SQL(template.format(e="e")).format()
        expression = sql.SQL(
            "CASE WHEN {c} IS NOT NULL THEN ARRAY(SELECT {x} FROM unnest({c}) WITH ORDINALITY u(e, i) ORDER BY i) END"
        ).format(c=ident, x=element)
    return sql.SQL("CASE WHEN num_nonnulls(v) = 1 THEN concat(v) END FROM (SELECT {} AS v) AS x").format(expression)


def _read(
    dsn: str, table: str, lossy: dict[str, tuple[str, str]] | None = None
) -> dict[int, tuple[str | None, ...]] | None:
    """Every row by id, each column as its output function prints it (None for NULL); None if no table yet.
    `lossy`: columns read as the destination must hold them (`DEBEZIUM_LOSSY`)."""
    expressions = [
        output_text(name) if not lossy or name.removeprefix("a_") not in lossy
        else sql.SQL("(SELECT {})").format(_expected(name, lossy))
        for name in _column_names()
    ]  # fmt: skip
    query = sql.SQL("SELECT id, {} FROM {} ORDER BY id").format(sql.SQL(", ").join(expressions), sql.Identifier(table))
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name, value in {**SESSION_SETTINGS, "TimeZone": "UTC"}.items():
            conn.execute(sql.SQL("SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
        try:
            rows = conn.execute(query).fetchall()
        except psycopg.errors.UndefinedTable:
            return None
    return {int(row[0]): tuple(row[1:]) for row in rows}


def _differences(source: dict[int, tuple[Any, ...]], target: dict[int, tuple[Any, ...]] | None) -> list[str]:
    if target is None:
        return ["the destination table does not exist"]
    out = []
    if sorted(source) != sorted(target):
        out.append(f"row ids differ: source {sorted(source)}, destination {sorted(target)}")
    names = _column_names()
    for row_id in sorted(source.keys() & target.keys()):
        for name, want, have in zip(names, source[row_id], target[row_id], strict=True):
            if want != have:
                out.append(f"id {row_id} column {name}: source {want!r}, destination {have!r}")
    return out


def _assert_destination_equals_source(
    stack: Stack, table: str, process: Any, log_path: Path, when: str, timeout: float = 90,
    lossy: dict[str, tuple[str, str]] | None = None,
) -> None:
    """Poll until the destination equals the source (with `lossy`'s named exceptions); on timeout (or if the
    connector dies) fail with every differing value and the end of the connector's log."""
    source = _read(stack.source_dsn, table, lossy)
    assert source is not None
    deadline = time.monotonic() + timeout
    while True:
        problems = _differences(source, _read(stack.target_dsn, table))
        if not problems:
            return
        if process.poll() is not None or time.monotonic() > deadline:
            log = log_path.read_text(errors="replace").splitlines()[-15:]
            state = f"exited with {process.returncode}" if process.poll() is not None else "still running"
            pytest.fail(
                f"{when}: the destination differs from the source ({len(problems)} values; connector {state}):\n"
                + "\n".join(problems[:60])
                + "\n--- connector log (last lines) ---\n"
                + "\n".join(log),
                pytrace=False,
            )
        time.sleep(0.5)


@pytest.mark.parametrize("style", ["avro_native", "debezium"])
def test_every_type_and_its_array_arrive_equal_after_snapshot_and_streaming(
    stack: Stack, unique_name: Callable[[str], str], tmp_path: Path, style: str
) -> None:
    """`avro_native`: every value exactly. `debezium`: every value exactly but for `DEBEZIUM_LOSSY`."""
    lossy = DEBEZIUM_LOSSY if style == "debezium" else None
    name, table = unique_name("types"), unique_name("types")
    t = sql.Identifier(table)
    types = [sql.Identifier(f"{table}_{suffix}") for suffix in ("mood", "amount", "pair")]
    with psycopg.connect(stack.source_dsn, autocommit=True) as conn:
        for extension in _EXTENSIONS:
            with contextlib.suppress(psycopg.errors.UniqueViolation):  # created concurrently elsewhere
                conn.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(extension)))
        conn.execute(sql.SQL("CREATE TYPE {} AS ENUM ('ok', 'a ''quoted'', label', 'NULL')").format(types[0]))
        conn.execute(sql.SQL("CREATE DOMAIN {} AS numeric(8,2) CHECK (VALUE > -100)").format(types[1]))
        conn.execute(sql.SQL("CREATE TYPE {} AS (n integer, s text)").format(types[2]))
        definitions = [sql.SQL("id integer PRIMARY KEY")]
        for column, type_text, _ in COLUMNS:
            type_sql = _type(type_text, table)
            definitions.append(sql.SQL("{} {}").format(sql.Identifier(column), type_sql))
            definitions.append(sql.SQL("{} {}[]").format(sql.Identifier(f"a_{column}"), type_sql))
        conn.execute(sql.SQL("CREATE TABLE {} ({})").format(t, sql.SQL(", ").join(definitions)))
        for index in range(SNAPSHOT_ROWS):
            conn.execute(_row(table, index + 1, index))
    port = free_port()
    config_path, log_path = tmp_path / "connector.yaml", tmp_path / "cdc.log"
    write_config(config_path, name, table, port)
    config = json.loads(config_path.read_text())
    config["source"]["schema_style"] = style
    config_path.write_text(json.dumps(config))
    process = start_connector(config_path, stack, log_path)
    try:
        wait_until(lambda: http_get(port, "/readyz")[0] == 200, 90, "/readyz", process)
        _assert_destination_equals_source(stack, table, process, log_path, "after the snapshot", lossy=lossy)

        columns = sql.SQL(", ").join(sql.Identifier(n) for n in _column_names())
        with psycopg.connect(stack.source_dsn, autocommit=True) as conn:
            # Inserts: the values shifted by one row, so each meets another array shape.
            for offset, row_id in enumerate(STREAMED_IDS):
                conn.execute(_row(table, row_id, (offset + 1) % SNAPSHOT_ROWS))
            # Updates of every column of every snapshot row (rotated values), in one transaction.
            with conn.transaction():
                conn.execute(
                    sql.SQL(
                        "UPDATE {t} SET ({c}) = (SELECT {c} FROM {t} s WHERE s.id = {t}.id % {n} + 1) WHERE id <= {n}"
                    ).format(t=t, c=columns, n=sql.Literal(SNAPSHOT_ROWS))
                )
            # Updates that leave the out-of-line (TOASTed) values unchanged, which are then not sent again:
            # of committed rows, and of a row inserted in the same transaction.
            conn.execute(sql.SQL("UPDATE {} SET c_int2 = 7 WHERE c_big_text IS NOT NULL").format(t))
            with conn.transaction():
                conn.execute(_row(table, LAST_ID, 0))
                conn.execute(sql.SQL("UPDATE {} SET c_int4 = 7 WHERE id = {}").format(t, sql.Literal(LAST_ID)))
        _assert_destination_equals_source(
            stack, table, process, log_path, "after streamed inserts and updates", lossy=lossy
        )
    finally:
        stop_connector(process)
        drop_replication_state(stack.source_dsn, name, name)
        drop_tables(stack.source_dsn, t)
        drop_tables(stack.target_dsn, t)
        with psycopg.connect(stack.source_dsn, autocommit=True) as conn:
            for type_ident in types:
                conn.execute(sql.SQL("DROP TYPE IF EXISTS {} CASCADE").format(type_ident))

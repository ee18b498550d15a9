"""Our source writes, Debezium's JDBC sink reads (issue 12, proof 2).

A source table is captured by our source (`cdc run` with a `source` section only): a snapshot of some rows, then
streamed inserts, updates, deletes and an update of the primary key. Debezium's JDBC sink connector
(`io.debezium.connector.jdbc.JdbcSinkConnector`, configured as `devstack.connect.jdbc_sink_settings` does: upsert
by record key, deletes applied, tables created from the records' schemas) applies our topic to a database of its
own, created for the test. The destination must then equal the source.

Compared by the values PostgreSQL prints: every column through its type's output function
(`schemas.types.output_text`) under the same session settings on both sides, row by row, so that a difference
names its row and column. What the JDBC sink itself does differently (the column types it chooses when it creates
the table, values an encoding of Debezium's cannot carry) is listed per column (`Column.destination_type`,
`Column.destination_texts`, `Column.why`) and checked too: nothing else may differ.

Three tests: `BASIC`, the types whose encoding Kafka Connect's Avro converter and the JDBC sink read in every
`schema_style`; `EVERY_TYPE`, a column of each type in docs/types.md that Debezium's encoding and the JDBC sink
can hold (what the default `schema_style: debezium` must deliver); and `EVERY_TYPE` written by Debezium's own
PostgreSQL connector, the reference showing that each documented difference is the JDBC sink's, not ours.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psycopg
import pytest
from psycopg import sql

from devstack.connect import (
    ConnectInstall,
    ConnectWorker,
    drop_slot_and_publication,
    jdbc_sink_settings,
    postgres_source_settings,
    start_jdbc_sink,
    wait_for_rows,
)
from schemas.types import SESSION_SETTINGS, output_text
from tests.integration.debezium.conftest import StartWorker
from tests.integration.pipeline_support import (
    drop_replication_state,
    drop_tables,
    free_port,
    start_connector,
    stop_connector,
    wait_until,
)
from tests.support.connect import scratch_database
from tests.support.helpers import http_get, pg_connect
from tests.support.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclass(frozen=True)
class Column:
    """A source column, its values, and what Debezium's JDBC sink makes of it where that differs from the source."""

    name: str
    source_type: str
    """DDL of the source column (`{t}`: the table's name, for the types the test creates)."""
    literals: tuple[str, ...]
    """SQL values: snapshot row `i` gets value `i`, later rows NULL (so every column is NULL in some row)."""
    destination_type: str | None = None
    """The column type the JDBC sink creates, as `format_type` prints it; None: the source's own type."""
    destination_texts: tuple[str, ...] | None = None
    """What the destination prints for each of `literals`, where it is not what the source prints."""
    why: str = ""
    """Why the destination differs (required with either of the two fields above)."""


BASIC: tuple[Column, ...] = (
    Column("c_int4", "integer", ("-2147483648", "2147483647", "0")),
    Column("c_int8", "bigint", ("-9223372036854775808", "9223372036854775807")),
    Column("c_text", "text", (r"E'caf\u00e9 \U0001F600 q\"uote \\ {a,b}'", "''", "'NULL'")),
    Column("c_varchar", "character varying(20)", ("'abc'", "''"), destination_type="text",
           why="Connect's STRING carries no length; the JDBC sink creates text (Debezium's own events carry it only"
               " with `column.propagate.source.type`)"),
    Column("c_bool", "boolean", ("true", "false")),
    Column("c_bytea", "bytea", (r"'\x00ff005c22'::bytea", "''::bytea")),
)  # fmt: skip

_TEXT = "text"
"""What the JDBC sink creates for a plain Connect STRING: the string types, and every type Debezium sends as text."""

EVERY_TYPE: tuple[Column, ...] = (
    Column("c_int2", "smallint", ("-32768", "32767", "0")),
    Column("c_int4", "integer", ("-2147483648", "2147483647")),
    Column("c_int8", "bigint", ("-9223372036854775808", "9223372036854775807")),
    Column("c_oid", "oid", ("0", "4294967295"), destination_type="bigint",
           why="oid is unsigned 32-bit: an INT64 field"),
    Column("c_real", "real", ("1.5e-30", "-0.25")),
    Column("c_float8", "double precision", ("0.1", "-1.7976931348623157e308")),
    Column("c_numeric_ps", "numeric(10,2)", ("12345678.90", "-0.01", "0.00")),
    Column("c_numeric", "numeric", ("-3.14159265358979323846264338327950288419716939", "1e-20", "1234500"),
           destination_type="double precision", destination_texts=("-3.141592653589793", "1e-20", "1234500"),
           why="the JDBC sink writes VariableScaleDecimal into a double precision column: ~15 significant digits"),
    Column("c_bool", "boolean", ("true", "false")),
    Column("c_text", "text", (r"E'caf\u00e9 \u2028 \U0001F600 zw\u200dj'", "''", "'NULL'")),
    Column("c_varchar", "character varying(20)", ("'abc'", "''"), destination_type=_TEXT,
           why="Connect's STRING carries no length (Debezium sends it only with `column.propagate.source.type`)"),
    Column("c_bpchar", "character(4)", ("'ab'",), destination_type=_TEXT,
           why="as varchar; the padded value arrives padded"),
    Column("c_name", "name", ("'pg_class'",), destination_type=_TEXT, why="a STRING"),
    Column("c_char", '"char"', ("'x'",), destination_type=_TEXT, why="a STRING"),
    Column("c_bytea", "bytea", (r"'\x00ff005c22'::bytea", "''::bytea")),
    Column("c_uuid", "uuid", ("'6ba7b810-9dad-11d1-80b4-00c04fd430c8'",)),
    Column("c_date", "date", ("'2024-02-29'", "'1969-12-31'", "'0001-01-01'")),
    Column("c_time", "time", ("'23:59:59.999999'", "'00:00:00'"), destination_type="time(6) without time zone",
           why="MicroTime: the JDBC sink creates time(6)"),
    Column("c_time3", "time(3)", ("'04:05:06.789'",), destination_type="time(6) without time zone",
           why="Time (milliseconds): the JDBC sink creates time(6) for every time without a propagated length"),
    Column("c_timetz", "time with time zone", ("'04:05:06.789+05:30'",),
           destination_type="time(6) with time zone", destination_texts=("22:35:06.789+00",),
           why="ZonedTime is the time in UTC: the source's offset is not sent"),
    Column("c_ts", "timestamp", ("'2024-01-02 03:04:05.123456'", "'1969-12-31 23:59:59.5'"),
           destination_type="timestamp(6) without time zone", why="MicroTimestamp: the JDBC sink creates timestamp(6)"),
    Column("c_ts3", "timestamp(3)", ("'2024-01-02 03:04:05.123'",),
           destination_type="timestamp(6) without time zone", why="Timestamp (milliseconds): as time(3)"),
    Column("c_tstz", "timestamp with time zone", ("'2024-01-02 03:04:05.123456+05:30'", "'1800-01-01 00:00:00+00'"),
           destination_type="timestamp(6) with time zone", why="ZonedTimestamp: the JDBC sink creates timestamptz(6)"),
    Column("c_interval", "interval", ("'3 days 04:05:06.789'", "'-00:00:00.000001'"),
           destination_texts=("76:05:06.789", "-00:00:00.000001"),
           why="MicroDuration is microseconds: days come back as hours (and a month as 30.4375 days)"),
    Column("c_json", "json", ("'{\"b\": 1,  \"é\": \"\\u00e9 ☃\"}'", "'[]'")),
    Column("c_jsonb", "jsonb", ("'{\"b\": 1, \"a\": [1, 2, null]}'", "'null'"), destination_type="json",
           why="io.debezium.data.Json says json; jsonb's normalised text arrives as printed"),
    Column("c_xml", "xml", ("'<a b=\"é\">x &amp; y</a>'",)),
    Column("c_enum", "{t}_mood", ("'ok'", "'a ''quoted'', label'"), destination_type=_TEXT,
           why="io.debezium.data.Enum: the label as text"),
    Column("c_domain", "{t}_amount", ("42.50", "-0.01"), destination_type="numeric(8,2)",
           why="a domain arrives as its base type"),
    Column("c_money", "money", ("12.5", "-1234567.89"), destination_type="numeric(38,2)",
           destination_texts=("12.50", "-1234567.89"), why="Debezium sends money as a decimal of scale 2"),
    Column("c_inet", "inet", ("'192.168.0.1/24'", "'::1'"), destination_type=_TEXT, why="a STRING"),
    Column("c_cidr", "cidr", ("'10.0.0.0/8'",), destination_type=_TEXT, why="a STRING"),
    Column("c_macaddr", "macaddr", ("'08:00:2b:01:02:03'",), destination_type=_TEXT, why="a STRING"),
    Column("c_macaddr8", "macaddr8", ("'08:00:2b:01:02:03:04:05'",), destination_type=_TEXT, why="a STRING"),
    Column("c_int4range", "int4range", ("'[1,5)'", "'empty'"), destination_type=_TEXT, why="a STRING"),
    Column("c_numrange", "numrange", ("'(,1.50]'",), destination_type=_TEXT, why="a STRING"),
    Column("c_tstzrange", "tstzrange", ("'[2024-01-01 00:00:00+00,2024-02-01 00:00:00+00)'",),
           destination_type=_TEXT, why="a STRING"),
    Column("c_daterange", "daterange", ("'[2024-01-01,2024-02-01)'",), destination_type=_TEXT, why="a STRING"),
    Column("c_int_array", "integer[]", ("'{1,NULL,3}'", "'{}'")),
    Column("c_text_array", "text[]", ("'{a,\"b c\",NULL}'",)),
)  # fmt: skip
"""Every type of docs/types.md that Debezium's PostgreSQL encoding and its JDBC sink hold, with ordinary values.

The documented differences are what Debezium's own connector gives through the same sink (the last test checks
them so). Not in this table: numeric NaN / ±Infinity and timestamp ±infinity (Debezium's precise decimals and time
types have no such values), `point` (a geometry struct: PostGIS in the destination), and the types whose Debezium
encoding is not yet checked here against the JDBC sink (`bit(n)`, `hstore`, `ltree`, `tsvector`, `tsquery`,
`reg*`, `pg_lsn`, `xid`, `tid`, snapshots, `jsonpath`, multiranges, composites)."""

NOT_STREAMED_BY_DEBEZIUM = {
    "c_name": "Debezium 3.6's PostgreSQL connector reads `name` in its snapshot but streams it as null"
}
"""Columns Debezium's own connector cannot deliver, left out of the reference run only."""

_ENUM_LABELS = ("ok", "a 'quoted', label")
SNAPSHOT_ROWS = 4
"""Snapshot rows 1..4: row `i` holds each column's value `i` (NULL beyond a column's values); row 4 is all NULL
where no column has four values."""


def _type_sql(text: str, table: str) -> sql.Composable:
    # The test's own type texts and a table name from `unique_name`, never outside input.
    return sql.SQL(text.replace("{t}", table))  # type: ignore[arg-type]


def _insert(table: str, columns: tuple[Column, ...], row_id: int, index: int) -> sql.Composable:
    names = [sql.Identifier("id"), *(sql.Identifier(c.name) for c in columns)]
    values: list[sql.Composable] = [sql.Literal(row_id)]
    for column in columns:
        literal = column.literals[index] if index < len(column.literals) else "NULL"
        values.append(sql.SQL("({})::{}").format(sql.SQL(literal), _type_sql(column.source_type, table)))  # type: ignore[arg-type]
    return sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        sql.Identifier(table), sql.SQL(", ").join(names), sql.SQL(", ").join(values)
    )


def _read(conn: psycopg.Connection[Any], table: str, names: list[str]) -> dict[int, tuple[str | None, ...]] | None:
    """Every row by id, each column as its output function prints it; None while the table does not exist."""
    query = sql.SQL("SELECT id, {} FROM {} ORDER BY id").format(
        sql.SQL(", ").join(output_text(name) for name in names), sql.Identifier(table)
    )
    try:
        rows = conn.execute(query).fetchall()
    except psycopg.errors.UndefinedTable:
        return None
    return {int(row[0]): tuple(row[1:]) for row in rows}


def _session(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    for name, value in {**SESSION_SETTINGS, "TimeZone": "UTC"}.items():
        conn.execute(sql.SQL("SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
    return conn


def _expected(
    source: dict[int, tuple[str | None, ...]], columns: tuple[Column, ...], printed: dict[str, dict[str, str]]
) -> dict[int, tuple[str | None, ...]]:
    """The source rows with each documented value difference applied (`printed`: column -> source -> destination)."""
    return {
        row_id: tuple(printed.get(c.name, {}).get(value, value) if value is not None else None
                      for c, value in zip(columns, values, strict=True))
        for row_id, values in source.items()
    }  # fmt: skip


def _differences(
    expected: dict[int, tuple[Any, ...]], applied: dict[int, tuple[Any, ...]] | None, names: list[str]
) -> list[str]:
    if applied is None:
        return ["the destination table does not exist yet"]
    out = []
    if sorted(expected) != sorted(applied):
        out.append(f"row ids differ: expected {sorted(expected)}, destination {sorted(applied)}")
    for row_id in sorted(expected.keys() & applied.keys()):
        for name, want, have in zip(names, expected[row_id], applied[row_id], strict=True):
            if want != have:
                out.append(f"id {row_id} column {name}: expected {want!r}, destination {have!r}")
    return out


def _wait_equal(
    worker: ConnectWorker,
    source_dsn: str,
    destination_dsn: str,
    table: str,
    columns: tuple[Column, ...],
    printed: dict[str, dict[str, str]],
    when: str,
    timeout: float = 180.0,
) -> None:
    """Poll until the destination equals the source (with the documented differences); fail at once if the JDBC
    sink's task died, else at the deadline, with every differing value."""
    names = [c.name for c in columns]
    with pg_connect(source_dsn) as conn:
        source = _read(_session(conn), table, names)
    assert source is not None
    expected = _expected(source, columns, printed)
    deadline = time.monotonic() + timeout
    with pg_connect(destination_dsn) as conn:
        _session(conn)
        while True:
            problems = _differences(expected, _read(conn, table, names), names)
            if not problems:
                return
            failed = worker.failure()
            if failed is not None or time.monotonic() > deadline:
                log = worker.log.read_text(errors="replace").splitlines() if worker.log.exists() else []
                errors = [line for line in log if "Exception" in line or "ERROR" in line][-12:]
                pytest.fail(
                    f"{when}: the destination differs from the source ({len(problems)} values;"
                    f" {failed or 'the JDBC sink still runs'}):\n"
                    + "\n".join(problems[:60])
                    + "\n--- errors in the Connect log ---\n"
                    + "\n".join(errors),
                    pytrace=False,
                )
            time.sleep(0.5)


def _source_config(path: Path, name: str, table: str, port: int) -> None:
    """`cdc run` with a source only: the JDBC sink is the one reading the topic."""
    config = {
        "name": name,
        "kafka": {"bootstrap_servers": "${CDC_KAFKA_BOOTSTRAP}"},
        "schema_registry": {"url": "${CDC_SCHEMA_REGISTRY_URL}"},
        "source": {
            "dsn": "${CDC_SOURCE_DSN}",
            "topic_prefix": name,
            "slot": {"name": name},
            "publication": {"name": name},
            "tables": {"include": [f"public.{table}"]},
            "snapshot": {"mode": "initial"},
            "heartbeat": {"interval_s": 1},
            "status_interval_s": 1,
        },
        "server": {"port": port},
    }
    path.write_text(json.dumps(config))  # JSON is YAML


@contextmanager
def _source_table(dsn: str, table: str, columns: tuple[Column, ...]) -> Iterator[None]:
    """The source table (with the enum and domain types some columns use), dropped with them on leaving."""
    types = [sql.Identifier(f"{table}_{suffix}") for suffix in ("mood", "amount")]
    with pg_connect(dsn) as conn:
        conn.execute(
            sql.SQL("CREATE TYPE {} AS ENUM ({})").format(
                types[0], sql.SQL(", ").join(sql.Literal(label) for label in _ENUM_LABELS)
            )
        )
        conn.execute(sql.SQL("CREATE DOMAIN {} AS numeric(8,2) CHECK (VALUE > -100)").format(types[1]))
        definitions = [sql.SQL("id integer PRIMARY KEY")] + [
            sql.SQL("{} {}").format(sql.Identifier(c.name), _type_sql(c.source_type, table)) for c in columns
        ]
        conn.execute(sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(table), sql.SQL(", ").join(definitions)))
    try:
        yield
    finally:
        drop_tables(dsn, sql.Identifier(table))
        with pg_connect(dsn) as conn:
            for type_ident in types:
                conn.execute(sql.SQL("DROP TYPE IF EXISTS {} CASCADE").format(type_ident))


def _printed_differences(dsn: str, table: str, columns: tuple[Column, ...]) -> dict[str, dict[str, str]]:
    """Column -> {what the source prints: what the destination prints} for each documented value difference."""
    out: dict[str, dict[str, str]] = {}
    with pg_connect(dsn) as conn:
        _session(conn)
        for column in columns:
            if column.destination_texts is None:
                continue
            assert column.why, f"{column.name}: a documented difference needs its reason"
            type_sql = _type_sql(column.source_type, table)
            # `concat` calls the type's output function, as `output_text` does for a column.
            texts = [
                conn.execute(sql.SQL("SELECT concat(({})::{})").format(sql.SQL(literal), type_sql)).fetchone()  # type: ignore[arg-type]
                for literal in column.literals
            ]
            out[column.name] = {
                str(text[0]): printed
                for text, printed in zip(texts, column.destination_texts, strict=True)
                if text is not None
            }
    return out


def _destination_types(dsn: str, table: str) -> dict[str, str]:
    with pg_connect(dsn) as conn:
        rows = conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            (table,),
        ).fetchall()
    return {str(name): str(kind) for name, kind in rows}


def _run(
    stack: Stack,
    unique_name: Callable[[str], str],
    connect_worker: StartWorker,
    connect_install: ConnectInstall,
    tmp_path: Path,
    columns: tuple[Column, ...],
    *,
    writer: Literal["ours", "debezium"] = "ours",
) -> None:
    """Capture a table of `columns` with `writer`'s source, apply it with the JDBC sink, compare (see the top)."""
    undocumented = [c.name for c in columns if (c.destination_type or c.destination_texts) and not c.why]
    assert not undocumented, f"a difference without its reason: {undocumented}"
    name, table = unique_name("jdbcsink"), unique_name("jdbcsink")
    topic = f"{name}.public.{table}"
    slot, publication = unique_name("jdbcsink_slot"), unique_name("jdbcsink_pub")
    process = None
    worker: ConnectWorker | None = None
    with _source_table(stack.source_dsn, table, columns), scratch_database(stack.target_dsn, table) as destination:
        with pg_connect(stack.source_dsn) as conn:
            for index in range(SNAPSHOT_ROWS):
                conn.execute(_insert(table, columns, index + 1, index))
        printed = _printed_differences(stack.source_dsn, table, columns)
        try:
            if writer == "ours":
                port = free_port()
                config_path, log_path = tmp_path / "source.yaml", tmp_path / "cdc.log"
                _source_config(config_path, name, table, port)
                process = start_connector(config_path, stack, log_path)
                wait_until(lambda: http_get(port, "/readyz")[0] == 200, 90, "/readyz", process)
                # As a benchmark starts it (`start_jdbc_sink`), stopped below.
                worker = start_jdbc_sink(
                    connect_install, tmp_path / "jdbc-sink", bootstrap=stack.kafka_bootstrap,
                    registry_url=stack.registry_url, dsn=destination, topics=[topic], name=name,
                )  # fmt: skip
            else:
                source = postgres_source_settings(
                    stack.source_dsn, stack.registry_url, topic_prefix=name, tables=[f"public.{table}"],
                    slot=slot, publication=publication,
                )  # fmt: skip
                sink = jdbc_sink_settings(destination, stack.registry_url, topics=[topic])
                worker = connect_worker({f"{name}_source": source, name: sink})
            # What a benchmark waits with; it fails at once, with the Connect log, should the sink's task die.
            wait_for_rows(worker, destination, sql.Identifier(table), SNAPSHOT_ROWS, timeout=180)
            _wait_equal(worker, stack.source_dsn, destination, table, columns, printed, "after the snapshot")

            items = sql.Identifier(table)
            with pg_connect(stack.source_dsn) as conn:
                conn.execute(_insert(table, columns, 11, 1))  # a streamed insert
                with conn.transaction():  # updates of every column (values rotated), an insert and a delete
                    conn.execute(
                        sql.SQL(
                            "UPDATE {t} SET ({c}) = (SELECT {c} FROM {t} s WHERE s.id = {t}.id % {n} + 1)"
                            " WHERE id <= {n}"
                        ).format(
                            t=items,
                            c=sql.SQL(", ").join(sql.Identifier(c.name) for c in columns),
                            n=sql.Literal(SNAPSHOT_ROWS),
                        )
                    )
                    conn.execute(_insert(table, columns, 12, 0))
                    conn.execute(sql.SQL("DELETE FROM {} WHERE id = 2").format(items))
                conn.execute(sql.SQL("UPDATE {} SET id = 13 WHERE id = 3").format(items))  # a key change
                conn.execute(sql.SQL("DELETE FROM {} WHERE id = 11").format(items))
            _wait_equal(worker, stack.source_dsn, destination, table, columns, printed, "after streamed changes")

            expected_types = {"id": "integer"} | {c.name: c.destination_type for c in columns if c.destination_type}
            with pg_connect(stack.source_dsn) as conn:
                source_types = {
                    c.name: str(row[0]) for c in columns
                    if (row := conn.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
                                            " WHERE attrelid = %s::regclass AND attname = %s",
                                            (table, c.name)).fetchone()) is not None
                }  # fmt: skip
            assert _destination_types(destination, table) == source_types | expected_types
        finally:
            if worker is not None:
                worker.stop()  # Debezium's slot is dropped only once nothing streams from it
            if process is not None:
                stop_connector(process)
                drop_replication_state(stack.source_dsn, name, name)
            if writer == "debezium":
                drop_slot_and_publication(stack.source_dsn, slot, publication)


def test_jdbc_sink_applies_our_topic_of_basic_types(
    stack: Stack,
    unique_name: Callable[[str], str],
    connect_worker: StartWorker,
    connect_install: ConnectInstall,
    tmp_path: Path,
) -> None:
    _run(stack, unique_name, connect_worker, connect_install, tmp_path, BASIC)


def test_jdbc_sink_applies_our_topic_of_every_type(
    stack: Stack,
    unique_name: Callable[[str], str],
    connect_worker: StartWorker,
    connect_install: ConnectInstall,
    tmp_path: Path,
) -> None:
    _run(stack, unique_name, connect_worker, connect_install, tmp_path, EVERY_TYPE)


def test_debeziums_own_source_through_the_jdbc_sink_gives_the_documented_destination(
    stack: Stack,
    unique_name: Callable[[str], str],
    connect_worker: StartWorker,
    connect_install: ConnectInstall,
    tmp_path: Path,
) -> None:
    """The reference for the test above: `EVERY_TYPE`'s documented differences are exactly what a Debezium user
    gets from Debezium's PostgreSQL connector (default settings) and the same JDBC sink."""
    columns = tuple(c for c in EVERY_TYPE if c.name not in NOT_STREAMED_BY_DEBEZIUM)
    _run(stack, unique_name, connect_worker, connect_install, tmp_path, columns, writer="debezium")

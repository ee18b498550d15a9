"""Schema changes mid-stream, end to end: `cdc run` (source and sink), DDL on the source under concurrent writes.

Each test is one kind of DDL. A writer thread keeps inserting and updating rows while the DDL runs; at the end the
destination must equal the source row by row (every source column, md5 of the ordered text) and the ledger must
hold exactly one entry per change the topics carry.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.integration.pipeline_support import (
    drop_replication_state,
    drop_tables,
    free_port,
    sink_section,
    source_section,
    start_connector,
    stop_connector,
    table_digest,
    wait_until,
)
from tests.support.helpers import http_get

pytestmark = pytest.mark.integration

ROWS = 1000


@dataclass
class Run:
    stack: Any
    name: str
    table: str
    process: Any
    config_path: Path
    log_path: Path

    def ddl(self, template: str, *, table: str | None = None) -> None:
        """A statement on the source with `{t}` standing for the table."""
        execute(self.stack.source_dsn, sql.SQL(template).format(t=sql.Identifier(table or self.table)))


def execute(dsn: str, query: sql.Composed, params: tuple[Any, ...] | None = None) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(query, params)


def columns_of(dsn: str, table: str) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped "
            "ORDER BY attnum",
            (f"public.{table}",),
        ).fetchall()
    return [str(r[0]) for r in rows if not str(r[0]).startswith("__cdc_")]


def assert_target_equals_source(run: Run, table: str | None = None, timeout: float = 120) -> None:
    table = table or run.table
    columns = columns_of(run.stack.source_dsn, table)

    def equal() -> bool:
        target_columns = columns_of(run.stack.target_dsn, table)
        if not target_columns or not set(columns) <= set(target_columns):
            return False
        target = table_digest(run.stack.target_dsn, "public", table, columns)
        return target == table_digest(run.stack.source_dsn, "public", table, columns)

    wait_until(equal, timeout, f"{table} in the destination to equal the source", run.process)


def assert_one_ledger_entry_per_change(run: Run) -> None:
    with psycopg.connect(run.stack.target_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT (change_id, destination)) FROM cdc.applied_changes WHERE topic LIKE %s",
            (f"{run.name}.%",),
        ).fetchone()
    assert row is not None and row[0] == row[1] and row[0] > ROWS


class Writer:
    """Light concurrent load on the table's `id` and `n` columns (the ones no test alters but widening)."""

    def __init__(self, dsn: str, table: str) -> None:
        self._dsn, self._table = dsn, table
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None
        self.next_id = ROWS + 1

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        t = sql.Identifier(self._table)
        try:
            with psycopg.connect(self._dsn, autocommit=True) as conn:
                while not self._stop.wait(0.05):
                    conn.execute(sql.SQL("INSERT INTO {} (id, n) VALUES (%s, %s)").format(t), (self.next_id, 1))
                    conn.execute(sql.SQL("UPDATE {} SET n = n + 1 WHERE id = %s").format(t), (self.next_id % ROWS + 1,))
                    self.next_id += 1
        except BaseException as exc:  # surfaced by the test
            self.error = exc


@contextmanager
def pipeline(
    stack: Any,
    unique_name: Callable[[str], str],
    tmp_path: Path,
    *,
    sink: dict[str, Any] | None = None,
    source: dict[str, Any] | None = None,
    extra_ddl: str = "",
) -> Iterator[Run]:
    name = unique_name("evo")
    table = f"{name}_t"
    t = sql.Identifier(table)
    execute(stack.source_dsn, sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, n int, a text, keep text)").format(t))
    execute(
        stack.source_dsn,
        sql.SQL("INSERT INTO {} SELECT g, g, 'a' || g, 'k' || g FROM generate_series(1, %s) g").format(t),
        (ROWS,),
    )
    port = free_port()
    config = {
        "name": name,
        "kafka": {"bootstrap_servers": "${CDC_KAFKA_BOOTSTRAP}"},
        "schema_registry": {"url": "${CDC_SCHEMA_REGISTRY_URL}"},
        "source": {
            **source_section(name, f"{name}_*"),
            "tables": {"include": [f"public.{name}_*"], "discovery_interval_s": 1},
            **(source or {}),
        },
        "sink": {**sink_section(name), **(sink or {})},
        "transforms": {"source": [], "sink": []},
        "server": {"port": port},
    }
    config_path, log_path = tmp_path / "connector.yaml", tmp_path / "cdc.log"
    config_path.write_text(json.dumps(config))
    process = start_connector(config_path, stack, log_path)
    run = Run(stack, name, table, process, config_path, log_path)
    try:
        wait_until(lambda: http_get(port, "/readyz")[0] == 200, 90, "/readyz", process)
        assert_target_equals_source(run)
        yield run
    finally:
        stop_connector(run.process)
        drop_replication_state(stack.source_dsn, name, name)
        with psycopg.connect(stack.source_dsn, autocommit=True) as conn:
            tables = conn.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE %s", (f"{name}_%",)).fetchall()
        drop_tables(stack.source_dsn, *(sql.Identifier(str(t[0])) for t in tables))
        drop_tables(stack.target_dsn, *(sql.Identifier(str(t[0])) for t in tables))


def restart(run: Run) -> None:
    stop_connector(run.process)
    run.process = start_connector(run.config_path, run.stack, run.log_path.with_suffix(".2.log"))


def settle(run: Run, writer: Writer) -> None:
    """Let the writer run on past the DDL, then check it never failed."""
    start = writer.next_id
    wait_until(lambda: writer.next_id > start + 20 or writer.error is not None, 30, "writes after the DDL", run.process)
    assert writer.error is None, writer.error


def test_add_column_with_a_default(stack: Any, unique_name: Any, tmp_path: Path) -> None:
    with pipeline(stack, unique_name, tmp_path) as run:
        with Writer(stack.source_dsn, run.table) as writer:
            run.ddl("ALTER TABLE {t} ADD COLUMN d text DEFAULT 'dflt'")
            settle(run, writer)
        assert_target_equals_source(run)
        with psycopg.connect(stack.target_dsn, autocommit=True) as conn:
            query = sql.SQL("SELECT count(*) FROM {} WHERE d = 'dflt'").format(sql.Identifier(run.table))
            row = conn.execute(query).fetchone()
        assert row is not None and row[0] >= ROWS
        assert_one_ledger_entry_per_change(run)


def test_widening_int_to_bigint(stack: Any, unique_name: Any, tmp_path: Path) -> None:
    with pipeline(stack, unique_name, tmp_path) as run:
        with Writer(stack.source_dsn, run.table) as writer:
            run.ddl("ALTER TABLE {t} ALTER COLUMN n TYPE bigint")
            run.ddl("UPDATE {t} SET n = 5000000000 WHERE id = 7")
            settle(run, writer)
        assert_target_equals_source(run)
        assert_one_ledger_entry_per_change(run)


@pytest.mark.parametrize("policy", ["drop", "keep_nullable"])
def test_drop_column(stack: Any, unique_name: Any, tmp_path: Path, policy: str) -> None:
    sink = {"schema_changes": {"on_column_dropped": policy}}
    with pipeline(stack, unique_name, tmp_path, sink=sink) as run:
        with Writer(stack.source_dsn, run.table) as writer:
            run.ddl("ALTER TABLE {t} DROP COLUMN a")
            settle(run, writer)
        assert_target_equals_source(run)
        assert ("a" in columns_of(stack.target_dsn, run.table)) == (policy == "keep_nullable")
        assert_one_ledger_entry_per_change(run)


def test_rename_column(stack: Any, unique_name: Any, tmp_path: Path) -> None:
    with pipeline(stack, unique_name, tmp_path) as run:
        with Writer(stack.source_dsn, run.table) as writer:
            run.ddl("ALTER TABLE {t} RENAME COLUMN keep TO kept")
            run.ddl("UPDATE {t} SET kept = 'renamed' WHERE id <= 10")
            settle(run, writer)
        assert_target_equals_source(run)
        target_columns = columns_of(stack.target_dsn, run.table)
        assert "kept" in target_columns and "keep" not in target_columns
        assert_one_ledger_entry_per_change(run)


def test_new_table_is_captured_with_its_earlier_rows(stack: Any, unique_name: Any, tmp_path: Path) -> None:
    with pipeline(stack, unique_name, tmp_path) as run:
        new = f"{run.name}_new"
        with Writer(stack.source_dsn, run.table) as writer:
            run.ddl("CREATE TABLE {t} (id bigint PRIMARY KEY, v text)", table=new)
            run.ddl("INSERT INTO {t} SELECT g, 'before ' || g FROM generate_series(1, 50) g", table=new)
            wait_until(lambda: columns_of(stack.target_dsn, new), 60, "the new table in the destination", run.process)
            run.ddl("INSERT INTO {t} SELECT g, 'after ' || g FROM generate_series(51, 60) g", table=new)
            run.ddl("UPDATE {t} SET v = 'changed' WHERE id % 5 = 0", table=new)
            run.ddl("DELETE FROM {t} WHERE id % 7 = 0", table=new)
            settle(run, writer)
        assert_target_equals_source(run, new)
        assert_target_equals_source(run)
        assert_one_ledger_entry_per_change(run)


def test_column_added_and_dropped_while_stopped(stack: Any, unique_name: Any, tmp_path: Path) -> None:
    # The stream still carries `x` for the insert in between: the source publishes it, the sink adds the column,
    # then drops it again when the next change no longer has it (the `drop` policy; `stop`, the default, would
    # stop the sink there and say so).
    sink = {"schema_changes": {"on_column_dropped": "drop"}}
    with pipeline(stack, unique_name, tmp_path, sink=sink) as run:
        stop_connector(run.process)
        run.ddl("ALTER TABLE {t} ADD COLUMN x int")
        run.ddl("INSERT INTO {t} (id, n, x) VALUES (100001, 1, 42)")
        run.ddl("ALTER TABLE {t} DROP COLUMN x")
        run.ddl("INSERT INTO {t} (id, n) VALUES (100002, 2)")
        restart(run)
        assert_target_equals_source(run)
        assert "x" not in columns_of(stack.target_dsn, run.table)
        assert_one_ledger_entry_per_change(run)


def test_keyless_new_table_is_skipped_and_the_application_keeps_writing(
    stack: Any, unique_name: Any, tmp_path: Path
) -> None:
    with pipeline(stack, unique_name, tmp_path) as run:
        keyless = f"{run.name}_nopk"
        run.ddl("CREATE TABLE {t} (v int)", table=keyless)
        run.ddl("INSERT INTO {t} VALUES (1)", table=keyless)
        restart(run)
        with Writer(stack.source_dsn, run.table) as writer:
            settle(run, writer)
            run.ddl("UPDATE {t} SET v = 2", table=keyless)  # our connector must never make this fail
            run.ddl("DELETE FROM {t}", table=keyless)
        assert_target_equals_source(run)
        assert_one_ledger_entry_per_change(run)


def test_partitioned_table_arrives_as_one_table(stack: Any, unique_name: Any, tmp_path: Path) -> None:
    with pipeline(stack, unique_name, tmp_path) as run:
        parted = f"{run.name}_parted"
        run.ddl("CREATE TABLE {t} (id bigint PRIMARY KEY, v text) PARTITION BY RANGE (id)", table=parted)
        for low in (0, 1000):
            part = f"{parted}_p{low}"
            template = f"CREATE TABLE {{t}} PARTITION OF {parted} FOR VALUES FROM ({low}) TO ({low + 1000})"
            run.ddl(template, table=part)
        run.ddl("INSERT INTO {t} SELECT g, 'v' || g FROM generate_series(1, 1500) g", table=parted)
        wait_until(lambda: columns_of(stack.target_dsn, parted), 60, "the partitioned table", run.process)
        run.ddl("UPDATE {t} SET v = 'changed' WHERE id % 3 = 0", table=parted)
        assert_target_equals_source(run, parted)

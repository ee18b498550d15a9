"""`cdc run --processes 2` on the real stack: the sink's child process lives and dies with `cdc run`.

A kill -9 of `cdc run` leaves no sink process behind (one would go on consuming beside the next run's); a sink
process killed makes `cdc run` exit 1 naming it; SIGTERM to `cdc run`, or Ctrl-C to its whole process group, stops
both cleanly, and a signal sent to the child alone is not a stop. After each kill, a new run ends with the target
equal to the source and each change applied once. The probes of the parent answer for the child.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.integration.pipeline_support import (
    drop_replication_state,
    drop_tables,
    free_port,
    start_connector,
    stop_connector,
    table_digest,
    wait_until,
    write_config,
)
from tests.support.helpers import http_get, wait_for

pytestmark = pytest.mark.integration

COLUMNS = ["id", "v"]


def _gone(pid: int) -> bool:
    """Whether `pid` has ended (a zombie waiting for a reaper counts: it runs nothing and holds nothing)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def _sink_pid(log: Path, process: subprocess.Popen[bytes]) -> int:
    found: list[int] = []

    def logged() -> bool:
        found.extend(int(m) for m in re.findall(r"sink runs in process (\d+)", log.read_text(errors="replace")))
        return bool(found)

    wait_until(logged, 60, "the sink's process id in the log", process)
    return found[-1]


class _Run:
    """A table, its config, and `cdc run --processes 2` on it (started by `start`)."""

    def __init__(self, stack: Any, name: str, table: str, tmp_path: Path) -> None:
        self.stack, self.name, self.table = stack, name, table
        self.port = free_port()
        self.config = tmp_path / "connector.json"
        self.log = tmp_path / "cdc.log"
        write_config(self.config, name, table, self.port)
        self.process: subprocess.Popen[bytes] | None = None
        self.next_id = 1

    def start(self, **popen: Any) -> subprocess.Popen[bytes]:
        self.process = start_connector(self.config, self.stack, self.log, "2", **popen)
        wait_until(lambda: http_get(self.port, "/readyz")[0] == 200, 90, "/readyz", self.process)
        return self.process

    def write(self, rows: int) -> None:
        with psycopg.connect(self.stack.source_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("INSERT INTO {} SELECT g, 'row ' || g FROM generate_series(%s::int, %s::int) g").format(
                    sql.Identifier(self.table)
                ),
                (self.next_id, self.next_id + rows - 1),
            )
            conn.execute(
                sql.SQL("UPDATE {} SET v = v || ' updated' WHERE id % 5 = 0").format(sql.Identifier(self.table))
            )
        self.next_id += rows

    def assert_caught_up(self) -> None:
        """The target equals the source, each change applied once."""
        expected = table_digest(self.stack.source_dsn, "public", self.table, COLUMNS)

        def matches() -> bool:
            try:
                return table_digest(self.stack.target_dsn, "public", self.table, COLUMNS) == expected
            except psycopg.errors.UndefinedTable:
                return False

        wait_until(matches, 120, "the target to equal the source", self.process)
        with psycopg.connect(self.stack.target_dsn, autocommit=True) as conn:
            ledger = conn.execute(
                "SELECT count(*), count(DISTINCT change_id) FROM cdc.applied_changes WHERE topic LIKE %s",
                (f"{self.name}.%",),
            ).fetchone()
        assert ledger is not None and ledger[0] == ledger[1], ledger

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)


@pytest.fixture
def run(stack: Any, unique_name: Any, tmp_path: Path) -> Iterator[_Run]:
    name, table = unique_name("split"), unique_name("items")
    with psycopg.connect(stack.source_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, v text NOT NULL)").format(sql.Identifier(table)))
    the_run = _Run(stack, name, table, tmp_path)
    the_run.write(500)
    try:
        yield the_run
    finally:
        if the_run.process is not None:
            stop_connector(the_run.process)
        drop_replication_state(stack.source_dsn, name, name)
        drop_tables(stack.source_dsn, sql.Identifier(table))
        drop_tables(stack.target_dsn, sql.Identifier("public", table))


def test_kill_9_of_cdc_run_leaves_no_sink_process_and_loses_nothing(run: _Run) -> None:
    process = run.start()
    child = _sink_pid(run.log, process)
    assert not _gone(child)
    run.write(2_000)  # in flight on both sides when the kill comes
    process.kill()
    process.wait(30)
    wait_for(lambda: _gone(child), 10, what=f"the sink process {child} to end with its parent")
    run.start()
    run.write(300)
    run.assert_caught_up()
    assert run.stop() == 0


def test_a_killed_sink_process_ends_cdc_run_with_exit_1_naming_it(run: _Run) -> None:
    process = run.start()
    child = _sink_pid(run.log, process)
    run.write(1_000)
    os.kill(child, signal.SIGKILL)
    assert process.wait(60) == 1
    text = run.log.read_text(errors="replace")
    assert f"error: the sink process ({child}) died: killed by SIGKILL" in text, text[-3000:]
    assert "Traceback" not in text
    run.start()
    run.assert_caught_up()
    assert run.stop() == 0


def test_sigterm_stops_both_cleanly_and_the_child_ignores_signals_of_its_own(run: _Run) -> None:
    process = run.start(start_new_session=True)  # its own process group, as under a terminal or an init
    child = _sink_pid(run.log, process)
    # A stop reaches the sink only through `cdc run`: signals sent to it alone change nothing.
    os.kill(child, signal.SIGTERM)
    os.kill(child, signal.SIGINT)
    run.write(200)
    run.assert_caught_up()
    assert not _gone(child) and http_get(run.port, "/readyz")[0] == 200
    # Ctrl-C on a terminal: SIGINT to the whole group, child included; the parent relays one stop.
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(60) == 0
    wait_for(lambda: _gone(child), 10, what="the sink process to end")
    text = run.log.read_text(errors="replace")
    assert "stopped cleanly" in text and "Traceback" not in text, text[-3000:]
    # And SIGTERM to `cdc run` alone.
    process = run.start()
    child = _sink_pid(run.log, process)
    assert run.stop() == 0
    wait_for(lambda: _gone(child), 10, what="the sink process to end")


def test_the_probes_of_cdc_run_answer_for_its_sink_process(stack: Any, unique_name: Any, tmp_path: Path) -> None:
    name, table, port = unique_name("splitprobe"), unique_name("items"), free_port()
    with psycopg.connect(stack.source_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, v text NOT NULL)").format(sql.Identifier(table)))
    config = tmp_path / "connector.json"
    write_config(config, name, table, port)
    data = json.loads(config.read_text())
    data["sink"]["dsn"] = f"postgresql://cdc@127.0.0.1:{free_port()}/cdc"  # nothing listens there
    config.write_text(json.dumps(data))
    log = tmp_path / "cdc.log"
    process = start_connector(config, stack, log, "2")
    try:
        _sink_pid(log, process)
        bodies: list[bytes] = []

        def red() -> bool:
            code, body = http_get(port, "/healthz")
            bodies.append(body)
            return code == 503 and body.startswith(b"sink:")

        wait_until(red, 90, "/healthz to name the sink", process)
        assert b"cannot reach" in bodies[-1], bodies[-1]
        assert http_get(port, "/readyz")[0] == 503
        assert json.loads(http_get(port, "/status")[1])["sink"]["group_id"] == f"cdc-{name}"
        process.send_signal(signal.SIGTERM)
        # Stopped while the sink was still retrying: not a clean stop (docs/operations.md, exit codes).
        assert process.wait(60) == 1
        assert "stopped while the sink could not make progress" in log.read_text()
    finally:
        stop_connector(process)
        drop_replication_state(stack.source_dsn, name, name)
        drop_tables(stack.source_dsn, sql.Identifier(table))

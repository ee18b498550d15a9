"""Incremental snapshots through the whole pipeline (source -> Kafka -> our sink), on tables whose rows were never
copied (`snapshot.mode: never`): started by a signal row inserted with SQL, or by `cdc snapshot`; under concurrent
inserts, updates and deletes the destination ends equal to the source; a kill -9 mid-backfill goes on from the last
acknowledged chunk, of each key range when several are read at once."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
import pytest
from psycopg import sql

from schemas.registry import SchemaRegistry, SchemaRegistryConfig
from schemas.serde import Decoder
from tests.integration.pipeline_support import (
    PROCESSES,
    drop_replication_state,
    drop_tables,
    free_port,
    start_connector,
    stop_connector,
    table_digest,
    wait_until,
    write_config,
)
from tests.integration.sinks.conftest import caught_up, log_end
from tests.support.helpers import consume_all, http_get

pytestmark = pytest.mark.integration


def _progress(dsn: str, slot: str) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT progress -> 'incremental' FROM cdc.source_state WHERE slot_name = %s", (slot,)
        ).fetchone()
    return dict(row[0]) if row is not None and row[0] else {}


def _table_progress(dsn: str, slot: str) -> dict[str, Any]:
    tables = _progress(dsn, slot).get("tables") or [{}]
    return dict(tables[0])


def _streaming(port: int) -> bool:
    code, body = http_get(port, "/status")
    return code == 200 and (json.loads(body).get("source") or {}).get("state") == "streaming"


def _config(tmp_path: Path, name: str, table: str, port: int, chunk: int, parallelism: int = 1) -> Path:
    path = tmp_path / "connector.yaml"
    write_config(path, name, table, port)
    config = json.loads(path.read_text())
    config["source"]["snapshot"]["mode"] = "never"
    config["source"]["signal"] = {"table": f"public.{name}_signals"}
    config["source"]["incremental_snapshot"] = {"chunk_size": chunk, "parallelism": parallelism}
    path.write_text(json.dumps(config))
    return path


def _assert_target_equals_source(stack: Any, table: str) -> None:
    expected = table_digest(stack.source_dsn, "public", table, ["id", "v"])
    actual = table_digest(stack.target_dsn, "public", table, ["id", "v"])
    if actual != expected:
        query = sql.SQL("SELECT id, v FROM {}").format(sql.Identifier("public", table))
        with psycopg.connect(stack.source_dsn) as source, psycopg.connect(stack.target_dsn) as target:
            left, right = set(source.execute(query).fetchall()), set(target.execute(query).fetchall())
        raise AssertionError(f"only in the source: {sorted(left - right)[:20]}, only in the destination: "
                             f"{sorted(right - left)[:20]}")  # fmt: skip


def _fill(dsn: str, table: str, rows: int) -> None:
    """`table` (id int PRIMARY KEY, v text) holding ids 1..rows, analysed (key ranges are split by the estimate)."""
    ident = sql.Identifier(table)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, v text NOT NULL)").format(ident))
        conn.execute(sql.SQL("INSERT INTO {} SELECT g, 'row ' || g FROM generate_series(1, %s) g").format(ident),
                     (rows,))  # fmt: skip
        conn.execute(sql.SQL("ANALYZE {}").format(ident))


def _cdc_snapshot(stack: Any, config_path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`cdc snapshot CONFIG ARGS...` against the stack."""
    env = dict(os.environ, CDC_SOURCE_DSN=stack.source_dsn, CDC_TARGET_DSN=stack.target_dsn,
               CDC_KAFKA_BOOTSTRAP=stack.kafka_bootstrap, CDC_SCHEMA_REGISTRY_URL=stack.registry_url)  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "connector.cli", "--env-file", os.devnull, "snapshot", str(config_path), *args],
        env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def _wal_now(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return str(row[0])


def _source_past(dsn: str, slot: str, lsn: str) -> bool:
    """The slot confirmed `lsn`: every change before it is in Kafka."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s", (lsn, slot)
        ).fetchone()
    return row == (True,)


def _sink_caught_up(stack: Any, group: str, ends: dict[tuple[str, int], int]) -> bool:
    with psycopg.connect(stack.target_dsn, autocommit=True) as conn:
        return caught_up(conn, group, ends)


def _assert_arrives_equal(
    stack: Any, name: str, table: str, process: subprocess.Popen[bytes]
) -> dict[tuple[str, int], int]:
    """Every write so far reaches Kafka (the slot confirms the WAL's current end), the sink applies the topic up to
    its end, and the destination then equals the source. The topic's end offsets."""
    written = _wal_now(stack.source_dsn)
    wait_until(lambda: _source_past(stack.source_dsn, name, written), 120, "the source to stream every write",
               process)  # fmt: skip
    ends = log_end(stack.kafka_bootstrap, [f"{name}.public.{table}"])
    wait_until(lambda: _sink_caught_up(stack, f"cdc-{name}", ends), 120, "the sink to catch up", process)
    _assert_target_equals_source(stack, table)
    return ends


def _cleanup(stack: Any, name: str, table: str) -> None:
    drop_replication_state(stack.source_dsn, name, name)
    drop_tables(stack.source_dsn, sql.Identifier(table), sql.Identifier(f"{name}_signals"))
    drop_tables(stack.target_dsn, sql.Identifier("public", table))
    with psycopg.connect(stack.source_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM cdc.source_state WHERE slot_name = %s", (name,))


class Writer(threading.Thread):
    """Inserts, updates and deletes at random over the whole key range (inside and outside the current chunk)."""

    def __init__(self, dsn: str, table: str, rows: int) -> None:
        super().__init__(daemon=True)
        self._dsn = dsn
        self._table = sql.Identifier(table)
        self._next = rows + 1
        self._top = rows
        self.stop = threading.Event()
        self.done = {"c": 0, "u": 0, "d": 0}
        self.changed = 0
        """Rows the statements changed: one streamed change each."""
        self.deleted: list[int] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        rng = random.Random(15)
        t = self._table
        try:
            with psycopg.connect(self._dsn, autocommit=True) as conn:
                while not self.stop.is_set():
                    with conn.transaction():
                        for _ in range(rng.randint(1, 5)):
                            op = rng.choice("cuudd")
                            key = rng.randint(1, self._top)
                            if op == "c":
                                cur = conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, 'new')").format(t),
                                                   (self._next,))  # fmt: skip
                                self._top = self._next
                                self._next += 1
                            elif op == "u":
                                cur = conn.execute(
                                    sql.SQL("UPDATE {} SET v = v || '+' WHERE id = %s").format(t), (key,)
                                )
                            else:
                                cur = conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(t), (key,))
                            self.done[op] += 1
                            self.changed += cur.rowcount
                            if op == "d" and cur.rowcount:
                                self.deleted.append(key)
                    self.stop.wait(0.005)
        except BaseException as exc:  # reported by the test
            self.error = exc


@pytest.mark.parametrize("parallelism", [1, 3])
def test_signal_from_sql_snapshots_under_concurrent_writes(
    stack: Any, unique_name: Any, tmp_path: Path, parallelism: int
) -> None:
    """With `parallelism: 3` the table is split into key ranges read at once, three chunks between two watermarks."""
    name, table = unique_name("incsnap"), unique_name("items")
    rows = 6_000
    _fill(stack.source_dsn, table, rows)
    port = free_port()
    config_path = _config(tmp_path, name, table, port, chunk=100, parallelism=parallelism)
    log_path = tmp_path / "cdc.log"
    process = start_connector(config_path, stack, log_path)
    writer = Writer(stack.source_dsn, table, rows)
    try:
        wait_until(lambda: _streaming(port), 90, "the source to stream", process)
        writer.start()
        with psycopg.connect(stack.source_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("INSERT INTO {} (id, type, data) VALUES ('s-1', 'execute-snapshot', %s)").format(
                    sql.Identifier(f"{name}_signals")
                ),
                (json.dumps({"data-collections": [f"public.{table}"], "type": "incremental"}),),
            )
        wait_until(lambda: _table_progress(stack.source_dsn, name).get("done") is True, 180,
                   "the incremental snapshot to finish", process)  # fmt: skip
        writer.stop.set()
        writer.join(30)
        assert writer.error is None, writer.error
        assert min(writer.done.values()) > 0, writer.done
        _assert_arrives_equal(stack, name, table, process)
        progress = _table_progress(stack.source_dsn, name)
        assert progress["chunks"] >= rows // 100
        assert len(progress["ranges"]) == parallelism
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log_path.read_text(errors="replace")[-3000:]
    finally:
        writer.stop.set()
        stop_connector(process)
        _cleanup(stack, name, table)


@pytest.mark.parametrize("processes", PROCESSES)
def test_kill_mid_backfill_resumes_from_last_chunk(
    stack: Any, unique_name: Any, tmp_path: Path, processes: str
) -> None:
    name, table = unique_name("incsnap"), unique_name("items")
    rows, chunk = 30_000, 200
    _fill(stack.source_dsn, table, rows)
    port = free_port()
    config_path = _config(tmp_path, name, table, port, chunk=chunk)
    log_path = tmp_path / "cdc.log"
    process = start_connector(config_path, stack, log_path, processes)
    try:
        wait_until(lambda: _streaming(port), 90, "the source to stream", process)
        requested = _cdc_snapshot(stack, config_path, "--table", f"public.{table}")
        assert requested.returncode == 0, requested.stderr
        assert "requested" in requested.stdout
        wait_until(lambda: _table_progress(stack.source_dsn, name).get("chunks", 0) >= 20, 120,
                   "the backfill to be under way", process)  # fmt: skip
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        at_kill = _table_progress(stack.source_dsn, name)
        assert not at_kill["done"], "the backfill finished before the kill: make the table bigger"
        assert at_kill["last_key"] == [str(at_kill["rows"])]  # no writes: the key of the last row acknowledged
        assert at_kill["rows"] == at_kill["chunks"] * chunk

        process = start_connector(config_path, stack, log_path, processes)
        wait_until(lambda: _table_progress(stack.source_dsn, name).get("done") is True, 180,
                   "the resumed backfill to finish", process)  # fmt: skip
        after = _table_progress(stack.source_dsn, name)
        assert after["rows"] == rows
        ends = _assert_arrives_equal(stack, name, table, process)
        # The topic holds each row once, plus whatever was produced after the last persisted chunk before the kill
        # (at most one chunk), plus the snapshot-complete marker.
        produced = sum(ends.values())
        assert rows + 1 <= produced <= rows + chunk + 1, produced
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log_path.read_text(errors="replace")[-3000:]
    finally:
        stop_connector(process)
        _cleanup(stack, name, table)


def test_snapshot_follow_returns_once_the_snapshot_is_done(stack: Any, unique_name: Any, tmp_path: Path) -> None:
    """`cdc snapshot CONFIG --table T --follow` stays until the snapshot it requested is done, then exits 0."""
    name, table = unique_name("incfollow"), unique_name("items")
    rows = 3_000
    _fill(stack.source_dsn, table, rows)
    port = free_port()
    config_path = _config(tmp_path, name, table, port, chunk=100)
    log_path = tmp_path / "cdc.log"
    process = start_connector(config_path, stack, log_path)
    try:
        wait_until(lambda: _streaming(port), 90, "the source to stream", process)
        followed = _cdc_snapshot(stack, config_path, "--table", f"public.{table}", "--follow", timeout=300)
        assert followed.returncode == 0, followed.stdout + followed.stderr
        requested, complete = followed.stdout.splitlines()[-2:]
        assert requested.startswith(f"incremental snapshot of public.{table} requested (signal "), followed.stdout
        assert complete == f"incremental snapshot of public.{table} complete"
        # It returned once the snapshot it requested was done, not before.
        progress = _table_progress(stack.source_dsn, name)
        assert progress["done"] is True and progress["rows"] == rows, progress
        assert requested.endswith(f"(signal {progress['signal']})")
        _assert_arrives_equal(stack, name, table, process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log_path.read_text(errors="replace")[-3000:]
    finally:
        stop_connector(process)
        _cleanup(stack, name, table)


class TopicRecord(NamedTuple):
    partition: int
    offset: int
    key: int | None
    """The row's id (None for the snapshot-complete marker)."""
    op: str | None
    """None for a tombstone or the marker."""
    change_id: str


def _topic_records(stack: Any, topic: str, count: int) -> list[TopicRecord]:
    """The first `count` records of `topic` (every partition), decoded."""
    with SchemaRegistry(SchemaRegistryConfig(url=stack.registry_url)) as registry:
        decoder = Decoder(registry)
        out = []
        for message in consume_all(stack.kafka_bootstrap, topic, min_count=count, timeout=120):
            key, value = message.key(), message.value()
            headers = dict(message.headers() or [])
            out.append(TopicRecord(
                message.partition(), message.offset(), None if key is None else int(decoder.decode(key)[0]["id"]),
                None if value is None else str(decoder.decode(value)[0]["op"]), headers["change_id"].decode(),
            ))  # fmt: skip
    return out


def _range_of(ranges: list[dict[str, Any]], key: int) -> dict[str, Any]:
    """The persisted key range holding `key` (its `upper` is inclusive, None: to the end)."""
    return next(r for r in ranges if r["upper"] is None or key <= int(r["upper"][0]))


def test_kill_at_parallelism_resumes_each_reader_from_its_own_progress(
    stack: Any, unique_name: Any, tmp_path: Path
) -> None:
    """`parallelism: 3`: three key ranges of one table read at once under concurrent writes, and a kill -9 mid-way.
    Each range goes on from its own last acknowledged chunk, so what is read twice is at most the window in flight
    (one chunk per reader); deleted rows stay deleted; a streamed change produced again after the restart keeps its
    change id, so the sink applies it once."""
    name, table = unique_name("incpar"), unique_name("items")
    rows, chunk, readers = 60_000, 200, 3
    _fill(stack.source_dsn, table, rows)
    port = free_port()
    config_path = _config(tmp_path, name, table, port, chunk=chunk, parallelism=readers)
    log_path = tmp_path / "cdc.log"
    process = start_connector(config_path, stack, log_path)
    writer = Writer(stack.source_dsn, table, rows)
    topic = f"{name}.public.{table}"
    try:
        wait_until(lambda: _streaming(port), 90, "the source to stream", process)
        writer.start()
        requested = _cdc_snapshot(stack, config_path, "--table", f"public.{table}")
        assert requested.returncode == 0, requested.stderr
        wait_until(lambda: _table_progress(stack.source_dsn, name).get("chunks", 0) >= 10 * readers, 120,
                   "the backfill to be under way", process)  # fmt: skip
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        at_kill = _table_progress(stack.source_dsn, name)
        ends_at_kill = log_end(stack.kafka_bootstrap, [topic])
        assert not at_kill["done"], "the backfill finished before the kill: make the table bigger"
        ranges = at_kill["ranges"]
        assert len(ranges) == readers and not any(r["done"] for r in ranges), ranges
        lowers = [None, *(r["upper"] for r in ranges[:-1])]
        assert all(r["last_key"] != lower for r, lower in zip(ranges, lowers, strict=True)), (
            f"a reader had no acknowledged chunk at the kill: {ranges}"
        )

        process = start_connector(config_path, stack, log_path)
        wait_until(lambda: _table_progress(stack.source_dsn, name).get("done") is True, 240,
                   "the resumed backfill to finish", process)  # fmt: skip
        writer.stop.set()
        writer.join(30)
        assert writer.error is None, writer.error
        ends = _assert_arrives_equal(stack, name, table, process)
        records = _topic_records(stack, topic, sum(ends.values()))

        # Each reader went on from its own persisted progress: no row it had acknowledged was read again.
        resumed = [r for r in records if r.op == "r" and r.offset >= ends_at_kill.get((topic, r.partition), 0)]
        assert resumed
        for record in resumed:
            assert record.key is not None
            last = _range_of(ranges, record.key)["last_key"]
            assert last is None or record.key > int(last[0]), (record, ranges)
        # Read twice: only the rows of the window in flight at the kill, at most one chunk per reader.
        reads = Counter(r.key for r in records if r.op == "r")
        twice = [k for k, n in reads.items() if n > 1]
        assert max(reads.values()) <= 2 and len(twice) <= readers * chunk, len(twice)
        # Nothing deleted came back.
        with psycopg.connect(stack.target_dsn, autocommit=True) as conn:
            back = conn.execute(
                sql.SQL("SELECT id FROM {} WHERE id = ANY(%s)").format(sql.Identifier("public", table)),
                (writer.deleted,),
            ).fetchall()
            ledger = {str(c) for (c,) in conn.execute(
                "SELECT change_id FROM cdc.applied_changes WHERE topic = %s", (topic,)
            ).fetchall()}  # fmt: skip
        assert writer.deleted and not back, back
        # One change id per streamed change however often it was produced, and every id in the ledger (whose key
        # makes the sink apply it once).
        streamed = {r.change_id for r in records if r.op in ("c", "u", "d")}
        produced = sum(1 for r in records if r.op in ("c", "u", "d"))
        assert len(streamed) == writer.changed, (len(streamed), writer.changed, produced)
        assert ledger == {r.change_id for r in records}
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log_path.read_text(errors="replace")[-3000:]
    finally:
        writer.stop.set()
        stop_connector(process)
        _cleanup(stack, name, table)


def test_table_added_to_include_while_running_arrives_complete(stack: Any, unique_name: Any, tmp_path: Path) -> None:
    name, base = unique_name("incnew"), unique_name("grow")
    first, added = f"{base}_a", f"{base}_b"
    rows = 3_000
    create = "CREATE TABLE {} (id int PRIMARY KEY, v text NOT NULL)"
    with psycopg.connect(stack.source_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL(create).format(sql.Identifier(first)))
    port = free_port()
    path = tmp_path / "connector.yaml"
    write_config(path, name, first, port)
    config = json.loads(path.read_text())
    config["source"]["tables"] = {"include": [f"public.{base}_*"], "discovery_interval_s": 1}
    config["source"]["snapshot"]["new_tables"] = "incremental"
    config["source"]["incremental_snapshot"] = {"chunk_size": 100}
    path.write_text(json.dumps(config))
    log_path = tmp_path / "cdc.log"
    process = start_connector(path, stack, log_path)
    writer = Writer(stack.source_dsn, added, rows)
    try:
        wait_until(lambda: _streaming(port), 90, "the source to stream", process)
        with psycopg.connect(stack.source_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL(create).format(sql.Identifier(added)))
            conn.execute(
                sql.SQL("INSERT INTO {} SELECT g, 'row ' || g FROM generate_series(1, %s) g").format(
                    sql.Identifier(added)
                ),
                (rows,),
            )
        writer.start()
        wait_until(lambda: _table_progress(stack.source_dsn, name).get("done") is True, 180,
                   "the new table's incremental snapshot to finish", process)  # fmt: skip
        writer.stop.set()
        writer.join(30)
        assert writer.error is None, writer.error
        assert _table_progress(stack.source_dsn, name)["table"] == f"public.{added}"
        _assert_arrives_equal(stack, name, added, process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log_path.read_text(errors="replace")[-3000:]
    finally:
        writer.stop.set()
        stop_connector(process)
        drop_replication_state(stack.source_dsn, name, name)
        drop_tables(stack.source_dsn, sql.Identifier(first), sql.Identifier(added))
        drop_tables(stack.target_dsn, sql.Identifier("public", first), sql.Identifier("public", added))
        with psycopg.connect(stack.source_dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM cdc.source_state WHERE slot_name = %s", (name,))


def _snapshot_state(dsn: str, slot: str) -> str | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT snapshot_state FROM cdc.source_state WHERE slot_name = %s", (slot,)).fetchone()
    return None if row is None else str(row[0])


@pytest.mark.parametrize("processes", PROCESSES)
def test_initial_snapshot_in_chunks_survives_a_kill_and_ends_equal_under_writes(
    stack: Any, unique_name: Any, tmp_path: Path, processes: str
) -> None:
    """`snapshot.initial: incremental`: no exported snapshot, every table queued at the slot's creation; a kill -9
    mid-load goes on from the last acknowledged chunk; concurrent writes throughout."""
    name, table = unique_name("incinit"), unique_name("items")
    rows, chunk = 20_000, 200
    _fill(stack.source_dsn, table, rows)
    port = free_port()
    path = tmp_path / "connector.yaml"
    write_config(path, name, table, port)
    config = json.loads(path.read_text())
    config["source"]["snapshot"] = {"mode": "initial", "initial": "incremental"}
    config["source"]["incremental_snapshot"] = {"chunk_size": chunk}
    path.write_text(json.dumps(config))
    log_path = tmp_path / "cdc.log"
    process = start_connector(path, stack, log_path, processes)
    writer = Writer(stack.source_dsn, table, rows)
    try:
        wait_until(lambda: _table_progress(stack.source_dsn, name).get("chunks", 0) >= 10, 120,
                   "the initial load to be under way", process)  # fmt: skip
        assert _snapshot_state(stack.source_dsn, name) == "done"  # the slot streams; the load goes on in chunks
        assert _table_progress(stack.source_dsn, name)["signal"] == "initial"
        writer.start()
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        at_kill = _table_progress(stack.source_dsn, name)
        assert not at_kill["done"], "the load finished before the kill: make the table bigger"
        process = start_connector(path, stack, log_path, processes)
        wait_until(lambda: _table_progress(stack.source_dsn, name).get("done") is True, 180,
                   "the resumed initial load to finish", process)  # fmt: skip
        after = _table_progress(stack.source_dsn, name)
        assert after["chunks"] > at_kill["chunks"] and after["rows"] > at_kill["rows"]
        writer.stop.set()
        writer.join(30)
        assert writer.error is None, writer.error
        _assert_arrives_equal(stack, name, table, process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log_path.read_text(errors="replace")[-3000:]
    finally:
        writer.stop.set()
        stop_connector(process)
        _cleanup(stack, name, table)

"""Us and Debezium side by side in one run, on the local stack: source, sink, and our end to end.

    python bench/versus_debezium.py [--quick | --inserts N --updates N --tx-size N] [--repeat N]
                                    [--rate 10000 --e2e-seconds 30] [--env-file .cdc/dev.env]

One workload per repeat (default 500,000 inserts then 50,000 updates, in transactions of 1,000, on a narrow
5-column table) is committed while every replication slot of the run already exists (primed with one row),
so each side drains the same WAL backlog:

1. source, WAL -> Kafka acknowledged: our source (`cdc run`, source only) and Debezium's PostgreSQL connector
   (pgoutput, Apicurio's Avro converter on the same registry) on Kafka Connect standalone, one after the other.
   Progress is the end offset of each side's topic (a record below the high watermark is acknowledged).
2. sink, Kafka -> destination rows: our source's topic applied by our sink (`cdc run`, sink only: rows, change-id
   ledger and offsets), by Debezium's JDBC sink with its defaults, and by the JDBC sink tuned
   (`dialect.postgres.unnest.insert.enabled`, batches and polls of 5,000 like ours) - each into a fresh database.
   Progress is the destination table (`max(id)` through the primary key; done when the last update is visible).
3. end to end, ours only: `cdc run` with source and sink draining the same backlog (events/s), then latency at a
   fixed offered rate (`--rate` rows/s in transactions of `--e2e-tx-rows`), from `clock_timestamp()` at the
   source write to the sink's apply transaction (`cdc.applied_changes.applied_at`).

Each figure runs from the first to the last event a side was seen to deliver (process start-up excluded); CPU
seconds are the side's process tree's (user + system) over that span, peak RSS its high-water mark (/proc). The
order of the sides alternates between repeats; the table shows medians. Output: a markdown table on stdout and
JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer, TopicPartition
from psycopg import sql
from psycopg.conninfo import make_conninfo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.e2e_support import (  # noqa: E402
    LATENCY_COLUMNS,
    CdcRun,
    applied_latencies_ms,
    cpu_seconds,
    log,
    machine,
    offered_writer,
    peak_rss_mib,
    percentile,
)
from connector.config_loader import environment_with  # noqa: E402
from devstack.connect import (  # noqa: E402
    AVRO_CONVERTER_VERSION,
    CONNECT_VERSION,
    DEBEZIUM_VERSION,
    ConnectWorker,
    drop_slot_and_publication,
    ensure_install,
    jdbc_sink_settings,
    postgres_source_settings,
)

NARROW = "id bigint PRIMARY KEY, name text, amount numeric(12,2), created timestamptz, flag boolean"
NARROW_ROW = "g, 'name ' || g, g * 1.5, now(), mod(g, 2) = 0"
TUNED_JDBC = {
    "dialect.postgres.unnest.insert.enabled": "true",
    "batch.size": "5000",
    "consumer.override.max.poll.records": "5000",
    # Unnest upserts fail when a batch holds one key twice ("ON CONFLICT DO UPDATE command cannot affect row a
    # second time"); the reduction buffer keeps each key's last change per batch.
    "use.reduction.buffer": "true",
}


class BenchError(Exception):
    """A side failed or did not finish: the run stops with this message."""


@dataclass
class Figure:
    events: int
    seconds: float
    cpu_s: float
    peak_rss_mib: float
    delivered: dict[str, int] = field(default_factory=dict)
    """What the side delivered, counted after it finished: records on its topic, or destination rows."""

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def measure(
    pid: Callable[[], int | None],
    progress: Callable[[], int],
    total: int,
    failure: Callable[[], str | None],
    *,
    timeout: float,
    interval: float,
    what: str,
) -> Figure:
    """Poll `progress` (events delivered so far) until `total`; rate and CPU between the first and last sample seen.

    Called right after the side was started.
    """
    started = time.monotonic()
    first: tuple[float, int, float] | None = None
    deadline = started + timeout
    while True:
        done = progress()
        now = time.monotonic()
        current = pid()
        cpu = cpu_seconds(current) if current else 0.0
        if first is None and done > 0:
            # A side that delivered everything before the first look (tiny workloads) is timed from its start.
            first = (now, done, cpu) if done < total else (started, 0, 0.0)
        if first is not None and done >= total:
            # The events seen in the first sample were delivered before the clock started.
            events = max(total - first[1], 1)
            return Figure(events, now - first[0], cpu - first[2], peak_rss_mib(current) if current else 0.0)
        problem = failure()
        if problem:
            raise BenchError(f"{what}: {problem}")
        if now > deadline:
            raise BenchError(f"{what}: {done} of {total} events within {timeout:.0f}s")
        time.sleep(interval)


class Worker:
    """A Connect worker started in the background, so that measuring can begin before its REST API says RUNNING."""

    def __init__(self, worker: ConnectWorker) -> None:
        self.worker = worker
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        def run() -> None:
            try:
                self.worker.start(timeout=600)
            except BaseException as exc:
                self._error = exc

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def wait_started(self) -> None:
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise BenchError(str(self._error))

    @property
    def pid(self) -> int | None:
        return self.worker.pid

    def failure(self) -> str | None:
        if self._error is not None:
            return str(self._error)
        if self._thread is not None and self._thread.is_alive():
            return None
        return self.worker.failure() if self.worker.pid is not None else None

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.join()
        self.worker.stop()


# --- Kafka and PostgreSQL probes --------------------------------------------------------------------------------


class EndOffsets:
    def __init__(self, bootstrap: str) -> None:
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}"})

    def __call__(self, topic: str) -> int:
        try:
            metadata = self._consumer.list_topics(topic, timeout=10).topics.get(topic)
        except Exception:  # the topic's first record creates it
            return 0
        if metadata is None or metadata.error is not None:
            return 0
        return sum(
            self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in metadata.partitions
        )

    def close(self) -> None:
        self._consumer.close()


def wait_for(
    predicate: Callable[[], bool], what: str, timeout: float = 300, check: Callable[[], str | None] = lambda: None
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        problem = check()
        if problem:
            raise BenchError(f"{what}: {problem}")
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        time.sleep(0.2)


def slot_exists(dsn: str, slot: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone() is not None


@contextlib.contextmanager
def table_progress(dsn: str, table: str, inserts: int, updates: int) -> Iterator[Callable[[], int]]:
    """Events applied so far, read cheaply: inserts by `max(id)` (primary key), then whether the last update shows."""
    ident = sql.Identifier(table)

    def progress() -> int:
        try:
            row = conn.execute(sql.SQL("SELECT max(id) FROM {}").format(ident)).fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
        high = int(row[0]) if row and row[0] is not None else 0
        if high < inserts:
            return high
        if updates == 0:
            return inserts
        last = conn.execute(sql.SQL("SELECT name FROM {} WHERE id = %s").format(ident), (updates,)).fetchone()
        return inserts + updates if last and last[0].startswith("updated") else inserts

    with psycopg.connect(dsn, autocommit=True) as conn:
        yield progress


def destination_counts(dsn: str, table: str) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*), count(*) FILTER (WHERE name LIKE 'updated %%') FROM {}").format(
                sql.Identifier(table)
            )
        ).fetchone()
    assert row is not None
    return {"rows": int(row[0]), "updated": int(row[1])}


@contextlib.contextmanager
def scratch_database(dsn: str, name: str) -> Iterator[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(dsn, dbname=name)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def drop_slot(dsn: str, slot: str, publication: str) -> None:
    drop_slot_and_publication(dsn, slot, publication)
    with psycopg.connect(dsn, autocommit=True) as conn, contextlib.suppress(psycopg.errors.UndefinedTable):
        conn.execute("DELETE FROM cdc.source_state WHERE slot_name = %s", (slot,))


# --- one repeat ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    inserts: int
    updates: int
    tx_size: int

    @property
    def events(self) -> int:
        return self.inserts + self.updates

    def write(self, dsn: str, table: str) -> float:
        ident = sql.Identifier(table)
        started = time.monotonic()
        with psycopg.connect(dsn, autocommit=True) as conn:
            for low in range(1, self.inserts + 1, self.tx_size):
                high = min(self.inserts, low + self.tx_size - 1)
                conn.execute(
                    sql.SQL(
                        f"INSERT INTO {{}} SELECT {NARROW_ROW} FROM generate_series(%s::bigint, %s::bigint) g"
                    ).format(ident),
                    (low, high),
                )
            for low in range(1, self.updates + 1, self.tx_size):
                high = min(self.updates, low + self.tx_size - 1)
                conn.execute(
                    sql.SQL(
                        "UPDATE {} SET name = 'updated ' || id, amount = amount + 1 WHERE id BETWEEN %s AND %s"
                    ).format(ident),
                    (low, high),
                )
        return time.monotonic() - started


class Repeat:
    """Everything one repeat creates (table, slots, topics, databases) and the sides that measure on it."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str], workdir: Path, index: int) -> None:
        self.args = args
        self.env = env
        self.index = index
        self.id = f"vsd_{uuid.uuid4().hex[:8]}"
        self.table = self.id
        self.workdir = workdir / self.id
        self.workdir.mkdir(parents=True)
        self.workload = Workload(args.inserts, args.updates, args.tx_size)
        self.ours_prefix, self.dbz_prefix, self.e2e_prefix = (f"{self.id}_{s}" for s in ("ours", "dbz", "e2e"))
        self.ours_topic = f"{self.ours_prefix}.public.{self.table}"
        self.dbz_topic = f"{self.dbz_prefix}.public.{self.table}"
        self.offsets = EndOffsets(env["CDC_KAFKA_BOOTSTRAP"])
        self.install = ensure_install(args.home)

    # configs
    def _source(self, prefix: str) -> dict[str, Any]:
        return {
            "dsn": "${CDC_SOURCE_DSN}",
            "topic_prefix": prefix,
            "slot": {"name": prefix},
            "publication": {"name": prefix},
            "tables": {"include": [f"public.{self.table}"]},
            "snapshot": {"mode": "never"},
            "status_interval_s": 1,
            "decimal_handling": self.args.decimal_handling,
        }

    def _sink(self, dsn: str, topics: list[str]) -> dict[str, Any]:
        return {"dsn": dsn, "topics": topics, "target_schema": "public", "table_name_format": "{table}"}

    def _ours(self, name: str, source: bool, sink_dsn: str | None, topics: list[str] | None = None) -> CdcRun:
        config: dict[str, Any] = {
            "name": name,
            "kafka": {"bootstrap_servers": "${CDC_KAFKA_BOOTSTRAP}"},
            "schema_registry": {"url": "${CDC_SCHEMA_REGISTRY_URL}"},
            "server": {"enabled": False},
        }
        if source:
            config["source"] = self._source(name)
        if sink_dsn is not None:
            config["sink"] = self._sink(sink_dsn, topics or [f"{name}.public.{self.table}"])
            config["transforms"] = {"source": [], "sink": []}
        return CdcRun(self.workdir, name, config, self.env)

    def _connect(self, name: str, settings: dict[str, str]) -> Worker:
        return Worker(
            ConnectWorker(
                self.install,
                self.workdir / name,
                bootstrap=self.env["CDC_KAFKA_BOOTSTRAP"],
                registry_url=self.env["CDC_SCHEMA_REGISTRY_URL"],
                connectors={name: settings},
            )
        )

    def run(self, stack: contextlib.ExitStack) -> dict[str, Any]:
        env, src = self.env, self.env["CDC_SOURCE_DSN"]
        with psycopg.connect(src, autocommit=True) as conn:
            conn.execute(sql.SQL(f"CREATE TABLE {{}} ({NARROW})").format(sql.Identifier(self.table)))
        stack.callback(self._drop_table)
        e2e_db = stack.enter_context(scratch_database(env["CDC_TARGET_DSN"], f"{self.id}_e2e"))
        ours = self._ours(self.ours_prefix, True, None)
        e2e = self._ours(self.e2e_prefix, True, e2e_db)
        dbz = self._connect(
            self.dbz_prefix,
            postgres_source_settings(
                src,
                env["CDC_SCHEMA_REGISTRY_URL"],
                topic_prefix=self.dbz_prefix,
                tables=[f"public.{self.table}"],
                slot=self.dbz_prefix,
                publication=self.dbz_prefix,
                **{"snapshot.mode": "no_data", "decimal.handling.mode": self.args.decimal_handling},
            ),
        )
        for prefix in (self.ours_prefix, self.dbz_prefix, self.e2e_prefix):
            stack.callback(drop_slot, src, prefix, prefix)
        sides: list[Any] = [ours, e2e, dbz]
        for side in sides:
            stack.callback(side.stop)

        # Prime: every slot exists and has delivered one row before the workload is written.
        log(f"repeat {self.index + 1}: priming three slots on {self.table}")
        ours.start()
        e2e.start()
        dbz.start()
        dbz.wait_started()
        for prefix, side in ((self.ours_prefix, ours), (self.e2e_prefix, e2e)):
            wait_for(lambda p=prefix: slot_exists(src, p), f"slot {prefix}", check=side.failure)
        with psycopg.connect(src, autocommit=True) as conn:
            conn.execute(
                sql.SQL(f"INSERT INTO {{}} SELECT {NARROW_ROW} FROM generate_series(0, 0) g").format(
                    sql.Identifier(self.table)
                )
            )
        wait_for(lambda: self.offsets(self.ours_topic) >= 1, "our primed row", check=ours.failure)
        wait_for(lambda: self.offsets(self.dbz_topic) >= 1, "Debezium's primed row", check=dbz.failure)
        wait_for(lambda: _has_row(e2e_db, self.table), "the end-to-end primed row", check=e2e.failure)
        time.sleep(2.5)  # status updates confirm the primed row on every slot
        for side in sides:
            side.stop()

        written = self.workload.write(src, self.table)
        log(f"repeat {self.index + 1}: wrote {self.workload.events:,} events in {written:.1f}s")
        result: dict[str, Any] = {"table": self.table, "write_s": round(written, 2)}
        timeout = self.args.timeout

        def source_side(name: str, topic: str, side: Any) -> Callable[[], Figure]:
            def run() -> Figure:
                base = self.offsets(topic)
                side.start()
                try:
                    figure = measure(
                        lambda: side.pid,
                        lambda: self.offsets(topic) - base,
                        self.workload.events,
                        side.failure,
                        timeout=timeout,
                        interval=0.1,
                        what=name,
                    )
                finally:
                    side.stop()
                figure.delivered = {"records": self.offsets(topic) - base}
                return figure

            return run

        result["source"] = self._interleaved(
            {
                "ours": source_side("our source", self.ours_topic, ours),
                "debezium": source_side("Debezium's PostgreSQL connector", self.dbz_topic, dbz),
            }
        )

        def sink_side(name: str, make: Callable[[str], Any]) -> Callable[[], Figure]:
            def run() -> Figure:
                with scratch_database(env["CDC_TARGET_DSN"], f"{self.id}_{name}") as dsn:
                    side = make(dsn)
                    side.start()
                    try:
                        with table_progress(dsn, self.table, self.workload.inserts, self.workload.updates) as progress:
                            figure = measure(
                                lambda: side.pid,
                                progress,
                                self.workload.events,
                                side.failure,
                                timeout=timeout,
                                interval=0.2,
                                what=name,
                            )
                    finally:
                        side.stop()
                    figure.delivered = self._check(dsn, name)
                    return figure

            return run

        def jdbc(name: str, extra: dict[str, str]) -> Callable[[str], Any]:
            return lambda dsn: self._connect(
                name, jdbc_sink_settings(dsn, env["CDC_SCHEMA_REGISTRY_URL"], topics=[self.ours_topic], **extra)
            )

        sinks = {
            "ours": sink_side("ours", lambda dsn: self._ours(f"{self.id}_sink", False, dsn, [self.ours_topic])),
            "jdbc_default": sink_side("jdbc_default", jdbc("jdbc_default", {})),
            "jdbc_tuned": sink_side("jdbc_tuned", jdbc("jdbc_tuned", TUNED_JDBC)),
        }
        if self.args.no_jdbc_default:
            del sinks["jdbc_default"]
        result["sink"] = self._interleaved(sinks)

        def e2e_run() -> Figure:
            e2e.start()
            try:
                with table_progress(e2e_db, self.table, self.workload.inserts, self.workload.updates) as progress:
                    figure = measure(
                        lambda: e2e.pid,
                        progress,
                        self.workload.events,
                        e2e.failure,
                        timeout=timeout,
                        interval=0.2,
                        what="cdc run",
                    )
            finally:
                e2e.stop()
            figure.delivered = self._check(e2e_db, "cdc run")
            return figure

        log(f"repeat {self.index + 1}: end to end, cdc run draining the backlog")
        figure = e2e_run()
        result["e2e"] = {"ours": _figure(figure)}
        if self.args.rate > 0 and self.args.e2e_seconds > 0:
            result["latency"] = self._latency(stack)
        return result

    def _interleaved(self, sides: dict[str, Callable[[], Figure]]) -> dict[str, Any]:
        names = list(sides)
        shift = self.index % len(names)
        out: dict[str, Any] = {}
        for name in names[shift:] + names[:shift]:
            log(f"repeat {self.index + 1}: {name} ...")
            figure = sides[name]()
            out[name] = _figure(figure)
            log(
                f"repeat {self.index + 1}: {name}: {figure.rate:,.0f}/s, {figure.cpu_s:.1f} CPU-s, "
                f"peak RSS {figure.peak_rss_mib:.0f} MiB"
            )
        return out

    def _check(self, dsn: str, name: str) -> dict[str, int]:
        """The destination's row counts, which must be the source's (the primed row, every insert and update)."""
        counts = destination_counts(dsn, self.table)
        expected = {"rows": self.workload.inserts + 1, "updated": self.workload.updates}
        if counts != expected:
            raise BenchError(f"{name}: the destination holds {counts}, expected {expected}")
        return counts

    def _latency(self, stack: contextlib.ExitStack) -> dict[str, Any]:
        """`cdc run` (source and sink) on a fresh table while a writer commits `--rate` rows/s on schedule."""
        args, src = self.args, self.env["CDC_SOURCE_DSN"]
        name = f"{self.id}_lat"
        ident = sql.Identifier(name)
        with psycopg.connect(src, autocommit=True) as conn:
            conn.execute(sql.SQL(f"CREATE TABLE {{}} ({LATENCY_COLUMNS})").format(ident))
        stack.callback(_drop, src, name)
        dsn = stack.enter_context(scratch_database(self.env["CDC_TARGET_DSN"], name))
        config: dict[str, Any] = {
            "name": name,
            "kafka": {"bootstrap_servers": "${CDC_KAFKA_BOOTSTRAP}"},
            "schema_registry": {"url": "${CDC_SCHEMA_REGISTRY_URL}"},
            "server": {"enabled": False},
            "source": {**self._source(name), "tables": {"include": [f"public.{name}"]}},
            "sink": {**self._sink(dsn, [f"{name}.public.{name}"]), "batch": {"max_wait_ms": 50}},
            "transforms": {"source": [], "sink": []},
        }
        process = CdcRun(self.workdir, name, config, self.env)
        stack.callback(drop_slot, src, name, name)
        stack.callback(process.stop)
        process.start()
        wait_for(lambda: slot_exists(src, name), f"slot {name}", check=process.failure)
        time.sleep(1.0)
        log(f"repeat {self.index + 1}: latency at {args.rate:,.0f} rows/s offered for {args.e2e_seconds:.0f}s")
        late: list[float] = []
        began = time.monotonic()
        sent = offered_writer(src, name, args.rate, args.e2e_seconds, args.e2e_tx_rows, late)
        write_seconds = time.monotonic() - began
        values: list[float] = []
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            values = applied_latencies_ms(dsn, name)
            if len(values) >= sent:
                break
            problem = process.failure()
            if problem:
                raise BenchError(f"latency run: {problem}")
            time.sleep(0.5)
        rss = peak_rss_mib(process.pid) if process.pid else 0.0
        process.stop()
        if len(values) < sent:
            raise BenchError(f"latency run: {len(values)} of {sent} rows applied within {args.timeout:.0f}s")
        return {
            "offered_rate": args.rate,
            "achieved_write_rate": round(sent / write_seconds),
            "rows": sent,
            "writer_late": len(late),
            "writer_late_max_ms": round(max(late, default=0) * 1000),
            "p50_ms": round(percentile(values, 0.5), 1),
            "p99_ms": round(percentile(values, 0.99), 1),
            "max_ms": round(values[-1], 1),
            "peak_rss_mib": round(rss),
        }

    def _drop_table(self) -> None:
        _drop(self.env["CDC_SOURCE_DSN"], self.table)

    def close(self) -> None:
        self.offsets.close()


def _has_row(dsn: str, table: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            return (
                conn.execute(sql.SQL("SELECT 1 FROM {} LIMIT 1").format(sql.Identifier(table))).fetchone() is not None
            )
        except psycopg.errors.UndefinedTable:
            return False


def _drop(dsn: str, table: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))


def _figure(figure: Figure) -> dict[str, Any]:
    return {
        "rate": round(figure.rate),
        "events": figure.events,
        "seconds": round(figure.seconds, 2),
        "cpu_s": round(figure.cpu_s, 2),
        "peak_rss_mib": round(figure.peak_rss_mib),
        "delivered": figure.delivered,
    }


# --- report -------------------------------------------------------------------------------------------------------


def medians(repeats: list[dict[str, Any]], stage: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for side in repeats[0].get(stage, {}):
        out[side] = {
            key: statistics.median(r[stage][side][key] for r in repeats)
            for key, value in repeats[0][stage][side].items()
            if isinstance(value, int | float)
        }
    return out


def _cell(figure: dict[str, float], unit: str) -> str:
    return f"{figure['rate']:,.0f} {unit}/s, {figure['cpu_s']:.1f} CPU-s, peak RSS {figure['peak_rss_mib']:,.0f} MiB"


def table(summary: dict[str, Any]) -> str:
    lines = ["| stage | ours | Debezium | ratio (ours / Debezium) |", "| --- | --- | --- | --- |"]
    source = summary["source"]
    if source:
        ours, dbz = source["ours"], source["debezium"]
        lines.append(
            f"| source: WAL -> Kafka acknowledged | {_cell(ours, 'events')} | {_cell(dbz, 'events')} | "
            f"{ratio(ours, dbz)} |"
        )
    sink = summary["sink"]
    for variant, label in (
        ("jdbc_default", "JDBC sink, defaults"),
        ("jdbc_tuned", "JDBC sink, unnest inserts, batch 5,000, reduction buffer"),
    ):
        if variant in sink:
            lines.append(
                f"| sink: Kafka -> destination rows ({label}) | {_cell(sink['ours'], 'rows')} | "
                f"{_cell(sink[variant], 'rows')} | {ratio(sink['ours'], sink[variant])} |"
            )
    e2e = summary["e2e"].get("ours")
    if e2e:
        lines.append(f"| end to end, `cdc run` (commit -> applied, backlog) | {_cell(e2e, 'events')} | - | - |")
    latency = summary.get("latency")
    if latency:
        lines.append(
            f"| end to end latency at {latency['offered_rate']:,.0f} rows/s offered | p50 "
            f"{latency['p50_ms']:,.0f} ms, p99 {latency['p99_ms']:,.0f} ms (writer achieved "
            f"{latency['achieved_write_rate']:,.0f}/s) | - | - |"
        )
    return "\n".join(lines)


def ratio(ours: dict[str, float], theirs: dict[str, float]) -> str:
    speed = ours["rate"] / theirs["rate"] if theirs["rate"] else float("nan")
    memory = ours["peak_rss_mib"] / theirs["peak_rss_mib"] if theirs["peak_rss_mib"] else float("nan")
    cpu = ours["cpu_s"] / theirs["cpu_s"] if theirs["cpu_s"] else float("nan")
    return f"{speed:.2f}x speed, {cpu:.2f}x CPU, {memory:.2f}x memory"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inserts", type=int, default=500_000)
    parser.add_argument("--updates", type=int, default=50_000)
    parser.add_argument("--tx-size", type=int, default=1_000, help="rows per source transaction")
    parser.add_argument("--quick", action="store_true", help="50,000 inserts + 5,000 updates, 10 s of latency")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved repeats; the table shows medians")
    parser.add_argument("--rate", type=float, default=10_000, help="rows/s offered in the latency run (0: skip)")
    parser.add_argument("--e2e-seconds", type=float, default=30, help="length of the latency run (0: skip)")
    parser.add_argument("--e2e-tx-rows", type=int, default=50, help="rows per transaction in the latency run")
    parser.add_argument(
        "--decimal-handling",
        choices=["precise", "string", "double"],
        default="string",
        help="numeric encoding of both sources (Debezium's JDBC sink cannot map our precise decimals' NaN union)",
    )
    parser.add_argument("--no-jdbc-default", action="store_true", help="only the tuned JDBC sink")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a side may take")
    parser.add_argument(
        "--env-file", type=Path, default=None, help="the stack's endpoints (default: $CDC_HOME/dev.env)"
    )
    parser.add_argument("--home", type=Path, default=None, help="where Connect's jars are cached (default: $CDC_HOME)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="directory of the JSON report")
    args = parser.parse_args(argv)
    if args.quick:
        args.inserts, args.updates = 50_000, 5_000
        args.e2e_seconds = min(args.e2e_seconds, 10)
    home = Path(os.environ.get("CDC_HOME") or ROOT / ".cdc").expanduser().absolute()
    args.home = (args.home or home).absolute()
    args.env_file = args.env_file or home / "dev.env"
    if args.updates > args.inserts:
        parser.error("--updates must not exceed --inserts (updates touch the first rows)")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    env = environment_with(args.env_file if args.env_file.is_file() else None)
    missing = [
        k
        for k in ("CDC_SOURCE_DSN", "CDC_TARGET_DSN", "CDC_KAFKA_BOOTSTRAP", "CDC_SCHEMA_REGISTRY_URL")
        if not env.get(k)
    ]
    if missing:
        raise SystemExit(f"no {', '.join(missing)}: start the stack (`cdc dev up`) or pass --env-file")
    workdir = args.out / "work"
    started = time.time()
    repeats: list[dict[str, Any]] = []
    for index in range(args.repeat):
        with contextlib.ExitStack() as stack:
            repeat = Repeat(args, env, workdir, index)
            stack.callback(repeat.close)
            repeats.append(repeat.run(stack))
        # Kept only when the repeat failed: its logs say why.
        shutil.rmtree(repeat.workdir, ignore_errors=True)
    summary = {stage: medians(repeats, stage) for stage in ("source", "sink", "e2e")}
    latencies = [r["latency"] for r in repeats if "latency" in r]
    if latencies:
        summary["latency"] = {key: statistics.median(lat[key] for lat in latencies) for key in latencies[0]}
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started),
        "machine": machine(),
        "load_average": {"start": LOAD_AT_START, "end": os.getloadavg()},
        "versions": {
            "kafka_connect": CONNECT_VERSION,
            "debezium": DEBEZIUM_VERSION,
            "apicurio_converter": AVRO_CONVERTER_VERSION,
        },
        "parameters": {
            "inserts": args.inserts,
            "updates": args.updates,
            "tx_size": args.tx_size,
            "repeat": args.repeat,
            "rate": args.rate,
            "e2e_seconds": args.e2e_seconds,
            "e2e_tx_rows": args.e2e_tx_rows,
            "jdbc_tuned": TUNED_JDBC,
        },
        "medians": summary,
        "repeats": repeats,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"versus-debezium-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(started))}.json"
    path.write_text(json.dumps(report, indent=2))
    info = report["machine"]
    print(
        f"{args.inserts:,} inserts + {args.updates:,} updates in transactions of {args.tx_size:,}; "
        f"medians of {args.repeat}; {info['cores']} cores ({info['cpu']}), {info['ram_gib']} GiB RAM; "
        f"load average {LOAD_AT_START[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end; "
        f"Debezium {DEBEZIUM_VERSION} on Kafka Connect {CONNECT_VERSION}\n"
    )
    print(table(summary))
    print(f"\nJSON: {path}")
    return report


LOAD_AT_START = os.getloadavg()

if __name__ == "__main__":
    main()

"""Two active regions against one: end-to-end throughput and latency, and the duplicates the ledger absorbs.

    python bench/regions_bench.py [--burst 30000 --tx-size 500] [--rate 200 --seconds 30 --tx-rows 5]
                                  [--two-first] [--env-file <home>/dev.env]

Starts its own two-region stack, `cdc dev up --regions 2 --free-ports --home <temporary directory>`, and stops it
at the end whatever happens (`cdc dev down --clean --home`); `--env-file` names a running two-region stack to use
instead (left running). Two configurations, one after the other (`--two-first` swaps them), each on its own
tables, slot and topics:

- one region: region A's source and region A's sink (MirrorMaker still copies the topics to region B);
- two regions: the same and region B's sink, which reads the copies in region B (`A.<topic>`) and applies into the
  same destination, where the ledger (`cdc.applied_changes`) lets each change take effect once.

The same workload in each, with every process running and primed (one row per table applied by each sink):

1. burst: `--burst` inserts in transactions of `--tx-size`, written as fast as the source database takes them;
   throughput = inserts / (first write -> the destination holds every row).
2. offered rate: `--rate` rows/s in transactions of `--tx-rows` for `--seconds`; latency of a change = the first
   sink's apply transaction (`cdc.applied_changes.applied_at`) minus `clock_timestamp()` at the source write.

After each, the bench waits until every running sink has read every change (its `cdc_sink_applied` +
`cdc_sink_duplicates` + `cdc_sink_stale` counters, from /metrics), then reports per region: changes applied
(the ledger's rows by the topic their sink read: local topics in region A, `A.` topics in region B) and changes
skipped as duplicates (the sink's counter). Output: a markdown table on stdout, JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.e2e_support import (  # noqa: E402
    LATENCY_COLUMNS,
    CdcRun,
    applied_latencies_ms,
    cpu_seconds,
    insert_rows,
    log,
    machine,
    offered_writer,
    percentile,
)
from connector.config_loader import read_env_file  # noqa: E402
from devstack.connect import drop_slot_and_publication  # noqa: E402
from devstack.ports import free_ports  # noqa: E402

REGION_A, REGION_B = "A", "B"
ENV_KEYS = ("CDC_SOURCE_DSN", "CDC_TARGET_DSN", "CDC_KAFKA_BOOTSTRAP", "CDC_SCHEMA_REGISTRY_URL")
REGION_B_KEYS = ("CDC_KAFKA_BOOTSTRAP_B", "CDC_SCHEMA_REGISTRY_URL_B")
SINK_COUNTERS = ("cdc_sink_applied", "cdc_sink_duplicates", "cdc_sink_stale")


class BenchError(Exception):
    """A process failed or a phase did not finish: the run stops with this message."""


# --- the stack ----------------------------------------------------------------------------------------------------


def cdc(*args: str, timeout: float) -> None:
    subprocess.run([sys.executable, "-m", "connector.cli", *args], cwd=ROOT, check=True, timeout=timeout)


@contextlib.contextmanager
def two_region_stack(env_file: Path | None) -> Iterator[dict[str, str]]:
    """The endpoints of a two-region stack: the one of `env_file`, or one started here and stopped after."""
    if env_file is not None:
        yield read_env_file(env_file)
        return
    # Not under a private (0700) parent: PostgreSQL runs as another OS user when started as root.
    home = Path(tempfile.mkdtemp(prefix="cdc-regions-bench-"))
    home.chmod(0o755)
    try:
        log(f"starting a two-region stack in {home} (a few minutes)")
        started = time.monotonic()
        cdc("dev", "up", "--regions", "2", "--free-ports", "--home", str(home), timeout=900)
        log(f"stack up in {time.monotonic() - started:.0f}s")
        yield read_env_file(home / "dev.env")
    finally:
        with contextlib.suppress(Exception):
            cdc("dev", "down", "--clean", "--home", str(home), timeout=300)
        shutil.rmtree(home, ignore_errors=True)


# --- one configuration --------------------------------------------------------------------------------------------


def sink_counters(port: int) -> dict[str, float]:
    """The sink's applied, duplicate and stale counters (summed over labels) from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    totals = dict.fromkeys(SINK_COUNTERS, 0.0)
    for family in text_string_to_metric_families(text):
        if family.name in totals:
            totals[family.name] += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return totals


def wait_for(predicate: Callable[[], bool], what: str, timeout: float, check: Callable[[], str | None]) -> float:
    """Seconds until `predicate()` holds; fails on `timeout` or when `check()` names a problem."""
    started = time.monotonic()
    while not predicate():
        problem = check()
        if problem:
            raise BenchError(f"{what}: {problem}")
        if time.monotonic() - started > timeout:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)
    return time.monotonic() - started


@dataclass
class Sink:
    region: str
    process: CdcRun
    port: int


class Configuration:
    """Region A's source and sink, and region B's sink when `regions` is 2; its own tables, slot and topics."""

    def __init__(self, env: dict[str, str], workdir: Path, regions: int, args: argparse.Namespace) -> None:
        self.env, self.args, self.regions = env, args, regions
        self.name = f"rgbench{regions}_{uuid.uuid4().hex[:6]}"
        self.burst_table, self.rate_table = f"{self.name}_burst", f"{self.name}_rate"
        self.workdir = workdir / self.name
        self.workdir.mkdir(parents=True)
        # The configs carry the endpoints themselves: CDC_* variables of the environment (another stack) are ignored.
        process_env = dict(os.environ)
        self.source = CdcRun(self.workdir, "source-a", self._source_config(), process_env)
        self.sinks = [
            Sink(
                region,
                CdcRun(self.workdir, f"sink-{region.lower()}", self._sink_config(region, port), process_env),
                port,
            )
            for region, port in zip((REGION_A, REGION_B)[:regions], free_ports(regions), strict=True)
        ]

    def _source_config(self) -> dict[str, Any]:
        env = self.env
        return {
            "name": f"{self.name}-source-a",
            "kafka": {"bootstrap_servers": env["CDC_KAFKA_BOOTSTRAP"]},
            "schema_registry": {"url": env["CDC_SCHEMA_REGISTRY_URL"]},
            "source": {
                "dsn": env["CDC_SOURCE_DSN"],
                "topic_prefix": self.name,
                "slot": {"name": self.name},
                "publication": {"name": self.name},
                "tables": {"include": [f"public.{self.burst_table}", f"public.{self.rate_table}"]},
                "snapshot": {"mode": "never"},
                "status_interval_s": 1,
            },
            "server": {"enabled": False},
        }

    def _sink_config(self, region: str, port: int) -> dict[str, Any]:
        """A region's sink: its own group on its own cluster, its local topics and those mirrored from the other."""
        env, suffix = self.env, "" if region == REGION_A else "_B"
        other = REGION_B if region == REGION_A else REGION_A
        return {
            "name": f"{self.name}-sink-{region.lower()}",
            "kafka": {"bootstrap_servers": env[f"CDC_KAFKA_BOOTSTRAP{suffix}"]},
            "schema_registry": {"url": env[f"CDC_SCHEMA_REGISTRY_URL{suffix}"]},
            "sink": {
                "dsn": env["CDC_TARGET_DSN"],
                "group_id": f"{self.name}-{region.lower()}",
                "topics_regex": f"^({other}\\.)?{self.name}\\.public\\..*",
                "auto_offset_reset": "earliest",
                "target_schema": "public",
                "table_name_format": "{table}",
                "errors": {"check_schema_subjects": False},
                "batch": {"max_records": self.args.batch, "max_wait_ms": 50},
            },
            "transforms": {"source": [], "sink": []},
            "server": {"port": port},
        }

    # processes
    def _failure(self) -> str | None:
        for process in (self.source, *(s.process for s in self.sinks)):
            problem = process.failure()
            if problem:
                return problem
        return None

    def _cpu(self) -> dict[str, float]:
        """CPU seconds (user + system) each process used so far: `source`, `sink A`, `sink B`."""
        processes = {"source": self.source, **{f"sink {s.region}": s.process for s in self.sinks}}
        return {label: cpu_seconds(p.pid) if p.pid else 0.0 for label, p in processes.items()}

    def _counters(self) -> dict[str, dict[str, float]]:
        return {sink.region: sink_counters(sink.port) for sink in self.sinks}

    def _has_read(self, sink: Sink, changes: float) -> Callable[[], bool]:
        """Whether `sink` has read `changes` changes in all (applied, skipped as duplicates or as stale)."""
        return lambda: sum(sink_counters(sink.port).values()) >= changes

    def _ledger_rows(self, table: str) -> int:
        with psycopg.connect(self.env["CDC_TARGET_DSN"], autocommit=True) as conn:
            try:
                row = conn.execute(
                    "SELECT count(*) FROM cdc.applied_changes WHERE destination = to_regclass(%s)::oid",
                    (f"public.{table}",),
                ).fetchone()
            except psycopg.errors.UndefinedTable:
                return 0
        return int(row[0]) if row else 0

    def _applied_by_region(self, table: str) -> dict[str, int]:
        """The ledger's rows of the phase's changes (not the primed row) by the topic their sink read: `A.<topic>` in
        region B, the rest in region A."""
        query = sql.SQL(
            "SELECT count(*) FILTER (WHERE a.topic NOT LIKE 'A.%%'), count(*) FILTER (WHERE a.topic LIKE 'A.%%') "
            "FROM cdc.applied_changes a JOIN {} t ON a.change_id = t.__cdc_change_id "
            "WHERE a.destination = {}::regclass::oid AND t.id >= %s"
        ).format(sql.Identifier(table), sql.Literal(table))
        with psycopg.connect(self.env["CDC_TARGET_DSN"], autocommit=True) as conn:
            row = conn.execute(query, (1,)).fetchone()
        assert row is not None
        return {REGION_A: int(row[0]), REGION_B: int(row[1])}

    def run(self, stack: contextlib.ExitStack) -> dict[str, Any]:
        src, timeout = self.env["CDC_SOURCE_DSN"], self.args.timeout
        with psycopg.connect(src, autocommit=True) as conn:
            for table in (self.burst_table, self.rate_table):
                conn.execute(sql.SQL(f"CREATE TABLE {{}} ({LATENCY_COLUMNS})").format(sql.Identifier(table)))
        stack.callback(self._drop)
        for process in (self.source, *(s.process for s in self.sinks)):
            stack.callback(process.stop)
            process.start()
        wait_for(self._slot_exists, "the source's slot", timeout, self._failure)

        # Prime: a row in each table, applied, and read by every sink (region B's through the mirrored topics).
        with psycopg.connect(src, autocommit=True) as conn:
            for table in (self.burst_table, self.rate_table):
                conn.execute(sql.SQL("INSERT INTO {} (id, payload) VALUES (0, 'prime')").format(sql.Identifier(table)))
        for sink in self.sinks:
            wait_for(
                self._has_read(sink, 2),
                f"sink {sink.region} to read the primed rows",
                timeout,
                self._failure,
            )
        log(f"{self.regions} region(s): primed")
        result: dict[str, Any] = {"regions": self.regions, "name": self.name}
        result["burst"] = self._burst()
        result["rate"] = self._rate()
        return result

    def _slot_exists(self) -> bool:
        with psycopg.connect(self.env["CDC_SOURCE_DSN"], autocommit=True) as conn:
            query = "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s"
            return conn.execute(query, (self.name,)).fetchone() is not None

    def _settle(self, before: dict[str, dict[str, float]], changes: int) -> dict[str, dict[str, int]]:
        """Wait until every sink has read `changes` more changes; what each applied and skipped meanwhile (counted by
        the sink: `applied`, `duplicates`, `stale`)."""
        for sink in self.sinks:
            wait_for(
                self._has_read(sink, sum(before[sink.region].values()) + changes),
                f"sink {sink.region} to read every change",
                self.args.timeout,
                self._failure,
            )
        after = self._counters()
        return {
            region: {
                key.removeprefix("cdc_sink_"): round(after[region][key] - before[region][key]) for key in SINK_COUNTERS
            }
            for region in after
        }

    def _burst(self) -> dict[str, Any]:
        args = self.args
        before, cpu_before = self._counters(), self._cpu()
        log(f"{self.regions} region(s): burst of {args.burst:,} inserts in transactions of {args.tx_size:,}")
        started = time.monotonic()
        with psycopg.connect(self.env["CDC_SOURCE_DSN"], autocommit=True) as conn:
            for low in range(1, args.burst + 1, args.tx_size):
                high = min(args.burst, low + args.tx_size - 1)
                insert_rows(conn, self.burst_table, low, high)
        written = time.monotonic() - started
        expected = args.burst + 1  # and the primed row
        wait_for(
            lambda: self._ledger_rows(self.burst_table) >= expected, "the burst applied", args.timeout, self._failure
        )
        seconds = time.monotonic() - started
        settled = self._settle(before, args.burst)
        settled_s = time.monotonic() - started
        figures = {
            "changes": args.burst,
            "write_s": round(written, 2),
            "applied_s": round(seconds, 2),
            "changes_per_s": round(args.burst / seconds),
            "all_sinks_read_s": round(settled_s, 2),
            "applied_by_region": self._applied_by_region(self.burst_table),
            "sinks": settled,
            "cpu_s": {label: round(cpu - cpu_before[label], 1) for label, cpu in self._cpu().items()},
        }
        log(f"{self.regions} region(s): burst {figures}")
        return figures

    def _rate(self) -> dict[str, Any]:
        args = self.args
        before, cpu_before = self._counters(), self._cpu()
        log(f"{self.regions} region(s): {args.rate:,.0f} rows/s offered for {args.seconds:.0f}s")
        late: list[float] = []
        started = time.monotonic()
        sent = offered_writer(self.env["CDC_SOURCE_DSN"], self.rate_table, args.rate, args.seconds, args.tx_rows, late)
        written = time.monotonic() - started
        values: list[float] = []

        def applied() -> bool:
            nonlocal values
            values = applied_latencies_ms(self.env["CDC_TARGET_DSN"], self.rate_table, min_id=1)
            return len(values) >= sent

        wait_for(applied, "the offered rows applied", args.timeout, self._failure)
        settled = self._settle(before, sent)
        figures = {
            "offered_rate": args.rate,
            "achieved_write_rate": round(sent / written),
            "changes": sent,
            "writer_late": len(late),
            "writer_late_max_ms": round(max(late, default=0) * 1000),
            "p50_ms": round(percentile(values, 0.5), 1),
            "p95_ms": round(percentile(values, 0.95), 1),
            "p99_ms": round(percentile(values, 0.99), 1),
            "max_ms": round(values[-1], 1),
            "mean_ms": round(statistics.fmean(values), 1),
            "applied_by_region": self._applied_by_region(self.rate_table),
            "sinks": settled,
            "cpu_s": {label: round(cpu - cpu_before[label], 1) for label, cpu in self._cpu().items()},
        }
        log(f"{self.regions} region(s): offered rate {figures}")
        return figures

    def _drop(self) -> None:
        drop_slot_and_publication(self.env["CDC_SOURCE_DSN"], self.name, self.name)
        for dsn in (self.env["CDC_SOURCE_DSN"], self.env["CDC_TARGET_DSN"]):
            with psycopg.connect(dsn, autocommit=True) as conn:
                for table in (self.burst_table, self.rate_table):
                    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))


# --- report -------------------------------------------------------------------------------------------------------


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| figure | one region (source + sink A) | two regions (source + sink A + sink B) |",
        "| --- | --- | --- |",
    ]

    def row(label: str, cell: Callable[[dict[str, Any]], str]) -> None:
        lines.append(f"| {label} | {cell(results['one'])} | {cell(results['two'])} |")

    def sinks(phase: str) -> Callable[[dict[str, Any]], str]:
        def cell(result: dict[str, Any]) -> str:
            figures = result[phase]
            parts = []
            for region, counts in figures["sinks"].items():
                parts.append(
                    f"{region}: {figures['applied_by_region'][region]:,} applied, {counts['duplicates']:,} duplicates "
                    f"skipped" + (f", {counts['stale']:,} stale" if counts["stale"] else "")
                )
            return "; ".join(parts)

        return cell

    def cpu(phase: str) -> Callable[[dict[str, Any]], str]:
        return lambda result: ", ".join(f"{label} {seconds:.1f}" for label, seconds in result[phase]["cpu_s"].items())

    burst = results["one"]["burst"]
    row(
        f"burst: {burst['changes']:,} inserts, commit -> destination holds all",
        lambda r: (
            f"{r['burst']['changes_per_s']:,} changes/s ({r['burst']['applied_s']:.1f} s; written in "
            f"{r['burst']['write_s']:.1f} s; every sink read all at {r['burst']['all_sinks_read_s']:.1f} s)"
        ),
    )
    row("burst: per region (ledger rows; sink's duplicate counter)", sinks("burst"))
    row("burst: CPU seconds per process, first write -> every sink read all", cpu("burst"))
    rate = results["one"]["rate"]
    row(
        f"latency at {rate['offered_rate']:,.0f} rows/s offered ({rate['changes']:,} changes), first apply",
        lambda r: (
            f"p50 {r['rate']['p50_ms']:,.0f} ms, p95 {r['rate']['p95_ms']:,.0f} ms, p99 {r['rate']['p99_ms']:,.0f} ms, "
            f"max {r['rate']['max_ms']:,.0f} ms (writer {r['rate']['achieved_write_rate']:,}/s, "
            f"late {r['rate']['writer_late']} times)"
        ),
    )
    row("offered rate: per region (ledger rows; sink's duplicate counter)", sinks("rate"))
    row("offered rate: CPU seconds per process, first write -> every sink read all", cpu("rate"))
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--burst", type=int, default=30_000, help="inserts of the burst")
    parser.add_argument("--tx-size", type=int, default=500, help="rows per transaction of the burst")
    parser.add_argument("--rate", type=float, default=200, help="rows/s offered in the latency phase")
    parser.add_argument("--seconds", type=float, default=30, help="length of the latency phase")
    parser.add_argument("--tx-rows", type=int, default=5, help="rows per transaction in the latency phase")
    parser.add_argument("--batch", type=int, default=5_000, help="the sinks' batch.max_records")
    parser.add_argument("--two-first", action="store_true", help="run the two-region configuration first")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a phase may take")
    parser.add_argument(
        "--env-file", type=Path, default=None, help="a running two-region stack's dev.env (default: start one)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="directory of the JSON report")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    load_at_start = os.getloadavg()
    started = time.time()
    results: dict[str, dict[str, Any]] = {}
    with two_region_stack(args.env_file) as env:
        missing = [key for key in (*ENV_KEYS, *REGION_B_KEYS) if not env.get(key)]
        if missing:
            raise SystemExit(f"no {', '.join(missing)} in the stack's env file: is it a two-region stack?")
        workdir = args.out / "work"
        order = (("two", 2), ("one", 1)) if args.two_first else (("one", 1), ("two", 2))
        for label, regions in order:
            with contextlib.ExitStack() as stack:
                configuration = Configuration(env, workdir, regions, args)
                results[label] = configuration.run(stack)
            # Kept only when the configuration failed: its logs say why.
            shutil.rmtree(configuration.workdir, ignore_errors=True)
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started),
        "machine": machine(),
        "load_average": {"start": load_at_start, "end": os.getloadavg()},
        "parameters": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"regions-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(started))}.json"
    path.write_text(json.dumps(report, indent=2))
    markdown = table(results)
    path.with_suffix(".md").write_text(markdown + "\n")
    info = report["machine"]
    print(
        f"{info['cores']} cores ({info['cpu']}), {info['ram_gib']} GiB RAM; load average {load_at_start[0]:.1f} at "
        f"start, {os.getloadavg()[0]:.1f} at end; {report['seconds']} s in all\n"
    )
    print(markdown)
    print(f"\nJSON: {path}")
    return report


if __name__ == "__main__":
    main()

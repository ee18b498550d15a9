"""Incremental snapshot throughput, and the stream's confirmation latency while it runs.

    python bench/incremental_bench.py --rows N [--chunk N] [--parallelism N [N ...]] [--name NAME] [--env-file PATH]

fills a 5-column table once (never copied: `snapshot.mode: never`), then for each `--parallelism` in turn runs
`cdc run --only source` on a slot of its own, requests an incremental snapshot with `cdc snapshot`, and measures
until the persisted progress says done. Meanwhile, every 0.2 s it updates one row and measures how long until the
slot's confirmed LSN passes that write (the stream's latency during the backfill: p50, p99, max), and the source
process's CPU time per row. Endpoints come from CDC_* variables, completed by `--env-file` (default
`.cdc/dev.env`). `--name` names the slots, tables and topics (a fresh name each run keeps the registry's subjects
of an earlier run, perhaps of another schema style, out of the way). Everything it creates is dropped at the end:
the table, and each run's slot, publication, signal table, progress row and topics.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from confluent_kafka.admin import AdminClient
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from connector.config_loader import read_env_file  # noqa: E402


def endpoints(env_file: Path) -> dict[str, str]:
    """The environment, completed by the stack's env file when there is one (the environment wins)."""
    return {**(read_env_file(env_file) if env_file.is_file() else {}), **os.environ}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux `/proc`): the source's own cost, whatever else runs."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cdc(*args: str) -> list[str]:
    return [sys.executable, "-m", "connector.cli", "--env-file", os.devnull, *args]


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile of sorted `values` (0 when empty)."""
    if not values:
        return 0.0
    return values[min(len(values) - 1, max(0, math.ceil(share * len(values)) - 1))]


def run(env: dict[str, str], name: str, table: str, rows: int, chunk: int, parallelism: int) -> str:
    """One incremental snapshot of `table` by a source of its own named `name`; its result line."""
    dsn = env["CDC_SOURCE_DSN"]
    signals = sql.Identifier(f"{name}_signals")
    config = {
        "name": name,
        "kafka": {"bootstrap_servers": "${CDC_KAFKA_BOOTSTRAP}"},
        "schema_registry": {"url": "${CDC_SCHEMA_REGISTRY_URL}"},
        "source": {
            "dsn": "${CDC_SOURCE_DSN}", "topic_prefix": name, "slot": {"name": name}, "publication": {"name": name},
            "tables": {"include": [f"public.{table}"]}, "snapshot": {"mode": "never"},
            "signal": {"table": f"public.{name}_signals"},
            "incremental_snapshot": {"chunk_size": chunk, "parallelism": parallelism},
        },
        "server": {"enabled": False},
    }  # fmt: skip
    workdir = Path(tempfile.mkdtemp(prefix="incbench"))
    config_path = workdir / "connector.yaml"
    config_path.write_text(json.dumps(config))
    with (workdir / "cdc.log").open("wb") as log:
        process = subprocess.Popen(
            cdc("run", str(config_path), "--only", "source"), stdout=log, stderr=subprocess.STDOUT, env=env
        )
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (name,)).fetchone() != (
                True,
            ):
                if process.poll() is not None:
                    raise SystemExit(f"the source stopped (exit {process.returncode}): see {workdir / 'cdc.log'}")
                time.sleep(0.2)
            subprocess.run(cdc("snapshot", str(config_path), "--table", f"public.{table}"), env=env,
                           check=True, stdout=subprocess.DEVNULL)  # fmt: skip
            started = time.monotonic()
            cpu_started = cpu_seconds(process.pid)
            latencies: list[float] = []
            while True:
                row = conn.execute(
                    "SELECT progress -> 'incremental' -> 'tables' -> 0 ->> 'done' FROM cdc.source_state "
                    "WHERE slot_name = %s",
                    (name,),
                ).fetchone()
                if row == ("true",):
                    break
                if process.poll() is not None:
                    raise SystemExit(f"the source stopped (exit {process.returncode}): see {workdir / 'cdc.log'}")
                conn.execute(sql.SQL("UPDATE {} SET a = a + 1 WHERE id = 1").format(sql.Identifier(table)))
                lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
                written = time.monotonic()
                confirmed = "SELECT confirmed_flush_lsn >= %s FROM pg_replication_slots WHERE slot_name = %s"
                while conn.execute(confirmed, (lsn[0] if lsn else None, name)).fetchone() != (True,):
                    time.sleep(0.01)
                latencies.append(time.monotonic() - written)
                time.sleep(0.2)
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(process.pid) - cpu_started
        latencies.sort()
        p50, p99 = (percentile(latencies, share) * 1000 for share in (0.5, 0.99))
        worst = latencies[-1] * 1000 if latencies else 0.0
        return (
            f"{rows:,} rows, chunk {chunk}, parallelism {parallelism}: {elapsed:.1f} s, {rows / elapsed:,.0f} rows/s, "
            f"source CPU {cpu * 1e6 / rows:.0f} us/row; stream confirmation latency during the backfill p50 "
            f"{p50:.0f} ms, p99 {p99:.0f} ms, max {worst:.0f} ms ({len(latencies)} probes)"
        )
    finally:
        process.terminate()
        process.wait(60)
        with psycopg.connect(dsn, autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (name,)).fetchone():
                conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
            conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(name)))
            conn.execute("DELETE FROM cdc.source_state WHERE slot_name = %s", (name,))
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(signals))
        delete_topics(env["CDC_KAFKA_BOOTSTRAP"], f"{name}.")


def delete_topics(bootstrap: str, prefix: str) -> None:
    """Delete the topics named `prefix...` (a run's records would otherwise stay in the shared Kafka)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = [t for t in admin.list_topics(timeout=30).topics if t.startswith(prefix)]
    for future in admin.delete_topics(topics, operation_timeout=60).values() if topics else ():
        future.result()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--parallelism", type=int, nargs="+", default=[1], help="one run per value, in turn")
    parser.add_argument("--name", default="cdc_incbench")
    parser.add_argument("--env-file", type=Path, default=ROOT / ".cdc" / "dev.env", help="the stack's endpoints")
    args = parser.parse_args()
    name = args.name
    table = f"{name}_t"
    env = endpoints(args.env_file)
    dsn = env["CDC_SOURCE_DSN"]
    ident = sql.Identifier(table)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident))
            conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, a int, b text, c timestamptz, d numeric(10,2))")
                         .format(ident))  # fmt: skip
            conn.execute(
                sql.SQL("INSERT INTO {} SELECT g, g, 'row ' || g, now(), g / 3.0 FROM generate_series(1, %s) g")
                .format(ident),
                (args.rows,),
            )  # fmt: skip
            conn.execute(sql.SQL("ANALYZE {}").format(ident))  # the estimate the key ranges are split by
        for parallelism in args.parallelism:
            print(run(env, f"{name}_p{parallelism}", table, args.rows, args.chunk, parallelism), flush=True)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Incremental snapshot throughput, and the stream's confirmation latency while it runs.

    python bench/incremental_bench.py --rows N [--chunk N] [--parallelism N] [--name NAME] [--env-file PATH]

fills a 5-column table (never copied: `snapshot.mode: never`), runs `cdc run --only source`, requests an
incremental snapshot with `cdc snapshot`, and measures until the persisted progress says done. Meanwhile, every
0.2 s it updates one row and measures how long until the slot's confirmed LSN passes that write (the stream's
latency during the backfill), and the source process's CPU time per row.
Endpoints come from CDC_* variables, completed by `--env-file` (default `.cdc/dev.env`).
`--name` names the slot, tables and topics (a fresh name each run keeps the registry's subjects of an earlier run,
perhaps of another schema style, out of the way).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--parallelism", type=int, default=1)
    parser.add_argument("--name", default="cdc_incbench")
    parser.add_argument("--env-file", type=Path, default=ROOT / ".cdc" / "dev.env", help="the stack's endpoints")
    args = parser.parse_args()
    name = args.name
    table = sql.Identifier(f"{name}_t")
    signals = sql.Identifier(f"{name}_signals")
    env = endpoints(args.env_file)
    dsn = env["CDC_SOURCE_DSN"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP table IF EXISTS {}, {}").format(table, signals))
        conn.execute(sql.SQL("CREATE table {} (id int PRIMARY KEY, a int, b text, c timestamptz, d numeric(10,2))")
                     .format(table))  # fmt: skip
        conn.execute(
            sql.SQL("INSERT INTO {} SELECT g, g, 'row ' || g, now(), g / 3.0 FROM generate_series(1, %s) g")
            .format(table),
            (args.rows,),
        )  # fmt: skip
        conn.execute(sql.SQL("ANALYZE {}").format(table))
    config = {
        "name": name,
        "kafka": {"bootstrap_servers": "${CDC_KAFKA_BOOTSTRAP}"},
        "schema_registry": {"url": "${CDC_SCHEMA_REGISTRY_URL}"},
        "source": {
            "dsn": "${CDC_SOURCE_DSN}", "topic_prefix": name, "slot": {"name": name}, "publication": {"name": name},
            "tables": {"include": [f"public.{name}_t"]}, "snapshot": {"mode": "never"},
            "signal": {"table": f"public.{name}_signals"},
            "incremental_snapshot": {"chunk_size": args.chunk, "parallelism": args.parallelism},
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
                time.sleep(0.2)
            subprocess.run(cdc("snapshot", str(config_path), "--table", f"public.{name}_t"), env=env,
                           check=True)  # fmt: skip
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
                conn.execute(sql.SQL("UPDATE {} SET a = a + 1 WHERE id = 1").format(table))
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
        p50 = latencies[len(latencies) // 2] * 1000 if latencies else 0.0
        worst = latencies[-1] * 1000 if latencies else 0.0
        print(
            f"{args.rows:,} rows, chunk {args.chunk}, parallelism {args.parallelism}: {elapsed:.1f} s, "
            f"{args.rows / elapsed:,.0f} rows/s, source CPU {cpu * 1e6 / args.rows:.0f} us/row; stream "
            f"confirmation latency during the backfill p50 {p50:.0f} ms, max {worst:.0f} ms ({len(latencies)} probes)"
        )
    finally:
        process.terminate()
        process.wait(60)
        with psycopg.connect(dsn, autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (name,)).fetchone():
                conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
            conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(name)))
            conn.execute("DELETE FROM cdc.source_state WHERE slot_name = %s", (name,))
            conn.execute(sql.SQL("DROP table IF EXISTS {}, {}").format(table, signals))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

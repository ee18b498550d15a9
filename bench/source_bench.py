"""Throughput of the PostgreSQL source: events/s from WAL to Kafka-acknowledged, and peak RSS.

    python bench/source_bench.py --shape narrow --rows 200000 [--tx-size 1000] [--style debezium] [--profile]
    python bench/source_bench.py --shape wide --rows 50000
    python bench/source_bench.py --shape narrow --rows 1000000 --tx-size 1000000   # one huge transaction

The rows are written first (the slot exists, the source is stopped), then the source starts and the clock
runs from the moment it streams until the slot's confirmed flush LSN passes the last commit, i.e. until
Kafka acknowledged every event. Endpoints come from `.cdc/dev.env` (or CDC_* variables). Everything the
bench creates (table, slot, publication) is dropped at the end; topics stay (unique names).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from connector.config import ConnectorConfig  # noqa: E402
from connector.config_loader import read_env_file  # noqa: E402
from connector.pipeline import build_components  # noqa: E402

NARROW = "id bigint PRIMARY KEY, name text, amount numeric(12,2), created timestamptz, flag boolean"
NARROW_ROW = "g, 'name ' || g, g * 1.5, now(), g % 2 = 0"


def wide_columns() -> tuple[str, str]:
    cols = ["id bigint PRIMARY KEY", "doc jsonb"]
    doc = "jsonb_build_object('k', g, 'tags', jsonb_build_array('a', 'b'), 'nested', jsonb_build_object('x', 1))"
    values = ["g", doc]
    kinds = [("int", "g"), ("text", "'text ' || g"), ("numeric(10,2)", "g / 3.0"), ("timestamptz", "now()"),
             ("boolean", "g % 3 = 0"), ("double precision", "g * 0.25"), ("uuid", "md5(g::text)::uuid")]  # fmt: skip
    i = 0
    while len(cols) < 30:
        kind, expr = kinds[i % len(kinds)]
        cols.append(f"c{i} {kind}")
        values.append(expr)
        i += 1
    return ", ".join(cols), ", ".join(values)


def endpoints() -> dict[str, str]:
    """The environment, completed by the local stack's `.cdc/dev.env` (the environment wins)."""
    dev = ROOT / ".cdc" / "dev.env"
    return {**(read_env_file(dev) if dev.is_file() else {}), **os.environ}


def rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["narrow", "wide"], default="narrow")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--tx-size", type=int, default=1000, help="rows per source transaction")
    parser.add_argument("--profile", action="store_true", help="print the top functions by own time")
    parser.add_argument("--workers", type=int, default=0, help="source.encode_workers")
    parser.add_argument("--style", choices=["debezium", "avro_native"], default="debezium", help="source.schema_style")
    args = parser.parse_args()
    env = endpoints()
    name = f"bench_{uuid.uuid4().hex[:8]}"
    columns, values = (NARROW, NARROW_ROW) if args.shape == "narrow" else wide_columns()
    config = ConnectorConfig.model_validate(
        {
            "name": name,
            "source": {
                "dsn": env["CDC_SOURCE_DSN"],
                "topic_prefix": name,
                "slot": {"name": f"{name}_slot"},
                "publication": {"name": f"{name}_pub"},
                "tables": {"include": [f"public.{name}"]},
                "snapshot": {"mode": "never"},
                "status_interval_s": 0.5,
                "encode_workers": args.workers,
                "schema_style": args.style,
                "heartbeat": {"interval_s": 0.5, "emit_message": False},
            },
            "kafka": {"bootstrap_servers": env["CDC_KAFKA_BOOTSTRAP"]},
            "schema_registry": {"url": env["CDC_SCHEMA_REGISTRY_URL"]},
            "server": {"enabled": False},
        }
    )
    admin = psycopg.connect(env["CDC_SOURCE_DSN"], autocommit=True)
    admin.execute(f"CREATE TABLE {name} ({columns})")
    try:
        # First run: creates the publication and the slot, then stops.
        stop = threading.Event()
        first = build_components(config, only="source")["source"]
        thread = threading.Thread(target=first.run, args=(stop,))
        thread.start()
        while not first.ready():
            time.sleep(0.1)
        stop.set()
        thread.join()

        started = time.monotonic()
        for offset in range(0, args.rows, args.tx_size):
            last = min(args.rows, offset + args.tx_size)
            admin.execute(f"INSERT INTO {name} SELECT {values} FROM generate_series({offset + 1}, {last}) g")
        end_lsn = admin.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
        print(f"wrote {args.rows} {args.shape} rows in {time.monotonic() - started:.1f}s", flush=True)

        rss_before = rss_kb()
        stop = threading.Event()
        source = build_components(config, only="source")["source"]
        profiler = cProfile.Profile() if args.profile else None
        thread = threading.Thread(target=lambda: profiler.runcall(source.run, stop) if profiler else source.run(stop))
        thread.start()
        while not source.ready():
            time.sleep(0.01)
        t0 = time.monotonic()
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        while True:
            done = admin.execute(
                "SELECT confirmed_flush_lsn >= %s FROM pg_replication_slots WHERE slot_name = %s",
                (end_lsn, f"{name}_slot"),
            ).fetchone()[0]  # type: ignore[index]
            if done:
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        stop.set()
        thread.join()
        print(
            f"{args.shape} ({args.style}): {args.rows} events in {elapsed:.2f}s = {args.rows / elapsed:,.0f} events/s "
            f"(WAL -> Kafka acknowledged -> slot confirmed); tx size {args.tx_size}; workers {args.workers}; "
            f"peak RSS {rss_kb() / 1024:.0f} MiB (before streaming {rss_before / 1024:.0f} MiB); "
            f"connector CPU {cpu:.2f}s = {cpu / elapsed:.0%} of one core, {1e6 * cpu / args.rows:.1f} us/event; "
            f"load average {os.getloadavg()[0]:.2f}"
        )
        if profiler is not None:
            pstats.Stats(profiler).sort_stats("tottime").print_stats(18)
    finally:
        for _ in range(100):  # the walsender of the stopped source may take a moment to release the slot
            try:
                admin.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                    (f"{name}_slot",),
                )
                break
            except psycopg.errors.ObjectInUse:
                time.sleep(0.2)
        admin.execute(f"DROP PUBLICATION IF EXISTS {name}_pub")
        admin.execute(f"DROP TABLE IF EXISTS {name}")
        admin.execute("DELETE FROM cdc.source_state WHERE slot_name = %s", (f"{name}_slot",))
        admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

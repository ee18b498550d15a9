"""End to end: PostgreSQL commit -> source -> Kafka -> sink -> destination commit, at a fixed offered rate.

    python bench/e2e_bench.py --rate 2000 --seconds 30

Runs one connector (source and sink in this process, as `cdc run` does) against the local stack
(`.cdc/dev.env`), while a writer commits single-row transactions at `--rate` rows/s with
`written_at = clock_timestamp()`. Latency of a change = the sink's commit of it (`cdc.applied_changes.applied_at`,
the apply transaction's start) minus `written_at`; the writer keeps its schedule whatever the pipeline does
(no coordinated omission: a late writer is reported, not hidden). Prints offered and achieved rate, latency
p50/p90/p99/max, and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.e2e_support import LATENCY_COLUMNS, WRITER_OPTIONS, applied_latencies_ms, percentile  # noqa: E402
from connector.config import ConnectorConfig  # noqa: E402
from connector.config_loader import environment_with  # noqa: E402
from connector.pipeline import Pipeline  # noqa: E402


def _config(env: dict[str, str], name: str, table: str, batch: int) -> ConnectorConfig:
    return ConnectorConfig.model_validate(
        {
            "name": name,
            "kafka": {"bootstrap_servers": env["CDC_KAFKA_BOOTSTRAP"]},
            "schema_registry": {"url": env["CDC_SCHEMA_REGISTRY_URL"]},
            "source": {
                "dsn": env["CDC_SOURCE_DSN"],
                "topic_prefix": name,
                "slot": {"name": name},
                "publication": {"name": name},
                "tables": {"include": [f"public.{table}"]},
                "snapshot": {"mode": "never"},
                "status_interval_s": 1,
            },
            "sink": {
                "dsn": env["CDC_TARGET_DSN"],
                "topics_regex": f"^{name}\\..*",
                "batch": {"max_records": batch, "max_wait_ms": 50},
            },
            "transforms": {"source": [], "sink": []},
            "server": {"enabled": False},
        }
    )


def _writer(dsn: str, table: str, rate: float, seconds: float, late: list[float]) -> int:
    interval = 1.0 / rate
    statement = sql.SQL("INSERT INTO {} (id, payload) VALUES (%s, %s)").format(sql.Identifier(table))
    sent = 0
    with psycopg.connect(dsn, autocommit=True, options=WRITER_OPTIONS) as conn:
        start = time.monotonic()
        while True:
            due = start + sent * interval
            now = time.monotonic()
            if due - start >= seconds:
                return sent
            if due > now:
                time.sleep(due - now)
            else:
                late.append(now - due)
            conn.execute(statement, (sent + 1, f"row {sent + 1}"))
            sent += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=2000, help="rows/s offered, one row per transaction")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--batch", type=int, default=5000, help="sink batch.max_records")
    parser.add_argument("--env-file", type=Path, default=Path(".cdc/dev.env"))
    args = parser.parse_args()
    env = environment_with(args.env_file if args.env_file.exists() else None)
    name = f"e2ebench_{uuid.uuid4().hex[:8]}"
    table = name
    with psycopg.connect(env["CDC_SOURCE_DSN"], autocommit=True) as conn:
        conn.execute(sql.SQL(f"CREATE TABLE {{}} ({LATENCY_COLUMNS})").format(sql.Identifier(table)))
    pipeline = Pipeline(_config(env, name, table, args.batch))
    runner = threading.Thread(target=lambda: pipeline.run(install_signals=False), daemon=True)
    runner.start()
    deadline = time.monotonic() + 60
    while not pipeline.ready() and time.monotonic() < deadline:
        time.sleep(0.2)
    late: list[float] = []
    began = time.monotonic()
    sent = _writer(env["CDC_SOURCE_DSN"], table, args.rate, args.seconds, late)
    write_seconds = time.monotonic() - began
    values: list[float] = []
    while time.monotonic() < began + args.seconds + 120:
        values = applied_latencies_ms(env["CDC_TARGET_DSN"], table)
        if len(values) >= sent:
            break
        time.sleep(0.5)
    drained = time.monotonic() - began
    pipeline.stop.set()
    runner.join(60)
    with psycopg.connect(env["CDC_SOURCE_DSN"], autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
        conn.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
    print(
        f"offered {args.rate:.0f} rows/s for {args.seconds:.0f}s: wrote {sent} rows in {write_seconds:.1f}s "
        f"({sent / write_seconds:.0f}/s; writer late {len(late)} times, max {max(late, default=0) * 1000:.0f} ms)"
    )
    print(
        f"applied {len(values)} of {sent} within {drained:.1f}s of the first write "
        f"({len(values) / drained:.0f} rows/s end to end)"
    )
    if values:
        p50, p90, p99 = (percentile(values, q) for q in (0.5, 0.9, 0.99))
        print(
            f"latency commit -> applied: p50 {p50:.0f} ms, p90 {p90:.0f} ms, p99 {p99:.0f} ms, "
            f"max {max(values):.0f} ms, mean {statistics.fmean(values):.0f} ms"
        )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {rss:.0f} MiB (source + sink in one process)")


if __name__ == "__main__":
    main()

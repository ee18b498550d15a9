"""What the end-to-end benches share: `cdc run` as a process, a writer on a fixed schedule, latency from the ledger.

Latency of a change = the sink's apply transaction (`cdc.applied_changes.applied_at`) minus `clock_timestamp()` at
the source write (the table's `written_at` column, `LATENCY_COLUMNS`). The writer keeps its schedule whatever the
pipeline does (no coordinated omission): a late writer is counted, not hidden.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import psycopg
from psycopg import sql

from bench.harness.procs import OurProcess, cpu_seconds, log, peak_rss_mib, process_tree
from bench.harness.report import machine
from bench.harness.steady import WRITER_OPTIONS, percentile

__all__ = [  # with what the harness gives every bench, re-exported
    "LATENCY_COLUMNS", "WRITER_OPTIONS", "CdcRun", "applied_latencies_ms", "cpu_seconds", "insert_rows", "log",
    "machine", "offered_writer", "peak_rss_mib", "percentile", "process_tree",
]  # fmt: skip

LATENCY_COLUMNS = "id bigint PRIMARY KEY, payload text, written_at timestamptz NOT NULL DEFAULT clock_timestamp()"


CdcRun = OurProcess
"""`cdc run` on a config written to a work directory, as its own process (SIGTERM to stop)."""


def insert_rows(conn: psycopg.Connection[Any], table: str, low: int, high: int) -> None:
    """Rows `low`..`high` of a `LATENCY_COLUMNS` table in one statement (one transaction on an autocommit `conn`)."""
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (id, payload) SELECT g, 'row ' || g FROM generate_series(%s::bigint, %s::bigint) g"
        ).format(sql.Identifier(table)),
        (low, high),
    )


def offered_writer(
    dsn: str, table: str, rate: float, seconds: float, tx_rows: int, late: list[float], first_id: int = 1
) -> int:
    """Commit `rate` rows/s in transactions of `tx_rows` on a fixed schedule; a late writer is counted, not hidden.

    Rows get ids from `first_id` on; returns how many were written.
    """
    interval = tx_rows / rate
    sent = 0
    with psycopg.connect(dsn, autocommit=True, options=WRITER_OPTIONS) as conn:
        start = time.monotonic()
        for tick in range(int(seconds / interval)):
            due = start + tick * interval
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            else:
                late.append(now - due)
            insert_rows(conn, table, first_id + sent, first_id + sent + tx_rows - 1)
            sent += tx_rows
    return sent


def applied_latencies_ms(dsn: str, table: str, min_id: int = 1) -> list[float]:
    """Milliseconds from the source write to the apply, of each row of the destination `table` with id >= `min_id`,
    sorted; empty while the table does not exist. With two sinks it is the first apply (the ledger holds one)."""
    query = sql.SQL(
        "SELECT extract(epoch FROM a.applied_at - t.written_at) * 1000 FROM {} t "
        "JOIN cdc.applied_changes a ON a.change_id = t.__cdc_change_id AND a.destination = {}::regclass::oid "
        "WHERE t.id >= %s"
    ).format(sql.Identifier(table), sql.Literal(table))
    with psycopg.connect(dsn, autocommit=True) as conn, contextlib.suppress(psycopg.errors.UndefinedTable):
        return sorted(float(row[0]) for row in conn.execute(query, (min_id,)))
    return []

"""The sink's state in the destination: schema `cdc` with the offsets and the applied-change ledger.

`cdc.sink_offsets(group_id, topic, partition, next_offset, updated_at)`: per consumer group and partition, the
next offset to apply ("after the last applied message"). `cdc.applied_changes(change_id, topic, partition,
"offset", applied_at)`: one row per applied change id. Both are written in the transaction of the rows they
account for (see `sinks.postgres.apply`). The ledger is pruned by age in the background (`LedgerPruner`); the
per-row LSN guard keeps replays of pruned changes harmless.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import psycopg

from connector.errors import is_retriable

log = logging.getLogger(__name__)

_SETUP = (
    "CREATE SCHEMA IF NOT EXISTS cdc",
    """CREATE TABLE IF NOT EXISTS cdc.sink_offsets (
        group_id text NOT NULL,
        topic text NOT NULL,
        partition integer NOT NULL,
        next_offset bigint NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (group_id, topic, partition))""",
    """CREATE TABLE IF NOT EXISTS cdc.applied_changes (
        change_id uuid PRIMARY KEY,
        topic text NOT NULL,
        partition integer NOT NULL,
        "offset" bigint NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now())""",
    # BRIN: rows arrive in applied_at order, so pruning by age finds them cheaply without taxing every insert.
    "CREATE INDEX IF NOT EXISTS applied_changes_applied_at ON cdc.applied_changes USING brin (applied_at)",
)


def ensure_state(conn: psycopg.Connection[Any]) -> None:
    """Create schema `cdc` and its tables if missing (serialized: several sinks may start at once)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('cdc-sink-state', 0))")
        for statement in _SETUP:
            conn.execute(statement)


def read_offsets(
    conn: psycopg.Connection[Any], group_id: str, partitions: Iterable[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    """Stored next offsets of `partitions` (absent: never applied)."""
    wanted = list(partitions)
    if not wanted:
        return {}
    with conn.transaction():
        rows = conn.execute(
            """SELECT o.topic, o.partition, o.next_offset
               FROM cdc.sink_offsets o
               JOIN unnest(%s::text[], %s::int[]) AS w(topic, partition) USING (topic, partition)
               WHERE o.group_id = %s""",
            ([t for t, _ in wanted], [p for _, p in wanted], group_id),
        ).fetchall()
    return {(t, p): o for t, p, o in rows}


def all_offsets(conn: psycopg.Connection[Any], group_id: str) -> dict[tuple[str, int], int]:
    with conn.transaction():
        rows = conn.execute(
            "SELECT topic, partition, next_offset FROM cdc.sink_offsets WHERE group_id = %s", (group_id,)
        ).fetchall()
    return {(t, p): o for t, p, o in rows}


class LedgerPruner(threading.Thread):
    """Deletes change ids older than the retention in small transactions that skip rows being written."""

    def __init__(
        self, dsn: str, retention: timedelta, interval_s: float, batch: int, stop: threading.Event
    ) -> None:
        super().__init__(name="cdc-ledger-pruner", daemon=True)
        self._dsn = dsn
        self._retention = retention
        self._interval = interval_s
        self._batch = batch
        self._stop = stop
        self.pruned = 0

    def run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.prune_once()
            except Exception as exc:
                level = logging.INFO if is_retriable(exc) else logging.WARNING
                log.log(level, "ledger pruning failed, will retry: %s", type(exc).__name__)

    def prune_once(self) -> int:
        total = 0
        with psycopg.connect(self._dsn, autocommit=True, application_name="cdc-sink-pruner") as conn:
            while not self._stop.is_set():
                with conn.transaction():
                    conn.execute("SET LOCAL lock_timeout = '1s'")
                    deleted = conn.execute(
                        """DELETE FROM cdc.applied_changes WHERE change_id IN (
                               SELECT change_id FROM cdc.applied_changes
                               WHERE applied_at < now() - %s
                               LIMIT %s FOR UPDATE SKIP LOCKED)""",
                        (self._retention, self._batch),
                    ).rowcount
                total += deleted
                if deleted < self._batch:
                    break
        self.pruned += total
        if total:
            log.info("pruned %d applied change ids older than %s", total, self._retention)
        return total

"""The sink's state in the destination: schema `cdc` with the offsets and the applied-change ledger.

`cdc.sink_offsets(group_id, topic, partition, next_offset, updated_at)`: per consumer group and partition, the
next offset to apply ("after the last applied message"). `cdc.applied_changes(change_id, destination, topic,
partition, "offset", applied_at)`: one row per change id and destination table (its oid) the change took effect
in. The unit of effect is the destination table: two pipelines writing two tables both apply a change, two
groups or two regions writing one table apply it once. Both are written in the transaction of the rows they
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

from core.errors import is_retriable
from core.timeouts import libpq_options

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
        change_id uuid NOT NULL,
        destination oid NOT NULL DEFAULT 0,
        topic text NOT NULL,
        partition integer NOT NULL,
        "offset" bigint NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (change_id, destination))""",
    # BRIN: rows arrive in applied_at order, so pruning by age finds them cheaply without taxing every insert.
    "CREATE INDEX IF NOT EXISTS applied_changes_applied_at ON cdc.applied_changes USING brin (applied_at)",
)

LEGACY_DESTINATION = 0
"""`destination` of ledger rows recorded before the ledger was scoped per table (and, by the column's default,
by a sink of that earlier version still running during a rolling upgrade): no table has oid 0, so they match no
destination and a replay of those changes is applied again, under the per-row guard."""

# A ledger keyed by change id alone (before per-table scope): the destination it was applied to is unknown.
_MIGRATE = (
    f"ALTER TABLE cdc.applied_changes ADD COLUMN destination oid NOT NULL DEFAULT {LEGACY_DESTINATION}",
    "ALTER TABLE cdc.applied_changes DROP CONSTRAINT applied_changes_pkey",
    "ALTER TABLE cdc.applied_changes ADD PRIMARY KEY (change_id, destination)",
)


def _schema_exists(conn: psycopg.Connection[Any], name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (name,)).fetchone() is not None


def ensure_state(conn: psycopg.Connection[Any]) -> None:
    """Create schema `cdc` and its tables if missing (serialized: several sinks may start at once)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('cdc-sink-state', 0))")
        for statement in _SETUP:
            # CREATE SCHEMA needs CREATE on the database even when the schema exists: a role that owns a schema
            # `cdc` an admin made needs no more.
            if statement.startswith("CREATE SCHEMA") and _schema_exists(conn, "cdc"):
                continue
            conn.execute(statement)
        scoped = conn.execute(
            """SELECT 1 FROM pg_attribute
               WHERE attrelid = 'cdc.applied_changes'::regclass AND attname = 'destination' AND NOT attisdropped"""
        ).fetchone()
        if scoped is None:
            for statement in _MIGRATE:
                conn.execute(statement)
            row = conn.execute("SELECT count(*) FROM cdc.applied_changes").fetchone()
            log.warning(
                "migrated cdc.applied_changes to one entry per (change id, destination table); its %d earlier "
                "entries do not say which table they were applied to, so a replay of those changes is applied "
                "again under the per-row position guard (they age out after the dedupe retention)",
                row[0] if row else 0,
            )


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
        self,
        dsn: str,
        retention: timedelta,
        interval_s: float,
        batch: int,
        stop: threading.Event,
        *,
        connect_timeout_s: int = 10,
    ) -> None:
        super().__init__(name="cdc-ledger-pruner", daemon=True)
        self._dsn = dsn
        self._connect_timeout_s = connect_timeout_s
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
        with psycopg.connect(
            self._dsn, autocommit=True, application_name="cdc-sink-pruner", **libpq_options(self._connect_timeout_s)
        ) as conn:
            while not self._stop.is_set():
                with conn.transaction():
                    conn.execute("SET LOCAL lock_timeout = '1s'")
                    deleted = conn.execute(
                        """DELETE FROM cdc.applied_changes WHERE (change_id, destination) IN (
                               SELECT change_id, destination FROM cdc.applied_changes
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

"""The replication slot's lifecycle and the connector's own bookkeeping of it.

The slot is the source's position: its confirmed flush LSN means "every change before it is in Kafka".
A slot is created only when the connector has never had one (or when `snapshot.mode: when_needed` says to
re-snapshot); a slot that disappeared or was invalidated (`wal_status = lost`) is a fatal error, because
changes may be missing and only a new snapshot can repair that.

`cdc.source_state` (in the source database) remembers, per slot, that we created it and how far its
snapshot got: `snapshot_state` is `running` from slot creation until every snapshot row is acknowledged by
Kafka, then `done` (or `skipped`). A slot whose snapshot is still `running` at startup belongs to an
interrupted snapshot: its exported snapshot died with the connection that made it, so the only clean way
on is to drop that slot and start the snapshot again.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from core.errors import FatalError, PrerequisiteError
from core.positions import Lsn
from sources.postgres.replication import CreatedSlot, ReplicationConnection, first_value_within

log = logging.getLogger(__name__)


class SlotLostError(FatalError):
    """The slot is gone or invalidated: changes may be missing."""


class SlotInUseError(FatalError):
    """Another process streams the slot."""


@dataclass(frozen=True, slots=True)
class SlotInfo:
    name: str
    plugin: str | None
    database: str | None
    active: bool
    active_pid: int | None
    confirmed_flush: Lsn
    restart_lsn: Lsn
    wal_status: str | None
    lag_bytes: int | None


@dataclass(frozen=True, slots=True)
class SlotState:
    """Our own record of a slot (row of `cdc.source_state`)."""

    slot_name: str
    consistent_point: Lsn
    snapshot_state: str
    progress: dict[str, Any]


_LAG_BYTES = sql.SQL("(pg_current_wal_lsn() - confirmed_flush_lsn)::bigint")
"""How many bytes of WAL the slot holds back: the one definition of slot lag."""


def slot_info(conn: psycopg.Connection, name: str) -> SlotInfo | None:
    query = sql.SQL(
        "SELECT slot_name, plugin, database, active, active_pid, confirmed_flush_lsn::text, restart_lsn::text, "
        "wal_status, {} FROM pg_replication_slots WHERE slot_name = %s"
    ).format(_LAG_BYTES)
    row = conn.execute(query, (name,)).fetchone()
    if row is None:
        return None
    return SlotInfo(
        name=row[0],
        plugin=row[1],
        database=row[2],
        active=bool(row[3]),
        active_pid=row[4],
        confirmed_flush=Lsn.parse(row[5]) if row[5] else Lsn.INVALID,
        restart_lsn=Lsn.parse(row[6]) if row[6] else Lsn.INVALID,
        wal_status=row[7],
        lag_bytes=row[8],
    )


def slot_lag_bytes(conn: psycopg.Connection, name: str, *, timeout: float) -> int | None:
    """The slot's lag, waiting at most `timeout` seconds (a side query of the streaming loop must not stall it)."""
    query = sql.SQL("SELECT {} FROM pg_replication_slots WHERE slot_name = {}").format(_LAG_BYTES, sql.Literal(name))
    value = first_value_within(conn, query, timeout)
    return int(value) if value is not None else None


def check_slot(info: SlotInfo, dbname: str) -> None:
    """Refuse a slot we cannot stream: wrong plugin/database, or invalidated."""
    if info.wal_status == "lost":
        raise SlotLostError(
            f"replication slot {info.name!r} was invalidated (wal_status = lost): the server removed WAL the "
            "connector had not read, so changes are missing from Kafka",
            hint=f"drop the slot (SELECT pg_drop_replication_slot('{info.name}')), delete its row from "
            "cdc.source_state and restart with snapshot.mode: initial or when_needed to re-snapshot; consider "
            "raising max_slot_wal_keep_size",
        )
    if info.plugin != "pgoutput" or info.database != dbname:
        raise PrerequisiteError(
            f"slot {info.name!r} exists but is not a pgoutput slot of database {dbname!r} "
            f"(plugin {info.plugin}, database {info.database})",
            hint="choose another slot.name",
        )


def wait_until_free(
    conn: psycopg.Connection, name: str, *, on_conflict: str, stop: threading.Event, poll_s: float = 2.0
) -> bool:
    """Return True once no other process streams the slot; False if `stop` was set while waiting."""
    announced = False
    while True:
        info = slot_info(conn, name)
        if info is None or not info.active or info.active_pid is None:
            return True
        if on_conflict != "wait":
            raise SlotInUseError(
                f"replication slot {name!r} is in use by another process (pid {info.active_pid})",
                hint="only one connector may stream a slot; stop the other one, or set slot.on_conflict: wait "
                "to run this one as a standby",
            )
        if not announced:
            log.info("slot %s is streamed by pid %s; waiting as a standby", name, info.active_pid)
            announced = True
        if stop.wait(poll_s):
            return False


def drop_slot(conn: psycopg.Connection, name: str) -> None:
    conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))


def create_slot(
    repl: ReplicationConnection, store: StateStore, name: str, *, snapshot: bool, export: bool = True
) -> CreatedSlot:
    """Create the slot (with an exported snapshot when `snapshot`, unless not `export`: the snapshot is then taken
    incrementally) and record it in `cdc.source_state`."""
    if snapshot:
        # Recorded before the slot exists: a crash right after CREATE_REPLICATION_SLOT must not leave a slot
        # that the next start would adopt as if its snapshot were done.
        store.put(name, Lsn.INVALID, "running")
    try:
        created = repl.create_slot(name, export_snapshot=snapshot and export)
    except psycopg.errors.DuplicateObject as exc:
        raise SlotInUseError(
            f"replication slot {name!r} was created by another process just now",
            hint="only one connector may stream a slot",
        ) from exc
    store.put(name, created.consistent_point, "running" if snapshot else "skipped")
    suffix = " with an exported snapshot" if snapshot and export else ""
    log.info("created slot %s at %s%s", name, created.consistent_point, suffix)
    return created


_STATE_DDL = """
CREATE SCHEMA IF NOT EXISTS cdc;
CREATE TABLE IF NOT EXISTS cdc.source_state (
    slot_name text PRIMARY KEY,
    consistent_point pg_lsn NOT NULL,
    snapshot_state text NOT NULL CHECK (snapshot_state IN ('running', 'done', 'skipped')),
    progress jsonb NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL DEFAULT now()
)
"""


class StateStore:
    """Reads and writes `cdc.source_state` over a normal (autocommit) connection."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self._conn = conn

    def ensure(self) -> None:
        exists = self._conn.execute("SELECT to_regclass('cdc.source_state') IS NOT NULL").fetchone()
        if exists and exists[0]:
            return
        try:
            with self._conn.transaction():
                schema = self._conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'cdc'").fetchone()
                for statement in _STATE_DDL.split(";"):
                    # CREATE SCHEMA needs CREATE on the database even when the schema exists: a role owning a
                    # schema `cdc` an admin made needs no more.
                    if statement.strip() and not (schema and statement.strip().startswith("CREATE SCHEMA")):
                        self._conn.execute(sql.SQL(statement.strip()))
        except psycopg.errors.InsufficientPrivilege as exc:
            raise PrerequisiteError(
                "the source role cannot create schema cdc / table cdc.source_state (the slot bookkeeping)",
                hint="GRANT CREATE ON DATABASE to the role, or create them once as an admin (see docs/source.md)",
            ) from exc

    def get(self, slot: str) -> SlotState | None:
        row = self._conn.execute(
            "SELECT slot_name, consistent_point::text, snapshot_state, progress FROM cdc.source_state "
            "WHERE slot_name = %s",
            (slot,),
        ).fetchone()
        if row is None:
            return None
        return SlotState(row[0], Lsn.parse(row[1]), row[2], row[3] or {})

    def put(
        self, slot: str, consistent_point: Lsn, snapshot_state: str, progress: dict[str, Any] | None = None
    ) -> None:
        self._conn.execute(
            "INSERT INTO cdc.source_state (slot_name, consistent_point, snapshot_state, progress) "
            "VALUES (%s, %s::pg_lsn, %s, %s::jsonb) ON CONFLICT (slot_name) DO UPDATE SET "
            "consistent_point = EXCLUDED.consistent_point, snapshot_state = EXCLUDED.snapshot_state, "
            "progress = EXCLUDED.progress, updated_at = now()",
            (slot, str(consistent_point), snapshot_state, json.dumps(progress or {})),
        )

    def update_progress(self, slot: str, progress: dict[str, Any]) -> None:
        self._conn.execute(
            "UPDATE cdc.source_state SET progress = %s::jsonb, updated_at = now() WHERE slot_name = %s",
            (json.dumps(progress), slot),
        )

    def set_state(self, slot: str, snapshot_state: str) -> None:
        self._conn.execute(
            "UPDATE cdc.source_state SET snapshot_state = %s, updated_at = now() WHERE slot_name = %s",
            (snapshot_state, slot),
        )

    def delete(self, slot: str) -> None:
        self._conn.execute("DELETE FROM cdc.source_state WHERE slot_name = %s", (slot,))

    # --- tables whose existing rows are still to be copied (progress -> 'copies') ---------------------------

    def copies(self, slot: str) -> list[str]:
        """The tables added to the publication after the slot's snapshot whose rows are not yet all in Kafka."""
        row = self._conn.execute(
            "SELECT progress -> 'copies' FROM cdc.source_state WHERE slot_name = %s", (slot,)
        ).fetchone()
        return list(row[0]) if row is not None and row[0] else []

    def add_copies(self, slot: str, tables: list[str]) -> None:
        """Remember `tables` as to be copied, before they join the publication: a crash in between must not
        leave a published table whose earlier rows nobody copies. Without a record of the slot (the first start,
        whose snapshot covers every table) there is nothing to remember."""
        if self._conn.execute("SELECT to_regclass('cdc.source_state') IS NULL").fetchone() == (True,):
            return
        self._set_copies(slot, list(dict.fromkeys([*self.copies(slot), *tables])))

    def copy_done(self, slot: str, table: str) -> None:
        self._set_copies(slot, [t for t in self.copies(slot) if t != table])

    def _set_copies(self, slot: str, tables: list[str]) -> None:
        self._conn.execute(
            "UPDATE cdc.source_state SET progress = progress || jsonb_build_object('copies', %s::jsonb), "
            "updated_at = now() WHERE slot_name = %s",
            (json.dumps(tables), slot),
        )

    # --- incremental snapshots (progress -> 'incremental') ---------------------------------------------------

    def incremental(self, slot: str) -> dict[str, Any]:
        """The requested incremental snapshots and how far each got (see incremental.py)."""
        row = self._conn.execute(
            "SELECT progress -> 'incremental' FROM cdc.source_state WHERE slot_name = %s", (slot,)
        ).fetchone()
        return dict(row[0]) if row is not None and row[0] else {}

    def set_incremental(self, slot: str, state: dict[str, Any]) -> None:
        self._conn.execute(
            "UPDATE cdc.source_state SET progress = progress || jsonb_build_object('incremental', %s::jsonb), "
            "updated_at = now() WHERE slot_name = %s",
            (json.dumps(state), slot),
        )

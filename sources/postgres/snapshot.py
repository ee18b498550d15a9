"""Reading the captured tables as of the slot's consistent point.

The reader runs one REPEATABLE READ, READ ONLY transaction that imports the snapshot the replication
connection exported when it created the slot (`SET TRANSACTION SNAPSHOT`), so the rows it sees are exactly
those committed before the slot's consistent point: streaming from that point afterwards neither loses
nor doubles a change at the seam. The import must happen while the exporting replication connection is
still open and idle; the caller guarantees that.

Each table is read through a server-side cursor ordered by its key, `chunk_size` rows at a time, every
column loaded as the server's text output so the streamed changes' converters apply unchanged. Memory
stays bounded by one chunk.
An exported snapshot cannot outlive its connection, so an interrupted snapshot is never resumed: it is
restarted from a new slot (see slots.py).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.string import TextLoader

from connector.timeouts import libpq_options
from sources.postgres.replication import session_options
from sources.postgres.selection import TableRef

log = logging.getLogger(__name__)


@dataclass(slots=True)
class TableProgress:
    table: str
    estimated_rows: int
    rows: int = 0
    done: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "estimated_rows": self.estimated_rows, "done": self.done}


@dataclass(slots=True)
class SnapshotProgress:
    consistent_point: str
    tables: dict[str, TableProgress] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {
            "consistent_point": self.consistent_point,
            "rows": sum(t.rows for t in self.tables.values()),
            "estimated_rows": sum(t.estimated_rows for t in self.tables.values()),
            "tables": {name: t.as_dict() for name, t in self.tables.items()},
        }


@dataclass(frozen=True, slots=True)
class SnapshotTable:
    """What to read from one table: its captured columns and the columns to order by."""

    ref: TableRef
    columns: tuple[str, ...]
    order_by: tuple[str, ...]
    row_filter: str | None = None
    """The table's configured row filter (operator-written SQL, as in the publication)."""


class SnapshotReader:
    """Reads tables inside one imported snapshot; `open()` must run before the exporter does anything else."""

    def __init__(self, dsn: str, snapshot_name: str | None, *, chunk_size: int, connect_timeout_s: int = 10) -> None:
        self._dsn = dsn
        self._connect_timeout_s = connect_timeout_s
        self._snapshot_name = snapshot_name
        self._chunk_size = chunk_size
        self._conn: psycopg.Connection | None = None

    def open(self) -> None:
        conn = psycopg.connect(
            self._dsn,
            autocommit=False,
            application_name="cdc-connector-snapshot",
            options=session_options(),
            **libpq_options(self._connect_timeout_s),
        )
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        if self._snapshot_name is not None:
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(self._snapshot_name)))
        # Every value as the server's text output, exactly what pgoutput sends (a `::text` cast would differ:
        # it strips char(n) padding): every type loads as `str`, nothing is parsed client-side.
        for (oid,) in conn.execute("SELECT oid::int FROM pg_type").fetchall():
            conn.adapters.register_loader(oid, TextLoader)
        self._conn = conn

    def estimate(self, table: TableRef) -> int:
        assert self._conn is not None
        row = self._conn.execute(
            "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = %s::regclass",
            (table.identifier.as_string(self._conn),),
        ).fetchone()
        return int(row[0]) if row else 0

    def rows(self, table: SnapshotTable) -> Iterator[Sequence[str | None]]:
        """Every row of `table` as text values in `table.columns` order, in key order, chunk by chunk."""
        assert self._conn is not None
        columns = sql.SQL(", ").join(map(sql.Identifier, table.columns))
        query = sql.SQL("SELECT {} FROM {}").format(columns, table.ref.identifier)
        if table.row_filter:
            query = sql.SQL("{} WHERE ({})").format(query, sql.SQL(table.row_filter))
        if table.order_by:
            query = sql.SQL("{} ORDER BY {}").format(query, sql.SQL(", ").join(map(sql.Identifier, table.order_by)))
        with self._conn.cursor(name=f"cdc_snapshot_{table.ref.table[:40]}") as cursor:
            cursor.itersize = self._chunk_size
            cursor.execute(query)
            while True:
                chunk = cursor.fetchmany(self._chunk_size)
                if not chunk:
                    break
                yield from chunk

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.rollback()
            finally:
                self._conn.close()
                self._conn = None


class ProgressReporter:
    """Log lines every few seconds, and a one-line bar on a terminal."""

    def __init__(self, progress: SnapshotProgress, *, every_s: float = 5.0) -> None:
        self._progress = progress
        self._every = every_s
        self._last = 0.0
        self._tty = sys.stderr.isatty()

    def tick(self, table: TableProgress, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < (0.5 if self._tty else self._every):
            return
        self._last = now
        pct = f"{100 * table.rows / table.estimated_rows:.0f}%" if table.estimated_rows else "?"
        if self._tty:
            width = 30
            filled = min(width, int(width * table.rows / table.estimated_rows)) if table.estimated_rows else 0
            bar = "#" * filled + "-" * (width - filled)
            sys.stderr.write(f"\rsnapshot {table.table} [{bar}] {table.rows}/~{table.estimated_rows} {pct}  ")
            if table.done:
                sys.stderr.write("\n")
            sys.stderr.flush()
        else:
            log.info("snapshot %s: %d of ~%d rows (%s)", table.table, table.rows, table.estimated_rows, pct)

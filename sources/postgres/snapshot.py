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
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import psycopg
from psycopg import sql
from psycopg.types.string import TextLoader
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from core.timeouts import libpq_options
from sources.postgres.replication import session_options
from sources.postgres.selection import TableRef

log = logging.getLogger(__name__)


@dataclass(slots=True)
class TableProgress:
    table: str
    estimated_rows: int | None
    """None when the table was never analysed (the server has no row count to offer)."""
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
            "estimated_rows": None
            if any(t.estimated_rows is None for t in self.tables.values())
            else sum(t.estimated_rows or 0 for t in self.tables.values()),
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

    def estimate(self, table: TableRef) -> int | None:
        """The table's row count as the planner would guess it, or None when the server cannot tell."""
        assert self._conn is not None
        row = self._conn.execute(
            "SELECT reltuples::float8, relpages, pg_relation_size(oid), current_setting('block_size')::int "
            "FROM pg_class WHERE oid = %s::regclass",
            (table.identifier.as_string(self._conn),),
        ).fetchone()
        if row is None:
            return None
        reltuples, relpages, size, block_size = row  # text: every type loads as `str` on this connection
        return estimate_rows(float(reltuples), int(relpages), int(size), int(block_size))

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


def estimate_rows(reltuples: float, relpages: int, size_bytes: int, block_size: int) -> int | None:
    """Rows in a table from its statistics, scaled to its current size as the planner does.

    `reltuples` is -1 for a table never vacuumed or analysed (0 before PostgreSQL 14, when `relpages` is 0
    too): then only an empty table can be told (no pages), anything else is unknown (None), never "~0".
    """
    pages_now = size_bytes / block_size
    if pages_now == 0:
        return 0
    if reltuples < 0 or relpages <= 0:
        return None
    return round(reltuples / relpages * pages_now)


class RowRate:
    """Rows per second over the last minute or so of progress, and the time left at that pace."""

    def __init__(self, rows: int = 0, *, span_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._span = span_s
        self._samples: deque[tuple[float, int]] = deque([(clock(), rows)])

    def add(self, rows: int) -> None:
        now = self._clock()
        samples = self._samples
        samples.append((now, rows))
        while len(samples) > 2 and now - samples[1][0] >= self._span:
            samples.popleft()

    def per_second(self) -> float | None:
        (t0, r0), (t1, r1) = self._samples[0], self._samples[-1]
        return None if t1 <= t0 else round((r1 - r0) / (t1 - t0), 1)

    def eta(self, rows: int, estimated: int | None) -> float | None:
        """Seconds until `estimated` rows at the current pace (None when either is unknown)."""
        rate = self.per_second()
        if not rate or estimated is None:
            return None
        return round(max(0, estimated - rows) / rate, 1)


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} rows/s" if speed else "- rows/s")


class ProgressReporter:
    """Snapshot progress per table: a live bar each (rows, rate, ETA) on a terminal, else a log line every
    few seconds. `close()` ends the bars; it may run more than once."""

    def __init__(
        self, *, every_s: float = 5.0, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._every = every_s
        self._clock = clock
        self._last = 0.0
        self._rates: dict[str, RowRate] = {}
        self._bars: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        if self._stream.isatty():
            self._bars = Progress(
                TextColumn("snapshot {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                _Rate(),
                TimeRemainingColumn(),
                console=Console(file=self._stream),
                auto_refresh=False,  # refreshed by `tick`: no thread of its own
                transient=False,
            )
            self._bars.start()

    def tick(self, table: TableProgress, *, force: bool = False) -> None:
        if self._bars is not None:
            task = self._tasks.get(table.table)
            if task is None:
                task = self._tasks[table.table] = self._bars.add_task(table.table, total=table.estimated_rows)
            total = table.rows if table.done else _total(table)
            self._bars.update(task, completed=table.rows, total=total)
        rate = self._rates.get(table.table)
        if rate is None:
            rate = self._rates[table.table] = RowRate(table.rows, clock=self._clock)
        else:
            rate.add(table.rows)
        now = self._clock()
        if not force and now - self._last < (0.2 if self._bars is not None else self._every):
            return
        self._last = now
        if self._bars is not None:
            self._bars.refresh()
            return
        log.info("%s", progress_line(table, rate))

    def close(self) -> None:
        if self._bars is not None:
            self._bars.refresh()
            self._bars.stop()
            self._bars = None


def progress_line(table: TableProgress, rate: RowRate | None = None) -> str:
    """`snapshot T: 2048 of ~10000 rows (20%), 4,100 rows/s, ETA 2s`; a total the server cannot tell is "unknown"
    (never "~0"): a table never analysed, or estimated empty yet holding rows."""
    estimated = table.estimated_rows
    if estimated is None:
        line = f"snapshot {table.table}: {table.rows} rows (total unknown: the table was never analysed)"
    elif estimated == 0 and table.rows > 0:
        line = f"snapshot {table.table}: {table.rows} rows (total unknown: the statistics said empty)"
        estimated = None
    else:
        share = min(100, round(100 * table.rows / estimated)) if estimated else 100
        line = f"snapshot {table.table}: {table.rows} of ~{estimated} rows ({share}%)"
    per_second = None if rate is None or table.done else rate.per_second()
    if per_second:
        line += f", {per_second:,.0f} rows/s"
        assert rate is not None
        eta = rate.eta(table.rows, estimated if estimated is None else max(estimated, table.rows))
        if eta is not None:
            line += f", ETA {_duration(eta)}"
    return line


def _duration(seconds: float) -> str:
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _total(table: TableProgress) -> int | None:
    """The bar's total: the estimate, unless the rows already passed it (statistics lag behind inserts)."""
    if table.estimated_rows is None:
        return None
    return max(table.estimated_rows, table.rows)

"""Incremental snapshots: a table's rows read in key-ordered chunks while the stream goes on (DBLog's watermarks).

For each chunk, on a connection of its own and in this order: a low watermark is written to the WAL
(`pg_logical_emit_message`, non-transactional, so it takes its place in the stream at once, between the
transactions committed before and after it), the chunk is read (`chunk_size` rows after the last key, in one short
REPEATABLE READ transaction that also notes which transactions it cannot see), and a high watermark is written.
The stream then meets the two marks in WAL order:

- between them, a streamed change of a key of the chunk removes that row from the chunk: the stream carries the row
  as it is now, the chunk's copy may be older;
- at the high watermark the chunk's remaining rows are produced as `op = r` (`snapshot: "incremental"`), positioned
  at the low watermark: after every change streamed before it, before every change streamed after the high one;
- a transaction streamed before the low watermark that the chunk's read could not see (it committed between the
  watermark and the read's snapshot becoming aware of it) makes the chunk stale: it is read again.

A table's progress (the last key of the last chunk Kafka acknowledged) is kept in `cdc.source_state`, so a restart
goes on from there; the next chunk is read only once the previous one is acknowledged, so a crash sends at most one
chunk twice. Snapshots are requested through the signal table (Debezium's `execute-snapshot`, `stop-snapshot`,
`pause-snapshot`, `resume-snapshot`), whose inserts arrive through the stream; `cdc snapshot` inserts such a row.

Resume contract: everything in memory (the open window) is dropped with the run; the persisted progress says where
the next run goes on, and watermarks of an earlier run met while replaying are ignored (their window id is unknown).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.string import TextLoader

from core.delivery import AckTracker, TxSlot
from core.errors import ConfigError
from core.metrics import SNAPSHOT_ESTIMATED_ROWS, SNAPSHOT_ROWS
from core.positions import Lsn
from core.timeouts import libpq_options
from sources.postgres.config import PostgresSourceConfig
from sources.postgres.events import ChangeEvent, EventFactory, SnapshotRead, TableEvents
from sources.postgres.output import RecordOutput
from sources.postgres.protocol import Insert, LogicalMessage, Relation
from sources.postgres.replication import session_options
from sources.postgres.selection import TableRef, options_for, publication_tables
from sources.postgres.slots import StateStore
from sources.postgres.snapshot import ProgressReporter, RowRate, TableProgress, estimate_rows
from sources.postgres.status import SourceStatus

log = logging.getLogger(__name__)

WATERMARK_PREFIX = "cdc-incremental-snapshot"
"""The `pg_logical_emit_message` prefix of the watermarks (their content: `{slot}/{window id}/low|high`)."""
SNAPSHOT_MARKER = "incremental"
"""`source.snapshot` of a row read by an incremental snapshot (as Debezium writes it)."""

_XID_MOD = 1 << 32
_ACK_WAIT_S = 1.0


def table_ref(name: str) -> TableRef:
    """`schema.table` (Debezium's data-collection name; a bare `table` is in `public`)."""
    schema, _, table = name.rpartition(".")
    return TableRef(schema or "public", table)


def key_json(key: dict[str, Any] | None) -> str:
    """A row key's one comparable form: the same for a chunk's row and a streamed change of that row."""
    return json.dumps(key, sort_keys=True, default=str, ensure_ascii=False)


# --- signals ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signal:
    id: str
    type: str
    data: dict[str, Any]


def parse_signal(values: dict[str, str | None]) -> Signal:
    """A signal table row (`id`, `type`, `data`: JSON text or empty)."""
    data_text = values.get("data")
    try:
        data = json.loads(data_text) if data_text else {}
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise ValueError(f"signal {values.get('id')!r}: data is not a JSON object: {data_text!r}")
    return Signal(str(values.get("id")), str(values.get("type") or ""), data)


def requested_tables(signal: Signal) -> list[tuple[str, str | None]]:
    """(table, filter) for each data collection of an `execute-snapshot` signal.

    The filter comes from Debezium's `additional-conditions` (`[{"data-collection": ..., "filter": ...}]`) or its
    older single `additional-condition`.
    """
    collections = signal.data.get("data-collections") or []
    if isinstance(collections, str):
        collections = [collections]
    filters: dict[str, str] = {}
    for condition in signal.data.get("additional-conditions") or []:
        if isinstance(condition, dict) and condition.get("data-collection") and condition.get("filter"):
            filters[str(table_ref(str(condition["data-collection"])))] = str(condition["filter"])
    single = signal.data.get("additional-condition")
    out = []
    for name in collections:
        table = str(table_ref(str(name)))
        out.append((table, filters.get(table, single or None)))
    return out


_SIGNAL_DDL = sql.SQL(
    "CREATE TABLE IF NOT EXISTS {} (id varchar(64) PRIMARY KEY, type varchar(32) NOT NULL, data varchar(4096))"
)


def ensure_signal_table(conn: psycopg.Connection, table: TableRef) -> None:
    """Create the signal table (Debezium's layout) when it does not exist."""
    if conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table.identifier.as_string(conn),)).fetchone() == (True,):
        return
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(table.schema)))
    conn.execute(_SIGNAL_DDL.format(table.identifier))
    log.info("created the signal table %s", table)


def send_signal(conn: psycopg.Connection, table: TableRef, kind: str, data: dict[str, Any]) -> str:
    """Insert a signal row; the running source reads it from the stream once it commits. Its id."""
    signal_id = str(uuid.uuid4())
    conn.execute(
        sql.SQL("INSERT INTO {} (id, type, data) VALUES (%s, %s, %s)").format(table.identifier),
        (signal_id, kind, json.dumps(data)),
    )
    return signal_id


def snapshot_signal_data(tables: Sequence[str], where: str | None) -> dict[str, Any]:
    """The `data` of an `execute-snapshot` signal for `tables`, each filtered by `where` when given."""
    data: dict[str, Any] = {"data-collections": list(tables), "type": "incremental"}
    if where:
        data["additional-conditions"] = [{"data-collection": t, "filter": where} for t in tables]
    return data


def signal_table(config: PostgresSourceConfig) -> TableRef | None:
    return None if config.signal.table is None else table_ref(config.signal.table)


# --- persisted progress ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class KeyRange:
    """One part of a table's key space, read chunk by chunk on its own (several at once with `parallelism`)."""

    upper: list[str | None] | None = None
    """Text values of the key columns of the range's last key (inclusive); None: to the end of the table."""
    last_key: list[str | None] | None = None
    """The last key of the range's last acknowledged chunk (None: from the start of the range)."""
    done: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"upper": self.upper, "last_key": self.last_key, "done": self.done}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KeyRange:
        return cls(data.get("upper"), data.get("last_key"), bool(data.get("done")))


@dataclass(slots=True)
class Backfill:
    """One requested table: where it stands (persisted as JSON in `cdc.source_state`)."""

    table: str
    where: str | None = None
    ranges: list[KeyRange] = field(default_factory=lambda: [KeyRange()])
    """The table's key ranges, in key order: one, unless it was split to be read by several readers at once."""
    rows: int = 0
    chunks: int = 0
    estimated_rows: int | None = None
    first_point: int | None = None
    """The low watermark of the first chunk: the position of the snapshot-complete marker."""
    done: bool = False
    split: bool = False
    """The key ranges were chosen (at the first chunk): kept for the whole snapshot, across restarts."""
    signal: str | None = None
    """The id of the signal that requested it (`cdc snapshot --follow` finds its tables by it)."""

    @property
    def last_key(self) -> list[str | None] | None:
        """The last key read of the first unfinished range (of the last one when all are done)."""
        ranges = self.ranges
        return next((r.last_key for r in ranges if not r.done), ranges[-1].last_key if ranges else None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table, "where": self.where, "last_key": self.last_key, "rows": self.rows,
            "chunks": self.chunks, "estimated_rows": self.estimated_rows, "first_point": self.first_point,
            "done": self.done, "split": self.split, "ranges": [r.as_dict() for r in self.ranges],
            "signal": self.signal,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Backfill:
        ranges = [KeyRange.from_dict(r) for r in data.get("ranges") or []] or [
            KeyRange(None, data.get("last_key"), bool(data.get("done")))
        ]
        return cls(
            str(data["table"]), data.get("where"), ranges, int(data.get("rows", 0)), int(data.get("chunks", 0)),
            data.get("estimated_rows"), data.get("first_point"), bool(data.get("done")), bool(data.get("split")),
            data.get("signal"),
        )  # fmt: skip


@dataclass(slots=True)
class Backfills:
    tables: list[Backfill] = field(default_factory=list)
    paused: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"paused": self.paused, "tables": [t.as_dict() for t in self.tables]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Backfills:
        return cls([Backfill.from_dict(t) for t in data.get("tables", [])], bool(data.get("paused")))

    def current(self) -> Backfill | None:
        return next((t for t in self.tables if not t.done), None)

    def unfinished(self) -> list[Backfill]:
        return [t for t in self.tables if not t.done]

    def request(self, table: str, where: str | None, signal: str | None = None) -> None:
        """Queue `table` (again): a finished or running snapshot of it is replaced by a new one from the start."""
        self.tables = [t for t in self.tables if t.table != table]
        self.tables.append(Backfill(table, where, signal=signal))

    def stop(self, tables: Sequence[str]) -> list[str]:
        """Drop the unfinished snapshots of `tables` (all when empty); the ones dropped."""
        dropped = [t.table for t in self.tables if not t.done and (not tables or t.table in tables)]
        self.tables = [t for t in self.tables if t.done or t.table not in dropped]
        return dropped


# --- reading chunks ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Chunk:
    rows: Sequence[Sequence[str | None]]
    invisible: frozenset[int]
    """32-bit ids of the transactions running when the chunk's snapshot was taken (it cannot see them)."""


class ChunkReader:
    """A connection of its own for the watermarks and the chunk reads, every value loaded as the server's text."""

    def __init__(self, dsn: str, *, connect_timeout_s: int) -> None:
        self._dsn = dsn
        self._connect_timeout_s = connect_timeout_s
        self._conn: psycopg.Connection | None = None

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(
                self._dsn, autocommit=True, application_name="cdc-connector-incremental-snapshot",
                options=session_options(), **libpq_options(self._connect_timeout_s),
            )  # fmt: skip
            for (oid,) in conn.execute("SELECT oid::int FROM pg_type").fetchall():
                conn.adapters.register_loader(oid, TextLoader)
            # The high watermark's commit must flush the WAL, whatever the server's default: with
            # `synchronous_commit = off` the stream would see it only at the WAL writer's next round (up to
            # `wal_writer_delay`, 200 ms by default), every chunk. `local`: no wait for synchronous standbys.
            conn.execute("SET synchronous_commit = local")
            self._conn = conn
        return self._conn

    def watermark(self, content: str, *, transactional: bool = False) -> None:
        self._connection().execute(
            "SELECT pg_logical_emit_message(%s, %s, %s)", (transactional, WATERMARK_PREFIX, content)
        )

    def estimate(self, table: TableRef) -> int | None:
        conn = self._connection()
        row = conn.execute(
            "SELECT reltuples::float8, relpages, pg_relation_size(oid), current_setting('block_size')::int "
            "FROM pg_class WHERE oid = to_regclass(%s)",
            (table.identifier.as_string(conn),),
        ).fetchone()
        if row is None:
            return None
        return estimate_rows(float(row[0]), int(row[1]), int(row[2]), int(row[3]))

    def _key_bounds(self, conn: psycopg.Connection, table: TableRef, key_columns: Sequence[str]) -> sql.Composable:
        """`(CAST(%s AS type), ...)` for a key's text values: keyset order is the columns' types', not text's."""
        types: dict[str, str] = dict(
            conn.execute(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
                (table.identifier.as_string(conn),),
            ).fetchall()
        )
        return sql.SQL("({})").format(
            sql.SQL(", ").join(
                [sql.SQL("CAST({} AS {})").format(sql.Placeholder(), sql.SQL(types[c])) for c in key_columns]
            )
        )

    def read(
        self,
        table: TableRef,
        columns: Sequence[str],
        key_columns: Sequence[str],
        *,
        after: Sequence[str | None] | None,
        filters: Sequence[str],
        limit: int,
        upto: Sequence[str | None] | None = None,
    ) -> Chunk:
        """Up to `limit` rows with a key greater than `after` (and at most `upto`), in key order, and what the read
        could not see."""
        conn = self._connection()
        key = sql.SQL(", ").join(map(sql.Identifier, key_columns))
        conditions: list[sql.Composable] = [sql.SQL("({})").format(sql.SQL(f)) for f in filters]
        params: list[Any] = []
        if after is not None or upto is not None:
            bounds = self._key_bounds(conn, table, key_columns)
            if upto is not None:
                conditions.insert(0, sql.SQL("({}) <= {}").format(key, bounds))
                params[:0] = upto
            if after is not None:
                conditions.insert(0, sql.SQL("({}) > {}").format(key, bounds))
                params[:0] = after
        query = sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(map(sql.Identifier, columns)), table.identifier)
        if conditions:
            query = sql.SQL("{} WHERE {}").format(query, sql.SQL(" AND ").join(conditions))
        query = sql.SQL("{} ORDER BY {} LIMIT {}").format(query, key, sql.Literal(limit))
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            snapshot = conn.execute("SELECT pg_current_snapshot()::text").fetchone()
            rows = conn.execute(query, params).fetchall()
        assert snapshot is not None
        return Chunk(rows, running_xids(str(snapshot[0])))

    def split_points(
        self, table: TableRef, key_columns: Sequence[str], *, rows: int, parts: int
    ) -> list[list[str | None]]:
        """Up to `parts - 1` keys splitting the table's `rows` (about) evenly, in key order (an index-only walk
        each, once per snapshot)."""
        conn = self._connection()
        key = sql.SQL(", ").join(map(sql.Identifier, key_columns))
        query = sql.SQL("SELECT {} FROM {} ORDER BY {} OFFSET %s LIMIT 1").format(key, table.identifier, key)
        points: list[list[str | None]] = []
        for part in range(1, parts):
            row = conn.execute(query, (rows * part // parts,)).fetchone()
            if row is None:
                break
            if not points or points[-1] != list(row):
                points.append(list(row))
        return points

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def running_xids(snapshot: str) -> frozenset[int]:
    """The in-progress transaction ids of a `pg_current_snapshot()` text (`xmin:xmax:xip,...`), as 32-bit xids."""
    xip = snapshot.split(":")[2]
    return frozenset(int(x) % _XID_MOD for x in xip.split(",") if x)


# --- the window between a chunk's watermarks ---------------------------------------------------------------------


@dataclass(slots=True)
class Part:
    """One chunk of a window: the next rows of one key range of one table."""

    backfill: Backfill
    range: KeyRange
    events: TableEvents
    rows: dict[str, SnapshotRead]
    """The chunk's rows by key (`key_json`), in key order; a row changed in the window is removed."""
    read: int
    last_key: list[str | None] | None
    dropped: int = 0


@dataclass(slots=True)
class Window:
    """The chunks read between one low and one high watermark (up to `parallelism`, read at once): each is a chunk
    of the algorithm on its own, so sharing the watermarks changes nothing of its reasoning."""

    id: str
    parts: list[Part]
    invisible: frozenset[int]
    """What the reads could not see: the running transactions of every part's snapshot."""
    tables: frozenset[str]
    low_lsn: int | None = None


@dataclass(frozen=True, slots=True)
class ChunkProgress:
    """The progress a produced chunk makes once Kafka holds it."""

    backfill: Backfill
    range: KeyRange
    last_key: list[str | None] | None
    rows: int
    finished: bool


@dataclass(frozen=True, slots=True)
class ChunkSlot:
    """The acknowledgement slot of a produced window and the progress of each of its chunks."""

    slot: TxSlot
    chunks: tuple[ChunkProgress, ...]


@dataclass(slots=True)
class _Planned:
    backfill: Backfill
    range: KeyRange
    events: TableEvents
    filters: list[str]


class IncrementalSnapshots:
    """Runs the requested incremental snapshots from the streaming loop (one window of chunks at a time)."""

    def __init__(
        self,
        config: PostgresSourceConfig,
        *,
        conn: psycopg.Connection,
        store: StateStore,
        factory: EventFactory,
        output: RecordOutput,
        tracker: AckTracker,
        status: SourceStatus,
        readers: Callable[[], ChunkReader] | None = None,
        published: Callable[[], Iterable[TableRef]] | None = None,
        poll: Callable[[float], None] | None = None,
        progress: ProgressReporter | None = None,
    ) -> None:
        """`readers`: makes a chunk reader (a connection of its own; one per parallel read);
        `published`: the tables the publication streams (default: read from `conn` when a signal asks);
        `poll`: serve Kafka's acknowledgements for up to that many seconds (`KafkaDelivery.poll`), used to go on
        with the next chunk at once instead of at the streaming loop's next look;
        `progress`: where progress goes (default: a `ProgressReporter` on stderr, made at the first chunk)."""
        self._config = config
        self._slot_name = config.slot.name
        self._store = store
        self._factory = factory
        self._output = output
        self._tracker = tracker
        self._status = status
        self._poll = poll
        self._reporter: ProgressReporter | None = progress
        self._rates: dict[str, RowRate] = {}
        self._published = published or (lambda: publication_tables(conn, config.publication.name))
        dsn = config.dsn.get_secret_value()
        self._new_reader = readers or (lambda: ChunkReader(dsn, connect_timeout_s=config.connect_timeout_s))
        self._readers: list[ChunkReader] = []
        self._executor: ThreadPoolExecutor | None = None
        self._run = uuid.uuid4().hex[:12]
        self._sequence = 0
        self.signal_table = signal_table(config)
        self.signal_relation: int | None = None
        self._signal_columns: tuple[str, ...] = ()
        self._state = Backfills.from_dict(store.incremental(self._slot_name))
        self.active = self._state.current() is not None and not self._state.paused
        """A snapshot is requested and unfinished: transactions are remembered for the race check of `_at_low`."""
        self._window: Window | None = None
        self._pending: ChunkSlot | None = None
        self._recent: set[int] = set()
        """Transactions streamed since the last low watermark while a snapshot is active (see `_at_low`)."""
        self.watching: frozenset[str] = frozenset()
        """The tables whose streamed changes remove rows from the open window (between its watermarks)."""
        self._publish()

    # --- what the streamer calls ---------------------------------------------------------------------------

    def take_relation(self, relation: Relation) -> bool:
        """True when `relation` is the signal table's: its changes are signals, never events."""
        table = self.signal_table
        if table is None or (relation.namespace, relation.name) != (table.schema, table.table):
            return False
        self.signal_relation = relation.relation_id
        self._signal_columns = tuple(c.name for c in relation.columns)
        return True

    def signal(self, message: Insert) -> None:
        """A row inserted into the signal table (committed: pgoutput sends nothing else)."""
        values = dict(zip(self._signal_columns, (v if isinstance(v, str) or v is None else None for v in message.new),
                          strict=False))  # fmt: skip
        try:
            signal = parse_signal(values)
        except ValueError as exc:
            log.warning("ignoring a signal: %s", exc)
            return
        self.apply(signal)

    def changed(self, table_name: str, changes: Sequence[ChangeEvent]) -> None:
        """Streamed changes of a watched table: their keys leave the open window's chunks."""
        window = self._window
        assert window is not None
        for part in window.parts:
            if part.events.table_name != table_name:
                continue
            rows = part.rows
            for change in changes:
                if rows.pop(key_json(change.key), None) is not None:
                    part.dropped += 1

    def truncated(self, table_name: str) -> None:
        window = self._window
        if window is None or window.low_lsn is None:
            return
        for part in window.parts:
            if part.events.table_name == table_name:
                part.dropped += len(part.rows)
                part.rows.clear()

    def committed(self, xid: int) -> None:
        # Every transaction since the last low watermark: one streamed between the previous chunk's watermarks may
        # still be invisible to the next chunk's read (see `_at_low`).
        if self.active:
            self._recent.add(xid)

    def message(self, message: LogicalMessage, lsn: int) -> None:
        if message.prefix != WATERMARK_PREFIX or self._window is None:
            return
        slot, _, rest = message.content.decode(errors="replace").partition("/")
        window_id, _, mark = rest.rpartition("/")
        window = self._window
        if slot != self._slot_name or window_id != window.id:
            return  # another connector's, or an earlier run's (replayed)
        if mark == "low":
            self._at_low(window, message.lsn or lsn)
        elif mark == "high" and window.low_lsn is not None:
            self._at_high(window)

    def tick(self) -> bool:
        """Start the next window when none is open and the previous one is acknowledged; True when it read one."""
        if self._window is not None:
            return False
        pending = self._pending
        if pending is not None:
            if not (pending.slot.closed and pending.slot.pending == 0) or self._tracker.error is not None:
                return False
            for chunk in pending.chunks:
                self._acknowledged(chunk)
            self._pending = None
            self._save()
        if self._state.paused:
            return False
        planned = self._plan()
        if not planned:
            return False
        self._read_window(planned)
        return True

    def close(self) -> None:
        if self._reporter is not None:
            self._reporter.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        for reader in self._readers:
            reader.close()
        self._readers = []

    def request_table(self, table: TableRef) -> None:
        """Queue an incremental snapshot of `table` (a table newly added to the publication)."""
        self._state.request(str(table), None)
        log.info("incremental snapshot of %s queued (new table)", table)
        self._save()

    # --- signals -------------------------------------------------------------------------------------------

    def apply(self, signal: Signal) -> None:
        state = self._state
        match signal.type:
            case "execute-snapshot":
                kind = str(signal.data.get("type", "incremental")).lower()
                if kind != "incremental":
                    log.warning("signal %s: snapshot type %r is not supported (only incremental)", signal.id, kind)
                    return
                published = {str(t) for t in self._published()}
                for table, where in requested_tables(signal):
                    if table not in published:
                        log.warning(
                            "signal %s: %s is not captured (not in publication %s): no incremental snapshot", signal.id,
                            table, self._config.publication.name,
                        )  # fmt: skip
                        continue
                    self._drop_window_of(table)
                    state.request(table, where, signal.id)
                    log.info("incremental snapshot of %s requested (signal %s)%s", table, signal.id,
                             f" where {where}" if where else "")  # fmt: skip
            case "stop-snapshot":
                names = [str(table_ref(str(n))) for n in signal.data.get("data-collections") or []]
                for table in state.stop(names):
                    log.info("incremental snapshot of %s stopped (signal %s)", table, signal.id)
                    self._drop_window_of(table)
            case "pause-snapshot":
                state.paused = True
                log.info("incremental snapshots paused (signal %s)", signal.id)
            case "resume-snapshot":
                state.paused = False
                log.info("incremental snapshots resumed (signal %s)", signal.id)
            case "log":
                log.info("signal %s: %s", signal.id, signal.data.get("message"))
            case _:
                log.warning("ignoring signal %s of unknown type %r", signal.id, signal.type)
                return
        self._save()

    def _drop_window_of(self, table: str) -> None:
        # Nothing of an open window was produced yet: dropping it loses nothing, its other chunks are read again.
        # A produced, unacknowledged window of a stopped table is left to finish (its progress is then ignored).
        if self._window is not None and table in self._window.tables:
            self._close_window()

    # --- one window ----------------------------------------------------------------------------------------

    def _plan(self) -> list[_Planned]:
        """The next chunks to read: the unfinished key ranges of the requested tables, in order, up to
        `parallelism`."""
        settings = self._config.incremental_snapshot
        planned: list[_Planned] = []
        for backfill in self._state.unfinished():
            if len(planned) >= settings.parallelism:
                break
            ref = table_ref(backfill.table)
            events = self._factory.for_table(ref)
            if not events.key_columns:
                log.warning(
                    "incremental snapshot of %s: the table has no key to page by; skipped (give it `key_columns` in "
                    "`table_options`, unique ones, or add a primary key, then request the snapshot again)",
                    ref,
                )
                backfill.done = True
                self._save()
                continue
            if not backfill.split:
                self._split(backfill, ref, events)
            filters = [f for f in (options_for(self._config, ref).row_filter, backfill.where) if f]
            for key_range in backfill.ranges:
                if not key_range.done and len(planned) < settings.parallelism:
                    planned.append(_Planned(backfill, key_range, events, filters))
        return planned

    def _split(self, backfill: Backfill, ref: TableRef, events: TableEvents) -> None:
        """At a table's first chunk: its estimate, and key ranges for several readers when it is large enough."""
        settings = self._config.incremental_snapshot
        reader = self._reader(0)
        if backfill.estimated_rows is None:
            backfill.estimated_rows = reader.estimate(ref)
        estimate = backfill.estimated_rows
        if estimate is not None:
            SNAPSHOT_ESTIMATED_ROWS.labels(table=backfill.table).set(estimate)
        parts = min(settings.parallelism, (estimate or 0) // settings.chunk_size)
        if backfill.chunks == 0 and parts > 1 and estimate:
            points = reader.split_points(ref, events.key_columns, rows=estimate, parts=parts)
            # Each range starts after the previous one's last key, as if its reading had got that far.
            bounds: list[list[str | None] | None] = [None, *points, None]
            backfill.ranges = [KeyRange(upper, lower) for lower, upper in pairwise(bounds)]
            log.info("incremental snapshot of %s: %d key ranges read in parallel", ref, len(backfill.ranges))
        backfill.split = True
        self._save()

    def _reader(self, index: int) -> ChunkReader:
        while len(self._readers) <= index:
            self._readers.append(self._new_reader())
        return self._readers[index]

    def _read_window(self, planned: list[_Planned]) -> None:
        self._sequence += 1
        window_id = f"{self._run}-{self._sequence}"
        limit = self._config.incremental_snapshot.chunk_size
        readers = [self._reader(i) for i in range(len(planned))]

        def read(reader: ChunkReader, plan: _Planned) -> Chunk:
            return reader.read(
                table_ref(plan.backfill.table), plan.events.columns, plan.events.key_columns,
                after=plan.range.last_key, filters=plan.filters, limit=limit, upto=plan.range.upper,
            )  # fmt: skip

        readers[0].watermark(f"{self._slot_name}/{window_id}/low")
        if len(planned) == 1:
            chunks = [read(readers[0], planned[0])]
        else:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    self._config.incremental_snapshot.parallelism, thread_name_prefix="cdc-incremental-read"
                )
            # Every read starts after the low watermark and ends before the high one: each is a chunk of its own.
            chunks = list(self._executor.map(read, readers, planned))
        # Transactional: its commit flushes the WAL, so the stream gets both marks now rather than at the WAL writer's
        # next round; in the stream it sits at its commit, after the chunks' reads either way.
        readers[0].watermark(f"{self._slot_name}/{window_id}/high", transactional=True)
        parts = []
        invisible: set[int] = set()
        for plan, chunk in zip(planned, chunks, strict=True):
            events = plan.events
            # Converted once, at the read: the high watermark only gives each row its position and change id.
            rows: dict[str, SnapshotRead] = {}
            for texts in chunk.rows:
                row = events.snapshot_read(texts)
                rows[key_json(row.key)] = row
            index = [events.columns.index(c) for c in events.key_columns]
            last = chunk.rows[-1] if chunk.rows else None
            last_key = [last[i] for i in index] if last is not None else plan.range.last_key
            parts.append(Part(plan.backfill, plan.range, events, rows, len(chunk.rows), last_key))
            invisible |= chunk.invisible
        tables = frozenset(p.backfill.table for p in parts)
        self._window = Window(window_id, parts, frozenset(invisible), tables)

    def _close_window(self) -> None:
        self._window = None
        self.watching = frozenset()

    def _at_low(self, window: Window, lsn: int) -> None:
        racy = self._recent & window.invisible
        self._recent = set()
        if racy:
            # Streamed before the low watermark, yet unseen by a chunk's read: the chunk may hold an older row
            # than the stream already sent. Read the window again.
            log.debug("window %s raced transactions %s: reading it again", window.id, sorted(racy))
            self._close_window()
            return
        window.low_lsn = lsn
        self.watching = window.tables

    def _at_high(self, window: Window) -> None:
        assert window.low_lsn is not None
        self._close_window()
        point = window.low_lsn
        limit = self._config.incremental_snapshot.chunk_size
        finishing = [p.range for p in window.parts if p.read < limit]
        ts_ms = int(time.time() * 1000)
        slot = self._tracker.open()
        progress = []
        completed: dict[int, Part] = {}
        for part in window.parts:
            backfill = part.backfill
            events = part.events
            if backfill.first_point is None:
                backfill.first_point = point
            placed = [events.snapshot_event(row, point, ts_ms, SNAPSHOT_MARKER) for row in part.rows.values()]
            self._output.produce_events(events, placed, slot)
            finished = part.read < limit
            progress.append(ChunkProgress(backfill, part.range, part.last_key, len(part.rows), finished))
            if all(r.done or any(r is f for f in finishing) for r in backfill.ranges):
                completed[id(backfill)] = part
            log.debug("chunk of %s in window %s: %d rows read, %d changed in the window, %d produced at %d",
                      backfill.table, window.id, part.read, part.dropped, len(part.rows), point)  # fmt: skip
        for part in completed.values():
            # After every row of the table (those of earlier windows are acknowledged already).
            if part.backfill.where is None and self._config.snapshot.complete_markers:
                assert part.backfill.first_point is not None
                self._output.produce_everywhere(part.events.snapshot_complete(part.backfill.first_point), slot)
        self._tracker.close(slot, 0)
        self._pending = ChunkSlot(slot, tuple(progress))
        if self._poll is not None:
            # Kafka usually acknowledges within milliseconds: waiting briefly here, between two transactions of the
            # stream, chains the windows instead of leaving one per turn of the streaming loop.
            deadline = time.monotonic() + _ACK_WAIT_S
            while slot.pending and self._tracker.error is None and time.monotonic() < deadline:
                self._poll(0.005)
            self.tick()

    def _acknowledged(self, chunk: ChunkProgress) -> None:
        """Kafka holds the chunk: its progress becomes its range's (persisted before the next window is read)."""
        backfill = chunk.backfill
        if not any(t is backfill for t in self._state.tables):
            return  # stopped or requested anew meanwhile
        chunk.range.last_key = chunk.last_key
        chunk.range.done = chunk.finished
        backfill.rows += chunk.rows
        backfill.chunks += 1
        SNAPSHOT_ROWS.labels(table=backfill.table).inc(chunk.rows)
        rate = self._rates.setdefault(backfill.table, RowRate(backfill.rows - chunk.rows))
        rate.add(backfill.rows)
        finished = all(r.done for r in backfill.ranges)
        if self._reporter is None:
            self._reporter = ProgressReporter()
        self._reporter.tick(
            TableProgress(f"{backfill.table} (incremental)", backfill.estimated_rows, backfill.rows, finished),
            force=finished,
        )
        if finished:
            backfill.done = True
            self._rates.pop(backfill.table, None)
            log.info("incremental snapshot of %s complete: %d rows in %d chunks", backfill.table, backfill.rows,
                     backfill.chunks)  # fmt: skip

    def _save(self) -> None:
        self.active = self._state.current() is not None and not self._state.paused
        state = self._state_dict()
        self._store.set_incremental(self._slot_name, state)
        self._status.publish(incremental_snapshot=state)

    def _publish(self) -> None:
        self._status.publish(incremental_snapshot=self._state_dict())

    def _state_dict(self) -> dict[str, Any]:
        """The persisted state, with each running table's recent pace and time left (for `cdc status`; not read
        back)."""
        state = self._state.as_dict()
        for table in state["tables"]:
            rate = self._rates.get(table["table"])
            if rate is not None and not table["done"]:
                table["rows_per_s"] = rate.per_second()
                estimated = table["estimated_rows"]
                table["eta_s"] = rate.eta(table["rows"], None if estimated is None else max(estimated, table["rows"]))
        return state


INITIAL_SIGNAL = "initial"
"""The `signal` of the tables an initial snapshot (`snapshot.initial: incremental`) queued."""


def queue_initial(store: StateStore, slot: str, consistent_point: Lsn, tables: Sequence[TableRef]) -> None:
    """The initial snapshot taken incrementally: every captured table queued, and the slot's snapshot `done`, in one
    statement. Until then the slot's state stays `running`, so a crash before it drops the slot and starts again."""
    state = Backfills()
    for table in tables:
        state.request(str(table), None, INITIAL_SIGNAL)
    store.put(slot, consistent_point, "done", {"incremental": state.as_dict()})
    log.info("initial snapshot: %d tables queued for incremental snapshots (snapshot.initial: incremental)",
             len(tables))  # fmt: skip


def follow(
    read_state: Callable[[], dict[str, Any]],
    signal_id: str,
    tables: Sequence[str],
    *,
    reporter: ProgressReporter,
    every_s: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
    until: Callable[[], bool] = lambda: False,
) -> bool:
    """Show the progress of the snapshots `signal_id` requested (from the persisted state `read_state` returns) until
    each of `tables` is done (True), or `until` says to stop (False). Tables the source has not taken up yet (it reads
    the signal from the WAL) show nothing."""
    wanted = set(tables)
    shown: set[str] = set()
    while not until():
        state = Backfills.from_dict(read_state())
        mine = [t for t in state.tables if t.signal == signal_id and t.table in wanted]
        for backfill in mine:
            if backfill.table in shown:
                continue
            progress = TableProgress(f"{backfill.table} (incremental)", backfill.estimated_rows, backfill.rows,
                                     backfill.done)  # fmt: skip
            reporter.tick(progress, force=backfill.done)
            if backfill.done:
                shown.add(backfill.table)
        if len(mine) == len(wanted) and all(t.done for t in mine):
            return True
        sleep(every_s)
    return False


def configured_signal_table(config: PostgresSourceConfig) -> TableRef:
    """The signal table, or the error saying how to configure one."""
    table = signal_table(config)
    if table is None:
        raise ConfigError(
            "no signal table is configured (source.signal.table)",
            hint="set source.signal.table (e.g. cdc.signals) and restart the source; it is created when missing",
        )
    return table

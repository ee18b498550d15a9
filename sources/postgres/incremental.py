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
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.string import TextLoader

from core.delivery import AckTracker, TxSlot
from core.errors import ConfigError
from core.metrics import SNAPSHOT_ROWS
from core.timeouts import libpq_options
from sources.postgres.config import PostgresSourceConfig
from sources.postgres.events import ChangeEvent, EventFactory, TableEvents
from sources.postgres.output import RecordOutput
from sources.postgres.protocol import Insert, LogicalMessage, Relation
from sources.postgres.replication import session_options
from sources.postgres.selection import TableRef, options_for, publication_tables
from sources.postgres.slots import StateStore
from sources.postgres.snapshot import ProgressReporter, TableProgress, estimate_rows
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
class Backfill:
    """One requested table: where it stands (persisted as JSON in `cdc.source_state`)."""

    table: str
    where: str | None = None
    last_key: list[str | None] | None = None
    """Text values of the key columns of the last row of the last acknowledged chunk (None: from the start)."""
    rows: int = 0
    chunks: int = 0
    estimated_rows: int | None = None
    first_point: int | None = None
    """The low watermark of the first chunk: the position of the snapshot-complete marker."""
    done: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table, "where": self.where, "last_key": self.last_key, "rows": self.rows,
            "chunks": self.chunks, "estimated_rows": self.estimated_rows, "first_point": self.first_point,
            "done": self.done,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Backfill:
        return cls(
            str(data["table"]), data.get("where"), data.get("last_key"), int(data.get("rows", 0)),
            int(data.get("chunks", 0)), data.get("estimated_rows"), data.get("first_point"), bool(data.get("done")),
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

    def request(self, table: str, where: str | None) -> None:
        """Queue `table` (again): a finished or running snapshot of it is replaced by a new one from the start."""
        self.tables = [t for t in self.tables if t.table != table]
        self.tables.append(Backfill(table, where))

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

    def read(
        self,
        table: TableRef,
        columns: Sequence[str],
        key_columns: Sequence[str],
        *,
        after: Sequence[str | None] | None,
        filters: Sequence[str],
        limit: int,
    ) -> Chunk:
        """Up to `limit` rows with a key greater than `after`, in key order, and what the read could not see."""
        conn = self._connection()
        key = sql.SQL(", ").join(map(sql.Identifier, key_columns))
        conditions: list[sql.Composable] = [sql.SQL("({})").format(sql.SQL(f)) for f in filters]
        params: list[Any] = []
        if after is not None:
            types: dict[str, str] = dict(
                conn.execute(
                    "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                    "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
                    (table.identifier.as_string(conn),),
                ).fetchall()
            )
            # Each bound value cast to its column's type: keyset order is the column's, not text's.
            bounds = sql.SQL(", ").join(
                [sql.SQL("CAST({} AS {})").format(sql.Placeholder(), sql.SQL(types[c])) for c in key_columns]
            )
            conditions.insert(0, sql.SQL("({}) > ({})").format(key, bounds))
            params.extend(after)
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
class Window:
    id: str
    backfill: Backfill
    events: TableEvents
    rows: dict[str, tuple[ChangeEvent, list[str | None]]]
    """The chunk's rows (event, key texts) by key (`key_json`), in key order; a row changed in the window is removed."""
    read: int
    last_key: list[str | None] | None
    invisible: frozenset[int]
    low_lsn: int | None = None
    dropped: int = 0


@dataclass(frozen=True, slots=True)
class ChunkSlot:
    """The acknowledgement slot of a produced chunk and the progress it makes once Kafka holds it."""

    slot: TxSlot
    backfill: Backfill
    last_key: list[str | None] | None
    rows: int
    finished: bool


class IncrementalSnapshots:
    """Runs the requested incremental snapshots from the streaming loop (one chunk window at a time)."""

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
        reader: ChunkReader | None = None,
        published: Callable[[], Iterable[TableRef]] | None = None,
        poll: Callable[[float], None] | None = None,
    ) -> None:
        """`published`: the tables the publication streams (default: read from `conn` when a signal asks);
        `poll`: serve Kafka's acknowledgements for up to that many seconds (`KafkaDelivery.poll`), used to go on
        with the next chunk at once instead of at the streaming loop's next look."""
        self._config = config
        self._slot_name = config.slot.name
        self._store = store
        self._factory = factory
        self._output = output
        self._tracker = tracker
        self._status = status
        self._poll = poll
        self._reporter: ProgressReporter | None = None
        self._published = published or (lambda: publication_tables(conn, config.publication.name))
        self._reader = reader or ChunkReader(config.dsn.get_secret_value(), connect_timeout_s=config.connect_timeout_s)
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
        self._publish()

    # --- what the streamer calls ---------------------------------------------------------------------------

    @property
    def watching(self) -> str | None:
        """The table whose streamed changes remove rows from the open chunk (between its watermarks), if any."""
        window = self._window
        return window.events.table_name if window is not None and window.low_lsn is not None else None

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

    def changed(self, changes: Sequence[ChangeEvent]) -> None:
        """Streamed changes of the watched table: their keys leave the open chunk."""
        window = self._window
        assert window is not None
        rows = window.rows
        for change in changes:
            if rows.pop(key_json(change.key), None) is not None:
                window.dropped += 1

    def truncated(self, table_name: str) -> None:
        window = self._window
        if window is not None and window.low_lsn is not None and window.events.table_name == table_name:
            window.dropped += len(window.rows)
            window.rows.clear()

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
        """Start the next chunk when none is open and the previous one is acknowledged; True when it read one."""
        if self._window is not None:
            return False
        pending = self._pending
        if pending is not None:
            if not (pending.slot.closed and pending.slot.pending == 0) or self._tracker.error is not None:
                return False
            self._acknowledged(pending)
            self._pending = None
        backfill = self._state.current()
        if backfill is None or self._state.paused:
            return False
        self._read_chunk(backfill)
        return True

    def close(self) -> None:
        if self._reporter is not None:
            self._reporter.close()
        self._reader.close()

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
                    if self._window is not None and self._window.backfill.table == table:
                        self._window = None
                    state.request(table, where)
                    log.info("incremental snapshot of %s requested (signal %s)%s", table, signal.id,
                             f" where {where}" if where else "")  # fmt: skip
            case "stop-snapshot":
                names = [str(table_ref(str(n))) for n in signal.data.get("data-collections") or []]
                for table in state.stop(names):
                    log.info("incremental snapshot of %s stopped (signal %s)", table, signal.id)
                    if self._window is not None and self._window.backfill.table == table:
                        self._window = None
                    if self._pending is not None and self._pending.backfill.table == table:
                        self._pending = None
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

    # --- one chunk -----------------------------------------------------------------------------------------

    def _read_chunk(self, backfill: Backfill) -> None:
        ref = table_ref(backfill.table)
        events = self._factory.for_table(ref)
        if not events.key_columns:
            log.warning("incremental snapshot of %s: the table has no key to page by; skipped", ref)
            backfill.done = True
            self._save()
            return
        if backfill.estimated_rows is None and backfill.chunks == 0:
            backfill.estimated_rows = self._reader.estimate(ref)
        self._sequence += 1
        window_id = f"{self._run}-{self._sequence}"
        filters = [f for f in (options_for(self._config, ref).row_filter, backfill.where) if f]
        reader = self._reader
        reader.watermark(f"{self._slot_name}/{window_id}/low")
        chunk = reader.read(
            ref, events.columns, events.key_columns, after=backfill.last_key, filters=filters,
            limit=self._config.incremental_snapshot.chunk_size,
        )  # fmt: skip
        # Transactional: its commit flushes the WAL, so the stream gets both marks now rather than at the WAL writer's
        # next round; in the stream it sits at its commit, after the chunk's read either way.
        reader.watermark(f"{self._slot_name}/{window_id}/high", transactional=True)
        # Converted once, at the read: the high watermark only gives each row its position and id.
        index = [events.columns.index(c) for c in events.key_columns]
        rows: dict[str, tuple[ChangeEvent, list[str | None]]] = {}
        for texts in chunk.rows:
            event = events.snapshot_row(texts, 0, 0, SNAPSHOT_MARKER)
            rows[key_json(event.key)] = (event, [texts[i] for i in index])
        last = chunk.rows[-1] if chunk.rows else None
        last_key = [last[i] for i in index] if last is not None else backfill.last_key
        self._window = Window(window_id, backfill, events, rows, len(chunk.rows), last_key, chunk.invisible)

    def _at_low(self, window: Window, lsn: int) -> None:
        racy = self._recent & window.invisible
        self._recent = set()
        if racy:
            # Streamed before the low watermark, yet unseen by the chunk's read: the chunk may hold an older row
            # than the stream already sent. Read it again.
            log.debug("chunk %s raced transactions %s: reading it again", window.id, sorted(racy))
            self._window = None
            return
        window.low_lsn = lsn

    def _at_high(self, window: Window) -> None:
        assert window.low_lsn is not None
        self._window = None
        point = window.low_lsn
        events = window.events
        backfill = window.backfill
        limit = self._config.incremental_snapshot.chunk_size
        finished = window.read < limit
        if backfill.first_point is None:
            backfill.first_point = point
        ts_ms = int(time.time() * 1000)
        slot = self._tracker.open()
        ids = self._factory.ids
        placed = [
            replace(event, change_id=ids.snapshot(point, events.schema, events.table, key_texts), lsn=point,
                    commit_lsn=point, ts_ms=ts_ms)
            for event, key_texts in window.rows.values()
        ]  # fmt: skip
        self._output.produce_events(events, placed, slot)
        if finished and backfill.where is None and self._config.snapshot.complete_markers:
            self._output.produce_everywhere(events.snapshot_complete(backfill.first_point), slot)
        self._tracker.close(slot, 0)
        self._pending = ChunkSlot(slot, backfill, window.last_key, len(window.rows), finished)
        if self._poll is not None:
            # Kafka usually acknowledges within milliseconds: waiting briefly here, between two transactions of the
            # stream, chains the chunks instead of leaving one per turn of the streaming loop.
            deadline = time.monotonic() + _ACK_WAIT_S
            while slot.pending and self._tracker.error is None and time.monotonic() < deadline:
                self._poll(0.005)
            self.tick()
        log.debug("chunk %s of %s: %d rows read, %d changed in the window, %d produced at %d", window.id,
                  backfill.table, window.read, window.dropped, len(window.rows), point)  # fmt: skip

    def _acknowledged(self, chunk: ChunkSlot) -> None:
        """Kafka holds the chunk: its progress becomes the table's (persisted before the next chunk is read)."""
        backfill = chunk.backfill
        if not any(t is backfill for t in self._state.tables):
            return  # stopped or requested anew meanwhile
        backfill.last_key = chunk.last_key
        backfill.rows += chunk.rows
        backfill.chunks += 1
        SNAPSHOT_ROWS.labels(table=backfill.table).inc(chunk.rows)
        if self._reporter is None:
            self._reporter = ProgressReporter()
        progress = TableProgress(f"{backfill.table} (incremental)", backfill.estimated_rows, backfill.rows,
                                 chunk.finished)  # fmt: skip
        self._reporter.tick(progress, force=chunk.finished)
        if chunk.finished:
            backfill.done = True
            log.info("incremental snapshot of %s complete: %d rows in %d chunks", backfill.table, backfill.rows,
                     backfill.chunks)  # fmt: skip
        self._save()

    def _save(self) -> None:
        self.active = self._state.current() is not None and not self._state.paused
        self._store.set_incremental(self._slot_name, self._state.as_dict())
        self._publish()

    def _publish(self) -> None:
        self._status.publish(incremental_snapshot=self._state.as_dict())


def configured_signal_table(config: PostgresSourceConfig) -> TableRef:
    """The signal table, or the error saying how to configure one."""
    table = signal_table(config)
    if table is None:
        raise ConfigError(
            "no signal table is configured (source.signal.table)",
            hint="set source.signal.table (e.g. cdc.signals) and restart the source; it is created when missing",
        )
    return table

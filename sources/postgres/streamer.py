"""The streaming loop over one START_REPLICATION: pgoutput messages in, records to Kafka, the slot confirmed.

Confirming is step 3 of the commit order written in core/delivery.py: a transaction's end LSN is sent as the
slot's confirmed flush LSN only once Kafka acknowledged its records and those of every transaction before it,
with the next standby status update (at most one per `confirm_interval_ms`), so a crash replays only the
unconfirmed tail. A delivery error stops the stream before any further confirmation.

Resume contract: the stream starts at the slot's confirmed flush LSN; nothing here survives the run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

from core.delivery import KafkaDelivery, TxSlot
from core.errors import RetriableError
from core.metrics import SOURCE_CONFIRMED_LSN, SOURCE_EVENTS
from core.positions import Lsn
from sources.postgres.config import PostgresSourceConfig
from sources.postgres.discovery import TableWatch
from sources.postgres.events import ChangeEncoder, ChangeEvent, EventFactory, TableEvents
from sources.postgres.heartbeat import Heartbeat
from sources.postgres.incremental import IncrementalSnapshots
from sources.postgres.lag import LagMonitor
from sources.postgres.output import RecordOutput
from sources.postgres.parallel import WorkerPool
from sources.postgres.protocol import (
    Begin,
    Commit,
    Delete,
    Insert,
    Keepalive,
    LogicalMessage,
    Message,
    Relation,
    Truncate,
    Update,
    XLogData,
    decode_message,
    pg_time_to_unix_us,
)
from sources.postgres.replication import ReplicationConnection
from sources.postgres.slots import SlotLostError, slot_info
from sources.postgres.status import SourceStatus

log = logging.getLogger(__name__)

_POOLED = frozenset(b"IUDT")
_TRUNCATE = ord("T")
_CHECK_EVERY = 2000  # messages read from libpq's buffer between two looks at the clock

EventCounts = dict[tuple[str, str], int]
"""Events produced per (table, op) since the last report."""


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """Where the stream stands.

    `confirmed`: the slot's confirmed flush LSN as last sent (everything before it is in Kafka);
    `received`: the end of the last transaction read; `server_end`: the server's WAL position of its last keepalive.
    """

    confirmed: Lsn
    received: Lsn = Lsn.INVALID
    server_end: Lsn = Lsn.INVALID

    def received_up_to(self, lsn: int) -> StreamPosition:
        if lsn <= self.received.value:
            return self
        return StreamPosition(self.confirmed, Lsn(lsn), self.server_end)

    def server_at(self, lsn: int) -> StreamPosition:
        if lsn <= self.server_end.value:
            return self
        return StreamPosition(self.confirmed, self.received, Lsn(lsn))

    def confirmed_at(self, lsn: Lsn) -> StreamPosition:
        return StreamPosition(lsn, self.received, self.server_end)

    def confirmable(self, acknowledged: int, *, quiet: bool) -> Lsn:
        """The position Kafka's acknowledgements allow to confirm: the acknowledged prefix, or, when nothing is in
        flight (`quiet`), everything the server sent up to its keepalive position."""
        if quiet and self.server_end.value > acknowledged:
            return self.server_end
        return Lsn(acknowledged)

    def written(self, in_transaction: int = 0) -> Lsn:
        """The write position for a status update: the furthest WAL read, never behind the confirmed one."""
        return Lsn(max(self.received.value, in_transaction, self.confirmed.value))


class Transaction:
    """The transaction being read: its acknowledgement slot, commit coordinates and the next change's ordinal."""

    __slots__ = ("ack", "commit_lsn", "commit_ms", "last_lsn", "ordinal", "xid")

    def __init__(self, ack: TxSlot, begin: Begin) -> None:
        self.ack = ack
        self.commit_lsn = begin.final_lsn
        self.xid = begin.xid
        self.commit_ms = pg_time_to_unix_us(begin.commit_time_us) // 1000
        self.ordinal = 0
        self.last_lsn = 0
        """The LSN of the last change read (0 before the first)."""


class Streamer:
    """Reads the slot's stream until `stop`, produces its changes and confirms what Kafka acknowledged."""

    def __init__(
        self,
        config: PostgresSourceConfig,
        *,
        conn: psycopg.Connection,
        repl: ReplicationConnection,
        factory: EventFactory,
        delivery: KafkaDelivery,
        output: RecordOutput,
        status: SourceStatus,
        lag: LagMonitor,
        heartbeat: Heartbeat | None,
        counts: EventCounts,
        stop: threading.Event,
        pool: WorkerPool | None = None,
        tables: TableWatch | None = None,
        incremental: IncrementalSnapshots | None = None,
    ) -> None:
        self._config = config
        self._slot_name = config.slot.name
        self._conn = conn
        self._repl = repl
        self._factory = factory
        self._delivery = delivery
        self._output = output
        self._status = status
        self._lag = lag
        self._heartbeat = heartbeat
        self._counts = counts
        self._stop = stop
        self._pool = pool
        self._tables = tables
        self._incremental = incremental
        self._relations: dict[int, TableEvents] = {}
        # Without transforms, streamed changes are encoded here to wire-format bytes; with them, the chain gets records.
        schema_ids = delivery.schema_ids
        self._encoder = ChangeEncoder(schema_ids) if schema_ids is not None and output.passthrough else None
        self.position = StreamPosition(Lsn.INVALID)
        self._tx: Transaction | None = None
        self._receive_timeout = 60.0

    def stream(self) -> None:
        info = slot_info(self._conn, self._slot_name)
        if info is None:
            raise SlotLostError(
                f"replication slot {self._slot_name!r} disappeared", hint="see docs/source.md, lost slots"
            )
        self.position = StreamPosition(info.confirmed_flush)
        self._receive_timeout = self._read_receive_timeout()
        self._repl.start(
            self._slot_name, [self._config.publication.name], timeout=self._receive_timeout,
            messages=self._incremental is not None,
        )  # fmt: skip
        log.info("streaming slot %s from %s", self._slot_name, self.position.confirmed)
        SOURCE_CONFIRMED_LSN.set(int(self.position.confirmed))
        self._status.streaming(slot=self._slot_name, confirmed_flush_lsn=str(self.position.confirmed))
        try:
            self._loop()
        finally:
            self._status.not_ready()
        # Clean stop: everything produced is acknowledged before the final confirmation.
        if self._pool is not None:
            self._pool.finish()
        self._delivery.flush()
        self._confirm(force=True)
        self._report()
        log.info("source stopped at confirmed LSN %s", self.position.confirmed)

    def _read_receive_timeout(self) -> float:
        if self._config.receive_timeout_s is not None:
            return self._config.receive_timeout_s
        row = self._conn.execute("SELECT setting::int FROM pg_settings WHERE name = 'wal_sender_timeout'").fetchone()
        server_ms = int(row[0]) if row and row[0] else 0
        return server_ms / 1000 if server_ms > 0 else 60.0

    def _confirm(self, *, force: bool = False, ping: bool = False) -> None:
        """Send a status update confirming the acknowledged prefix (step 3 of the commit order)."""
        tracker = self._delivery.tracker
        pool = self._pool
        if pool is not None:
            pool.drain()
        acknowledged = tracker.confirmable()
        quiet = (pool is None or pool.idle) and tracker.open_slots == 0 and self._tx is None
        position = self.position
        target = position.confirmable(acknowledged, quiet=quiet)
        advanced = target > position.confirmed
        if advanced:
            log.debug("confirming %s (acknowledged prefix %s, server position %s)", target,
                      Lsn(acknowledged), position.server_end)  # fmt: skip
            position = self.position = position.confirmed_at(target)
        if advanced or force or ping:
            written = position.written(self._tx.last_lsn if self._tx is not None else 0)
            self._repl.send_status(position.confirmed, written, reply=ping, timeout=self._receive_timeout)
            SOURCE_CONFIRMED_LSN.set(int(position.confirmed))
        if advanced:
            self._status.publish(confirmed_flush_lsn=str(position.confirmed))

    def _loop(self) -> None:
        stop = self._stop
        repl = self._repl
        delivery = self._delivery
        config = self._config
        confirm_every = config.confirm_interval_ms / 1000
        status_every = min(config.status_interval_s, config.heartbeat.interval_s)
        heartbeat_every = config.heartbeat.interval_s
        heartbeat = self._heartbeat
        # An idle stream must not keep acknowledged changes unconfirmed: never wait longer than the confirm pace.
        wait = min(0.2, confirm_every)
        now = time.monotonic()
        next_confirm = now + confirm_every
        next_status = now + status_every
        next_heartbeat = now + heartbeat_every
        handle = self._handle
        pool = self._pool
        watch = self._tables
        incremental = self._incremental

        def keepalive() -> None:
            self._confirm(force=True)

        since_check = 0
        # Silence on the stream: at half the receive timeout ask the server for a reply, at the full one give up.
        receive_timeout = self._receive_timeout
        last_heard = now
        pinged = False
        while not stop.is_set():
            frame = repl.read_buffered()
            if frame is None:
                if pool is not None:
                    pool.send_partial()  # nothing more buffered: do not hold a small batch back
                    pool.drain()
                delivery.poll(0)
                frame = repl.read(wait)
                since_check = _CHECK_EVERY  # the clock is read once per socket read, not per message
            else:
                since_check += 1
            if since_check >= _CHECK_EVERY:
                since_check = 0
                if pool is not None:
                    pool.drain()
                now = time.monotonic()
                if frame is not None:
                    last_heard = now
                    pinged = False
                elif now - last_heard >= receive_timeout / 2:
                    if now - last_heard >= receive_timeout:
                        raise RetriableError(
                            f"the replication stream sent nothing for {now - last_heard:.0f}s "
                            "(source.receive_timeout_s): the connection is considered lost",
                            hint="check the network path to the source database",
                        )
                    if not pinged:
                        self._confirm(ping=True)
                        pinged = True
                if now >= next_status:
                    self._confirm(force=True)
                    self._report()
                    next_status = now + status_every
                    next_confirm = now + confirm_every
                elif now >= next_confirm:
                    self._confirm()
                    next_confirm = now + confirm_every
                if heartbeat is not None and now >= next_heartbeat:
                    heartbeat.beat(receive_timeout)
                    next_heartbeat = now + heartbeat_every
                if watch is not None and watch.tick(now, keepalive):
                    # The stream was not read while new tables were copied: its silence tells nothing.
                    last_heard = time.monotonic()
                if incremental is not None:
                    incremental.tick()
                if frame is None:
                    continue
            if type(frame) is XLogData:
                payload = frame.payload
                if pool is not None and payload[0] in _POOLED and not (
                    incremental is not None and self._pooled_seen(payload, frame.data_start)
                ):
                    # Fast path: the worker decodes the change; here only its coordinates are kept. A TRUNCATE
                    # takes one ordinal per table (its relation count is the Int32 after the type byte).
                    lsn = frame.data_start
                    tx = self._tx
                    assert tx is not None
                    pool.add((bytes(payload), lsn, tx.commit_lsn, tx.ordinal, tx.xid, tx.commit_ms), tx.ack)
                    tx.ordinal += int.from_bytes(payload[1:5], "big") if payload[0] == _TRUNCATE else 1
                    tx.last_lsn = max(tx.last_lsn, lsn)
                    continue
                handle(decode_message(payload), frame.data_start)
            else:
                assert isinstance(frame, Keepalive)
                self.position = self.position.server_at(frame.wal_end)
                if frame.reply_requested:
                    self._confirm(force=True)

    def _handle(self, message: Message, lsn: int) -> None:
        match message:
            case Insert() | Update() | Delete():
                tx = self._tx
                assert tx is not None
                incremental = self._incremental
                if incremental is not None and message.relation_id == incremental.signal_relation:
                    if type(message) is Insert:
                        incremental.signal(message)
                    tx.ordinal += 1
                    return
                events = self._relations[message.relation_id]
                changes = events.changes(
                    message, lsn=lsn, commit_lsn=tx.commit_lsn, ordinal=tx.ordinal, xid=tx.xid, commit_ms=tx.commit_ms
                )
                if incremental is not None and events.table_name in incremental.watching:
                    incremental.changed(events.table_name, changes)
                self._emit(events, changes, tx)
                tx.ordinal += 1
                counts = self._counts
                key = (events.table_name, changes[-1].op)
                counts[key] = counts.get(key, 0) + 1
                tx.last_lsn = max(tx.last_lsn, lsn)
            case Begin():
                self._tx = Transaction(self._delivery.tracker.open(), message)
            case Commit(end_lsn=end_lsn):
                tx = self._tx
                assert tx is not None
                self._delivery.tracker.close(tx.ack, end_lsn)
                self._tx = None
                if self._incremental is not None:
                    self._incremental.committed(tx.xid)
                self.position = self.position.received_up_to(max(tx.last_lsn, end_lsn))
            case Relation() if self._incremental is not None and self._incremental.take_relation(message):
                pass  # the signal table's: its rows are signals, never events
            case Relation():
                # Typed here from the message itself, renames found here once; worker processes get the aliases.
                events = self._factory.for_relation(message)
                if self._pool is not None:
                    # Worker processes register schemas in whatever order they finish; registering each shape here,
                    # in stream order, keeps the subject's newest version the table's newest shape (renames are
                    # found against it after a restart).
                    schema_ids = self._delivery.schema_ids
                    if schema_ids is not None:
                        events.register(schema_ids)
                    self._pool.relation(message, events.aliases)
                # With workers too: an incremental snapshot's window looks up the table of a pooled change here.
                self._relations[message.relation_id] = events
            case Truncate(relation_ids=relation_ids):
                tx = self._tx
                assert tx is not None
                incremental = self._incremental
                for relation_id in relation_ids:
                    if incremental is not None:
                        if relation_id == incremental.signal_relation:
                            tx.ordinal += 1
                            continue
                        incremental.truncated(self._relations[relation_id].table_name)
                    if self._config.emit_truncate:
                        events = self._relations[relation_id]
                        truncate = events.truncate(
                            lsn=lsn, commit_lsn=tx.commit_lsn, ordinal=tx.ordinal, xid=tx.xid,
                            commit_ms=tx.commit_ms,
                        )  # fmt: skip
                        self._emit(events, (truncate,), tx)
                    tx.ordinal += 1
            case LogicalMessage() if self._incremental is not None:
                self._incremental.message(message, lsn)
            case _:
                pass  # Origin, Type and logical messages (our heartbeats among them) carry nothing to produce.

    def _pooled_seen(self, payload: bytes | memoryview, lsn: int) -> bool:
        """With workers, a change the incremental snapshot must see: a signal (to be read here: True) or a change of
        the table between a chunk's watermarks (its keys leave the chunk; it still goes to the workers, False)."""
        incremental = self._incremental
        assert incremental is not None
        watching = incremental.watching
        if payload[0] == _TRUNCATE:
            if watching:
                truncate = decode_message(payload)
                assert isinstance(truncate, Truncate)
                for relation_id in truncate.relation_ids:
                    if relation_id in self._relations:
                        incremental.truncated(self._relations[relation_id].table_name)
            return False
        relation_id = int.from_bytes(payload[1:5], "big")
        if relation_id == incremental.signal_relation:
            return True  # read here, not by a worker (which does not know the signal table)
        if watching:
            events = self._relations.get(relation_id)
            if events is not None and events.table_name in watching:
                tx = self._tx
                assert tx is not None
                message = decode_message(payload)
                assert isinstance(message, Insert | Update | Delete)
                incremental.changed(events.table_name, events.changes(
                    message, lsn=lsn, commit_lsn=tx.commit_lsn, ordinal=tx.ordinal, xid=tx.xid, commit_ms=tx.commit_ms
                ))  # fmt: skip
        return False

    def _emit(self, events: TableEvents, changes: Sequence[ChangeEvent], tx: Transaction) -> None:
        """The one place streamed changes leave for Kafka: encoded here, or as records through the transforms."""
        if self._encoder is None:
            self._output.produce_all(events.records(changes), tx.ack)
            return
        produce = self._delivery.produce_raw
        for key, value, headers in self._encoder.encode(events, changes):
            produce(events.topic, key, value, headers, tx.ack)

    def _report(self) -> None:
        counts = self._counts
        for (table, op), count in counts.items():
            SOURCE_EVENTS.labels(table=table, op=op).inc(count)
        counts.clear()
        lag = self._lag.read(self._receive_timeout)
        tracker = self._delivery.tracker
        self._status.publish(
            confirmed_flush_lsn=str(self.position.confirmed),
            lag_bytes=lag,
            in_flight=tracker.in_flight,
            open_transactions=tracker.open_slots,
        )

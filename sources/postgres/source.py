"""The PostgreSQL source: snapshot, then stream the slot into Kafka, confirming only what Kafka holds.

Commit order (see core/delivery.py): produce a transaction's records as its changes arrive -> Kafka
acknowledges them all (and everything before) -> the transaction's end LSN becomes the slot's confirmed
flush LSN with the next standby status update, sent as soon as the acknowledged prefix advanced (at most one
per `confirm_interval_ms`), so a crash replays only the unconfirmed tail. A delivery error stops the source
before any further confirmation; on restart the slot replays from its confirmed LSN and re-sent changes carry
the same ids.

Resume contract: the constructor holds no position; `run` resumes from the slot's confirmed flush LSN and
may be killed at any moment.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from connector.config import ConnectorConfig
from core.checks import Problem
from core.delivery import KafkaDelivery, TxSlot
from core.errors import (
    ConfigError,
    ConnectorError,
    Endpoints,
    PrerequisiteError,
    RetriableError,
    RetryBudget,
    classify,
)
from core.metrics import SNAPSHOT_ROWS, SOURCE_CONFIRMED_LSN, SOURCE_EVENTS, SOURCE_SLOT_LAG_BYTES
from core.positions import Lsn
from core.records import Record
from core.timeouts import libpq_options
from schemas.serde import RegistrySerializer
from sources.base import Source
from sources.postgres import prerequisites
from sources.postgres.change_id import ChangeIds, namespace_for
from sources.postgres.config import PostgresSourceConfig, SnapshotMode
from sources.postgres.events import ChangeEncoder, ChangeEvent, EventFactory, TableEvents
from sources.postgres.parallel import WorkerPool
from sources.postgres.protocol import (
    Begin,
    Commit,
    Delete,
    Insert,
    Keepalive,
    Relation,
    Truncate,
    Update,
    XLogData,
    decode_message,
    pg_time_to_unix_us,
)
from sources.postgres.replication import CreatedSlot, ReplicationConnection, first_value_within
from sources.postgres.selection import (
    TableRef,
    options_for,
    publication_exists,
    publication_tables,
    resolve_tables,
    sync_publication,
)
from sources.postgres.slots import (
    SlotInUseError,
    SlotLostError,
    StateStore,
    check_slot,
    drop_slot,
    slot_info,
    wait_until_free,
)
from sources.postgres.snapshot import ProgressReporter, SnapshotProgress, SnapshotReader, SnapshotTable, TableProgress
from transforms.base import TransformChain

log = logging.getLogger(__name__)

HEARTBEAT_PREFIX = "cdc-heartbeat"
_POOLED = frozenset(b"IUDT")
_TRUNCATE = ord("T")
_CHECK_EVERY = 2000  # messages read from libpq's buffer between two looks at the clock


class PostgresSource(Source):
    """`sources.base.Source` for PostgreSQL logical replication (pgoutput)."""

    def __init__(self, config: ConnectorConfig, chain: TransformChain) -> None:
        if config.source is None:
            raise ConfigError("the config has no `source` section")
        self._config = config
        self._source: PostgresSourceConfig = config.source
        self._chain = chain
        self._ready = threading.Event()
        # Set while a retriable failure keeps the source from making progress; drives /healthz.
        # The backend pid of a replication connection given up as lost: the server may still hold the slot for it.
        self._lost_pid: int | None = None
        self._stats: dict[str, Any] = {"state": "stopped"}
        self._lock = threading.Lock()
        self._budget = RetryBudget(config.retry.give_up_after_s)
        self._endpoints = Endpoints(
            database="the source database", dsn_setting="source.dsn", kafka=f"Kafka at {config.kafka.bootstrap_servers}"
        )

    # --- contract -------------------------------------------------------------------------------------

    def ready(self) -> bool:
        return self._ready.is_set()

    def validate(self) -> list[Problem]:
        try:
            with psycopg.connect(self._dsn, autocommit=True, **self._connect_options) as conn:
                problems = prerequisites.check_server(conn, self._source)
                tables = resolve_tables(conn, self._source)
                if self._source.publication.mode == "create" and not tables:
                    problems.append(
                        Problem("source", "no table matches source.tables.include / exclude", "check the patterns")
                    )
                publication = self._source.publication
                if publication.mode == "existing":
                    if not publication_exists(conn, publication.name):
                        problems.append(
                            Problem(
                                "source",
                                f"publication {publication.name!r} does not exist (publication.mode: existing)",
                                f"CREATE PUBLICATION {publication.name} FOR TABLE ..., or set publication.mode: create",
                            )
                        )
                    tables = publication_tables(conn, publication.name)
                problems.extend(prerequisites.check_tables(conn, self._source, tables))
                info = slot_info(conn, self._source.slot.name)
                if info is not None and info.wal_status == "lost":
                    problems.append(
                        Problem(
                            "source",
                            f"replication slot {info.name!r} was invalidated (wal_status = lost)",
                            "drop it and re-snapshot (see docs/source.md)",
                        )
                    )
                return problems
        except psycopg.Error as exc:
            error = classify(exc, self._endpoints)
            return [Problem("source", error.message, error.hint or "check `source.dsn`")]

    def status(self) -> dict[str, Any]:
        """What the run last published (state, slot, confirmed LSN, lag, snapshot progress). No I/O, any thread."""
        with self._lock:
            return dict(self._stats)

    def inspect(self) -> dict[str, Any]:
        """The slot and the snapshot state, read from the source database now (`cdc status`)."""
        with psycopg.connect(self._dsn, autocommit=True, **self._connect_options) as conn:
            info = slot_info(conn, self._source.slot.name)
            state = None
            if conn.execute("SELECT to_regclass('cdc.source_state') IS NOT NULL").fetchone() == (True,):
                state = StateStore(conn).get(self._source.slot.name)
        result: dict[str, Any] = {"slot": self._source.slot.name}
        if info is None:
            result["slot_state"] = "missing"
        else:
            result.update(
                slot_state="lost" if info.wal_status == "lost" else ("active" if info.active else "inactive"),
                active_pid=info.active_pid,
                confirmed_flush_lsn=str(info.confirmed_flush),
                lag_bytes=info.lag_bytes,
                wal_status=info.wal_status,
            )
        if state is not None:
            result["snapshot"] = {"state": state.snapshot_state, **state.progress}
        return result

    def problem(self) -> ConnectorError | None:
        return self._budget.problem

    def run(self, stop: threading.Event) -> None:
        backoff = 1.0
        budget = self._budget
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    _Run(self, stop).execute()
                    return
                except Exception as exc:
                    # One place decides what is worth retrying (connection loss, slot briefly busy...).
                    error = classify(exc, self._endpoints)
                    if not error.retriable:
                        if error is exc:
                            raise
                        raise error from exc
                    self._ready.clear()
                    if time.monotonic() - started > 60:
                        backoff = 1.0
                    if budget.failed(error):
                        raise budget.exhausted(error) from exc
                    log.warning("source: %s; reconnecting in %.0fs", error, backoff)
                    if stop.wait(backoff):
                        return
                    backoff = min(backoff * 2, 30.0)
        finally:
            self._ready.clear()
            with self._lock:
                self._stats["state"] = "stopped"

    # --- helpers used by _Run -------------------------------------------------------------------------

    @property
    def _dsn(self) -> str:
        return self._source.dsn.get_secret_value()

    @property
    def _connect_options(self) -> dict[str, Any]:
        return libpq_options(self._source.connect_timeout_s)

    def _publish_stats(self, **values: Any) -> None:
        with self._lock:
            self._stats.update(values)


class _Run:
    """One connected run of the source (a retriable failure starts a fresh one)."""

    def __init__(self, owner: PostgresSource, stop: threading.Event) -> None:
        self.owner = owner
        self.cfg = owner._source
        self.config = owner._config
        self.chain = owner._chain
        self.stop = stop
        self.dsn = owner._dsn
        self.slot = self.cfg.slot.name
        self.event_counts: dict[tuple[str, str], int] = {}

    # --- setup ----------------------------------------------------------------------------------------

    def execute(self) -> None:
        conn = psycopg.connect(
            self.dsn, autocommit=True, application_name="cdc-connector", **libpq_options(self.cfg.connect_timeout_s)
        )
        repl: ReplicationConnection | None = None
        delivery: KafkaDelivery | None = None
        try:
            problems = prerequisites.check_server(conn, self.cfg)
            tables = resolve_tables(conn, self.cfg) if self.cfg.publication.mode == "create" else []
            tables = sync_publication(conn, self.cfg, tables)
            problems += prerequisites.check_tables(conn, self.cfg, tables)
            if problems:
                raise PrerequisiteError("; ".join(f"{p.message} -> fix: {p.fix}" for p in problems))
            store = StateStore(conn)
            store.ensure()
            lost, self.owner._lost_pid = self.owner._lost_pid, None
            if lost is not None and not self._end_lost_walsender(conn, lost):
                return
            if not wait_until_free(conn, self.slot, on_conflict=self.cfg.slot.on_conflict, stop=self.stop):
                return
            repl = ReplicationConnection(self.dsn, connect_timeout_s=self.cfg.connect_timeout_s)
            system = repl.identify_system()
            ids = ChangeIds(namespace_for(system.system_id, system.dbname))
            delivery = self._delivery()
            factory = EventFactory(self.cfg, connector_name=self.config.name, conn=conn, ids=ids, db=system.dbname)
            if not len(self.chain):  # with transforms, records may be routed elsewhere: create topics on use
                delivery.ensure_topics(factory.topic(t) for t in tables)
            created = self._prepare_slot(conn, repl, store, system.dbname)
            if created is not None and created.snapshot_name is not None:
                self._snapshot(
                    conn=conn, store=store, created=created, tables=tables, factory=factory, delivery=delivery
                )
            elif created is None and self.cfg.snapshot.mode is SnapshotMode.INITIAL_ONLY:
                log.info("snapshot of slot %s is complete (snapshot.mode: initial_only): nothing to do", self.slot)
                repl.close()
                repl = None
                if slot_info(conn, self.slot) is not None:
                    drop_slot(conn, self.slot)  # left behind by a stop between the snapshot's end and its drop
                return
            if self.stop.is_set():
                self._finish(delivery, repl, Lsn.INVALID)
                return
            if self.cfg.snapshot.mode is SnapshotMode.INITIAL_ONLY:
                delivery.flush()
                log.info("snapshot complete (snapshot.mode: initial_only); dropping slot %s", self.slot)
                repl.close()
                repl = None
                drop_slot(conn, self.slot)
                return
            pool = self._pool(system.system_id, system.dbname, delivery)
            try:
                _Streamer(self, conn, repl, factory, delivery, pool=pool).stream()
            finally:
                if pool is not None:
                    pool.close()
        finally:
            if repl is not None:
                repl.close()
            if delivery is not None:
                delivery.close()
            conn.close()

    def _end_lost_walsender(self, conn: psycopg.Connection, pid: int) -> bool:
        """Free the slot from our own previous walsender, which the server keeps until `wal_sender_timeout`."""
        info = slot_info(conn, self.slot)
        if info is None or info.active_pid != pid:
            return True
        log.warning("slot %s is still held by this connector's lost connection (pid %d): ending it", self.slot, pid)
        try:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        except psycopg.errors.InsufficientPrivilege:
            log.warning("not allowed to end pid %d: waiting for the server's wal_sender_timeout", pid)
        return wait_until_free(conn, self.slot, on_conflict="wait", stop=self.stop, poll_s=0.2)

    def _pool(self, system_id: str, db: str, delivery: KafkaDelivery) -> WorkerPool | None:
        workers = self.cfg.encode_workers
        if workers == 0:
            return None
        if len(self.chain):
            log.info("source-side transforms are configured: encoding in the reading process (no encode_workers)")
            return None
        log.info("starting %d encoder worker processes", workers)
        return WorkerPool(
            self.cfg, self.config.schema_registry, connector_name=self.config.name, system_id=system_id, db=db,
            workers=workers, delivery=delivery, counts=self.event_counts,
        )  # fmt: skip

    def _delivery(self) -> KafkaDelivery:
        kafka = self.config.kafka
        registry = self.config.schema_registry
        return KafkaDelivery(
            kafka.bootstrap_servers,
            dict(kafka.properties),
            serializer=RegistrySerializer(registry),
            topic_partitions=kafka.topic_partitions,
            topic_replication_factor=kafka.topic_replication_factor,
            client_id=f"cdc-{self.config.name}-source",
            request_timeout_s=kafka.request_timeout_s,
        )

    def _prepare_slot(
        self, conn: psycopg.Connection, repl: ReplicationConnection, store: StateStore, dbname: str
    ) -> CreatedSlot | None:
        """Return the slot created now (with its exported snapshot if one is needed), or None to stream on."""
        mode = self.cfg.snapshot.mode
        info = slot_info(conn, self.slot)
        state = store.get(self.slot)
        if info is not None:
            check_slot(info, dbname)
            if state is not None and state.snapshot_state == "running":
                log.warning(
                    "the snapshot of slot %s was interrupted; an exported snapshot cannot be resumed, so the slot "
                    "is dropped and the snapshot restarts from a new consistent point (rows already in Kafka are "
                    "sent again with new change ids; sinks order them by LSN)",
                    self.slot,
                )
                drop_slot(conn, self.slot)
                return self._create(repl, store, snapshot=True)
            if state is None:
                store.put(self.slot, info.confirmed_flush, "skipped")
                log.info("adopting existing slot %s at %s (no snapshot)", self.slot, info.confirmed_flush)
            return None
        if state is not None and state.snapshot_state != "running":
            if mode is SnapshotMode.WHEN_NEEDED:
                log.warning("slot %s is missing: taking a new snapshot (snapshot.mode: when_needed)", self.slot)
                return self._create(repl, store, snapshot=True)
            if mode is SnapshotMode.INITIAL_ONLY and state.snapshot_state == "done":
                return None
            raise SlotLostError(
                f"replication slot {self.slot!r} disappeared after the connector used it: changes since "
                f"{state.consistent_point} may be missing from Kafka",
                hint="re-snapshot: set snapshot.mode: when_needed (or delete the slot's row from cdc.source_state "
                "and use initial); the slot is never re-created silently",
            )
        snapshot = mode in (SnapshotMode.INITIAL, SnapshotMode.INITIAL_ONLY, SnapshotMode.WHEN_NEEDED)
        return self._create(repl, store, snapshot=snapshot)

    def _create(self, repl: ReplicationConnection, store: StateStore, *, snapshot: bool) -> CreatedSlot:
        if snapshot:
            # Recorded before the slot exists: a crash right after CREATE_REPLICATION_SLOT must not leave a slot
            # that the next start would adopt as if its snapshot were done.
            store.put(self.slot, Lsn.INVALID, "running")
        try:
            created = repl.create_slot(self.slot, export_snapshot=snapshot)
        except psycopg.errors.DuplicateObject as exc:
            raise SlotInUseError(
                f"replication slot {self.slot!r} was created by another process just now",
                hint="only one connector may stream a slot",
            ) from exc
        store.put(self.slot, created.consistent_point, "running" if snapshot else "skipped")
        suffix = " with an exported snapshot" if snapshot else ""
        log.info("created slot %s at %s%s", self.slot, created.consistent_point, suffix)
        return created

    # --- snapshot -------------------------------------------------------------------------------------

    def _snapshot(
        self,
        *,
        conn: psycopg.Connection,
        store: StateStore,
        created: CreatedSlot,
        tables: list[TableRef],
        factory: EventFactory,
        delivery: KafkaDelivery,
    ) -> None:
        reader = SnapshotReader(
            self.dsn,
            created.snapshot_name,
            chunk_size=self.cfg.snapshot.chunk_size,
            connect_timeout_s=self.cfg.connect_timeout_s,
        )
        reader.open()  # first: the exported snapshot is only importable while the exporter is idle
        reporter = ProgressReporter()
        try:
            point = int(created.consistent_point)
            progress = SnapshotProgress(str(created.consistent_point))
            plans: list[tuple[TableEvents, SnapshotTable]] = []
            for table in tables:
                events = factory.for_table(table)
                order_by = events.key_columns
                row_filter = options_for(self.cfg, table).row_filter
                plans.append((events, SnapshotTable(table, events.columns, order_by, row_filter)))
                progress.tables[str(table)] = TableProgress(str(table), reader.estimate(table))
            store.update_progress(self.slot, progress.as_dict())
            self.owner._publish_stats(state="snapshot", snapshot=progress.as_dict())
            ts_ms = int(time.time() * 1000)
            chunk = self.cfg.snapshot.chunk_size
            for index, (events, plan) in enumerate(plans):
                last_table = index == len(plans) - 1
                table_progress = progress.tables[str(plan.ref)]
                slot = delivery.tracker.open()
                in_slot = 0
                previous: Any = None
                for row in reader.rows(plan):
                    if previous is not None:
                        self._produce_all(events.records((events.snapshot_row(previous, point, ts_ms, "true"),)),
                                          delivery, slot)  # fmt: skip
                        in_slot += 1
                        table_progress.rows += 1
                        if in_slot >= chunk:
                            delivery.tracker.close(slot, 0)
                            slot = delivery.tracker.open()
                            in_slot = 0
                            delivery.poll(0)
                            reporter.tick(table_progress)
                            self.owner._publish_stats(snapshot=progress.as_dict())
                            if self.stop.is_set():
                                log.info("stop requested during the snapshot; it will restart on the next run")
                                return
                    previous = row
                if previous is not None:
                    marker = "last" if last_table else "true"
                    self._produce_all(events.records((events.snapshot_row(previous, point, ts_ms, marker),)),
                                      delivery, slot)  # fmt: skip
                    table_progress.rows += 1
                if self.cfg.snapshot.complete_markers:
                    self._produce_everywhere(events.snapshot_complete(point), delivery, slot)
                delivery.tracker.close(slot, 0)
                table_progress.done = True
                SNAPSHOT_ROWS.labels(table=str(plan.ref)).inc(table_progress.rows)
                reporter.tick(table_progress, force=True)
                store.update_progress(self.slot, progress.as_dict())
            delivery.flush()
            delivery.tracker.confirmable()
            # Only now, with every row acknowledged by Kafka, is the snapshot complete.
            store.update_progress(self.slot, progress.as_dict())
            store.set_state(self.slot, "done")
            # Progress for the retry budget: a snapshot that failed restarts from scratch, so only its end counts.
            self.owner._budget.progress()
            self.owner._publish_stats(snapshot={**progress.as_dict(), "state": "done"})
            total = sum(t.rows for t in progress.tables.values())
            log.info("snapshot complete: %d rows from %d tables", total, len(plans))
        finally:
            reporter.close()
            reader.close()

    def _produce_all(self, records: list[Record], delivery: KafkaDelivery, slot: TxSlot) -> None:
        chain = self.chain
        for record in records:
            for out in chain.apply(record) if len(chain) else (record,):
                delivery.produce(out, slot)

    def _produce_everywhere(self, record: Record, delivery: KafkaDelivery, slot: TxSlot) -> None:
        """`record` (after transforms) to every partition of its topic: each partition's consumer then meets it
        after that partition's share of the records produced before it."""
        chain = self.chain
        for out in chain.apply(record) if len(chain) else (record,):
            for partition in range(delivery.partitions(out.topic)):
                delivery.produce(out, slot, partition=partition)

    def _finish(self, delivery: KafkaDelivery, repl: ReplicationConnection, fallback: Lsn) -> None:
        delivery.flush()
        confirmed = delivery.tracker.confirmable()
        if confirmed:
            repl.send_status(Lsn(confirmed))
        elif fallback.is_valid:
            repl.send_status(fallback)


class _Streamer:
    """The streaming loop over one START_REPLICATION."""

    def __init__(
        self,
        run: _Run,
        conn: psycopg.Connection,
        repl: ReplicationConnection,
        factory: EventFactory,
        delivery: KafkaDelivery,
        *,
        pool: WorkerPool | None = None,
    ) -> None:
        self.run = run
        self.pool = pool
        self.cfg = run.cfg
        self.conn = conn
        self.repl = repl
        self.factory = factory
        self.delivery = delivery
        self.relations: dict[int, TableEvents] = {}
        # Without transforms, streamed changes are encoded here (with transforms, the chain takes records).
        schema_ids = delivery.schema_ids
        self.encoder = ChangeEncoder(schema_ids) if schema_ids is not None and not len(run.chain) else None
        self.confirmed = Lsn.INVALID
        self.received = 0
        self.server_wal_end = 0
        self.heartbeat_conn: psycopg.Connection | None = None
        self.receive_timeout = 60.0
        # The transaction being read: its ack slot, commit LSN, xid, commit time (ms) and next ordinal.
        self.tx: TxSlot | None = None
        self.commit_lsn = 0
        self.xid = 0
        self.commit_ms = 0
        self.ordinal = 0

    def stream(self) -> None:
        run = self.run
        info = slot_info(self.conn, run.slot)
        if info is None:
            raise SlotLostError(f"replication slot {run.slot!r} disappeared", hint="see docs/source.md, lost slots")
        self.confirmed = info.confirmed_flush
        self.receive_timeout = self._receive_timeout()
        self.repl.start(run.slot, [self.cfg.publication.name], timeout=self.receive_timeout)
        log.info("streaming slot %s from %s", run.slot, self.confirmed)
        SOURCE_CONFIRMED_LSN.set(int(self.confirmed))
        run.owner._ready.set()
        run.owner._budget.progress()
        run.owner._publish_stats(state="streaming", slot=run.slot, confirmed_flush_lsn=str(self.confirmed))
        try:
            self._loop()
        except Exception:
            # However the stream was lost, the server may keep our walsender (and with it the slot) until its
            # wal_sender_timeout: the next attempt ends it if it still holds the slot (`_end_lost_walsender`).
            run.owner._lost_pid = self.repl.backend_pid
            raise
        finally:
            run.owner._ready.clear()
            if self.heartbeat_conn is not None:
                self.heartbeat_conn.close()
        # Clean stop: everything produced is acknowledged before the final confirmation.
        if self.pool is not None:
            self.pool.finish()
        self.delivery.flush()
        self._confirm(force=True)
        self._report()
        log.info("source stopped at confirmed LSN %s", self.confirmed)

    def _receive_timeout(self) -> float:
        if self.cfg.receive_timeout_s is not None:
            return self.cfg.receive_timeout_s
        row = self.conn.execute("SELECT setting::int FROM pg_settings WHERE name = 'wal_sender_timeout'").fetchone()
        server_ms = int(row[0]) if row and row[0] else 0
        return server_ms / 1000 if server_ms > 0 else 60.0

    def _confirm(self, *, force: bool = False, ping: bool = False) -> None:
        """Send a status update confirming the acknowledged prefix (step 3 of the commit order)."""
        tracker = self.delivery.tracker
        if self.pool is not None:
            self.pool.drain()
        position = tracker.confirmable()
        idle = self.pool is None or self.pool.idle
        if idle and tracker.open_slots == 0 and self.tx is None and self.server_wal_end > position:
            # Nothing in flight: everything the server sent up to its keepalive position is in Kafka.
            position = self.server_wal_end
        advanced = position > int(self.confirmed)
        if advanced:
            log.debug("confirming %s (acknowledged prefix %s, server position %s)", Lsn(position),
                      Lsn(tracker.confirmable()), Lsn(self.server_wal_end))  # fmt: skip
            self.confirmed = Lsn(position)
        if advanced or force or ping:
            written = Lsn(max(self.received, int(self.confirmed)))
            self.repl.send_status(self.confirmed, written, reply=ping, timeout=self.receive_timeout)
            SOURCE_CONFIRMED_LSN.set(int(self.confirmed))
        if advanced:
            self.run.owner._publish_stats(confirmed_flush_lsn=str(self.confirmed))

    def _loop(self) -> None:
        stop = self.run.stop
        repl = self.repl
        delivery = self.delivery
        confirm_every = self.cfg.confirm_interval_ms / 1000
        status_every = min(self.cfg.status_interval_s, self.cfg.heartbeat.interval_s)
        heartbeat_every = self.cfg.heartbeat.interval_s
        heartbeats = self.cfg.heartbeat.enabled and self.cfg.heartbeat.emit_message
        # An idle stream must not keep acknowledged changes unconfirmed: never wait longer than the confirm pace.
        wait = min(0.2, confirm_every)
        now = time.monotonic()
        next_confirm = now + confirm_every
        next_status = now + status_every
        next_heartbeat = now + heartbeat_every
        handle = self._handle
        pool = self.pool
        since_check = 0
        # Silence on the stream: at half the receive timeout ask the server for a reply, at the full one give up.
        receive_timeout = self.receive_timeout
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
                if heartbeats and now >= next_heartbeat:
                    self._heartbeat()
                    next_heartbeat = now + heartbeat_every
                if frame is None:
                    continue
            if type(frame) is XLogData:
                payload = frame.payload
                if pool is not None and payload[0] in _POOLED:
                    # Fast path: the worker decodes the change; here only its coordinates are kept. A TRUNCATE
                    # takes one ordinal per table (its relation count is the Int32 after the type byte).
                    lsn = frame.data_start
                    assert self.tx is not None
                    pool.add((bytes(payload), lsn, self.commit_lsn, self.ordinal, self.xid, self.commit_ms), self.tx)
                    self.ordinal += int.from_bytes(payload[1:5], "big") if payload[0] == _TRUNCATE else 1
                    self.received = max(self.received, lsn)
                    continue
                handle(decode_message(payload), frame.data_start)
            else:
                assert isinstance(frame, Keepalive)
                self.server_wal_end = max(self.server_wal_end, frame.wal_end)
                if frame.reply_requested:
                    self._confirm(force=True)

    def _handle(self, message: object, lsn: int) -> None:
        kind = type(message)
        if kind is Insert or kind is Update or kind is Delete:
            assert self.tx is not None
            events = self.relations[message.relation_id]  # type: ignore[attr-defined]
            changes = events.changes(
                message,  # type: ignore[arg-type]
                lsn=lsn, commit_lsn=self.commit_lsn, ordinal=self.ordinal, xid=self.xid,
                commit_ms=self.commit_ms,
            )  # fmt: skip
            self._emit(events, changes)
            self.ordinal += 1
            counts = self.run.event_counts
            key = (events.table_name, changes[-1].op)
            counts[key] = counts.get(key, 0) + 1
            self.received = max(self.received, lsn)
        elif kind is Begin:
            assert isinstance(message, Begin)
            self.tx = self.delivery.tracker.open()
            self.commit_lsn = message.final_lsn
            self.xid = message.xid
            self.commit_ms = pg_time_to_unix_us(message.commit_time_us) // 1000
            self.ordinal = 0
        elif kind is Commit:
            assert isinstance(message, Commit) and self.tx is not None
            self.delivery.tracker.close(self.tx, message.end_lsn)
            self.tx = None
            self.received = max(self.received, message.end_lsn)
        elif kind is Relation:
            assert isinstance(message, Relation)
            if self.pool is not None:
                self.pool.relation(message)
            else:
                self.relations[message.relation_id] = self.factory.for_relation(message)
        elif kind is Truncate:
            assert isinstance(message, Truncate) and self.tx is not None
            for relation_id in message.relation_ids:
                if self.cfg.emit_truncate:
                    events = self.relations[relation_id]
                    truncate = events.truncate(
                        lsn=lsn, commit_lsn=self.commit_lsn, ordinal=self.ordinal, xid=self.xid,
                        commit_ms=self.commit_ms,
                    )  # fmt: skip
                    self._emit(events, (truncate,))
                self.ordinal += 1
        # Origin, Type and logical Message ('M', e.g. our heartbeats) carry nothing to produce.

    def _emit(self, events: TableEvents, changes: Sequence[ChangeEvent]) -> None:
        assert self.tx is not None
        if self.encoder is None:  # transforms take records
            self.run._produce_all(events.records(changes), self.delivery, self.tx)
            return
        produce = self.delivery.produce_raw
        for key, value, headers in self.encoder.encode(events, changes):
            produce(events.topic, key, value, headers, self.tx)

    def _report(self) -> None:
        counts = self.run.event_counts
        for (table, op), count in counts.items():
            SOURCE_EVENTS.labels(table=table, op=op).inc(count)
        counts.clear()
        lag = None
        query = sql.SQL(
            "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = {}"
        ).format(sql.Literal(self.run.slot))
        try:
            # A silent database stops the stream (RetriableError), not just the lag report.
            value = first_value_within(self.conn, query, self.receive_timeout)
            lag = int(value) if value is not None else None
        except psycopg.Error as exc:
            log.warning("cannot read the slot lag: %s", str(exc).strip())
        if lag is not None:
            SOURCE_SLOT_LAG_BYTES.set(lag)
        self.run.owner._publish_stats(
            confirmed_flush_lsn=str(self.confirmed),
            lag_bytes=lag,
            in_flight=self.delivery.tracker.in_flight,
            open_transactions=self.delivery.tracker.open_slots,
        )

    def _heartbeat(self) -> None:
        try:
            if self.heartbeat_conn is None or self.heartbeat_conn.closed:
                self.heartbeat_conn = psycopg.connect(
                    self.run.dsn,
                    autocommit=True,
                    application_name="cdc-connector-heartbeat",
                    **libpq_options(self.cfg.connect_timeout_s),
                )
            query = sql.SQL("SELECT pg_logical_emit_message(false, {}, now()::text)::text").format(
                sql.Literal(HEARTBEAT_PREFIX)
            )
            first_value_within(self.heartbeat_conn, query, self.receive_timeout)
        except (psycopg.Error, RetriableError) as exc:
            # A missed heartbeat only delays WAL release; streaming goes on.
            log.warning("heartbeat failed: %s", str(exc).strip())

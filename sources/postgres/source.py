"""The PostgreSQL source: snapshot, then stream the slot into Kafka, confirming only what Kafka holds.

One run, in order: check the prerequisites -> sync the publication -> free and adopt the slot -> decide what to
do with it (`policy.decide`) -> take the snapshot (`Snapshotter`) -> stream (`Streamer`). The commit order
(produce -> Kafka acknowledges -> confirm the slot) is written in core/delivery.py; the streamer carries out its
last step. A retriable failure starts a fresh run within the retry budget.

The orchestrator sees the I/O of a run only through `RunParts` and the small protocols beside it;
`PostgresRunParts` is the real one (PostgreSQL, Kafka, `Snapshotter`, `Streamer`), tests hand in doubles.

Resume contract: the constructor holds no position; `run` resumes from the slot's confirmed flush LSN and
may be killed at any moment.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import psycopg

from core.checks import Problem
from core.delivery import AckTracker, KafkaDelivery
from core.errors import (
    ConnectorError,
    Endpoints,
    PrerequisiteError,
    RetryBudget,
    RetryBudgetConfig,
    classify,
)
from core.kafka import KafkaConfig
from core.positions import Lsn
from core.records import RecordChain
from core.timeouts import libpq_options
from schemas.registry import SchemaRegistryConfig
from schemas.serde import RegistrySerializer
from sources.base import Source
from sources.postgres import prerequisites
from sources.postgres.change_id import ChangeIds, namespace_for
from sources.postgres.config import PostgresSourceConfig
from sources.postgres.events import EventFactory
from sources.postgres.heartbeat import Heartbeat
from sources.postgres.lag import LagMonitor
from sources.postgres.output import RecordOutput
from sources.postgres.parallel import WorkerPool
from sources.postgres.policy import SlotAction, SlotPlan, decide
from sources.postgres.replication import CreatedSlot, ReplicationConnection, SystemInfo
from sources.postgres.selection import (
    TableRef,
    publication_exists,
    publication_tables,
    resolve_tables,
    sync_publication,
)
from sources.postgres.slots import (
    SlotInfo,
    SlotState,
    StateStore,
    create_slot,
    drop_slot,
    slot_info,
    wait_until_free,
)
from sources.postgres.snapshotter import Snapshotter
from sources.postgres.status import SourceStatus
from sources.postgres.streamer import EventCounts, Streamer

log = logging.getLogger(__name__)


class PostgresSource(Source):
    """`sources.base.Source` for PostgreSQL logical replication (pgoutput)."""

    def __init__(
        self,
        config: PostgresSourceConfig,
        *,
        name: str,
        kafka: KafkaConfig,
        registry: SchemaRegistryConfig,
        retry: RetryBudgetConfig,
        chain: RecordChain,
        parts: Callable[[SourceStatus], RunParts] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`parts` builds the I/O of each run from the status it reports to (default: `PostgresRunParts`)."""
        self._config = config
        self._status = SourceStatus(RetryBudget(retry.give_up_after_s, clock=clock))
        self._clock = clock
        self._parts = parts or (
            lambda status: PostgresRunParts(
                config, name=name, kafka=kafka, registry=registry, chain=chain, status=status
            )
        )
        # The backend pid of a replication connection given up as lost: the server may still hold the slot for it.
        self._lost_pid: int | None = None
        self._endpoints = Endpoints(
            database="the source database", dsn_setting="source.dsn", kafka=f"Kafka at {kafka.bootstrap_servers}"
        )

    # --- contract -------------------------------------------------------------------------------------

    def ready(self) -> bool:
        return self._status.is_ready

    def validate(self, *, kafka: bool = True) -> list[Problem]:
        config = self._config
        try:
            with connect(self._config) as conn:
                problems = prerequisites.check_server(conn, config)
                tables = resolve_tables(conn, config)
                if config.publication.mode == "create" and not tables:
                    problems.append(
                        Problem("source", "no table matches source.tables.include / exclude", "check the patterns")
                    )
                publication = config.publication
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
                problems.extend(prerequisites.check_tables(conn, config, tables))
                info = slot_info(conn, config.slot.name)
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
        return self._status.stats()

    def inspect(self) -> dict[str, Any]:
        """The slot and the snapshot state, read from the source database now (`cdc status`)."""
        slot_name = self._config.slot.name
        with connect(self._config) as conn:
            info = slot_info(conn, slot_name)
            state = None
            if conn.execute("SELECT to_regclass('cdc.source_state') IS NOT NULL").fetchone() == (True,):
                state = StateStore(conn).get(slot_name)
        result: dict[str, Any] = {"slot": slot_name}
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
        return self._status.budget.problem

    def run(self, stop: threading.Event) -> None:
        backoff = 1.0
        budget = self._status.budget
        try:
            while not stop.is_set():
                started = self._clock()
                try:
                    self._run_once(stop)
                    return
                except Exception as exc:
                    # One place decides what is worth retrying (connection loss, slot briefly busy...).
                    error = classify(exc, self._endpoints)
                    if not error.retriable:
                        if error is exc:
                            raise
                        raise error from exc
                    self._status.not_ready()
                    if self._clock() - started > 60:
                        backoff = 1.0
                    if budget.failed(error):
                        raise budget.exhausted(error) from exc
                    log.warning("source: %s; reconnecting in %.0fs", error, backoff)
                    if stop.wait(backoff):
                        return
                    backoff = min(backoff * 2, 30.0)
        finally:
            self._status.not_ready()
            self._status.publish(state="stopped")

    # --- one run --------------------------------------------------------------------------------------

    def _run_once(self, stop: threading.Event) -> None:
        """One connected run: the steps of the module docstring, each done by its own part."""
        config = self._config
        slot_name = config.slot.name
        parts = self._parts(self._status)
        db = parts.database()
        repl: Replication | None = None
        delivery: Delivery | None = None
        try:
            tables = self._prepare_tables(db)
            db.ensure_state()
            if not self._free_slot(db, stop):
                return
            repl = parts.replication()
            system = repl.identify_system()
            delivery = parts.delivery(system)
            delivery.ensure_topics(parts.eager_topics(tables))
            existing = db.slot()
            plan = decide(existing, db.recorded(), config.snapshot.mode, dbname=system.dbname)
            created = self._carry_out(plan, existing, db, parts)
            if created is not None and plan.snapshot:
                parts.snapshot(created, tables, stop)
            elif not plan.stream:
                log.info("snapshot of slot %s is complete (snapshot.mode: initial_only): nothing to do", slot_name)
                repl.close()
                repl = None
                if db.slot() is not None:
                    db.drop_slot()  # left behind by a stop between the snapshot's end and its drop
                return
            if stop.is_set():
                _confirm_acknowledged(delivery, repl)
                return
            if not plan.stream:
                delivery.flush()
                log.info("snapshot complete (snapshot.mode: initial_only); dropping slot %s", slot_name)
                repl.close()
                repl = None
                db.drop_slot()
                return
            self._stream(parts, repl, stop)
        finally:
            if repl is not None:
                repl.close()
            if delivery is not None:
                delivery.close()
            db.close()

    def _prepare_tables(self, db: SourceDatabase) -> list[TableRef]:
        """Check the prerequisites and bring the publication in line with the config; the captured tables."""
        problems = db.check_server()
        tables = db.resolve_tables() if self._config.publication.mode == "create" else []
        tables = db.sync_publication(tables)
        problems += db.check_tables(tables)
        if problems:
            raise PrerequisiteError("; ".join(f"{p.message} -> fix: {p.fix}" for p in problems))
        return tables

    def _free_slot(self, db: SourceDatabase, stop: threading.Event) -> bool:
        """Wait until no other process streams the slot (ending our own lost walsender first); False on stop."""
        slot_name = self._config.slot.name
        lost, self._lost_pid = self._lost_pid, None
        if lost is not None:
            info = db.slot()
            if info is not None and info.active_pid == lost:
                # The server keeps our previous walsender, and with it the slot, until its wal_sender_timeout.
                log.warning(
                    "slot %s is still held by this connector's lost connection (pid %d): ending it", slot_name, lost
                )
                try:
                    db.end_backend(lost)
                except psycopg.errors.InsufficientPrivilege:
                    log.warning("not allowed to end pid %d: waiting for the server's wal_sender_timeout", lost)
                if not db.wait_until_free(on_conflict="wait", stop=stop, poll_s=0.2):
                    return False
        return db.wait_until_free(on_conflict=self._config.slot.on_conflict, stop=stop, poll_s=2.0)

    def _carry_out(
        self, plan: SlotPlan, existing: SlotInfo | None, db: SourceDatabase, parts: RunParts
    ) -> CreatedSlot | None:
        """Adopt, keep or (re)create the slot as `plan` says; the slot created now, if any."""
        slot_name = self._config.slot.name
        match plan.action:
            case SlotAction.RESTART_SNAPSHOT:
                log.warning(
                    "the snapshot of slot %s was interrupted; an exported snapshot cannot be resumed, so the slot "
                    "is dropped and the snapshot restarts from a new consistent point (rows already in Kafka are "
                    "sent again with new change ids; sinks order them by LSN)",
                    slot_name,
                )
                db.drop_slot()
            case SlotAction.RESNAPSHOT:
                log.warning("slot %s is missing: taking a new snapshot (snapshot.mode: when_needed)", slot_name)
            case SlotAction.ADOPT:
                assert existing is not None
                confirmed = existing.confirmed_flush
                db.record(confirmed, "skipped")
                log.info("adopting existing slot %s at %s (no snapshot)", slot_name, confirmed)
                return None
            case SlotAction.RESUME | SlotAction.NOTHING:
                return None
        return parts.create_slot(snapshot=plan.snapshot)

    def _stream(self, parts: RunParts, repl: Replication, stop: threading.Event) -> None:
        try:
            parts.stream(stop)
        except Exception:
            # However the stream was lost, the server may keep our walsender (and with it the slot) until its
            # wal_sender_timeout: the next attempt ends it if it still holds the slot (`_free_slot`).
            self._lost_pid = repl.backend_pid
            raise


# --- the parts of one run, as the orchestrator sees them ------------------------------------------------


class SourceDatabase(Protocol):
    """The source database as one run uses it, over its normal (autocommit) connection."""

    def check_server(self) -> list[Problem]: ...
    def resolve_tables(self) -> list[TableRef]: ...
    def sync_publication(self, tables: list[TableRef]) -> list[TableRef]: ...
    def check_tables(self, tables: list[TableRef]) -> list[Problem]: ...
    def ensure_state(self) -> None: ...
    def recorded(self) -> SlotState | None: ...
    def record(self, consistent_point: Lsn, snapshot_state: str) -> None: ...
    def slot(self) -> SlotInfo | None: ...
    def end_backend(self, pid: int) -> None: ...
    def wait_until_free(self, *, on_conflict: str, stop: threading.Event, poll_s: float) -> bool: ...
    def drop_slot(self) -> None: ...
    def close(self) -> None: ...


class Replication(Protocol):
    """The replication connection, for what the orchestrator itself does with it."""

    @property
    def backend_pid(self) -> int: ...
    def identify_system(self) -> SystemInfo: ...
    def send_status(self, flushed: Lsn) -> None: ...
    def close(self) -> None: ...


class Delivery(Protocol):
    """Kafka, for what the orchestrator itself does with it."""

    @property
    def tracker(self) -> AckTracker: ...
    def ensure_topics(self, topics: Iterable[str]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class RunParts(Protocol):
    """Opens the connections of one run and builds the parts working on them (`PostgresRunParts` for real)."""

    def database(self) -> SourceDatabase: ...
    def replication(self) -> Replication: ...
    def delivery(self, system: SystemInfo) -> Delivery: ...
    def eager_topics(self, tables: list[TableRef]) -> list[str]: ...
    def create_slot(self, *, snapshot: bool) -> CreatedSlot: ...
    def snapshot(self, created: CreatedSlot, tables: list[TableRef], stop: threading.Event) -> None: ...
    def stream(self, stop: threading.Event) -> None: ...


# --- the real parts, built from the config sections -----------------------------------------------------


def connect(config: PostgresSourceConfig, application_name: str | None = None) -> psycopg.Connection:
    options: dict[str, Any] = dict(libpq_options(config.connect_timeout_s))
    if application_name is not None:
        options["application_name"] = application_name
    return psycopg.connect(config.dsn.get_secret_value(), autocommit=True, **options)


class PgSourceDatabase:
    """`SourceDatabase` over a psycopg connection: the prerequisite checks, the publication and the slot."""

    def __init__(self, config: PostgresSourceConfig, conn: psycopg.Connection) -> None:
        self._config = config
        self._slot_name = config.slot.name
        self.conn = conn
        self.store = StateStore(conn)

    def check_server(self) -> list[Problem]:
        return prerequisites.check_server(self.conn, self._config)

    def resolve_tables(self) -> list[TableRef]:
        return resolve_tables(self.conn, self._config)

    def sync_publication(self, tables: list[TableRef]) -> list[TableRef]:
        return sync_publication(self.conn, self._config, tables)

    def check_tables(self, tables: list[TableRef]) -> list[Problem]:
        return prerequisites.check_tables(self.conn, self._config, tables)

    def ensure_state(self) -> None:
        self.store.ensure()

    def recorded(self) -> SlotState | None:
        return self.store.get(self._slot_name)

    def record(self, consistent_point: Lsn, snapshot_state: str) -> None:
        self.store.put(self._slot_name, consistent_point, snapshot_state)

    def slot(self) -> SlotInfo | None:
        return slot_info(self.conn, self._slot_name)

    def end_backend(self, pid: int) -> None:
        self.conn.execute("SELECT pg_terminate_backend(%s)", (pid,))

    def wait_until_free(self, *, on_conflict: str, stop: threading.Event, poll_s: float) -> bool:
        return wait_until_free(self.conn, self._slot_name, on_conflict=on_conflict, stop=stop, poll_s=poll_s)

    def drop_slot(self) -> None:
        drop_slot(self.conn, self._slot_name)

    def close(self) -> None:
        self.conn.close()


class PostgresRunParts:
    """`RunParts` for real: PostgreSQL connections, Kafka, the snapshotter and the streamer of one run."""

    def __init__(
        self,
        config: PostgresSourceConfig,
        *,
        name: str,
        kafka: KafkaConfig,
        registry: SchemaRegistryConfig,
        chain: RecordChain,
        status: SourceStatus,
    ) -> None:
        self._config = config
        self._name = name
        self._kafka = kafka
        self._registry = registry
        self._chain = chain
        self._status = status
        # Opened in the order the run asks for them; each later part works on the earlier ones.
        self._db: PgSourceDatabase | None = None
        self._repl: ReplicationConnection | None = None
        self._system: SystemInfo | None = None
        self._delivery: KafkaDelivery | None = None
        self._factory: EventFactory | None = None
        self._output: RecordOutput | None = None

    def database(self) -> PgSourceDatabase:
        self._db = PgSourceDatabase(self._config, connect(self._config, "cdc-connector"))
        return self._db

    def replication(self) -> ReplicationConnection:
        config = self._config
        self._repl = ReplicationConnection(config.dsn.get_secret_value(), connect_timeout_s=config.connect_timeout_s)
        return self._repl

    def delivery(self, system: SystemInfo) -> KafkaDelivery:
        kafka = self._kafka
        assert self._db is not None
        self._system = system
        self._delivery = KafkaDelivery(
            kafka.bootstrap_servers,
            dict(kafka.properties),
            serializer=RegistrySerializer(self._registry),
            topic_partitions=kafka.topic_partitions,
            topic_replication_factor=kafka.topic_replication_factor,
            client_id=f"cdc-{self._name}-source",
            request_timeout_s=kafka.request_timeout_s,
        )
        ids = ChangeIds(namespace_for(system.system_id, system.dbname))
        self._factory = EventFactory(
            self._config, connector_name=self._name, conn=self._db.conn, ids=ids, db=system.dbname
        )
        self._output = RecordOutput(self._chain, self._delivery)
        return self._delivery

    def eager_topics(self, tables: list[TableRef]) -> list[str]:
        assert self._factory is not None and self._output is not None
        if not self._output.passthrough:  # with transforms, records may be routed elsewhere: create topics on use
            return []
        return [self._factory.topic(t) for t in tables]

    def create_slot(self, *, snapshot: bool) -> CreatedSlot:
        assert self._repl is not None and self._db is not None
        return create_slot(self._repl, self._db.store, self._config.slot.name, snapshot=snapshot)

    def snapshot(self, created: CreatedSlot, tables: list[TableRef], stop: threading.Event) -> None:
        assert self._db is not None and self._factory is not None
        assert self._delivery is not None and self._output is not None
        Snapshotter(
            self._config, store=self._db.store, factory=self._factory, delivery=self._delivery, output=self._output,
            status=self._status, stop=stop,
        ).run(created, tables)  # fmt: skip

    def stream(self, stop: threading.Event) -> None:
        assert self._db is not None and self._repl is not None and self._system is not None
        assert self._factory is not None and self._delivery is not None and self._output is not None
        config = self._config
        counts: EventCounts = {}
        pool = self._pool(self._system, self._delivery, counts)
        heartbeat = None
        if config.heartbeat.enabled and config.heartbeat.emit_message:
            heartbeat = Heartbeat(config.dsn.get_secret_value(), connect_timeout_s=config.connect_timeout_s)
        streamer = Streamer(
            config,
            conn=self._db.conn,
            repl=self._repl,
            factory=self._factory,
            delivery=self._delivery,
            output=self._output,
            status=self._status,
            lag=LagMonitor(self._db.conn, config.slot.name),
            heartbeat=heartbeat,
            counts=counts,
            stop=stop,
            pool=pool,
        )
        try:
            streamer.stream()
        finally:
            if heartbeat is not None:
                heartbeat.close()
            if pool is not None:
                pool.close()

    def _pool(self, system: SystemInfo, delivery: KafkaDelivery, counts: EventCounts) -> WorkerPool | None:
        workers = self._config.encode_workers
        if workers == 0:
            return None
        if len(self._chain):
            log.info("source-side transforms are configured: encoding in the reading process (no encode_workers)")
            return None
        log.info("starting %d encoder worker processes", workers)
        return WorkerPool(
            self._config,
            self._registry,
            connector_name=self._name,
            system_id=system.system_id,
            db=system.dbname,
            workers=workers,
            delivery=delivery,
            counts=counts,
        )


def _confirm_acknowledged(delivery: Delivery, repl: Replication) -> None:
    """On a stop before streaming: wait for Kafka, then confirm what it acknowledged."""
    delivery.flush()
    confirmed = delivery.tracker.confirmable()
    if confirmed:
        repl.send_status(Lsn(confirmed))

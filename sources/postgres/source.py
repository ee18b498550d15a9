"""The PostgreSQL source: snapshot, then stream the slot into Kafka, confirming only what Kafka holds.

One run, in order: check the prerequisites -> sync the publication -> free and adopt the slot -> decide what to
do with it (`policy.decide`) -> take the snapshot (`Snapshotter`) -> stream (`Streamer`). The commit order
(produce -> Kafka acknowledges -> confirm the slot) is written in core/delivery.py; the streamer carries out its
last step. A retriable failure starts a fresh run within the retry budget.

Resume contract: the constructor holds no position; `run` resumes from the slot's confirmed flush LSN and
may be killed at any moment.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import psycopg

from core.checks import Problem
from core.delivery import KafkaDelivery
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
from sources.postgres.slots import SlotInfo, StateStore, create_slot, drop_slot, slot_info, wait_until_free
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
    ) -> None:
        self._config = config
        self._name = name
        self._kafka = kafka
        self._registry = registry
        self._chain = chain
        self._status = SourceStatus(RetryBudget(retry.give_up_after_s))
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
            with self._connect() as conn:
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
        with self._connect() as conn:
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
                started = time.monotonic()
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
                    if time.monotonic() - started > 60:
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

    def _connect(self, application_name: str | None = None) -> psycopg.Connection:
        options: dict[str, Any] = dict(libpq_options(self._config.connect_timeout_s))
        if application_name is not None:
            options["application_name"] = application_name
        return psycopg.connect(self._config.dsn.get_secret_value(), autocommit=True, **options)

    def _run_once(self, stop: threading.Event) -> None:
        """One connected run: the steps of the module docstring, each done by its own part."""
        config = self._config
        slot_name = config.slot.name
        conn = self._connect("cdc-connector")
        repl: ReplicationConnection | None = None
        delivery: KafkaDelivery | None = None
        try:
            tables = self._prepare_tables(conn)
            store = StateStore(conn)
            store.ensure()
            if not self._free_slot(conn, stop):
                return
            repl = ReplicationConnection(config.dsn.get_secret_value(), connect_timeout_s=config.connect_timeout_s)
            system = repl.identify_system()
            delivery = self._delivery()
            factory = self._event_factory(conn, system)
            output = RecordOutput(self._chain, delivery)
            if output.passthrough:  # with transforms, records may be routed elsewhere: create topics on use
                delivery.ensure_topics(factory.topic(t) for t in tables)
            existing = slot_info(conn, slot_name)
            plan = decide(existing, store.get(slot_name), config.snapshot.mode, dbname=system.dbname)
            created = self._carry_out(plan, existing, conn, repl, store)
            if created is not None and plan.snapshot:
                Snapshotter(
                    config, store=store, factory=factory, delivery=delivery, output=output, status=self._status,
                    stop=stop,
                ).run(created, tables)  # fmt: skip
            elif not plan.stream:
                log.info("snapshot of slot %s is complete (snapshot.mode: initial_only): nothing to do", slot_name)
                repl.close()
                repl = None
                if slot_info(conn, slot_name) is not None:
                    drop_slot(conn, slot_name)  # left behind by a stop between the snapshot's end and its drop
                return
            if stop.is_set():
                _confirm_acknowledged(delivery, repl)
                return
            if not plan.stream:
                delivery.flush()
                log.info("snapshot complete (snapshot.mode: initial_only); dropping slot %s", slot_name)
                repl.close()
                repl = None
                drop_slot(conn, slot_name)
                return
            self._stream(
                conn=conn, repl=repl, system=system, factory=factory, delivery=delivery, output=output, stop=stop
            )
        finally:
            if repl is not None:
                repl.close()
            if delivery is not None:
                delivery.close()
            conn.close()

    def _prepare_tables(self, conn: psycopg.Connection) -> list[TableRef]:
        """Check the prerequisites and bring the publication in line with the config; the captured tables."""
        config = self._config
        problems = prerequisites.check_server(conn, config)
        tables = resolve_tables(conn, config) if config.publication.mode == "create" else []
        tables = sync_publication(conn, config, tables)
        problems += prerequisites.check_tables(conn, config, tables)
        if problems:
            raise PrerequisiteError("; ".join(f"{p.message} -> fix: {p.fix}" for p in problems))
        return tables

    def _free_slot(self, conn: psycopg.Connection, stop: threading.Event) -> bool:
        """Wait until no other process streams the slot (ending our own lost walsender first); False on stop."""
        slot_name = self._config.slot.name
        lost, self._lost_pid = self._lost_pid, None
        if lost is not None:
            info = slot_info(conn, slot_name)
            if info is not None and info.active_pid == lost:
                # The server keeps our previous walsender, and with it the slot, until its wal_sender_timeout.
                log.warning(
                    "slot %s is still held by this connector's lost connection (pid %d): ending it", slot_name, lost
                )
                try:
                    conn.execute("SELECT pg_terminate_backend(%s)", (lost,))
                except psycopg.errors.InsufficientPrivilege:
                    log.warning("not allowed to end pid %d: waiting for the server's wal_sender_timeout", lost)
                if not wait_until_free(conn, slot_name, on_conflict="wait", stop=stop, poll_s=0.2):
                    return False
        return wait_until_free(conn, slot_name, on_conflict=self._config.slot.on_conflict, stop=stop)

    def _carry_out(
        self,
        plan: SlotPlan,
        existing: SlotInfo | None,
        conn: psycopg.Connection,
        repl: ReplicationConnection,
        store: StateStore,
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
                drop_slot(conn, slot_name)
            case SlotAction.RESNAPSHOT:
                log.warning("slot %s is missing: taking a new snapshot (snapshot.mode: when_needed)", slot_name)
            case SlotAction.ADOPT:
                assert existing is not None
                confirmed = existing.confirmed_flush
                store.put(slot_name, confirmed, "skipped")
                log.info("adopting existing slot %s at %s (no snapshot)", slot_name, confirmed)
                return None
            case SlotAction.RESUME | SlotAction.NOTHING:
                return None
        return create_slot(repl, store, slot_name, snapshot=plan.snapshot)

    def _stream(
        self,
        *,
        conn: psycopg.Connection,
        repl: ReplicationConnection,
        system: SystemInfo,
        factory: EventFactory,
        delivery: KafkaDelivery,
        output: RecordOutput,
        stop: threading.Event,
    ) -> None:
        config = self._config
        counts: EventCounts = {}
        pool = self._pool(system, delivery, counts)
        heartbeat = None
        if config.heartbeat.enabled and config.heartbeat.emit_message:
            heartbeat = Heartbeat(config.dsn.get_secret_value(), connect_timeout_s=config.connect_timeout_s)
        streamer = Streamer(
            config,
            conn=conn,
            repl=repl,
            factory=factory,
            delivery=delivery,
            output=output,
            status=self._status,
            lag=LagMonitor(conn, config.slot.name),
            heartbeat=heartbeat,
            counts=counts,
            stop=stop,
            pool=pool,
        )
        try:
            streamer.stream()
        except Exception:
            # However the stream was lost, the server may keep our walsender (and with it the slot) until its
            # wal_sender_timeout: the next attempt ends it if it still holds the slot (`_free_slot`).
            self._lost_pid = repl.backend_pid
            raise
        finally:
            if heartbeat is not None:
                heartbeat.close()
            if pool is not None:
                pool.close()

    # --- the parts built from the config sections -----------------------------------------------------

    def _delivery(self) -> KafkaDelivery:
        kafka = self._kafka
        return KafkaDelivery(
            kafka.bootstrap_servers,
            dict(kafka.properties),
            serializer=RegistrySerializer(self._registry),
            topic_partitions=kafka.topic_partitions,
            topic_replication_factor=kafka.topic_replication_factor,
            client_id=f"cdc-{self._name}-source",
            request_timeout_s=kafka.request_timeout_s,
        )

    def _event_factory(self, conn: psycopg.Connection, system: SystemInfo) -> EventFactory:
        ids = ChangeIds(namespace_for(system.system_id, system.dbname))
        return EventFactory(self._config, connector_name=self._name, conn=conn, ids=ids, db=system.dbname)

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


def _confirm_acknowledged(delivery: KafkaDelivery, repl: ReplicationConnection) -> None:
    """On a stop before streaming: wait for Kafka, then confirm what it acknowledged."""
    delivery.flush()
    confirmed = delivery.tracker.confirmable()
    if confirmed:
        repl.send_status(Lsn(confirmed))


"""The PostgreSQL source: snapshot, then stream the slot into Kafka, confirming only what Kafka holds.

One run, in order: check the prerequisites -> sync the publication -> free and adopt the slot -> decide what to
do with it (`policy.decide`) -> take the snapshot (`Snapshotter`) -> stream (`Streamer`). The commit order
(produce -> Kafka acknowledges -> confirm the slot) is written in core/delivery.py; the streamer carries out its
last step. A retriable failure starts a fresh run within the retry budget.

The orchestrator sees the I/O of a run only through `RunParts` and the small protocols beside it
(`run_parts.py`); `PostgresRunParts` is the real one (PostgreSQL, Kafka, `Snapshotter`, `Streamer`), tests hand in
doubles.

Resume contract: the constructor holds no position; `run` resumes from the slot's confirmed flush LSN and
may be killed at any moment.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from core.checks import Problem
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
from schemas.registry import SchemaRegistryConfig
from sources.base import Source
from sources.postgres import prerequisites
from sources.postgres.config import PostgresSourceConfig
from sources.postgres.policy import SlotAction, SlotPlan, decide
from sources.postgres.replication import CreatedSlot
from sources.postgres.run_parts import (
    Delivery,
    PostgresRunParts,
    Replication,
    RunParts,
    SourceDatabase,
    connect,
)
from sources.postgres.selection import (
    TableRef,
    publication_exists,
    publication_tables,
    resolve_tables,
)
from sources.postgres.slots import (
    SlotInfo,
    StateStore,
    slot_info,
)
from sources.postgres.status import SourceStatus

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
        """Check the prerequisites and bring the publication in line with the config; the captured tables.

        The matching tables are admitted first (`tables.on_keyless_table`): a table without a usable replica
        identity never reaches the publication, where it would make the application's UPDATE and DELETE fail.
        """
        problems = db.check_server()
        tables = db.admit_tables(db.resolve_tables()) if self._config.publication.mode == "create" else []
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


def _confirm_acknowledged(delivery: Delivery, repl: Replication) -> None:
    """On a stop before streaming: wait for Kafka, then confirm what it acknowledged."""
    delivery.flush()
    confirmed = delivery.tracker.confirmable()
    if confirmed:
        repl.send_status(Lsn(confirmed))

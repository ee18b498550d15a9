"""The parts one source run is made of: the protocols the orchestrator (`source.py`) sees, and the real ones.

`PostgresRunParts` wires PostgreSQL, Kafka, the event factory, the transforms' output, `Snapshotter`, `Streamer`,
the heartbeat, the lag monitor and the encoder workers from the config sections; the unit tests of the
orchestrator hand in doubles of the same protocols instead.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any, Protocol

import psycopg

from core.checks import Problem
from core.delivery import AckTracker, KafkaDelivery
from core.errors import PrerequisiteError
from core.kafka import KafkaConfig, kafka_settings
from core.positions import Lsn
from core.records import RecordChain
from core.timeouts import libpq_options
from schemas.registry import SchemaRegistryConfig
from schemas.serde import RegistrySerializer
from sources.postgres import prerequisites
from sources.postgres.change_id import ChangeIds, namespace_for
from sources.postgres.config import PostgresSourceConfig, SnapshotMode
from sources.postgres.discovery import TableWatch
from sources.postgres.events import EventFactory
from sources.postgres.heartbeat import Heartbeat
from sources.postgres.incremental import IncrementalSnapshots, ensure_signal_table, queue_initial, signal_table
from sources.postgres.lag import LagMonitor
from sources.postgres.output import RecordOutput
from sources.postgres.parallel import WorkerPool
from sources.postgres.replication import CreatedSlot, ReplicationConnection, SystemInfo
from sources.postgres.selection import (
    TableRef,
    admit,
    log_skipped,
    publication_exists,
    publication_tables,
    resolve_tables,
    sync_publication,
    tables_to_copy,
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


# --- the parts of one run, as the orchestrator sees them ------------------------------------------------


class SourceDatabase(Protocol):
    """The source database as one run uses it, over its normal (autocommit) connection."""

    def check_server(self) -> list[Problem]: ...
    def resolve_tables(self) -> list[TableRef]: ...
    def admit_tables(self, candidates: list[TableRef]) -> list[TableRef]: ...
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

    def admit_tables(self, candidates: list[TableRef]) -> list[TableRef]:
        """The candidates that can be captured (`tables.on_keyless_table`), before the publication is touched."""
        config = self._config
        keyless = prerequisites.keyless_tables(self.conn, config, candidates)
        admission = admit(candidates, keyless, config.tables.on_keyless_table)
        if candidates and not admission.capture:
            raise PrerequisiteError(
                "no matching table can be captured: "
                + "; ".join(f"{p.message} -> fix: {p.fix}" for p in admission.skipped.values())
            )
        log_skipped(admission, self._published() or [], config.publication.name)
        return admission.capture

    def sync_publication(self, tables: list[TableRef]) -> list[TableRef]:
        """Bring the publication in line; tables it did not publish before are first recorded as to be copied."""
        config = self._config
        added = tables_to_copy(tables, self._published(), copy=config.snapshot.mode is not SnapshotMode.NEVER)
        if added:
            self.store.add_copies(self._slot_name, [str(t) for t in added])
        signals = signal_table(config)
        if signals is None or config.publication.mode != "create":
            return sync_publication(self.conn, config, tables)
        # The signal table's inserts reach the source through the stream: it is published, never captured.
        ensure_signal_table(self.conn, signals)
        published = sync_publication(self.conn, config, sorted({*tables, signals}))
        return [t for t in published if t != signals]

    def _published(self) -> list[TableRef] | None:
        """The tables of our own publication (mode `create`) as it is; None when there is none."""
        publication = self._config.publication
        if publication.mode != "create" or not publication_exists(self.conn, publication.name):
            return None
        return publication_tables(self.conn, publication.name)

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
        serializer = RegistrySerializer(self._registry)
        self._delivery = KafkaDelivery(
            kafka.bootstrap_servers,
            kafka_settings(kafka),
            serializer=serializer,
            topic_partitions=kafka.topic_partitions,
            topic_replication_factor=kafka.topic_replication_factor,
            client_id=f"cdc-{self._name}-source",
            request_timeout_s=kafka.request_timeout_s,
        )
        ids = ChangeIds(namespace_for(system.system_id, system.dbname))
        self._factory = EventFactory(
            self._config, connector_name=self._name, conn=self._db.conn, ids=ids, db=system.dbname,
            latest_schema=serializer.latest,
        )  # fmt: skip
        self._output = RecordOutput(self._chain, self._delivery)
        return self._delivery

    def eager_topics(self, tables: list[TableRef]) -> list[str]:
        assert self._factory is not None and self._output is not None
        if not self._output.passthrough:  # with transforms, records may be routed elsewhere: create topics on use
            return []
        return [self._factory.topic(t) for t in tables]

    def create_slot(self, *, snapshot: bool) -> CreatedSlot:
        assert self._repl is not None and self._db is not None
        config = self._config
        return create_slot(self._repl, self._db.store, config.slot.name, snapshot=snapshot,
                           export=config.snapshot.initial == "copy")  # fmt: skip

    def snapshot(self, created: CreatedSlot, tables: list[TableRef], stop: threading.Event) -> None:
        assert self._db is not None and self._factory is not None
        assert self._delivery is not None and self._output is not None
        if self._config.snapshot.initial == "incremental":
            queue_initial(self._db.store, self._config.slot.name, created.consistent_point, tables)
            return
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
        incremental = None
        if (
            config.signal.table is not None
            or config.snapshot.new_tables == "incremental"
            or config.snapshot.initial == "incremental"
        ):
            incremental = IncrementalSnapshots(
                config, conn=self._db.conn, store=self._db.store, factory=self._factory, output=self._output,
                tracker=self._delivery.tracker, status=self._status, poll=self._delivery.poll,
            )  # fmt: skip
        watch = TableWatch(
            config, conn=self._db.conn, store=self._db.store, factory=self._factory, delivery=self._delivery,
            output=self._output, status=self._status, stop=stop,
            backfill=incremental.request_table if incremental is not None and config.snapshot.new_tables ==
            "incremental" else None,
        )  # fmt: skip
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
            tables=watch,
            incremental=incremental,
        )
        try:
            streamer.stream()
        finally:
            if incremental is not None:
                incremental.close()
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

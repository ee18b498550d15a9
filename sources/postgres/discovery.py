"""Tables that join while streaming: the periodic look for newly matching tables, and the copy of their rows.

`TableWatch.tick` runs inside the streaming loop (`streamer.py`) at most every `tables.discovery_interval_s`:

1. (mode `create`) tables that now match `tables.include`/`exclude` are admitted (`tables.on_keyless_table`:
   a table without a usable replica identity never joins the publication), recorded in `cdc.source_state` as
   to be copied, then added to the publication; their streamed changes begin at that ALTER PUBLICATION.
   (mode `existing`) tables the user added to the publication since the run started are recorded likewise.
2. Every table recorded as to be copied (also those a start-up added, or a crash interrupted) is read in the
   snapshot exported by a temporary slot created now, on a second replication connection, and produced as
   `op = r` rows positioned at that slot's consistent point; the sink's row guard then lets the streamed
   changes committed after that point win and those before it lose, as for the initial snapshot. The record
   is removed only once Kafka acknowledged every row, so a crash mid-copy redoes the copy on the next start.

The copy runs in line, between two reads of the stream, sending status updates as it goes: every streamed
change produced after the copy's rows is then one the stream read after the copy began, so a change committed
after the consistent point (a delete above all) is never overtaken in the topic by the row it changed.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from core.delivery import KafkaDelivery
from core.metrics import SNAPSHOT_ROWS
from sources.postgres import prerequisites
from sources.postgres.config import PostgresSourceConfig, SnapshotMode
from sources.postgres.events import EventFactory
from sources.postgres.output import RecordOutput
from sources.postgres.replication import ReplicationConnection
from sources.postgres.selection import (
    Admission,
    TableRef,
    admit,
    log_skipped,
    options_for,
    publication_tables,
    resolve_tables,
    sync_publication,
)
from sources.postgres.slots import StateStore
from sources.postgres.snapshot import SnapshotReader, SnapshotTable, TableProgress
from sources.postgres.snapshotter import produce_table_rows
from sources.postgres.status import SourceStatus

log = logging.getLogger(__name__)

_KEEPALIVE_S = 1.0
_COPY_CHUNK = 1000  # rows per acknowledgement slot; the stream's keepalive is looked at between slots
"""Longest time between two status updates while a copy runs."""


class TableWatch:
    """Adds newly matching tables to the publication and copies the rows of new tables, from the streaming loop."""

    def __init__(
        self,
        config: PostgresSourceConfig,
        *,
        conn: psycopg.Connection,
        store: StateStore,
        factory: EventFactory,
        delivery: KafkaDelivery,
        output: RecordOutput,
        status: SourceStatus,
        stop: threading.Event,
        clock: Callable[[], float] = time.monotonic,
        backfill: Callable[[TableRef], None] | None = None,
    ) -> None:
        """`backfill`: queue an incremental snapshot of a table (`snapshot.new_tables: incremental`) instead of
        copying its rows here."""
        self._config = config
        self._conn = conn
        self._store = store
        self._factory = factory
        self._delivery = delivery
        self._output = output
        self._status = status
        self._stop = stop
        self._clock = clock
        self._backfill = backfill
        self._next = 0.0
        self._started = False
        self._known: set[TableRef] = set()
        """The publication's tables as this run saw them (mode `existing`: new ones are the user's additions)."""
        self._warned: set[TableRef] = set()
        self._copies: dict[str, dict[str, Any]] = {}

    def tick(self, now: float, keepalive: Callable[[], None]) -> bool:
        """Look for new tables and copy what is to be copied when due; True when it did work (time passed)."""
        if now < self._next:
            return False
        interval = self._config.tables.discovery_interval_s
        self._next = now + interval if interval > 0 else math.inf
        name = self._config.publication.name
        if not self._started:
            # The start-up just synced the publication: only the copies it (or an interrupted run) left.
            self._started = True
            self._known = set(publication_tables(self._conn, name))
        elif self._config.publication.mode == "create":
            self._discover()
        else:
            self._adopt_additions()
        pending = set(self._store.copies(self._config.slot.name))
        if not pending:
            return False
        for table in publication_tables(self._conn, name):
            if str(table) in pending and not self._stop.is_set():
                if self._backfill is not None:
                    # Queued (and persisted) first: a crash before the record is cleared queues it again.
                    self._backfill(table)
                    self._store.copy_done(self._config.slot.name, str(table))
                else:
                    self._copy(table, keepalive)
        return True

    def _discover(self) -> None:
        config = self._config
        conn = self._conn
        published = publication_tables(conn, config.publication.name)
        new = [t for t in resolve_tables(conn, config) if t not in published]
        if not new:
            return
        admission = admit(new, prerequisites.keyless_tables(conn, config, new), config.tables.on_keyless_table)
        unwarned = {t: p for t, p in admission.skipped.items() if t not in self._warned}
        log_skipped(Admission([], unwarned), [], config.publication.name)
        self._warned.update(unwarned)
        if not admission.capture:
            return
        self._record(admission.capture)
        sync_publication(conn, config, sorted({*published, *admission.capture}))
        for table in admission.capture:
            log.info("table %s matches source.tables: added to publication %s", table, config.publication.name)
        self._known.update(admission.capture)

    def _adopt_additions(self) -> None:
        """Mode `existing`: tables the user added to the publication while we stream get their rows copied."""
        added = [t for t in publication_tables(self._conn, self._config.publication.name) if t not in self._known]
        if added:
            for table in added:
                log.info("table %s joined publication %s", table, self._config.publication.name)
            self._record(added)
            self._known.update(added)

    def _record(self, tables: list[TableRef]) -> None:
        if self._config.snapshot.mode is not SnapshotMode.NEVER:
            self._store.add_copies(self._config.slot.name, [str(t) for t in tables])

    def _copy(self, table: TableRef, keepalive: Callable[[], None]) -> None:
        """Read `table` in a snapshot of its own and produce its rows; the record is cleared once Kafka has them."""
        config = self._config
        dsn = config.dsn.get_secret_value()
        events = self._factory.for_table(table)
        plan = SnapshotTable(table, events.columns, events.key_columns, options_for(config, table).row_filter)
        repl = ReplicationConnection(
            dsn, application_name="cdc-connector-copy", connect_timeout_s=config.connect_timeout_s
        )
        try:
            temporary = f"{config.slot.name[:40]}_copy_{os.getpid()}"
            created = repl.create_slot(temporary, export_snapshot=True, temporary=True)
            reader = SnapshotReader(
                dsn, created.snapshot_name, chunk_size=config.snapshot.chunk_size,
                connect_timeout_s=config.connect_timeout_s,
            )  # fmt: skip
            reader.open()
        finally:
            # Ends the exporting connection and with it the temporary slot; the reader's transaction keeps the
            # snapshot it imported.
            repl.close()
        point = int(created.consistent_point)
        log.info("copying the existing rows of %s as of %s", table, created.consistent_point)
        try:
            progress = TableProgress(str(table), reader.estimate(table))
            self._copies[str(table)] = progress.as_dict()
            self._publish()
            last_keepalive = self._clock()

            def between_chunks() -> bool:
                nonlocal last_keepalive
                self._delivery.poll(0)
                if self._clock() - last_keepalive >= _KEEPALIVE_S:
                    keepalive()
                    last_keepalive = self._clock()
                    self._copies[str(table)] = progress.as_dict()
                    self._publish()
                if self._stop.is_set():
                    log.info("stop requested while copying %s; the copy restarts on the next run", table)
                    return True
                return False

            finished = produce_table_rows(
                reader.rows(plan), events, output=self._output, tracker=self._delivery.tracker, point=point,
                ts_ms=int(time.time() * 1000), final_marker="last", chunk=_COPY_CHUNK,
                complete_markers=config.snapshot.complete_markers, progress=progress, between_chunks=between_chunks,
            )  # fmt: skip
            if not finished:
                return
        finally:
            reader.close()
        self._delivery.flush()
        self._store.copy_done(config.slot.name, str(table))
        progress.done = True
        self._copies[str(table)] = progress.as_dict()
        self._publish()
        SNAPSHOT_ROWS.labels(table=str(table)).inc(progress.rows)
        log.info("copied %d rows of %s (new table) as of %s", progress.rows, table, created.consistent_point)

    def _publish(self) -> None:
        self._status.publish(table_copies={name: dict(p) for name, p in self._copies.items()})

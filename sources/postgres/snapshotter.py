"""The initial snapshot: every captured table read as of the slot's consistent point, produced to Kafka.

Each table's rows go out in chunks, each chunk one acknowledgement slot; the last row of the last table carries
`snapshot: last`, and each table may end with a snapshot-complete marker on every partition. The snapshot is
complete (`done` in `cdc.source_state`) only once Kafka acknowledged every row; a stop or a failure before that
leaves it `running`, and the next start restarts it on a new slot (see slots.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from core.delivery import AckTracker, KafkaDelivery
from core.metrics import SNAPSHOT_ESTIMATED_ROWS, SNAPSHOT_ROWS
from sources.postgres.config import PostgresSourceConfig
from sources.postgres.events import EventFactory, TableEvents
from sources.postgres.output import RecordOutput
from sources.postgres.replication import CreatedSlot
from sources.postgres.selection import TableRef, options_for
from sources.postgres.slots import StateStore
from sources.postgres.snapshot import ProgressReporter, SnapshotProgress, SnapshotReader, SnapshotTable, TableProgress
from sources.postgres.status import SourceStatus

log = logging.getLogger(__name__)


class Snapshotter:
    """Takes the snapshot a newly created slot exported; `run` returns early (incomplete) when `stop` is set."""

    def __init__(
        self,
        config: PostgresSourceConfig,
        *,
        store: StateStore,
        factory: EventFactory,
        delivery: KafkaDelivery,
        output: RecordOutput,
        status: SourceStatus,
        stop: threading.Event,
    ) -> None:
        self._config = config
        self._store = store
        self._factory = factory
        self._delivery = delivery
        self._output = output
        self._status = status
        self._stop = stop

    def run(self, created: CreatedSlot, tables: Sequence[TableRef]) -> None:
        config = self._config
        slot_name = config.slot.name
        store = self._store
        delivery = self._delivery
        reader = SnapshotReader(
            config.dsn.get_secret_value(),
            created.snapshot_name,
            chunk_size=config.snapshot.chunk_size,
            connect_timeout_s=config.connect_timeout_s,
        )
        reader.open()  # first: the exported snapshot is only importable while the exporter is idle
        reporter = ProgressReporter()
        try:
            point = int(created.consistent_point)
            progress = SnapshotProgress(str(created.consistent_point))
            plans: list[tuple[TableEvents, SnapshotTable]] = []
            for table in tables:
                events = self._factory.for_table(table)
                order_by = events.key_columns
                row_filter = options_for(config, table).row_filter
                plans.append((events, SnapshotTable(table, events.columns, order_by, row_filter)))
                estimate = reader.estimate(table)
                progress.tables[str(table)] = TableProgress(str(table), estimate)
                if estimate is not None:
                    SNAPSHOT_ESTIMATED_ROWS.labels(table=str(table)).set(estimate)
            store.update_progress(slot_name, progress.as_dict())
            self._status.publish(state="snapshot", snapshot=progress.as_dict())
            ts_ms = int(time.time() * 1000)
            chunk = config.snapshot.chunk_size
            for index, (events, plan) in enumerate(plans):
                last_table = index == len(plans) - 1
                table_progress = progress.tables[str(plan.ref)]
                counted = [0]

                def between_chunks(
                    table_progress: TableProgress = table_progress, counted: list[int] = counted
                ) -> bool:
                    delivery.poll(0)
                    # Rows produced so far (acknowledged by Kafka a moment later; the snapshot restarts if not).
                    SNAPSHOT_ROWS.labels(table=table_progress.table).inc(table_progress.rows - counted[0])
                    counted[0] = table_progress.rows
                    reporter.tick(table_progress)
                    self._status.publish(snapshot=progress.as_dict())
                    if self._stop.is_set():
                        log.info("stop requested during the snapshot; it will restart on the next run")
                        return True
                    return False

                finished = produce_table_rows(
                    reader.rows(plan), events, output=self._output, tracker=delivery.tracker, point=point,
                    ts_ms=ts_ms, final_marker="last" if last_table else "true", chunk=chunk,
                    complete_markers=config.snapshot.complete_markers, progress=table_progress,
                    between_chunks=between_chunks,
                )  # fmt: skip
                if not finished:
                    return
                table_progress.done = True
                SNAPSHOT_ROWS.labels(table=str(plan.ref)).inc(table_progress.rows - counted[0])
                reporter.tick(table_progress, force=True)
                store.update_progress(slot_name, progress.as_dict())
            delivery.flush()
            delivery.tracker.confirmable()
            # Only now, with every row acknowledged by Kafka, is the snapshot complete.
            store.update_progress(slot_name, progress.as_dict())
            store.set_state(slot_name, "done")
            # Progress for the retry budget: a snapshot that failed restarts from scratch, so only its end counts.
            self._status.budget.progress()
            self._status.publish(snapshot={**progress.as_dict(), "state": "done"})
            total = sum(t.rows for t in progress.tables.values())
            log.info("snapshot complete: %d rows from %d tables", total, len(plans))
        finally:
            reporter.close()
            reader.close()


def produce_table_rows(
    rows: Iterable[Any],
    events: TableEvents,
    *,
    output: RecordOutput,
    tracker: AckTracker,
    point: int,
    ts_ms: int,
    final_marker: str,
    chunk: int,
    complete_markers: bool,
    progress: TableProgress,
    between_chunks: Callable[[], bool],
) -> bool:
    """Produce one table's rows read in a snapshot as `op = r` records at `point`, the last one marked `final_marker`,
    then (with `complete_markers`) the snapshot-complete marker on every partition.

    Records go out in acknowledgement slots of `chunk` rows that confirm no position; `between_chunks` runs after
    each full slot and returns True to stop, in which case the table is unfinished and False is returned.
    """
    produce = output.produce_events
    ack = tracker.open()
    in_slot = 0
    previous: Any = None
    for row in rows:
        if previous is not None:
            produce(events, (events.snapshot_row(previous, point, ts_ms, "true"),), ack)
            in_slot += 1
            progress.rows += 1
            if in_slot >= chunk:
                tracker.close(ack, 0)
                ack = tracker.open()
                in_slot = 0
                if between_chunks():
                    tracker.close(ack, 0)
                    return False
        previous = row
    if previous is not None:
        produce(events, (events.snapshot_row(previous, point, ts_ms, final_marker),), ack)
        progress.rows += 1
    if complete_markers:
        output.produce_everywhere(events.snapshot_complete(point), ack)
    tracker.close(ack, 0)
    return True

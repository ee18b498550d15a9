"""The sink's batch loop: consume, decode, apply, checkpoint, with the parts handed in.

Commit order of one batch (the only place it is written down):

1. Bad messages of the batch (`errors.tolerance: all`) are produced to the dead-letter topic and flushed
   (acknowledged by Kafka) first, so advancing past them can never lose them.
2. One destination transaction begins. Every change id of the batch goes into `cdc.applied_changes` with the
   destination table it is for; only the (change, table) pairs that were not there yet are applied (a
   redelivery, a replay, or the same change from another consumer group or cluster into the same table changes
   nothing; another pipeline into another table applies it there).
3. Row changes are applied per table in Kafka order per key: upsert for c/u/r, delete (hard or soft) for d,
   a guarded delete for t. A row is only written when the change's `(commit_lsn, lsn)` is greater than the one
   stored in the row.
4. `cdc.sink_offsets` advances to the last offset + 1 of every partition in the batch.
5. COMMIT. The batch is now applied exactly once, together with its position.
6. Then, for lag monitoring only, the offsets are committed to Kafka (asynchronously; losing this is harmless).

Steps 2-5 are `sinks.postgres.apply.Applier.apply`; this module sequences them with 1 and 6.

Resume: on partition assignment the consumer seeks to `cdc.sink_offsets` (else `auto_offset_reset`); Kafka's own
committed offsets are never read. A retriable destination error retries the whole batch from step 2 (the ledger
makes a retry after an unacknowledged commit harmless). A change the destination refuses for its data (poison,
as `core.errors.is_data_error` says) is found by applying the batch's changes one by one, dead-lettered (or stops
the sink with `errors.tolerance: none`), and the rest of the batch is applied; anything else is fatal.

Batches are applied one at a time, in order, on an applier thread while the next batch is consumed and decoded.
On a rebalance the batch in flight is finished (its transaction commits whole or not at all) and buffered messages
of revoked partitions are dropped unapplied (the new owner starts from the stored offset): no batch is ever
half-applied.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from confluent_kafka import Message

from core import metrics
from core.errors import ConnectorError, PoisonMessageError, data_error_message, is_data_error
from sinks.postgres.apply import ApplyResult
from sinks.postgres.changes import Change
from sinks.postgres.config import ErrorsConfig
from sinks.postgres.consumer import ChangeConsumer, PartitionProgress
from sinks.postgres.dead_letter import DeadLetter
from sinks.postgres.decoding import ChangeDecoder, DecodedBatch
from sinks.postgres.messages import Partition, coordinates, where
from sinks.postgres.retry import RetryPolicy, Stopped

log = logging.getLogger(__name__)


class Destination(Protocol):
    """What the loop needs of the destination (`sinks.postgres.destination.PostgresDestination`)."""

    def read_offsets(self, partitions: Sequence[Partition]) -> dict[Partition, int]: ...

    def apply(self, changes: Sequence[Change], offsets: Mapping[Partition, int]) -> ApplyResult: ...

    def isolate(self, changes: Sequence[Change]) -> list[tuple[Change, Exception]]: ...


class DeadLetters(Protocol):
    """Where bad messages go (`sinks.postgres.dead_letter.DeadLetterPublisher`); returns once Kafka acknowledged."""

    def publish(self, dead: Sequence[DeadLetter]) -> None: ...


@dataclass(frozen=True, slots=True)
class _InFlight:
    future: Future[ApplyResult | None]
    offsets: dict[Partition, int]
    started: float


class BatchLoop:
    """Runs the commit order above over the parts it is given, until `stop` is set.

    `after_db_commit` runs on the consuming thread right after a batch's destination commit (step 5) and before
    its Kafka commit (step 6): a fault point for tests (the sink's kill tests SIGKILL the process there).
    """

    def __init__(
        self,
        consumer: ChangeConsumer,
        decoder: ChangeDecoder,
        destination: Destination,
        dead_letters: DeadLetters,
        *,
        retry: RetryPolicy,
        errors: ErrorsConfig,
        progress: PartitionProgress,
        after_db_commit: Callable[[], None] | None = None,
    ) -> None:
        self._consumer = consumer
        self._decoder = decoder
        self._destination = destination
        self._dead_letters = dead_letters
        self._retry = retry
        self._errors = errors
        self._progress = progress
        self._after_db_commit = after_db_commit
        self._executor: ThreadPoolExecutor | None = None
        self._in_flight: _InFlight | None = None

    def run(self, stop: threading.Event) -> None:
        """Consume and apply until `stop` is set, then finish the batch in flight; on an error, let the batch in
        flight end (commit or not) and raise the error."""
        # Decoding (CPU in this process) overlaps the previous batch's apply (waiting on the database).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cdc-sink-apply")
        try:
            self._consumer.subscribe(self)
            while not stop.is_set():
                messages = self._consumer.next_batch(stop, on_poll=lambda: self._finish_in_flight(wait=False))
                if messages:
                    self._process(messages)
            self._finish_in_flight()
        finally:
            self._abandon_in_flight()

    # -- rebalances (`RebalanceListener`) -----------------------------------------------------------------

    def settle(self) -> None:
        self._finish_in_flight()

    def stored_offsets(self, partitions: Sequence[Partition]) -> dict[Partition, int]:
        return self._retry.call(lambda: self._destination.read_offsets(partitions), "reading offsets")

    # -- one batch ----------------------------------------------------------------------------------------

    def _process(self, messages: Sequence[Message]) -> None:
        """Decode this batch (while the previous one is being applied), then hand it to the applier thread."""
        started = time.monotonic()
        batch = self._decoder.decode_batch(messages)
        dead = [self._poison(message, error) for message, error in batch.failures]
        if dead:
            self._dead_letters.publish(dead)  # step 1
        # One transaction at a time, in batch order: the previous batch commits before this one starts.
        self._finish_in_flight()
        assert self._executor is not None
        future = self._executor.submit(self._apply, batch)
        self._in_flight = _InFlight(future, batch.offsets, started)

    def _apply(self, batch: DecodedBatch) -> ApplyResult | None:
        """Steps 2-5 (on the applier thread), retried as a whole; poison changes are dead-lettered and the rest
        applied. None: stopped while retrying, nothing committed."""
        changes = batch.changes
        while True:
            try:
                return self._retry.call(partial(self._destination.apply, changes, batch.offsets), "applying")
            except Stopped:
                return None
            except Exception as exc:
                if not is_data_error(exc):
                    raise
                failures = self._retry.call(partial(self._destination.isolate, changes), "isolating")
                if not failures:
                    raise
                by_position = {coordinates(m): m for m in batch.messages}
                dead = []
                for change, error in failures:
                    message = by_position[(change.topic, change.partition, change.offset)]
                    dead.append(self._poison(message, PoisonMessageError(data_error_message(error))))
                self._dead_letters.publish(dead)
                bad = {id(change) for change, _ in failures}
                changes = [c for c in changes if id(c) not in bad]

    def _poison(self, message: Message, exc: ConnectorError) -> DeadLetter:
        """Stop (tolerance none) or note the message for the dead-letter topic (tolerance all)."""
        at = where(message)
        if self._errors.log_payloads:
            log.error("poison message %s: %s; key=%r value=%r", at, exc, message.key(), message.value())
        if self._errors.tolerance == "none":
            raise PoisonMessageError(
                f"cannot apply message {at}: {exc.message}",
                hint="fix the producer or the destination, or set `sink.errors.tolerance: all` with a "
                "dead_letter_topic to skip such messages; the stored offsets were not advanced",
            ) from exc
        log.warning("message %s goes to the dead-letter topic: %s", at, exc.message)
        return DeadLetter(message, exc.message)

    def _finish_in_flight(self, *, wait: bool = True) -> None:
        """Wait for the batch being applied (raising its error), then commit its offsets to Kafka (step 6)."""
        in_flight = self._in_flight
        if in_flight is None or (not wait and not in_flight.future.done()):
            return
        self._in_flight = None
        result = in_flight.future.result()
        if result is None:
            return  # stopped while retrying: nothing committed, the stored offsets stand
        if self._after_db_commit is not None:
            self._after_db_commit()
        offsets, started = in_flight.offsets, in_flight.started
        self._progress.positions.update(offsets)
        self._consumer.commit(offsets)
        for (table, op), count in result.applied.items():
            metrics.SINK_APPLIED.labels(table=table, op=op).inc(count)
        if result.duplicates:
            metrics.SINK_DUPLICATES.inc(result.duplicates)
        if result.stale:
            metrics.SINK_STALE.inc(result.stale)
        metrics.SINK_BATCH_SECONDS.observe(time.monotonic() - started)

    def _abandon_in_flight(self) -> None:
        """On the way out after an error: let the batch in flight end (commit or not) without raising again."""
        if self._in_flight is not None:
            try:
                self._finish_in_flight()
            except Exception as exc:
                log.debug("batch in flight ended with %s", type(exc).__name__)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

"""The sink's consumer and batcher: subscription, rebalances, batches of messages, the informational Kafka commit.

Positions come from the destination, never from Kafka: on assignment each partition is sought to the offset the
listener reads from `cdc.sink_offsets` (else `auto_offset_reset`). Before partitions move, the listener finishes
the batch in flight; buffered messages of revoked partitions are dropped unapplied (the new owner starts from the
stored offset), so no batch is ever half-applied.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, Message, TopicPartition

from core.errors import Endpoints, FatalError, RetryBudget, classify, kafka_security_error
from core.kafka import KafkaConfig, kafka_settings
from core.kafka_listener import PlaintextToTlsCheck
from sinks.postgres.config import PostgresSinkConfig
from sinks.postgres.messages import Partition, coordinates, key_change_tail

log = logging.getLogger(__name__)

_HELD_REMEMBERED = 10_000


# librdkafka prefetches up to 100,000 messages per partition and 64 MiB of payload (plus its per-message
# overhead, several hundred bytes each), and a fetch response may be 50 MB: tens of MiB of resident memory on a
# backlog, for nothing, since one batch (`batch.max_records`) is all the applier takes at a time. These limits
# keep a few batches queued, so the fetcher stays ahead of the applier; `kafka.properties` and
# `sink.consumer_properties` override them.
PREFETCH_BATCHES = 4
PREFETCH_LIMITS: dict[str, int] = {
    "queued.max.messages.kbytes": 16_384,
    "fetch.max.bytes": 16_777_216,
}


def prefetch_limits(config: PostgresSinkConfig) -> dict[str, int]:
    return {**PREFETCH_LIMITS, "queued.min.messages": max(PREFETCH_BATCHES * config.batch.max_records, 10_000)}


def consumer_settings(config: PostgresSinkConfig, kafka: KafkaConfig, group_id: str) -> dict[str, Any]:
    """librdkafka settings of the sink's consumer: auto commit and offset store stay off whatever is configured."""
    settings: dict[str, Any] = {
        # New topics matching a regex subscription are found on metadata refresh; librdkafka's default is 5 min.
        "topic.metadata.refresh.interval.ms": 10_000,
        "max.poll.interval.ms": 600_000,
        **prefetch_limits(config),
    }
    settings.update(kafka_settings(kafka))
    settings.update(config.consumer_properties)
    settings.update(
        {
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": config.auto_offset_reset,
        }
    )
    return settings


def subscription_of(config: PostgresSinkConfig) -> list[str]:
    subscription = list(config.topics)
    if config.topics_regex:
        regex = config.topics_regex
        subscription.append(regex if regex.startswith("^") else f"^{regex}")
    return subscription


@dataclass(slots=True)
class PartitionProgress:
    """What the sink publishes for `status` and /readyz. Written by the consuming thread only (the log ends are
    replaced whole, never mutated), read from any thread."""

    assigned: set[Partition] = field(default_factory=set)
    positions: dict[Partition, int] = field(default_factory=dict)  # next offset stored in the destination
    log_end: dict[Partition, int] = field(default_factory=dict)
    ready: threading.Event = field(default_factory=threading.Event)


class RebalanceListener(Protocol):
    def settle(self) -> None:
        """Finish the batch in flight: its transaction commits whole or not at all before partitions move."""

    def stored_offsets(self, partitions: Sequence[Partition]) -> dict[Partition, int]:
        """The next offset to consume of each partition that has one stored in the destination."""


def _kafka_consumer(settings: dict[str, Any]) -> Consumer:
    return Consumer(settings, logger=log)


class ChangeConsumer:
    """Consumes the sink's topics in batches of at most `batch.max_records` messages, `batch.max_wait_ms` after
    the first. The consumer is created by `subscribe` and is used by the consuming thread only."""

    def __init__(
        self,
        config: PostgresSinkConfig,
        kafka: KafkaConfig,
        group_id: str,
        *,
        progress: PartitionProgress,
        budget: RetryBudget,
        endpoints: Endpoints,
        client: Callable[[dict[str, Any]], Consumer] = _kafka_consumer,
    ) -> None:
        self._config = config
        self._kafka = kafka
        self._group_id = group_id
        self._progress = progress
        self._budget = budget  # Kafka's own: the applying thread may be retrying the database meanwhile
        self._endpoints = endpoints
        self._client = client
        self._consumer: Consumer | None = None
        self._listener: RebalanceListener | None = None
        self._pending: list[Message] = []
        self._carry: list[Message] = []  # held back from the last batch (see `_key_change_tails`)
        self._held: set[tuple[str, int, int]] = set()
        self._log_end_at = 0.0
        self._kafka_suspect = False
        self._next_kafka_check = 0.0
        self._check_listener = PlaintextToTlsCheck({})  # replaced by the client's in `subscribe`
        self._settings: dict[str, Any] = {}

    def subscribe(self, listener: RebalanceListener) -> None:
        settings = {**consumer_settings(self._config, self._kafka, self._group_id), "error_cb": self._on_kafka_error}
        self._check_listener = PlaintextToTlsCheck(settings)
        self._settings = settings
        self._consumer = self._client(settings)
        self._listener = listener
        subscription = subscription_of(self._config)
        self._consumer.subscribe(
            subscription, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        log.info("sink consuming %s as group %s", ", ".join(subscription), self._group_id)

    # -- rebalances (called by the consumer within `consume`) ---------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assert self._listener is not None
        self._listener.settle()  # its offsets must be stored before they are read, and it holds the connection
        wanted = [(p.topic, p.partition) for p in partitions]
        stored = self._listener.stored_offsets(wanted)
        default = OFFSET_BEGINNING if self._config.auto_offset_reset == "earliest" else OFFSET_END
        for p in partitions:
            p.offset = stored.get((p.topic, p.partition), default)
            if (p.topic, p.partition) in stored:
                self._progress.positions[(p.topic, p.partition)] = stored[(p.topic, p.partition)]
        consumer.assign(partitions)
        self._progress.assigned.update(wanted)
        self._progress.ready.set()
        log.info("assigned %s", ", ".join(f"{p.topic}[{p.partition}]@{p.offset}" for p in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assert self._listener is not None
        # Finish the batch being applied (its transaction commits whole or not at all) ...
        self._listener.settle()
        revoked = {(p.topic, p.partition) for p in partitions}
        # ... and abandon buffered messages of revoked partitions: nothing of them is applied, so the next owner
        # starting at the stored offset sees a clean state.
        self._pending = [m for m in self._pending if (m.topic(), m.partition()) not in revoked]
        self._carry = [m for m in self._carry if (m.topic(), m.partition()) not in revoked]
        self._progress.assigned -= revoked
        for key in revoked:
            self._progress.positions.pop(key, None)
        log.info("revoked %d partitions", len(revoked))

    # -- batches ------------------------------------------------------------------------------------------

    def next_batch(self, stop: threading.Event, on_poll: Callable[[], None] = lambda: None) -> list[Message]:
        """The next batch (possibly empty when `stop` is set); `on_poll` runs before every poll of the consumer.

        A partition's trailing half of a key change is held back for the next batch (see `_key_change_tails`).
        """
        assert self._consumer is not None
        max_wait = self._config.batch.max_wait_ms / 1000
        deadline: float | None = None
        self._pending, self._carry = self._carry, []
        limit = self._config.batch.max_records + len(self._pending)  # held messages do not crowd out what follows
        while not stop.is_set() and len(self._pending) < limit:
            on_poll()
            # librdkafka's batch consume waits its whole timeout unless `num_messages` arrive: wait for the first
            # message alone, so a batch opens as soon as data is there and closes `max_wait_ms` later.
            if deadline is None:
                wanted, timeout = 1, 0.5
            else:
                wanted, timeout = limit - len(self._pending), max(0.0, deadline - time.monotonic())
            for message in self._consumer.consume(num_messages=wanted, timeout=timeout):
                error = message.error()
                if error is None:
                    self._pending.append(message)
                elif error.fatal():
                    raise FatalError(f"Kafka consumer failed: {error.str()}")
                elif error.code() not in (KafkaError._PARTITION_EOF,):
                    log.warning("Kafka consumer: %s", error.str())
            self._publish_log_end()
            if self._kafka_suspect and time.monotonic() >= self._next_kafka_check:
                self._check_kafka()
            if self._pending and deadline is None:
                deadline = time.monotonic() + max_wait
            if deadline is not None and time.monotonic() >= deadline:
                break
        messages, self._pending = self._pending, []
        held = self._key_change_tails(messages)
        if not held:
            return messages
        self._carry = [messages[i] for i in sorted(held)]
        return [m for i, m in enumerate(messages) if i not in held]

    def _key_change_tails(self, messages: Sequence[Message]) -> set[int]:
        """Indexes of messages that end a partition's part of the batch with the delete (and its tombstone) of
        an update that changed the key, whose create follows in the log: held back once, so the pair is applied
        in one transaction and the create can take the unchanged TOASTed values from the old row."""
        offsets: dict[Partition, int] = {}
        last: dict[Partition, int] = {}
        for index, message in enumerate(messages):
            topic, partition, offset = coordinates(message)
            if offsets.get((topic, partition), 0) <= offset:
                offsets[(topic, partition)] = offset + 1
                last[(topic, partition)] = index
        held: set[int] = set()
        for where, index in last.items():
            tail = key_change_tail(messages, where, index)
            found = [coordinates(messages[i]) for i in tail]
            if not tail or any(c in self._held for c in found):
                continue  # nothing to hold, or held once already: its create is not coming to this partition
            if len(self._held) > _HELD_REMEMBERED:
                self._held.clear()
            self._held.update(found)
            held.update(tail)
        return held

    def commit(self, offsets: dict[Partition, int]) -> None:
        """Commit `offsets` of the partitions still assigned to Kafka, asynchronously: for lag monitoring only."""
        assert self._consumer is not None
        mine = [TopicPartition(t, p, o) for (t, p), o in offsets.items() if (t, p) in self._progress.assigned]
        if not mine:
            return
        try:
            self._consumer.commit(offsets=mine, asynchronous=True)
        except Exception as exc:  # informational only
            log.debug("Kafka offset commit failed: %s", exc)

    def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                consumer.close()
            except Exception as exc:
                log.debug("closing the consumer: %s", exc)

    # -- Kafka's health -----------------------------------------------------------------------------------

    def _publish_log_end(self) -> None:
        """Note each assigned partition's log end from the consumer's cache (updated by every fetch) for `status`."""
        assert self._consumer is not None
        now = time.monotonic()
        if now - self._log_end_at < 1.0:
            return
        self._log_end_at = now
        ends: dict[Partition, int] = {}
        for topic, partition in list(self._progress.assigned):
            try:
                watermarks = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            except Exception as exc:  # informational: a partition without a cached log end shows none
                log.debug("no cached log end of %s[%d]: %s", topic, partition, exc)
                continue
            if watermarks is not None and watermarks[1] >= 0:
                ends[(topic, partition)] = watermarks[1]
        self._progress.log_end = ends

    def _on_kafka_error(self, error: KafkaError) -> None:
        """librdkafka's client-level errors (called from `consume`, on the consuming thread). The consumer
        reconnects by itself; whether Kafka is really gone is for `_check_kafka` to find out. Refused credentials
        or a failed TLS handshake are not worth waiting for: they end the sink."""
        security = kafka_security_error(error, self._settings) or self._check_listener(error)
        if security is not None:
            raise security
        if error.code() in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE):
            self._kafka_suspect = True

    def _check_kafka(self) -> None:
        """Ask the cluster for metadata: red /healthz and, past the retry budget, a fatal error while it cannot
        answer; back to healthy once it does (an idle connection the broker closed reconnects at once)."""
        assert self._consumer is not None
        self._next_kafka_check = time.monotonic() + 5
        try:
            self._consumer.list_topics(timeout=self._kafka.request_timeout_s)
        except KafkaException as exc:
            error = classify(exc, self._endpoints)
            if self._budget.failed(error):
                raise self._budget.exhausted(error) from exc
            log.warning("sink: %s; the consumer keeps reconnecting", error)
            return
        self._kafka_suspect = False
        self._budget.progress()

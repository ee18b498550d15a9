"""Producing records to Kafka and knowing, per source transaction, when Kafka has all of them.

The commit order of the source side, written down once:

1. a transaction's records are produced as its changes arrive (nothing is buffered per transaction but counts);
2. Kafka acknowledges each record (idempotent producer, `acks=all`); a failed delivery freezes everything;
3. once every record of a transaction *and of every transaction before it* is acknowledged, the transaction's
   end position becomes confirmable, and only then does the source advance the slot's confirmed flush LSN.

`AckTracker` is the pure bookkeeping of steps 2-3; `KafkaDelivery` owns the producer, topic creation and
schema-registry ids (one registration per distinct schema, cached).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from core.errors import DeliveryError, FatalError, RetriableError, kafka_security_error
from core.kafka_listener import PlaintextToTlsCheck
from core.logs import KAFKA_LOGGER
from core.records import AvroSchema, Record

log = logging.getLogger(__name__)

_PRODUCER_DEFAULTS: dict[str, str | int | float | bool] = {
    "enable.idempotence": True,
    "acks": "all",
    "compression.type": "lz4",
    "linger.ms": 10,
    "batch.size": 1_000_000,
    "batch.num.messages": 10_000,
    # The local queue bounds the source's memory: when it is full, reading WAL waits for acknowledgements.
    "queue.buffering.max.messages": 200_000,
    "queue.buffering.max.kbytes": 64 * 1024,
    "message.max.bytes": 8 * 1024 * 1024,
    # librdkafka skips a message whose delivery timed out "as if it never existed": we stop instead (see
    # DeliveryError), so a long timeout only delays that stop while brokers recover.
    "delivery.timeout.ms": 120_000,
}


class TxSlot:
    """Bookkeeping for one source transaction (or snapshot chunk): records in flight and its position."""

    __slots__ = ("_tracker", "closed", "pending", "position")

    def __init__(self, tracker: AckTracker) -> None:
        self._tracker = tracker
        self.pending = 0
        self.closed = False
        self.position = 0

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        """librdkafka delivery callback (runs inside `poll`/`flush` on the producing thread)."""
        if err is not None:
            self._tracker.fail(err, msg)
        self.pending -= 1


class AckTracker:
    """Which source position is fully acknowledged by Kafka.

    Slots are opened in source order; `confirmable()` pops the acknowledged prefix and returns the position of
    its newest closed slot. A delivery failure is sticky: after it, `confirmable()` raises and nothing advances.
    """

    def __init__(self) -> None:
        self._slots: deque[TxSlot] = deque()
        self._error: DeliveryError | None = None
        self._confirmed = 0

    def open(self) -> TxSlot:
        slot = TxSlot(self)
        self._slots.append(slot)
        return slot

    @staticmethod
    def close(slot: TxSlot, position: int) -> None:
        """The slot will get no more records; `position` is confirmable once they are all acknowledged."""
        slot.position = position
        slot.closed = True

    def fail(self, err: KafkaError, msg: Message | None) -> None:
        if self._error is None:
            where = f" to {msg.topic()}" if msg is not None and msg.topic() else ""
            self._error = DeliveryError(
                f"Kafka did not acknowledge a record{where}: {err.str()}",
                hint="the source stopped without advancing the slot; fix Kafka and restart (changes are re-sent)",
            )

    @property
    def error(self) -> DeliveryError | None:
        return self._error

    @property
    def in_flight(self) -> int:
        return sum(slot.pending for slot in self._slots)

    @property
    def open_slots(self) -> int:
        return len(self._slots)

    def confirmable(self) -> int:
        """The highest position below which everything is acknowledged (0 when none yet)."""
        if self._error is not None:
            raise self._error
        slots = self._slots
        while slots and slots[0].closed and slots[0].pending == 0:
            self._confirmed = max(self._confirmed, slots.popleft().position)
        return self._confirmed


class Serializer(Protocol):
    """Encodes keys and values (Confluent wire format), registering their schemas as needed."""

    def __call__(self, topic: str, schema: AvroSchema, value: Any, is_key: bool) -> bytes: ...

    def close(self) -> None: ...


def create_missing_topics(
    admin: AdminClient, topics: Iterable[str], *, partitions: int, replication: int, timeout_s: float = 10.0
) -> None:
    """Create those of `topics` the cluster lacks (never relying on the broker's auto-creation); each request to
    the brokers may take `timeout_s`."""
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    missing = [t for t in dict.fromkeys(topics) if t not in existing]
    if not missing:
        return
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=replication) for t in missing],
        operation_timeout=timeout_s,
        request_timeout=timeout_s,
    )
    for topic, future in futures.items():
        try:
            future.result()
            log.info("created topic %s (%d partitions)", topic, partitions)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise RetriableError(f"could not create topic {topic}: {exc}") from exc


class KafkaDelivery:
    """The source's producer: topics created on first use, records encoded and produced, acks tracked."""

    def __init__(
        self,
        bootstrap_servers: str,
        properties: dict[str, str | int | float | bool],
        *,
        serializer: Serializer,
        topic_partitions: int = 1,
        topic_replication_factor: int = 1,
        client_id: str = "cdc-source",
        request_timeout_s: float = 10.0,
    ) -> None:
        conf: dict[str, Any] = {**_PRODUCER_DEFAULTS, **properties}
        conf["bootstrap.servers"] = bootstrap_servers
        conf.setdefault("client.id", client_id)
        # Idempotence and acks=all are what the at-least-once contract rests on: never overridable.
        conf["enable.idempotence"] = True
        conf["acks"] = "all"
        conf["error_cb"] = self._on_error
        self._admin_conf = {
            k: v for k, v in conf.items() if k.startswith(("bootstrap.", "security.", "sasl.", "ssl.", "client.id"))
        }
        self._producer = Producer(conf, logger=logging.getLogger(KAFKA_LOGGER))
        self._admin: AdminClient | None = None
        self._serializer = serializer
        self._partitions = topic_partitions
        self._replication = topic_replication_factor
        self._request_timeout_s = request_timeout_s
        self._topics: set[str] = set()
        self._fatal: KafkaError | None = None
        self._misconfigured: FatalError | None = None
        self._check_listener = PlaintextToTlsCheck(conf)
        self.tracker = AckTracker()
        self._since_poll = 0
        self._lock = threading.Lock()

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal() or kafka_security_error(err) is not None:
            self._fatal = err
        elif self._misconfigured is None:
            self._misconfigured = self._check_listener(err)
        log.warning("kafka: %s", err.str())

    def _raise_fatal(self) -> None:
        if self._misconfigured is not None:
            raise self._misconfigured
        if self._fatal is None:
            return
        security = kafka_security_error(self._fatal, self._admin_conf)
        if security is not None:
            raise security
        raise DeliveryError(f"Kafka producer failed: {self._fatal.str()}", hint="check the brokers and restart")

    def ensure_topics(self, topics: Iterable[str]) -> None:
        """Create missing topics with the configured partitions and replication factor."""
        wanted = [t for t in topics if t not in self._topics]
        if not wanted:
            return
        if self._admin is None:
            self._admin = AdminClient(self._admin_conf, logger=logging.getLogger(KAFKA_LOGGER))
        try:
            create_missing_topics(
                self._admin,
                wanted,
                partitions=self._partitions,
                replication=self._replication,
                timeout_s=self._request_timeout_s,
            )
        except RetriableError:
            # The admin client says only "transport failure"; the producer's error callback says why (credentials,
            # TLS), and such a cause is not worth retrying.
            self._producer.poll(0)
            self._raise_fatal()
            raise
        self._topics.update(wanted)

    @property
    def schema_ids(self) -> Callable[[str, AvroSchema, bool], int] | None:
        """The serializer's `schema_id(topic, schema, is_key)`, if it has one: for callers that encode themselves."""
        return getattr(self._serializer, "schema_id", None)

    def partitions(self, topic: str) -> int:
        """How many partitions `topic` has (created first if missing)."""
        if topic not in self._topics:
            self.ensure_topics([topic])
        try:
            metadata = self._producer.list_topics(topic, timeout=self._request_timeout_s).topics.get(topic)
        except KafkaException as exc:
            raise RetriableError(f"cannot read the partitions of topic {topic}: {exc}") from exc
        if metadata is None or metadata.error is not None or not metadata.partitions:
            raise RetriableError(f"cannot read the partitions of topic {topic}: {metadata and metadata.error}")
        return len(metadata.partitions)

    def produce(self, record: Record, slot: TxSlot, *, partition: int | None = None) -> None:
        """Encode and produce one record (to `partition`, else the key's); its acknowledgement counts towards `slot`."""
        self._raise_fatal()
        topic = record.topic
        key = (
            None
            if record.key is None or record.key_schema is None
            else self._serializer(topic, record.key_schema, record.key, True)
        )
        value = (
            None
            if record.value is None or record.value_schema is None
            else self._serializer(topic, record.value_schema, record.value, False)
        )
        self.produce_raw(topic, key, value, record.headers, slot, partition=partition)

    def produce_raw(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Iterable[tuple[str, bytes]],
        slot: TxSlot,
        *,
        partition: int | None = None,
    ) -> None:
        if topic not in self._topics:
            self.ensure_topics([topic])
        producer = self._producer
        slot.pending += 1
        header_list: list[Any] = headers if type(headers) is list else list(headers)
        on_delivery = slot.on_delivery
        while True:
            try:
                if partition is None:
                    producer.produce(topic, value, key, headers=header_list, on_delivery=on_delivery)
                else:
                    producer.produce(
                        topic, value, key, partition=partition, headers=header_list, on_delivery=on_delivery
                    )
                break
            except BufferError:
                # Local queue full: serve delivery reports until there is room (backpressure to the WAL reader).
                producer.poll(0.05)
            except KafkaException as exc:
                slot.pending -= 1
                raise DeliveryError(f"could not produce to {topic}: {exc}", hint="check the brokers") from exc
        self._since_poll += 1
        if self._since_poll >= 1000:
            self._since_poll = 0
            producer.poll(0)

    def poll(self, timeout: float = 0.0) -> None:
        self._producer.poll(timeout)

    def flush(self, timeout: float = 60.0) -> None:
        """Wait for every produced record's acknowledgement; raise if Kafka refused any."""
        remaining = self._producer.flush(timeout)
        if self.tracker.error is not None:
            raise self.tracker.error
        if remaining:
            raise DeliveryError(
                f"{remaining} records still unacknowledged after {timeout:.0f}s",
                hint="Kafka is unreachable or slow; the slot was not advanced past them",
            )

    def close(self) -> None:
        """Release the producer without waiting (a clean stop calls `flush` first) and the serializer."""
        self._producer.poll(0)
        self._serializer.close()

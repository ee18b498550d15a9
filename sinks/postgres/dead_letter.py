"""The dead-letter topic: messages the sink cannot apply (`errors.tolerance: all`), with why and where they came from.

A dead letter keeps the message's key, value and headers and adds `cdc.error` and its source coordinates.
`publish` returns only once Kafka acknowledged every message, so advancing the stored offsets past them can
never lose one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient

from core import metrics
from core.delivery import create_missing_topics
from core.errors import DeliveryError
from core.kafka import KafkaConfig, kafka_settings
from sinks.postgres.config import ErrorsConfig
from sinks.postgres.messages import coordinates, headers_of
from sinks.postgres.retry import RetryPolicy

log = logging.getLogger(__name__)

ERROR_HEADER = "cdc.error"
SOURCE_TOPIC_HEADER = "cdc.source.topic"
SOURCE_PARTITION_HEADER = "cdc.source.partition"
SOURCE_OFFSET_HEADER = "cdc.source.offset"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    message: Message
    error: str


class DeadLetterPublisher:
    """Produces dead letters to `errors.dead_letter_topic` (idempotent, acks=all); the producer is made on first use.

    Thread-safe: the decoding and the applying thread may both publish.
    """

    def __init__(
        self,
        errors: ErrorsConfig,
        kafka: KafkaConfig,
        *,
        producer: Callable[[dict[str, Any]], Producer] = lambda settings: Producer(settings, logger=log),
    ) -> None:
        self._errors = errors
        self._kafka = kafka
        self._make_producer = producer
        self._producer: Producer | None = None
        self._lock = threading.Lock()

    def publish(self, dead: Sequence[DeadLetter]) -> None:
        topic = self._errors.dead_letter_topic
        assert topic is not None
        with self._lock:
            if self._producer is None:
                self._producer = self._make_producer(
                    {**kafka_settings(self._kafka), "enable.idempotence": True, "acks": "all"}
                )
            producer = self._producer
        failures: list[str] = []

        def delivered(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                failures.append(error.str())

        for item in dead:
            message = item.message
            source_topic, partition, offset = coordinates(message)
            headers: list[Any] = [
                *headers_of(message),
                (ERROR_HEADER, item.error.encode()),
                (SOURCE_TOPIC_HEADER, source_topic.encode()),
                (SOURCE_PARTITION_HEADER, str(partition).encode()),
                (SOURCE_OFFSET_HEADER, str(offset).encode()),
            ]
            producer.produce(topic, value=message.value(), key=message.key(), headers=headers, on_delivery=delivered)
            producer.poll(0)
            metrics.SINK_DEAD_LETTERS.labels(topic=source_topic).inc()
        remaining = producer.flush(60)
        if remaining or failures:
            raise DeliveryError(
                f"dead-letter topic {topic} did not acknowledge {remaining or len(failures)} messages"
                + (f": {failures[0]}" if failures else ""),
                hint="check the topic exists and accepts messages of that size; the stored offsets were not advanced",
            )

    def close(self) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            producer.flush(10)


def create_dead_letter_topic(
    errors: ErrorsConfig, kafka: KafkaConfig, admin_settings: dict[str, Any], retry: RetryPolicy
) -> None:
    """Create the dead-letter topic at start (as `cdc validate` promises), not on the first bad message."""
    topic = errors.dead_letter_topic
    if errors.tolerance != "all" or topic is None:
        return
    admin = AdminClient(admin_settings, logger=log)
    retry.call(
        lambda: create_missing_topics(
            admin,
            [topic],
            partitions=kafka.topic_partitions,
            replication=kafka.topic_replication_factor,
            timeout_s=kafka.request_timeout_s,
        ),
        f"creating the dead-letter topic {topic}",
    )

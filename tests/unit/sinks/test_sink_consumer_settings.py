"""The sink consumer's librdkafka settings: bounded prefetch by default, the user's properties over it, and the
offset settings the exactly-once design relies on whatever the user sets."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import Consumer

from core.kafka import KafkaConfig
from sinks.postgres.config import PostgresSinkConfig
from sinks.postgres.consumer import PREFETCH_BATCHES, PREFETCH_LIMITS, consumer_settings

pytestmark = pytest.mark.unit


def settings(kafka: dict[str, Any] | None = None, **sink: Any) -> dict[str, Any]:
    config = PostgresSinkConfig.model_validate({"dsn": "postgresql://x", "topics": ["p.s.t"], **sink})
    return consumer_settings(config, KafkaConfig(bootstrap_servers="kafka:9092", **(kafka or {})), "g")


def test_prefetch_is_bounded_by_default_well_below_librdkafkas_defaults() -> None:
    chosen = settings()
    assert chosen["queued.max.messages.kbytes"] == PREFETCH_LIMITS["queued.max.messages.kbytes"] <= 16 * 1024
    assert chosen["fetch.max.bytes"] == PREFETCH_LIMITS["fetch.max.bytes"] <= 16 * 1024 * 1024
    assert chosen["queued.min.messages"] == 20_000  # four batches of the default 5,000, not librdkafka's 100,000


def test_the_queue_follows_the_batch_size_with_a_floor() -> None:
    assert settings(batch={"max_records": 20_000})["queued.min.messages"] == PREFETCH_BATCHES * 20_000
    assert settings(batch={"max_records": 100})["queued.min.messages"] == 10_000


def test_librdkafka_accepts_the_defaults() -> None:
    # The constructor validates the configuration (e.g. fetch.max.bytes against message.max.bytes) without a broker.
    consumer = Consumer(settings())
    consumer.close()


def test_kafka_properties_and_consumer_properties_override_the_limits_in_that_order() -> None:
    big = {"queued.max.messages.kbytes": 65_536, "fetch.max.bytes": 52_428_800}
    assert settings(kafka={"properties": big})["queued.max.messages.kbytes"] == 65_536
    chosen = settings(kafka={"properties": big}, consumer_properties={"queued.max.messages.kbytes": 4_096})
    assert chosen["queued.max.messages.kbytes"] == 4_096
    assert chosen["fetch.max.bytes"] == 52_428_800


def test_offset_settings_stay_whatever_the_user_sets() -> None:
    chosen = settings(consumer_properties={"enable.auto.commit": True, "enable.auto.offset.store": True})
    assert chosen["enable.auto.commit"] is False
    assert chosen["enable.auto.offset.store"] is False
    assert chosen["group.id"] == "g"

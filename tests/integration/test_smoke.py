"""The stack answers as the connector needs it, checked with the connector's own parts.

The source database passes the source's prerequisites; records produced by `KafkaDelivery` (schemas registered
through `SchemaRegistry`, encoded by `Encoder`) are confirmable only once Kafka acknowledged them, and read back
identically by our `Decoder` and by an independent client (kafka-python, Confluent framing decoded by hand).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterator
from typing import Any

import fastavro
import pytest
from kafka import KafkaConsumer, TopicPartition

from core.delivery import KafkaDelivery
from core.records import AvroSchema, Record
from schemas.registry import SchemaRegistry, SchemaRegistryConfig
from schemas.serde import Decoder, Encoder
from sources.postgres.config import PostgresSourceConfig
from sources.postgres.prerequisites import check_server
from tests.support import Stack, pg_connect

pytestmark = pytest.mark.integration

KEY = AvroSchema.of({"type": "record", "name": "SmokeKey", "namespace": "io.cdcconnector.test",
                     "fields": [{"name": "id", "type": "long"}]})  # fmt: skip
VALUE = AvroSchema.of(
    {
        "type": "record",
        "name": "SmokeValue",
        "namespace": "io.cdcconnector.test",
        "fields": [
            {"name": "id", "type": "long"},
            {"name": "name", "type": "string"},
            {"name": "note", "type": ["null", "string"], "default": None},
        ],
    }
)
ROWS = [
    {"id": 1, "name": "alpha", "note": None},
    {"id": 2, "name": "beta", "note": "second"},
    {"id": 3, "name": "gamma", "note": "ünïcode"},
]


class _RegistrySerializer:
    """`core.delivery.Serializer` over the registry client and encoder (subjects `{topic}-key|value`)."""

    def __init__(self, registry: SchemaRegistry) -> None:
        self.registry = registry
        self.encoder = Encoder()
        self.ids: dict[str, int] = {}

    def __call__(self, topic: str, schema: AvroSchema, value: Any, is_key: bool) -> bytes:
        subject = f"{topic}-{'key' if is_key else 'value'}"
        self.ids[subject] = self.registry.register(subject, schema)
        return self.encoder.encode(self.ids[subject], schema, value)

    def close(self) -> None:
        self.registry.close()


@pytest.fixture
def registry(stack: Stack) -> Iterator[SchemaRegistry]:
    with SchemaRegistry(SchemaRegistryConfig(url=stack.registry_url)) as client:
        yield client


def test_source_database_passes_the_source_prerequisites(stack: Stack, unique_name: Callable[[str], str]) -> None:
    config = PostgresSourceConfig.model_validate(
        {"dsn": stack.source_dsn, "topic_prefix": "smoke", "slot": {"name": unique_name("smoke")},
         "publication": {"name": unique_name("smoke")}}
    )  # fmt: skip
    with pg_connect(stack.source_dsn) as conn:
        assert [str(p) for p in check_server(conn, config)] == []


def test_delivered_records_are_confirmable_and_read_back_identically(
    stack: Stack, registry: SchemaRegistry, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("smoke")
    serializer = _RegistrySerializer(SchemaRegistry(SchemaRegistryConfig(url=stack.registry_url)))
    delivery = KafkaDelivery(stack.kafka_bootstrap, {}, serializer=serializer, client_id="cdc-smoke")
    try:
        first, second = delivery.tracker.open(), delivery.tracker.open()
        for row, slot in zip(ROWS, (first, first, second), strict=True):
            delivery.produce(Record(topic, {"id": row["id"]}, row, KEY, VALUE), slot)
        delivery.tracker.close(first, 100)
        delivery.tracker.close(second, 200)
        delivery.flush(30)
        # Both transactions acknowledged: the newer one's position is what the slot may confirm.
        assert delivery.tracker.confirmable() == 200
        assert delivery.tracker.in_flight == 0
    finally:
        delivery.close()

    consumer = KafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=20_000)  # fmt: skip
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        messages = []
        for message in consumer:
            messages.append(message)
            if len(messages) == len(ROWS):
                break
    finally:
        consumer.close()
    assert len(messages) == len(ROWS)

    decoder = Decoder(registry)
    assert [decoder.decode(m.value)[0] for m in messages] == ROWS
    assert [decoder.decode(m.key)[0] for m in messages] == [{"id": r["id"]} for r in ROWS]
    value_id = serializer.ids[f"{topic}-value"]
    assert [_by_hand(m.value, value_id) for m in messages] == ROWS


def _by_hand(data: bytes, expected_id: int) -> Any:
    """Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro binary body."""
    magic, schema_id = struct.unpack(">bI", data[:5])
    assert (magic, schema_id) == (0, expected_id)
    return fastavro.schemaless_reader(io.BytesIO(data[5:]), fastavro.parse_schema(VALUE.definition), None)

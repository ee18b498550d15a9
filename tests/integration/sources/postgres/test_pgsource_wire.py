"""What the source produces decodes with third-party readers: confluent-kafka's AvroDeserializer, and
kafka-python + fastavro reading the Confluent framing by hand (with the producer's default lz4 compression)."""

from __future__ import annotations

import io
import json
import struct
import urllib.request

import fastavro
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from kafka import KafkaConsumer, TopicPartition
from pgsource_support import SourceEnv

pytestmark = pytest.mark.integration


def test_events_decode_with_independent_readers(source_env: SourceEnv) -> None:
    env = source_env
    table = env.table("wire", "CREATE TABLE {t} (id bigint PRIMARY KEY, name text, price numeric(8,2), doc jsonb)")
    with env.running(snapshot={"mode": "never"}) as source:
        source.wait_ready()
        env.sql(f"""INSERT INTO {table} VALUES (1, 'ünï', 9.99, '{{"a": 1}}')""")
        env.read(env.topic(table), min_count=1)
    topic = env.topic(table)
    consumer = KafkaConsumer(bootstrap_servers=env.stack.kafka_bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=10_000)  # fmt: skip
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        message = next(iter(consumer))
    finally:
        consumer.close()

    # By hand: magic byte 0, big-endian schema id, Avro body.
    magic, schema_id = struct.unpack(">bI", message.value[:5])
    assert magic == 0
    with urllib.request.urlopen(f"{env.stack.registry_url}/schemas/ids/{schema_id}", timeout=10) as response:
        schema = fastavro.parse_schema(json.loads(json.loads(response.read())["schema"]))
    value = fastavro.schemaless_reader(io.BytesIO(message.value[5:]), schema, None)
    assert value["op"] == "c" and value["after"]["name"] == "ünï" and value["after"]["id"] == 1
    assert str(value["after"]["price"]) == "9.99"
    assert dict(message.headers)["change_id"].decode() == str(value["change_id"])

    # confluent-kafka's deserializer, schema fetched by id from the registry.
    client = SchemaRegistryClient({"url": env.stack.registry_url})
    try:
        deserializer = AvroDeserializer(client)
        decoded = deserializer(message.value, SerializationContext(topic, MessageField.VALUE))
        key = deserializer(message.key, SerializationContext(topic, MessageField.KEY))
    finally:
        client.close()
    assert str(decoded["change_id"]) == str(value["change_id"]) and decoded["after"]["name"] == "ünï"
    assert key == {"id": 1}

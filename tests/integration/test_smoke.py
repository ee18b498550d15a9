"""The stack answers as the connector needs it: SQL on both databases, Avro through Kafka and the registry.

Each path is checked with two independent clients (psycopg and pg8000; confluent-kafka and kafka-python
with the Confluent wire format decoded by hand), so a fault in one client library cannot hide a broken stack.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable, Iterator
from typing import Any

import fastavro
import pg8000.native
import pytest
from confluent_kafka import DeserializingConsumer, SerializingProducer
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import StringDeserializer, StringSerializer
from kafka import KafkaConsumer
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from tests.support import Stack, consume_all, pg_connect

pytestmark = pytest.mark.integration

SCHEMA = {
    "type": "record",
    "name": "SmokeValue",
    "namespace": "io.cdcconnector.test",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "name", "type": "string"},
        {"name": "note", "type": ["null", "string"], "default": None},
    ],
}
ROWS = [
    {"id": 1, "name": "alpha", "note": None},
    {"id": 2, "name": "beta", "note": "second"},
    {"id": 3, "name": "gamma", "note": "ünïcode"},
]


def pg8000_connect(dsn: str) -> pg8000.native.Connection:
    params = conninfo_to_dict(dsn)
    return pg8000.native.Connection(
        user=str(params.get("user", "postgres")),
        host=str(params.get("host", "127.0.0.1")),
        port=int(params.get("port", 5432)),
        database=str(params["dbname"]),
        password=str(params["password"]) if params.get("password") else None,
    )


@pytest.mark.parametrize("which", ["source", "target"])
def test_sql_round_trip_on_both_databases(stack: Stack, unique_name: Callable[[str], str], which: str) -> None:
    dsn = stack.source_dsn if which == "source" else stack.target_dsn
    table = unique_name("smoke")
    with pg_connect(dsn) as conn:
        row = conn.execute("select current_database()").fetchone()
        assert row is not None and row[0] == conninfo_to_dict(dsn)["dbname"]
        conn.execute(sql.SQL("create table {} (id int primary key, name text not null)").format(sql.Identifier(table)))
        conn.execute(sql.SQL("insert into {} values (1, 'one'), (2, 'two')").format(sql.Identifier(table)))
    try:
        # pg8000 reads what psycopg wrote: both clients, same server, same data.
        other = pg8000_connect(dsn)
        try:
            rows = other.run(f"select id, name from {pg8000.native.identifier(table)} order by id")
        finally:
            other.close()
        assert [tuple(r) for r in rows] == [(1, "one"), (2, "two")]
    finally:
        with pg_connect(dsn) as conn:
            conn.execute(sql.SQL("drop table {}").format(sql.Identifier(table)))


def test_source_database_is_ready_for_logical_replication(stack: Stack) -> None:
    with pg_connect(stack.source_dsn) as conn:
        row = conn.execute(
            "select current_setting('wal_level'), current_setting('max_replication_slots')::int"
        ).fetchone()
    assert row is not None
    assert row[0] == "logical"
    assert row[1] >= 4


def _create_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)]).values():
        future.result(timeout=30)


@pytest.fixture
def registry(stack: Stack) -> Iterator[SchemaRegistryClient]:
    with SchemaRegistryClient({"url": stack.registry_url}) as client:
        yield client


def test_avro_through_kafka_and_registry_with_two_clients(
    stack: Stack, registry: SchemaRegistryClient, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("smoke")
    subject = f"{topic}-value"
    schema_text = json.dumps(SCHEMA)
    schema_id = registry.register_schema(subject, Schema(schema_text, "AVRO"))
    assert registry.get_latest_version(subject).schema_id == schema_id
    _create_topic(stack.kafka_bootstrap, topic)

    producer = SerializingProducer(
        {
            "bootstrap.servers": stack.kafka_bootstrap,
            "key.serializer": StringSerializer("utf_8"),
            "value.serializer": AvroSerializer(registry, schema_text, conf={"auto.register.schemas": False}),
            "enable.idempotence": True,
        }
    )
    for row in ROWS:
        producer.produce(topic, key=str(row["id"]), value=row)
    assert producer.flush(30) == 0

    # 1. confluent-kafka's deserializer, schema fetched from the registry by id.
    consumer = DeserializingConsumer(
        {
            "bootstrap.servers": stack.kafka_bootstrap,
            "group.id": unique_name("smoke_group"),
            "auto.offset.reset": "earliest",
            "key.deserializer": StringDeserializer("utf_8"),
            "value.deserializer": AvroDeserializer(registry),
        }
    )
    decoded: list[tuple[str, Any]] = []
    try:
        consumer.subscribe([topic])
        for _ in range(300):
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                decoded.append((msg.key(), msg.value()))
            if len(decoded) == len(ROWS):
                break
    finally:
        consumer.close()
    assert decoded == [(str(r["id"]), r) for r in ROWS]

    # 2. The same bytes through confluent-kafka's plain consumer helper: the wire format by hand.
    raw = [msg.value() for msg in consume_all(stack.kafka_bootstrap, topic, min_count=len(ROWS))]
    assert [decode_wire(value, schema_id) for value in raw] == ROWS

    # 3. kafka-python, an independent client implementation.
    other = KafkaConsumer(
        topic,
        bootstrap_servers=stack.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=20_000,
    )
    try:
        values: list[bytes] = []
        for record in other:
            values.append(record.value)
            if len(values) == len(ROWS):
                break
    finally:
        other.close()
    assert [decode_wire(value, schema_id) for value in values] == ROWS


def decode_wire(value: bytes | None, expected_id: int) -> Any:
    """Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro binary body."""
    assert value is not None and len(value) > 5
    magic, schema_id = struct.unpack(">bI", value[:5])
    assert magic == 0
    assert schema_id == expected_id
    return fastavro.schemaless_reader(io.BytesIO(value[5:]), fastavro.parse_schema(SCHEMA), None)

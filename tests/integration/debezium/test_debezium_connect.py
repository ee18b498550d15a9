"""Debezium's PostgreSQL connector on a real Kafka Connect worker, read back by our own decoder.

The foundation of the compatibility tests: the worker starts from Maven Central's jars, Apicurio's Avro converter
registers through our registry, and every record Debezium writes (snapshot, update, delete, tombstone) decodes
with `schemas.serde.Decoder` over the Confluent-compatible API into the source's rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from psycopg import sql

from devstack.connect import ConnectWorker, drop_slot_and_publication, postgres_source_settings
from schemas.registry import SchemaRegistry, SchemaRegistryConfig
from schemas.serde import Decoder
from tests.integration.debezium.conftest import StartWorker
from tests.support.helpers import consume_all, pg_connect, scratch_schema
from tests.support.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROWS = [(1, "one", 10), (2, "two", 20), (3, "three", 30)]


def _row(values: tuple[int, str, int]) -> dict[str, Any]:
    return dict(zip(("id", "name", "qty"), values, strict=True))


def test_debezium_postgres_records_decode_with_our_decoder(
    stack: Stack, unique_name: Callable[[str], str], connect_worker: StartWorker
) -> None:
    schema, prefix = unique_name("dbz"), unique_name("dbz")
    slot, publication = unique_name("dbz_slot"), unique_name("dbz_pub")
    topic = f"{prefix}.{schema}.items"
    table = sql.Identifier(schema, "items")
    with pg_connect(stack.source_dsn) as conn, scratch_schema(conn, schema):
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, name text NOT NULL, qty int)").format(table))
        # Full old rows in updates and deletes, so `before` is the whole row.
        conn.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(table))
        for row in ROWS:
            conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s, %s)").format(table), row)
        worker: ConnectWorker | None = None
        try:
            connector = postgres_source_settings(
                stack.source_dsn,
                stack.registry_url,
                topic_prefix=prefix,
                tables=[f"{schema}.items"],
                slot=slot,
                publication=publication,
            )
            worker = connect_worker({prefix: connector})
            # The snapshot first: changes made after it are streamed from the slot, never read by the snapshot.
            consume_all(stack.kafka_bootstrap, topic, min_count=len(ROWS), timeout=120, idle=0.5)
            conn.execute(sql.SQL("UPDATE {} SET name = 'TWO', qty = 22 WHERE id = 2").format(table))
            conn.execute(sql.SQL("DELETE FROM {} WHERE id = 3").format(table))
            messages = consume_all(stack.kafka_bootstrap, topic, min_count=len(ROWS) + 3, timeout=120, idle=0.5)
        finally:
            if worker is not None:
                worker.stop()  # the slot is dropped only once nothing streams from it
            drop_slot_and_publication(stack.source_dsn, slot, publication)

    with SchemaRegistry(SchemaRegistryConfig(url=stack.registry_url)) as registry:
        decoder = Decoder(registry)
        keys = [decoder.decode(m.key())[0] for m in messages]
        values = [decoder.decode(m.value())[0] if m.value() is not None else None for m in messages]

    assert keys == [{"id": 1}, {"id": 2}, {"id": 3}, {"id": 2}, {"id": 3}, {"id": 3}]
    changes = [(v["op"], v["before"], v["after"]) if v is not None else None for v in values]
    assert changes == [
        ("r", None, _row(ROWS[0])),
        ("r", None, _row(ROWS[1])),
        ("r", None, _row(ROWS[2])),
        ("u", _row(ROWS[1]), _row((2, "TWO", 22))),
        ("d", _row(ROWS[2]), None),
        None,  # the tombstone after a delete
    ]
    sources = [v["source"] for v in values if v is not None]
    assert {(s["connector"], s["schema"], s["table"]) for s in sources} == {("postgresql", schema, "items")}

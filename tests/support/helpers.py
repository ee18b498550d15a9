"""Small test helpers: a PostgreSQL connection and a scratch schema, a polling wait, an HTTP probe, reading a topic."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pg8000.native
import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

T = TypeVar("T")


def pg_connect(dsn: str, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    """A psycopg connection (autocommit by default, so each statement stands alone)."""
    return psycopg.connect(dsn, autocommit=autocommit, connect_timeout=10)


@contextmanager
def scratch_schema(conn: psycopg.Connection[Any], name: str) -> Iterator[str]:
    """Schema `name`, created on entry and dropped with everything in it on leaving (`conn` in autocommit)."""
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


def http_get(port: int, path: str, *, timeout: float = 3) -> tuple[int, bytes]:
    """(status, body) of a GET on this machine's `port`; (0, b"") when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def wait_for(predicate: Callable[[], T], timeout: float = 30.0, *, interval: float = 0.2, what: str = "") -> T:
    """Poll `predicate` until it returns something truthy and return that; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or predicate!r}")
        time.sleep(interval)


def consume_all(
    bootstrap: str,
    topic: str,
    *,
    min_count: int = 1,
    timeout: float = 30.0,
    idle: float = 1.0,
    config: dict[str, Any] | None = None,
    partition: int | None = None,
) -> list[Message]:
    """Every message of `topic` (or of one `partition` of it) from the beginning, read by a fresh consumer group.

    Waits until at least `min_count` messages arrived (failing after `timeout`), then keeps
    reading until the topic has been quiet for `idle` seconds.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:12]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "topic.metadata.refresh.interval.ms": 1000,
            **(config or {}),
        }
    )
    messages: list[Message] = []
    try:
        if partition is None:
            consumer.subscribe([topic])
        else:
            consumer.assign([TopicPartition(topic, partition, 0)])
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        while True:
            now = time.monotonic()
            if len(messages) >= min_count and now - quiet_since >= idle:
                return messages
            if now >= deadline:
                if len(messages) >= min_count:
                    return messages
                raise AssertionError(
                    f"read {len(messages)} message(s) from {topic} in {timeout:.0f}s, expected at least {min_count}"
                )
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                if error.code() in {KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART}:
                    continue
                raise KafkaException(error)
            messages.append(msg)
            quiet_since = time.monotonic()
    finally:
        consumer.close()


def rows_read_by_pg8000(dsn: str, schema: str, table: str, columns: list[str]) -> list[list[Any]]:
    """A table's rows in key order, read by pg8000: a client that shares no code with psycopg, so what the sink
    wrote is proven readable by another driver, not only by the one that wrote it."""
    params = conninfo_to_dict(dsn)
    conn = pg8000.native.Connection(
        user=str(params.get("user", "postgres")),
        host=str(params.get("host", "127.0.0.1")),
        port=int(str(params.get("port", 5432))),
        database=str(params["dbname"]),
        password=str(params["password"]) if params.get("password") else None,
    )
    try:
        names = ", ".join(pg8000.native.identifier(c) for c in columns)
        query = f"SELECT {names} FROM {pg8000.native.identifier(schema)}.{pg8000.native.identifier(table)} ORDER BY 1"
        return [list(row) for row in conn.run(query)]
    finally:
        conn.close()

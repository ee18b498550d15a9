"""Helpers of the sink's integration tests: realistic change feeds and a sink to run.

A `Feed` owns one real source table: each operation runs on it (so the source table is the oracle of the
expected destination state) and produces the Debezium-style envelope the source would, with the real key and
value schemas registered in the registry and deterministic change ids and LSNs.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import SchemaRegistryClient
from psycopg import sql

from connector.config import ConnectorConfig, parse_config
from connector.config_loader import load_yaml
from connector.pipeline import build_sink
from core.records import AvroSchema
from schemas.catalog import describe_tables
from schemas.envelope import UNCHANGED_TOAST, TableSchemas, build_table_schemas, source_block
from schemas.registry import SchemaRegistry
from schemas.serde import Encoder
from tests.support.running import RunThread

RUNNER = Path(__file__).with_name("sink_process.py")


class Lsns:
    """Increasing WAL positions shared by the feeds of one test (one transaction per change)."""

    def __init__(self) -> None:
        self.value = 0x1000000
        # Real change ids are namespaced by the source server; tests get a namespace of their own.
        self.namespace = uuid.uuid4()

    def next(self) -> tuple[int, int]:
        self.value += 64
        return self.value + 32, self.value  # (commit_lsn, lsn)


@dataclass
class Feed:
    """Changes to one source table, mirrored as envelopes on `topic`."""

    source: psycopg.Connection[Any]
    producer: Producer
    registry: SchemaRegistry
    lsns: Lsns
    schema: str
    table: str
    topic: str
    schemas: TableSchemas = field(init=False)
    key_id: int = field(init=False)
    value_id: int = field(init=False)
    encoder: Encoder = field(default_factory=Encoder)
    change_ids: list[str] = field(default_factory=list)
    live: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.refresh_schema()

    def refresh_schema(self, properties: dict[str, dict[str, Any]] | None = None) -> None:
        """The table's schemas as the source builds them now; `properties` adds field properties (by column) to
        the row record, as a source would register them (`pg.default`, `aliases`, ...)."""
        info = describe_tables(self.source, [(self.schema, self.table)])[(self.schema, self.table)]
        self.schemas = build_table_schemas(info, topic=self.topic, topic_prefix="test")
        if properties:
            definition = json.loads(self.schemas.value_schema.text)
            for member in definition["fields"]:
                for branch in member["type"] if isinstance(member["type"], list) else [member["type"]]:
                    if isinstance(branch, dict) and branch.get("type") == "record":
                        for item in branch["fields"]:
                            item.update(properties.get(item["name"], {}))
            self.schemas = replace(self.schemas, value_schema=AvroSchema.of(definition))
        assert self.schemas.key_schema is not None
        self.key_id = self.registry.register(f"{self.topic}-key", self.schemas.key_schema)
        self.value_id = self.registry.register(f"{self.topic}-value", self.schemas.value_schema)

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.table)

    def _texts(self, row: dict[str, Any]) -> list[Any]:
        return [row.get(c) for c in self.schemas.column_names]

    def _returning(self) -> sql.Composable:
        return sql.SQL(", ").join(
            sql.SQL("{}::text").format(sql.Identifier(c)) for c in self.schemas.column_names
        )

    def emit(self, op: str, before: dict[str, Any] | None, after: dict[str, Any] | None,
             unchanged: tuple[str, ...] = (), change_id: str | None = None,
             position: tuple[int, int] | None = None, headers: tuple[tuple[str, bytes], ...] = ()) -> str:
        commit_lsn, lsn = position or self.lsns.next()
        change_id = change_id or str(uuid.uuid5(self.lsns.namespace, f"{commit_lsn}:{lsn}:0"))
        envelope = self.schemas.envelope(
            op=op, before=before, after=after,
            source=source_block(name="test", db="source", schema=self.schema, table=self.table,
                                ts_ms=int(time.time() * 1000), lsn=lsn, commit_lsn=commit_lsn),
            ts_ms=int(time.time() * 1000), change_id=change_id, unchanged_toast=unchanged,
        )
        key_row = after if after is not None else before
        key = None
        if op != "t":
            assert key_row is not None and self.schemas.key_schema is not None
            key = self.encoder.encode(self.key_id, self.schemas.key_schema, self.schemas.key(key_row))
        value = self.encoder.encode(self.value_id, self.schemas.value_schema, envelope)
        sent = [("change_id", change_id.encode()), ("source_lsn", f"{commit_lsn}:{lsn}".encode()), *headers]
        self.producer.produce(self.topic, key=key, value=value, headers=sent)
        self.producer.poll(0)
        self.change_ids.append(change_id)
        return change_id

    def insert(self, **values: Any) -> str:
        names = list(values)
        row = self.source.execute(
            sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING {}").format(
                self.ident, sql.SQL(", ").join(map(sql.Identifier, names)),
                sql.SQL(", ").join(sql.Placeholder() * len(names)), self._returning(),
            ),
            [values[n] for n in names],
        ).fetchone()
        assert row is not None
        after, _ = self.schemas.row(list(row))
        return self.emit("c", None, after)

    def _update_source(self, key: dict[str, Any], values: dict[str, Any],
                       toast: tuple[str, ...]) -> tuple[dict[str, Any], tuple[str, ...]]:
        """Update the source row at `key`; the new row as the source sends it, with `toast` columns unsent."""
        row = self.source.execute(
            sql.SQL("UPDATE {} SET {} WHERE {} RETURNING {}").format(
                self.ident,
                sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(n)) for n in values),
                sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in key),
                self._returning(),
            ),
            [*values.values(), *key.values()],
        ).fetchone()
        assert row is not None
        texts: list[Any] = list(row)
        for name in toast:
            texts[self.schemas.column_names.index(name)] = UNCHANGED_TOAST
        after, unchanged = self.schemas.row(texts)
        return after, unchanged

    def update(self, key: dict[str, Any], toast: tuple[str, ...] = (), **values: Any) -> str:
        after, unchanged = self._update_source(key, values, toast)
        return self.emit("u", self._key_image(key), after, unchanged)

    def change_key(self, key: dict[str, Any], new_key: dict[str, Any], toast: tuple[str, ...] = (),
                   tombstone: bool = True) -> str:
        """An update that changes the key, as the source writes it: a delete of the old key (and its tombstone),
        then a create of the new key at the same position, with Debezium's key headers; `toast` columns unsent."""
        after, unchanged = self._update_source(key, new_key, toast)
        before = self._key_image(key)
        position = self.lsns.next()
        change_id = str(uuid.uuid5(self.lsns.namespace, f"{position[0]}:{position[1]}:0"))
        self.emit("d", before, None, change_id=f"{change_id[:-4]}dddd", position=position,
                  headers=(("__debezium.newkey", json.dumps(new_key).encode()),))
        if tombstone:
            assert self.schemas.key_schema is not None
            key_bytes = self.encoder.encode(self.key_id, self.schemas.key_schema, self.schemas.key(before))
            self.producer.produce(self.topic, key=key_bytes, value=None, headers=[
                ("change_id", f"{change_id[:-4]}dddd".encode()),
                ("source_lsn", f"{position[0]}:{position[1]}".encode()),
                ("__debezium.newkey", json.dumps(new_key).encode())])
        return self.emit("c", None, after, unchanged, change_id=change_id, position=position,
                         headers=(("__debezium.oldkey", json.dumps(key).encode()),))

    def _key_image(self, key: dict[str, Any]) -> dict[str, Any]:
        texts = [None if c not in key else str(key[c]) for c in self.schemas.column_names]
        image, _ = self.schemas.row(texts)
        return image

    def delete(self, key: dict[str, Any]) -> str:
        self.source.execute(
            sql.SQL("DELETE FROM {} WHERE {}").format(
                self.ident, sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in key)
            ),
            list(key.values()),
        )
        return self.emit("d", self._key_image(key), None)

    def truncate(self) -> str:
        self.source.execute(sql.SQL("DELETE FROM {}").format(self.ident))
        return self.emit("t", None, None)

    def expected(self, columns: list[str] | None = None) -> list[tuple[Any, ...]]:
        return table_texts(self.source, self.ident, columns or list(self.schemas.column_names),
                           list(self.schemas.key_columns))


def table_texts(conn: psycopg.Connection[Any], ident: sql.Identifier, columns: list[str],
                order: list[str], where: str = "") -> list[tuple[Any, ...]]:
    query = sql.SQL("SELECT {} FROM {} {} ORDER BY {}").format(
        sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns),
        ident, sql.SQL(where),  # type: ignore[arg-type]
        sql.SQL(", ").join(map(sql.Identifier, order)),
    )
    return [tuple(r) for r in conn.execute(query).fetchall()]


@dataclass
class Env:
    """What a sink test needs: connections, topic helpers, config builder."""

    stack: Any
    unique_name: Callable[[str], str]
    source: psycopg.Connection[Any]
    target: psycopg.Connection[Any]
    producer: Producer
    registry: SchemaRegistry
    lsns: Lsns = field(default_factory=Lsns)
    tmp: Path = Path()

    def create_topic(self, name: str, partitions: int = 1) -> str:
        admin = AdminClient({"bootstrap.servers": self.stack.kafka_bootstrap})
        for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
            future.result(30)
        return name

    def feed(self, columns_sql: str, *, partitions: int = 1, schema: str = "public", table: str | None = None,
             topic: str | None = None) -> Feed:
        table = table or self.unique_name("src")
        self.source.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        self.source.execute(
            sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(schema, table), sql.SQL(columns_sql))  # type: ignore[arg-type]
        )
        topic = topic or f"test.{schema}.{table}"
        self.create_topic(topic, partitions)
        return Feed(self.source, self.producer, self.registry, self.lsns, schema, table, topic)

    def config(self, topics: list[str], **sink: Any) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.unique_name("sink"),
            "kafka": {"bootstrap_servers": self.stack.kafka_bootstrap},
            "schema_registry": {"url": self.stack.registry_url},
            "sink": {
                "dsn": self.stack.target_dsn,
                "topics": topics,
                "batch": {"max_records": 500, "max_wait_ms": 100},
                "dedupe": {"prune_interval": "1h"},
                **sink,
            },
        }
        return data

    def flush(self) -> None:
        assert self.producer.flush(30) == 0


def to_config(data: dict[str, Any]) -> ConnectorConfig:
    return parse_config(load_yaml(yaml.safe_dump(data), source="<test>", env={}))


def log_end(bootstrap: str, topics: list[str]) -> dict[tuple[str, int], int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "cdc-test-watermarks"})
    try:
        out = {}
        metadata = consumer.list_topics(timeout=10)
        for topic in topics:
            for partition in metadata.topics[topic].partitions:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
                out[(topic, partition)] = high
        return out
    finally:
        consumer.close()


def stored_offsets(target: psycopg.Connection[Any], group: str) -> dict[tuple[str, int], int]:
    exists = target.execute("SELECT to_regclass('cdc.sink_offsets') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return {}
    rows = target.execute(
        "SELECT topic, partition, next_offset FROM cdc.sink_offsets WHERE group_id = %s", (group,)
    ).fetchall()
    return {(t, p): o for t, p, o in rows}


def caught_up(target: psycopg.Connection[Any], group: str, ends: dict[tuple[str, int], int]) -> bool:
    stored = stored_offsets(target, group)
    return all(stored.get(k, 0) >= v for k, v in ends.items() if v > 0)


def wait_until(predicate: Callable[[], bool], timeout: float = 120, what: str = "condition",
               alive: Callable[[], bool] = lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if not alive():
            raise AssertionError(f"the sink stopped before {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class RunningSink(RunThread):
    """A PostgresSink on a thread of this process (started at once)."""

    def __init__(self, config: ConnectorConfig) -> None:
        self.sink = build_sink(config)
        super().__init__(self.sink.run)
        self.start()

    def close(self) -> None:
        self.stop_event.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "sink did not stop"


@contextmanager
def running_sinks(configs: Sequence[ConnectorConfig]) -> Iterator[list[RunningSink]]:
    """Sinks running at once (groups racing each other); on leaving, each is stopped and must not have failed."""
    sinks = [RunningSink(config) for config in configs]
    try:
        yield sinks
    finally:
        for running in sinks:
            running.close()
    for running in sinks:
        assert running.error is None, running.error


def wait_all_caught_up(env: Env, configs: Sequence[ConnectorConfig], sinks: Sequence[RunningSink],
                       ends: dict[tuple[str, int], int], timeout: float = 180) -> None:
    """Until each config's group has stored offsets at `ends`; fails at once if one of `sinks` stopped."""
    for config, running in zip(configs, sinks, strict=True):
        wait_until(lambda c=config: caught_up(env.target, c.group_id, ends), timeout, "every group to catch up",
                   running.alive)


def run_until_caught_up(env: Env, data: dict[str, Any], topics: list[str], timeout: float = 120) -> None:
    """Run a sink with `data` until its stored offsets reach the log end of `topics`; fail on its error."""
    env.flush()
    config = to_config(data)
    ends = log_end(env.stack.kafka_bootstrap, topics)
    running = RunningSink(config)
    try:
        wait_until(lambda: caught_up(env.target, config.group_id, ends), timeout, "the sink to catch up",
                   running.alive)
    except AssertionError:
        if running.error is not None:
            raise running.error from None
        raise
    finally:
        running.close()
    if running.error is not None:
        raise running.error


def applied_five_one_pending(env: Env) -> tuple[Feed, dict[str, Any]]:
    """A feed whose sink (config data returned) applied offsets 0-4 and stopped; offset 5 waits unread in Kafka."""
    feed = env.feed("id int PRIMARY KEY, v text")
    for i in range(5):
        feed.insert(id=i, v="x")
    data = env.config([feed.topic])
    run_until_caught_up(env, data, [feed.topic])
    feed.insert(id=10, v="later")
    env.flush()
    return feed, data


def start_process(config_path: Path, log_path: Path, *, crash_after_db_commit: int | None = None
                  ) -> subprocess.Popen[bytes]:
    """`sink_process.py` on `config_path`; with `crash_after_db_commit` N, the process SIGKILLs itself right
    after the N-th batch's destination commit, before its Kafka commit."""
    crash = [] if crash_after_db_commit is None else [str(crash_after_db_commit)]
    with log_path.open("ab") as log:
        return subprocess.Popen([sys.executable, str(RUNNER), str(config_path), *crash], stdout=log, stderr=log)


def kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait(30)


@pytest.fixture
def env(stack: Any, unique_name: Callable[[str], str], tmp_path: Path) -> Iterator[Env]:
    from connector.config import SchemaRegistryConfig

    source = psycopg.connect(stack.source_dsn, autocommit=True)
    target = psycopg.connect(stack.target_dsn, autocommit=True)
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap, "linger.ms": 5})
    client = SchemaRegistryClient({"url": stack.registry_url})
    registry = SchemaRegistry(SchemaRegistryConfig(url=stack.registry_url), client=client)
    try:
        yield Env(stack, unique_name, source, target, producer, registry, tmp=tmp_path)
    finally:
        producer.flush(10)
        client.close()
        source.close()
        target.close()


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data))
    return path


def schema_of(feed: Feed) -> AvroSchema:
    return feed.schemas.value_schema


def read_all(env: Env, topic: str, count: int) -> list[Any]:
    """At least `count` messages of `topic` from the beginning (fewer after about a minute), undecoded."""
    consumer = Consumer({"bootstrap.servers": env.stack.kafka_bootstrap, "group.id": env.unique_name("dlq"),
                         "auto.offset.reset": "earliest"})
    try:
        consumer.subscribe([topic])
        out: list[Any] = []
        for _ in range(60):
            out += [m for m in consumer.consume(count, timeout=1) if m.error() is None]
            if len(out) >= count:
                break
        return out
    finally:
        consumer.close()


def applied_rows(env: Env, feed: Feed) -> list[tuple[Any, ...]]:
    """The feed's destination rows as text, by id, in the feed's columns."""
    return table_texts(env.target, sql.Identifier(feed.table), list(feed.schemas.column_names), ["id"])


def ledger_count(env: Env, change_ids: list[str]) -> int:
    row = env.target.execute(
        "SELECT count(*) FROM cdc.applied_changes WHERE change_id = ANY(%s::uuid[])", (change_ids,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def assert_applied_once(env: Env, feed: Feed) -> None:
    """The destination holds what the feed's changes make, and the ledger each of its change ids once."""
    assert applied_rows(env, feed) == feed.expected()
    assert ledger_count(env, feed.change_ids) == len(feed.change_ids)

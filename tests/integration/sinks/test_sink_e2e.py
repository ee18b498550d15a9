"""End to end with the real source: PostgreSQL -> source -> Kafka -> sink -> PostgreSQL, the sink killed meanwhile."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition
from psycopg import sql

from tests.integration.pipeline_support import drop_replication_state, table_digest
from tests.integration.sinks.conftest import kill, start_process, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COLUMNS = ["id", "name", "amount", "big", "tags"]
BIG = "(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 200))"  # ~6 kB: stored out of line


def workload(dsn: str, tables: list[str], stop: threading.Event, seed: int) -> int:
    """Random transactions of inserts, updates (some leaving the TOASTed column alone) and deletes."""
    rng = random.Random(seed)
    done = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop.is_set() and done < 400:
            with conn.transaction():
                for _ in range(rng.randint(1, 5)):
                    t = sql.Identifier(rng.choice(tables))
                    roll = rng.random()
                    if roll < 0.4:
                        conn.execute(sql.SQL("INSERT INTO {} (id, name, amount, big, tags) VALUES "
                                             "(%s, %s, %s, " + BIG + ", %s) ON CONFLICT DO NOTHING").format(t),
                                     (rng.randint(1000, 10**9), f"n{done}", rng.randint(0, 10**5) / 100,
                                      ["a", str(done)]))
                    elif roll < 0.8:
                        conn.execute(sql.SQL("UPDATE {} SET name = %s, amount = amount + 1 WHERE id IN "
                                             "(SELECT id FROM {} ORDER BY random() LIMIT 3)").format(t, t),
                                     (f"u{done}",))
                    elif roll < 0.9:
                        conn.execute(sql.SQL("UPDATE {} SET big = " + BIG + " WHERE id IN "
                                             "(SELECT id FROM {} ORDER BY random() LIMIT 1)").format(t, t))
                    else:
                        conn.execute(sql.SQL("DELETE FROM {} WHERE id IN "
                                             "(SELECT id FROM {} ORDER BY random() LIMIT 2)").format(t, t))
            done += 1
            time.sleep(0.01)
    return done


def same_rows(stack: Any, table: str) -> bool:
    try:
        return table_digest(stack.target_dsn, "public", table, COLUMNS) == table_digest(
            stack.source_dsn, "public", table, COLUMNS)
    except psycopg.errors.UndefinedTable:
        return False


def distinct_change_ids(bootstrap: str, prefix: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{prefix}-count", "enable.auto.commit": False})
    try:
        topics = [t for t in consumer.list_topics(timeout=10).topics if t.startswith(prefix + ".")]
        assignment = []
        ends = {}
        for topic in topics:
            for partition in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
                ends[(topic, partition)] = high
                assignment.append(TopicPartition(topic, partition, 0))
        consumer.assign(assignment)
        seen: set[bytes] = set()
        read = {k: 0 for k in ends}
        deadline = time.monotonic() + 60
        while any(read[k] < v for k, v in ends.items()) and time.monotonic() < deadline:
            for message in consumer.consume(1000, timeout=1):
                if message.error() is None:
                    read[(message.topic(), message.partition())] = message.offset() + 1
                    headers = dict(message.headers() or [])
                    # Changes and snapshot-complete markers are recorded; compaction tombstones are not.
                    if message.value() is not None or "cdc.snapshot.complete" in headers:
                        seen.add(headers["change_id"])
        return len(seen)
    finally:
        consumer.close()


def test_source_to_sink_with_sink_kills_matches_the_source(stack: Any, unique_name: Any, tmp_path: Path) -> None:
    name = unique_name("e2es")
    tables = [unique_name("orders") for _ in range(3)]
    with psycopg.connect(stack.source_dsn, autocommit=True) as conn:
        for table in tables:
            t = sql.Identifier(table)
            conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, name text, amount numeric(12,2), "
                                 "big text, tags text[])").format(t))
            conn.execute(sql.SQL("INSERT INTO {} SELECT g, 'n' || g, g / 4.0, " + BIG + ", ARRAY['x'] "
                                 "FROM generate_series(1, 200) g").format(t))
    source_config = {
        "name": name,
        "kafka": {"bootstrap_servers": stack.kafka_bootstrap, "topic_partitions": 2},
        "schema_registry": {"url": stack.registry_url},
        "source": {"dsn": stack.source_dsn, "topic_prefix": name, "slot": {"name": name},
                   "publication": {"name": name}, "tables": {"include": [f"public.{t}" for t in tables]},
                   "snapshot": {"mode": "initial"}, "heartbeat": {"interval_s": 1}, "status_interval_s": 1},
        "server": {"enabled": False},
    }
    sink_config = {
        "name": name,
        "kafka": {"bootstrap_servers": stack.kafka_bootstrap},
        "schema_registry": {"url": stack.registry_url},
        "sink": {"dsn": stack.target_dsn, "topics_regex": f"^{name}\\..*", "batch": {"max_records": 50,
                 "max_wait_ms": 50}, "consumer_properties": {"session.timeout.ms": 6000,
                                                             "heartbeat.interval.ms": 1000}},
    }
    (tmp_path / "source.json").write_text(json.dumps(source_config))
    sink_path = tmp_path / "sink.json"
    sink_path.write_text(json.dumps(sink_config))
    log = tmp_path / "cdc.log"
    with log.open("wb") as out:
        source = subprocess.Popen([sys.executable, "-m", "connector.cli", "--env-file", os.devnull, "run",
                                   str(tmp_path / "source.json"), "--only", "source"], stdout=out, stderr=out)
    sink = start_process(sink_path, log)
    stop = threading.Event()
    workers = [threading.Thread(target=workload, args=(stack.source_dsn, tables, stop, seed)) for seed in (1, 2)]
    try:
        for worker in workers:
            worker.start()
        rng = random.Random(3)
        for _ in range(5):
            time.sleep(rng.uniform(1.0, 3.0))
            assert sink.poll() is None, log.read_text()[-3000:]
            kill(sink)
            sink = start_process(sink_path, log)
        for worker in workers:
            worker.join(300)
        for table in tables:
            wait_until(lambda t=table: same_rows(stack, t), 180,
                       f"{table} to match the source", lambda: sink.poll() is None and source.poll() is None)
        with psycopg.connect(stack.target_dsn, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM cdc.applied_changes WHERE topic LIKE %s",
                               (f"{name}.%",)).fetchone()
        assert row is not None
        assert row[0] == distinct_change_ids(stack.kafka_bootstrap, name)
    finally:
        stop.set()
        for process in (sink, source):
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                kill(process)
        drop_replication_state(stack.source_dsn, name, name)

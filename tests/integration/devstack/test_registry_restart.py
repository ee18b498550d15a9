"""A restart of the stack's registry alone keeps every schema id, so data already in Kafka stays readable.

On a private stack (the shared one is never restarted): a source writes table A to Kafka, only the registry process
is restarted, another source writes table B under the same topic prefix, and a new sink group reads everything from
the earliest offset. A registry that forgot its schemas would hand B's schemas the ids that A's messages carry, and
the sink would decode A's rows with B's schema.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition
from psycopg import sql

from devstack import control, processes
from devstack.env_file import Endpoints
from devstack.ports import Ports
from tests.integration.pipeline_support import (
    drop_replication_state,
    free_port,
    source_section,
    start_connector,
    table_digest,
    wait_until,
)
from tests.support.helpers import http_get

pytestmark = pytest.mark.integration

@pytest.fixture
def private_stack() -> Iterator[tuple[Path, Endpoints]]:
    # Not pytest's tmp_path: its parents are private (0700) and PostgreSQL runs as another OS user under root.
    home = Path(tempfile.mkdtemp(prefix="cdc-registry-restart-"))
    home.chmod(0o755)
    try:
        yield home, control.up(home, Ports.free())
    finally:
        control.down(home)
        shutil.rmtree(home, ignore_errors=True)


def restart_registry(home: Path) -> None:
    records = processes.load_records(home)
    registry = records["registry"]
    assert processes.stop(registry)
    control.up(home, Ports())  # a recorded service starts again on its recorded ports
    assert processes.load_records(home)["registry"].pid != registry.pid


def registered_ids(registry_url: str, subjects: list[str]) -> dict[str, int]:
    ids = {}
    for subject in subjects:
        with urllib.request.urlopen(f"{registry_url}/subjects/{subject}/versions/latest", timeout=10) as response:
            ids[subject] = int(json.loads(response.read())["id"])
    return ids


def write_config(path: Path, name: str, **section: Any) -> None:
    config: dict[str, Any] = {
        "name": name,
        "kafka": {"bootstrap_servers": "${CDC_KAFKA_BOOTSTRAP}"},
        "schema_registry": {"url": "${CDC_SCHEMA_REGISTRY_URL}"},
        "server": {"port": free_port()},
        **section,
    }
    path.write_text(json.dumps(config))  # JSON is YAML


def log_end(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "cdc-test-watermarks"})
    try:
        return int(consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1])
    except Exception:  # the topic does not exist yet
        return 0
    finally:
        consumer.close()


def run_until(config: Path, stack: Endpoints, log: Path, done: Callable[[], bool], what: str) -> None:
    port = json.loads(config.read_text())["server"]["port"]
    process = start_connector(config, stack, log)
    try:
        wait_until(lambda: http_get(port, "/readyz")[0] == 200, 120, "/readyz", process)
        wait_until(done, 120, f"{what} (log: {log})", process)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_a_registry_restart_keeps_schema_ids_and_a_new_sink_group_reads_everything(
    private_stack: tuple[Path, Endpoints], unique_name: Any, tmp_path: Path
) -> None:
    home, stack = private_stack
    prefix = unique_name("rr")
    a, b = unique_name("a"), unique_name("b")
    with psycopg.connect(stack.source_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, label text)").format(sql.Identifier(a)))
        conn.execute(
            sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, amount numeric(10,2), flag boolean)").format(
                sql.Identifier(b)
            )
        )
        conn.execute(
            sql.SQL("INSERT INTO {} SELECT g, 'label ' || g FROM generate_series(1, 50) g").format(sql.Identifier(a))
        )
        conn.execute(
            sql.SQL("INSERT INTO {} SELECT g, g * 1.5, g % 2 = 0 FROM generate_series(1, 50) g").format(
                sql.Identifier(b)
            )
        )
    topic_a, topic_b = f"{prefix}.public.{a}", f"{prefix}.public.{b}"
    first, second, third = tmp_path / "first.yaml", tmp_path / "second.yaml", tmp_path / "third.yaml"
    write_config(first, f"{prefix}_1", source=source_section(f"{prefix}_1", a, prefix=prefix))
    write_config(second, f"{prefix}_2", source=source_section(f"{prefix}_2", b, prefix=prefix))
    sink = {"dsn": "${CDC_TARGET_DSN}", "topics": [topic_a, topic_b], "batch": {"max_records": 500, "max_wait_ms": 100}}
    write_config(third, f"{prefix}_3", sink=sink)
    try:
        run_until(first, stack, tmp_path / "first.log", lambda: log_end(stack.kafka_bootstrap, topic_a) >= 50, "A")
        subjects_a = [f"{topic_a}-key", f"{topic_a}-value"]
        ids_before = registered_ids(stack.registry_url, subjects_a)

        restart_registry(home)

        assert registered_ids(stack.registry_url, subjects_a) == ids_before
        run_until(second, stack, tmp_path / "second.log", lambda: log_end(stack.kafka_bootstrap, topic_b) >= 50, "B")
        ids_b = registered_ids(stack.registry_url, [f"{topic_b}-key", f"{topic_b}-value"])
        assert not set(ids_b.values()) & set(ids_before.values())

        # A new sink group from the earliest offset reads A's messages written before the restart and B's after it.
        columns = {a: ["id", "label"], b: ["id", "amount", "flag"]}
        wanted = {t: table_digest(stack.source_dsn, "public", t, cols) for t, cols in columns.items()}

        def equal() -> bool:
            try:
                return all(table_digest(stack.target_dsn, "public", t, c) == wanted[t] for t, c in columns.items())
            except psycopg.errors.UndefinedTable:
                return False

        run_until(third, stack, tmp_path / "third.log", equal, "the destination equal to the source")
    finally:
        for name in (f"{prefix}_1", f"{prefix}_2"):
            drop_replication_state(stack.source_dsn, name, name)

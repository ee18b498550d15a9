"""`validate()` and `inspect()` of the sink against the real stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from connector.pipeline import build_sink
from tests.integration.pipeline_support import free_port, wait_until
from tests.integration.sinks.conftest import Env, RunningSink, applied_five_one_pending, to_config

pytestmark = pytest.mark.integration


def test_validate_passes_for_a_working_config_and_names_each_problem(env: Env) -> None:
    topic = env.create_topic(env.unique_name("topic"))
    dlq = env.create_topic(env.unique_name("dlq"))
    good = env.config([topic], errors={"tolerance": "all", "dead_letter_topic": dlq})
    assert build_sink(to_config(good)).validate() == []

    bad = env.config([topic, "no-such-topic-x"], errors={"tolerance": "all", "dead_letter_topic": "no-such-dlq"})
    bad["sink"]["dsn"] = env.stack.target_dsn + "_missing_database"
    messages = [p.message for p in build_sink(to_config(bad)).validate()]
    assert any("the destination database refused the connection" in m and "does not exist" in m for m in messages)
    assert any("no-such-topic-x" in m for m in messages)
    # `run` creates a missing dead-letter topic at start, so validate does not call it a problem.
    assert not any("no-such-dlq" in m for m in messages)


def test_run_creates_a_missing_dead_letter_topic_at_start(env: Env) -> None:
    topic = env.create_topic(env.unique_name("topic"))
    dlq = env.unique_name("dlq")
    data = env.config([topic], errors={"tolerance": "all", "dead_letter_topic": dlq})
    running = RunningSink(to_config(data))
    try:
        admin = AdminClient({"bootstrap.servers": env.stack.kafka_bootstrap})
        wait_until(lambda: dlq in admin.list_topics(timeout=10).topics, 30, "the dead-letter topic")
    finally:
        running.close()
    assert running.error is None


def test_validate_reports_an_unreachable_kafka_once(env: Env, tmp_path: Path) -> None:
    data = env.config([env.unique_name("topic")])
    data["kafka"]["bootstrap_servers"] = f"127.0.0.1:{free_port()}"
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(data))
    result = subprocess.run(
        [sys.executable, "-m", "connector.cli", "--env-file", os.devnull, "validate", str(path)],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    kafka_lines = [line for line in result.stderr.splitlines() if "Kafka" in line]
    assert len(kafka_lines) == 1, result.stderr
    assert "cannot reach Kafka at 127.0.0.1:" in kafka_lines[0] and "kafka.bootstrap_servers" in kafka_lines[0]


def test_inspect_reads_the_stored_offsets(env: Env) -> None:
    feed, data = applied_five_one_pending(env)
    stored = build_sink(to_config(data)).inspect()
    assert stored["partitions"] == [{"topic": feed.topic, "partition": 0, "next_offset": 5}]

"""Faults: the sink killed at random moments, and two sink groups writing one target at once."""

from __future__ import annotations

import random
import time

import pytest
from psycopg import sql

from tests.integration.sinks.conftest import (
    Env,
    RunningSink,
    caught_up,
    kill,
    log_end,
    start_process,
    stored_offsets,
    table_texts,
    to_config,
    wait_until,
    write_config,
)
from tests.integration.sinks.test_sink_apply import COLUMNS, ledger_count, mixed_ops

pytestmark = pytest.mark.integration


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_and_doubles_nothing(env: Env) -> None:
    rng = random.Random(9)
    feeds = [env.feed(COLUMNS, partitions=3) for _ in range(2)]
    topics = [f.topic for f in feeds]
    data = env.config(topics)
    data["sink"]["batch"] = {"max_records": 20, "max_wait_ms": 50}
    # A killed member holds its partitions until its session times out: keep that short for the test.
    data["sink"]["consumer_properties"] = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}
    group = to_config(data).group_id
    config_path = write_config(env.tmp / "sink.json", data)
    log_path = env.tmp / "sink.log"
    rounds = 12
    for round_number in range(rounds):
        for feed in feeds:
            mixed_ops(feed, rng, 150)
        env.flush()
        if round_number % 3 == 2:
            # Crash exactly between the DB commit and the Kafka commit of the k-th batch.
            crash_env = {"CDC_SINK_TEST_CRASH_AFTER_DB_COMMIT": str(rng.randint(1, 4))}
            process = start_process(config_path, log_path, crash_env)
            process.wait(120)
            assert process.returncode == -9, log_path.read_text()[-2000:]
        else:
            # Kill while it applies: once it has committed a batch, at a random moment soon after.
            before = sum(stored_offsets(env.target, group).values())
            process = start_process(config_path, log_path)
            wait_until(lambda b=before: sum(stored_offsets(env.target, group).values()) > b, 120,
                       "the sink to apply a batch", lambda p=process: p.poll() is None)
            time.sleep(rng.uniform(0.0, 0.3))
            kill(process)

    ends = log_end(env.stack.kafka_bootstrap, topics)
    process = start_process(config_path, log_path)
    try:
        wait_until(lambda: caught_up(env.target, group, ends), 180, "the sink to catch up",
                   lambda: process.poll() is None)
    finally:
        process.terminate()
        process.wait(60)
    assert process.returncode == 0, log_path.read_text()[-2000:]
    for feed in feeds:
        rows = table_texts(env.target, sql.Identifier(feed.table), list(feed.schemas.column_names), ["id"])
        assert rows == feed.expected()
        assert ledger_count(env, feed.change_ids) == len(feed.change_ids)


def test_two_groups_into_one_target_apply_each_change_once(env: Env) -> None:
    rng = random.Random(11)
    feeds = [env.feed(COLUMNS, partitions=3) for _ in range(2)]
    topics = [f.topic for f in feeds]
    first = to_config(env.config(topics))
    second = to_config(env.config(topics))
    sinks = [RunningSink(first), RunningSink(second)]
    try:
        for _ in range(4):
            for feed in feeds:
                mixed_ops(feed, rng, 200)
            env.flush()
        ends = log_end(env.stack.kafka_bootstrap, topics)
        for config, running in zip((first, second), sinks, strict=True):
            wait_until(lambda c=config: caught_up(env.target, c.group_id, ends), 180, "both groups to catch up",
                       running.alive)
    finally:
        for running in sinks:
            running.close()
    for running in sinks:
        assert running.error is None, running.error
    for feed in feeds:
        rows = table_texts(env.target, sql.Identifier(feed.table), list(feed.schemas.column_names), ["id"])
        assert rows == feed.expected()
        assert ledger_count(env, feed.change_ids) == len(feed.change_ids)

"""Faults: the sink killed at random moments, and two sink groups writing one target at once."""

from __future__ import annotations

import random
import threading
import time

import pytest
from psycopg import sql

from tests.integration.sinks.conftest import (
    Env,
    RunningSink,
    assert_applied_once,
    caught_up,
    kill,
    ledger_count,
    log_end,
    run_until_caught_up,
    running_sinks,
    start_process,
    stored_offsets,
    to_config,
    wait_all_caught_up,
    wait_until,
    write_config,
)
from tests.integration.sinks.test_sink_apply import COLUMNS, mixed_ops

pytestmark = pytest.mark.integration


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_and_doubles_nothing(env: Env) -> None:
    rng = random.Random(9)
    feeds = [env.feed(COLUMNS, partitions=3) for _ in range(2)]
    topics = [f.topic for f in feeds]
    data = env.config(topics)
    data["sink"]["batch"] = {"max_records": 20, "max_wait_ms": 50}
    # A killed member holds its partitions until its session times out; a static member that comes back under
    # the same instance id takes them over at once.
    data["sink"]["consumer_properties"] = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000,
                                           "group.instance.id": env.unique_name("member")}
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
            process = start_process(config_path, log_path, crash_after_db_commit=rng.randint(1, 4))
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
        assert_applied_once(env, feed)


def test_two_groups_into_one_target_apply_each_change_once(env: Env) -> None:
    rng = random.Random(11)
    feeds = [env.feed(COLUMNS, partitions=3) for _ in range(2)]
    topics = [f.topic for f in feeds]
    configs = [to_config(env.config(topics)) for _ in range(2)]
    with running_sinks(configs) as sinks:
        for _ in range(4):
            for feed in feeds:
                mixed_ops(feed, rng, 200)
            env.flush()
        wait_all_caught_up(env, configs, sinks, log_end(env.stack.kafka_bootstrap, topics))
    for feed in feeds:
        assert_applied_once(env, feed)


def test_rebalance_within_one_group_loses_and_doubles_nothing(env: Env) -> None:
    rng = random.Random(13)
    feed = env.feed(COLUMNS, partitions=4)
    data = env.config([feed.topic])
    data["sink"]["batch"] = {"max_records": 20, "max_wait_ms": 20}
    config = to_config(data)
    first = RunningSink(config)
    second: RunningSink | None = None
    try:
        for round_number in range(6):
            mixed_ops(feed, rng, 150)
            env.flush()
            if round_number == 2:
                second = RunningSink(config)  # joins the group: partitions move while batches are in flight
            time.sleep(0.5)
        ends = log_end(env.stack.kafka_bootstrap, [feed.topic])
        wait_until(lambda: caught_up(env.target, config.group_id, ends), 180, "the group to catch up", first.alive)
    finally:
        first.close()
        if second is not None:
            second.close()
    assert first.error is None and (second is None or second.error is None)
    assert_applied_once(env, feed)


def test_pruned_ledger_replay_is_stopped_by_the_lsn_guard(env: Env) -> None:
    from datetime import timedelta

    from sinks.postgres.state import LedgerPruner

    rng = random.Random(17)
    feed = env.feed(COLUMNS, partitions=2)
    mixed_ops(feed, rng, 300)
    run_until_caught_up(env, env.config([feed.topic], delete_handling="soft"), [feed.topic])
    before = env.target.execute(sql.SQL("SELECT t::text FROM {} t ORDER BY id").format(
        sql.Identifier(feed.table))).fetchall()
    # Age only this test's ledger rows, then prune with the default retention.
    env.target.execute("UPDATE cdc.applied_changes SET applied_at = now() - interval '30 days' WHERE topic = %s",
                       (feed.topic,))
    stop = threading.Event()
    pruned = LedgerPruner(env.stack.target_dsn, timedelta(days=7), 60, 100, stop).prune_once()
    assert pruned >= len(feed.change_ids)
    assert ledger_count(env, feed.change_ids) == 0

    run_until_caught_up(env, env.config([feed.topic], delete_handling="soft"), [feed.topic])
    after = env.target.execute(sql.SQL("SELECT t::text FROM {} t ORDER BY id").format(
        sql.Identifier(feed.table))).fetchall()
    assert after == before


def test_destination_connection_loss_is_retried_without_loss_or_doubles(env: Env) -> None:
    rng = random.Random(19)
    feed = env.feed(COLUMNS, partitions=2)
    data = env.config([feed.topic], retry={"initial_backoff_ms": 50, "max_backoff_ms": 500})
    data["sink"]["batch"] = {"max_records": 20, "max_wait_ms": 20}
    config = to_config(data)
    running = RunningSink(config)
    terminated = 0
    try:
        for _ in range(6):
            mixed_ops(feed, rng, 100)
            env.flush()
            time.sleep(rng.uniform(0.1, 0.5))
            rows = env.target.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                (f"cdc-sink-{config.group_id}"[:63],),
            ).fetchall()
            terminated += len(rows)
        ends = log_end(env.stack.kafka_bootstrap, [feed.topic])
        wait_until(lambda: caught_up(env.target, config.group_id, ends), 120, "the sink to catch up", running.alive)
    finally:
        running.close()
    assert running.error is None, running.error
    assert terminated > 0
    assert_applied_once(env, feed)

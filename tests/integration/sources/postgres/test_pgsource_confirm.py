"""Prompt confirmation: what Kafka acknowledged is confirmed to the slot long before the keepalive status period,
so a crash replays only the tail instead of everything since the last periodic status update."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

import pytest
from pgsource_support import SourceEnv

from core.positions import Lsn
from tests.support.helpers import wait_for

pytestmark = pytest.mark.integration

# Periodic (keepalive) status updates and heartbeats far beyond every wait below: only the prompt confirmation
# of acknowledged changes can move the slot in time.
SLOW_STATUS = {"status_interval_s": 60.0, "heartbeat": {"interval_s": 60.0}}


def confirmed(env: SourceEnv) -> Lsn:
    row = env.slot_row()
    assert row is not None
    return Lsn.parse(row[2])


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "encode-workers"])
def test_acknowledged_changes_are_confirmed_without_waiting_for_the_status_interval(
    source_env: SourceEnv, workers: int
) -> None:
    env = source_env
    env.source_options["encode_workers"] = workers
    table = env.table("prompt", "CREATE TABLE {t} (id int PRIMARY KEY, v text)")
    with env.running(snapshot={"mode": "never"}, **SLOW_STATUS) as source:
        source.wait_ready()
        for i in range(1, 6):
            env.sql(f"INSERT INTO {table} VALUES (%s, 'x')", (i,))
        events = env.read(env.topic(table), min_count=5, idle=0)
        last_commit = Lsn(events[-1].value["source"]["commit_lsn"])
        # The commit's end lies past its start: the slot passing it means a restart skips the transaction.
        wait_for(lambda: confirmed(env) > last_commit, 5, what="the acknowledged changes to be confirmed")
        assert Lsn.parse(source.source.status()["confirmed_flush_lsn"]) > last_commit


def test_kill_9_after_acknowledgement_replays_nothing_already_confirmed(source_env: SourceEnv, tmp_path: Path) -> None:
    env = source_env
    table = env.table("tail", "CREATE TABLE {t} (id int PRIMARY KEY, v int NOT NULL)")
    topic = env.topic(table)
    config = env.write_config(tmp_path / "source.json", snapshot={"mode": "never"}, **SLOW_STATUS)
    log_path = tmp_path / "source.log"
    process = env.subprocess(config, log_path)
    try:
        wait_for(lambda: (row := env.slot_row()) is not None and row[0], 60, what="the source to stream")
        for first in range(1, 301, 10):  # 30 transactions of 10 rows
            env.sql(f"INSERT INTO {table} SELECT g, 0 FROM generate_series(%s::int, %s::int) g", (first, first + 9))
        events = env.read(topic, min_count=300, idle=0)
        last_commit = Lsn(events[-1].value["source"]["commit_lsn"])
        wait_for(lambda: confirmed(env) > last_commit, 5, what="the acknowledged changes to be confirmed")
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        wait_for(lambda: (row := env.slot_row()) is not None and not row[0], 30, what="the slot to be released")
        env.sql(f"INSERT INTO {table} SELECT g, 1 FROM generate_series(301, 310) g")
        process = env.subprocess(config, log_path)
        events = env.read(topic, min_count=310)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert {e.key["id"] for e in events} == set(range(1, 311))
    resent = [change_id for change_id, n in Counter(e.change_id for e in events).items() if n > 1]
    assert not resent, f"{len(resent)} changes were sent again after the restart"

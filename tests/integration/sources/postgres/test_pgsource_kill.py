"""kill -9 of the source at random moments under write load: nothing committed is lost, re-sent changes keep
their ids, and the slot never confirms past an event Kafka had not acknowledged."""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from pgsource_support import SourceEnv

from tests.support.helpers import pg_connect, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROUNDS = 10


def int_lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def high_watermark(bootstrap: str, topic: str) -> int:
    """The topic's end offset; 0 while it does not exist (nothing was acknowledged yet)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "watermarks", "enable.auto.commit": False})
    try:
        return int(consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1])
    except KafkaException as exc:
        if exc.args[0].code() in (KafkaError._UNKNOWN_PARTITION, KafkaError.UNKNOWN_TOPIC_OR_PART):
            return 0
        raise
    finally:
        consumer.close()


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "encode-workers"])
def test_kill_9_at_random_moments(source_env: SourceEnv, tmp_path: Path, workers: int) -> None:
    env = source_env
    env.source_options["encode_workers"] = workers
    table = env.table("kill", "CREATE TABLE {t} (id int PRIMARY KEY, v int NOT NULL)")
    topic = env.topic(table)
    config = env.write_config(tmp_path / "source.json", snapshot={"mode": "never"})
    log_path = tmp_path / "source.log"
    committed: dict[int, int] = {}
    stop = threading.Event()
    rng = random.Random(20261123)

    def write() -> None:
        next_id = 1
        with pg_connect(env.stack.source_dsn) as conn:
            while not stop.is_set():
                ids = list(range(next_id, next_id + rng.randint(1, 20)))
                with conn.transaction():
                    for i in ids:
                        conn.execute(f"INSERT INTO {table} VALUES (%s, 0)", (i,))
                    if next_id > 1:
                        conn.execute(f"UPDATE {table} SET v = v + 1 WHERE id = %s", (rng.randint(1, next_id - 1),))
                committed.update(dict.fromkeys(ids, 0))
                next_id = ids[-1] + 1
                time.sleep(0.002)

    writer = threading.Thread(target=write, daemon=True)
    rounds: list[tuple[int, int]] = []  # (confirmed LSN after the kill, high watermark after the kill)
    try:
        process = env.subprocess(config, log_path)
        wait_for(lambda: env.slot_row() is not None, 60, what="the slot")
        writer.start()
        for _ in range(ROUNDS):
            wait_for(lambda: (row := env.slot_row()) is not None and row[0], 60, what="the source to stream")
            time.sleep(rng.uniform(0.3, 2.5))
            process.send_signal(signal.SIGKILL)
            process.wait(30)
            wait_for(lambda: (row := env.slot_row()) is not None and not row[0], 30, what="the slot to be released")
            row = env.slot_row()
            assert row is not None
            rounds.append((int_lsn(row[2]), high_watermark(env.stack.kafka_bootstrap, topic)))
            process = env.subprocess(config, log_path)
        time.sleep(1.0)
        stop.set()
        writer.join(30)
        end = env.sql("SELECT pg_current_wal_lsn()::text")[0][0]
        wait_for(
            lambda: env.sql("SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
                            (end, env.slot))[0][0],
            120, what="the final catch-up",
        )  # fmt: skip
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log_path.read_text()[-3000:]
    finally:
        stop.set()
        if process.poll() is None:
            process.kill()
            process.wait(10)

    events = [e for e in env.read(topic, min_count=len(committed), timeout=120) if e.value is not None]
    # 1. Every committed insert is in Kafka.
    inserted = {e.key["id"] for e in events if e.value["op"] == "c"}
    missing = set(committed) - inserted
    assert not missing, f"{len(missing)} committed rows missing, e.g. {sorted(missing)[:5]}"
    # 2. A change sent again is the same event (same id for the same WAL position and content).
    by_id: dict[str, list] = defaultdict(list)
    for event in events:
        by_id[event.change_id].append(event)
    for change_id, copies in by_id.items():
        first = copies[0].value
        for copy in copies[1:]:
            assert copy.key == copies[0].key, change_id
            for field in ("before", "after", "op", "change_id"):
                assert copy.value[field] == first[field], (change_id, field)
            assert copy.value["source"]["lsn"] == first["source"]["lsn"]
            assert copy.value["source"]["commit_lsn"] == first["source"]["commit_lsn"]
    positions = {(e.value["source"]["commit_lsn"], e.value["source"]["lsn"]) for e in events}
    assert len(positions) == len(by_id), "one WAL position produced two different change ids"
    # 3. Only the unconfirmed tail is sent again: a change has one extra copy at most per kill whose confirmed LSN
    #    had not passed its transaction (a restart replays from the confirmed LSN, nothing before it).
    for change_id, copies in by_id.items():
        commit_lsn = copies[0].value["source"]["commit_lsn"]
        replays = sum(1 for confirmed, _ in rounds if confirmed <= commit_lsn)
        assert len(copies) - 1 <= replays, (change_id, len(copies), replays)
    # 4. The confirmed LSN never passed an unacknowledged event: every event of a transaction that ends before the
    #    confirmed LSN was already in Kafka (first offset below the high watermark) when the source was killed.
    first_offset = {cid: min(e.offset for e in copies) for cid, copies in by_id.items()}
    for confirmed, watermark in rounds:
        late = [
            cid for cid, copies in by_id.items()
            if copies[0].value["source"]["commit_lsn"] < confirmed and first_offset[cid] >= watermark
        ]  # fmt: skip
        assert not late, f"slot confirmed {confirmed} but {len(late)} earlier events were not in Kafka"
    assert len(rounds) == ROUNDS
    assert len({r[0] for r in rounds}) > 1, "the slot never advanced between kills"

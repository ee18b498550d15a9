"""Snapshot then stream: consistent at the seam under concurrent writes; progress recorded; restarts cleanly."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest
from pgsource_support import Event, SourceEnv

from tests.support.helpers import pg_connect, wait_for

pytestmark = pytest.mark.integration


def replay(events: list[Event]) -> dict[Any, dict[str, Any]]:
    """Apply events as a sink would: per key, only a change with a greater (commit_lsn, lsn) wins."""
    rows: dict[Any, tuple[tuple[int, int], dict[str, Any] | None]] = {}
    for event in events:
        if event.value is None:
            continue
        source = event.value["source"]
        position = (source["commit_lsn"], source["lsn"])
        key = event.key["id"]
        current = rows.get(key)
        if current is not None and current[0] >= position:
            continue
        rows[key] = (position, event.value["after"])
    return {key: row for key, (_, row) in rows.items() if row is not None}


def writer(dsn: str, table: str, stop: threading.Event, counter: list[int]) -> None:
    rng = random.Random(7)
    with pg_connect(dsn) as conn:
        next_id = 10_000
        while not stop.is_set():
            with conn.transaction():
                for _ in range(rng.randint(1, 5)):
                    choice = rng.random()
                    if choice < 0.4:
                        conn.execute(f"INSERT INTO {table} VALUES (%s, %s)", (next_id, f"new {next_id}"))
                        next_id += 1
                    elif choice < 0.8:
                        conn.execute(f"UPDATE {table} SET v = v || '+' WHERE id = %s", (rng.randint(1, 3000),))
                    else:
                        conn.execute(f"DELETE FROM {table} WHERE id = %s", (rng.randint(1, 3000),))
                    counter[0] += 1
            time.sleep(0.001)


def test_snapshot_and_stream_meet_without_loss_or_doubles(source_env: SourceEnv) -> None:
    env = source_env
    table = env.table("seam", "CREATE TABLE {t} (id int PRIMARY KEY, v text NOT NULL)")
    other = env.table("other", "CREATE TABLE {t} (id int PRIMARY KEY)")
    env.sql(f"INSERT INTO {table} SELECT g, 'row ' || g FROM generate_series(1, 3000) g")
    env.sql(f"INSERT INTO {other} SELECT g FROM generate_series(1, 10) g")
    stop = threading.Event()
    counter = [0]
    thread = threading.Thread(target=writer, args=(env.stack.source_dsn, table, stop, counter), daemon=True)
    thread.start()
    try:
        with env.running(snapshot={"mode": "initial", "chunk_size": 500}) as source:
            wait_for(lambda: counter[0] > 50, 30, what="concurrent writes")
            source.wait_ready()
            time.sleep(1.0)
            stop.set()
            thread.join(10)
            end = env.sql("SELECT pg_current_wal_lsn()::text")[0][0]
            wait_for(
                lambda: env.sql("SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots "
                                "WHERE slot_name = %s", (end, env.slot))[0][0],
                60, what="the slot to confirm the last write",
            )  # fmt: skip
            status = source.source.status()
        events = env.read(env.topic(table), min_count=3000)
        other_events = env.read(env.topic(other), min_count=10)
    finally:
        stop.set()
    change_ids = [e.change_id for e in events if e.value is not None]  # a tombstone repeats its delete's id
    assert len(change_ids) == len(set(change_ids)), "a change was produced twice"
    snapshot_rows = [e for e in events if e.value is not None and e.value["op"] == "r"]
    assert len({e.key["id"] for e in snapshot_rows}) == len(snapshot_rows) >= 2000
    # Tables are read in name order (`..._other` before `..._seam`); only the very last row is `last`.
    assert [e.value["source"]["snapshot"] for e in snapshot_rows][-1] == "last"
    other_rows = [e for e in other_events if e.value is not None]
    assert {e.value["source"]["snapshot"] for e in snapshot_rows[:-1] + other_rows} == {"true"}
    point = snapshot_rows[0].value["source"]["lsn"]
    assert all(e.value["source"]["lsn"] == point for e in snapshot_rows)
    # Each table's snapshot ends with one snapshot-complete marker (one partition), after its rows.
    for rows, table_events in ((snapshot_rows, events), (other_rows, other_events)):
        [marker] = [e for e in table_events if "cdc.snapshot.complete" in e.headers]
        assert marker.key is None and marker.value is None
        assert marker.headers["source_lsn"] == f"{point}:{point}"
        assert marker.offset > max(e.offset for e in rows)
    streamed = [e for e in events if e.value is not None and e.value["op"] != "r"]
    assert streamed and all(e.value["source"]["commit_lsn"] > point for e in streamed)
    expected = {row[0]: {"id": row[0], "v": row[1]} for row in env.sql(f"SELECT id, v FROM {table}")}
    assert replay(events) == expected
    assert status["state"] == "streaming"
    state = env.sql("SELECT snapshot_state, progress FROM cdc.source_state WHERE slot_name = %s", (env.slot,))
    assert state[0][0] == "done"
    assert state[0][1]["tables"][f"public.{table}"]["rows"] == len(snapshot_rows)


def test_snapshot_ids_are_stable_and_interrupted_snapshot_restarts(source_env: SourceEnv) -> None:
    env = source_env
    table = env.table("big", "CREATE TABLE {t} (id int PRIMARY KEY, v text)")
    env.sql(f"INSERT INTO {table} SELECT g, repeat('x', 50) FROM generate_series(1, 20000) g")
    # Stop the first run in the middle of its snapshot: the snapshot stays `running`.
    with env.running(snapshot={"mode": "initial", "chunk_size": 1000}) as source:
        wait_for(lambda: source.source.status().get("snapshot", {}).get("rows", 0) >= 2000, 60, what="progress")
    state = env.sql("SELECT snapshot_state FROM cdc.source_state WHERE slot_name = %s", (env.slot,))
    assert state == [("running",)]
    first_point = env.sql("SELECT consistent_point::text FROM cdc.source_state WHERE slot_name = %s", (env.slot,))
    with env.running(snapshot={"mode": "initial", "chunk_size": 1000}) as source:
        source.wait_ready()
    state = env.sql("SELECT snapshot_state, consistent_point::text FROM cdc.source_state WHERE slot_name = %s",
                    (env.slot,))  # fmt: skip
    assert state[0][0] == "done"
    assert state[0][1] != first_point[0][0]  # restarted from a new slot, not resumed
    events = env.read(env.topic(table), min_count=22000)
    point = int_lsn(state[0][1])
    rows = [e for e in events if e.value is not None]
    complete = [e for e in rows if e.value["source"]["lsn"] == point]
    assert sorted(e.key["id"] for e in complete) == list(range(1, 20001))
    # Only the snapshot that finished ends with a snapshot-complete marker.
    [marker] = [e for e in events if e.value is None]
    assert marker.headers["source_lsn"] == f"{point}:{point}" and "cdc.snapshot.complete" in marker.headers
    # Same snapshot read again -> same ids; a different snapshot -> different ids.
    partial = [e for e in rows if e.value["source"]["lsn"] != point]
    assert not {e.change_id for e in partial} & {e.change_id for e in complete}


def int_lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def test_initial_only_reads_once_and_leaves_no_slot(source_env: SourceEnv) -> None:
    env = source_env
    table = env.table("once", "CREATE TABLE {t} (id int PRIMARY KEY)")
    env.sql(f"INSERT INTO {table} SELECT g FROM generate_series(1, 100) g")
    for _ in range(2):
        with env.running(snapshot={"mode": "initial_only"}) as source:
            source.join_error(120)
        assert env.slot_row() is None
    events = env.read(env.topic(table), min_count=100)
    rows = [e for e in events if e.value is not None]
    assert sorted(e.key["id"] for e in rows) == list(range(1, 101))  # read once: the second run did nothing
    assert len(events) == len(rows) + 1  # and one snapshot-complete marker
    assert env.sql("SELECT snapshot_state FROM cdc.source_state WHERE slot_name = %s", (env.slot,)) == [("done",)]


def test_a_crash_between_bookkeeping_and_slot_creation_snapshots_again(source_env: SourceEnv) -> None:
    env = source_env
    table = env.table("crash", "CREATE TABLE {t} (id int PRIMARY KEY)")
    env.sql(f"INSERT INTO {table} SELECT g FROM generate_series(1, 10) g")
    with env.running(snapshot={"mode": "never"}) as source:  # creates cdc.source_state if needed
        source.wait_ready()
    env.drop_slot()
    env.sql("UPDATE cdc.source_state SET snapshot_state = 'running', consistent_point = '0/0' WHERE slot_name = %s",
            (env.slot,))  # fmt: skip
    with env.running(snapshot={"mode": "initial"}) as source:
        source.wait_ready()
    events = env.read(env.topic(table), min_count=10)
    assert sorted(e.key["id"] for e in events if e.value is not None) == list(range(1, 11))

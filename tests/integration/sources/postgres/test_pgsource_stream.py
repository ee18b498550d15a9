"""Streaming: inserts, updates, deletes, truncates of several tables become the documented events."""

from __future__ import annotations

import json

import pytest
from pgsource_support import SourceEnv

from core.positions import Lsn
from tests.support.helpers import wait_for

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "encode-workers"])
def test_changes_of_two_tables_stream_as_envelopes(source_env: SourceEnv, workers: int) -> None:
    env = source_env
    env.source_options["encode_workers"] = workers
    a = env.table("a", "CREATE TABLE {t} (id int PRIMARY KEY, name text, amount numeric(10,2), tags text[])")
    b = env.table("b", "CREATE TABLE {t} (k text PRIMARY KEY, payload jsonb NOT NULL, at timestamptz)")
    with env.running(snapshot={"mode": "never"}) as source:
        source.wait_ready()
        with env.conn.transaction():
            env.sql(f"INSERT INTO {a} VALUES (1, 'zoë ✓ 漢字', 12.50, ARRAY['x','y']), (2, NULL, NULL, NULL)")
            env.sql(f"""INSERT INTO {b} VALUES ('k1', '{{"a": [1, 2]}}', '2024-02-29 12:00:00.123456+00')""")
        env.sql(f"UPDATE {a} SET name = 'renamed' WHERE id = 1")
        env.sql(f"DELETE FROM {a} WHERE id = 2")
        env.sql(f"TRUNCATE {b}")
        events_a = env.read(env.topic(a), min_count=5)
        events_b = env.read(env.topic(b), min_count=2)
    ops = [(e.value["op"] if e.value else None, e.key) for e in events_a]
    assert ops == [("c", {"id": 1}), ("c", {"id": 2}), ("u", {"id": 1}), ("d", {"id": 2}), (None, {"id": 2})]
    first = events_a[0].value
    assert first["after"]["name"] == "zoë ✓ 漢字"
    assert str(first["after"]["amount"]) == "12.50"
    assert first["after"]["tags"] == ["x", "y"]
    assert first["source"]["connector"] == "postgresql"
    assert first["source"]["table"] == a
    assert first["source"]["txId"] == events_a[1].value["source"]["txId"]
    assert first["change_id"] == events_a[0].change_id
    commit, lsn = (int(x) for x in events_a[0].headers["source_lsn"].split(":"))
    assert (commit, lsn) == (first["source"]["commit_lsn"], first["source"]["lsn"])
    assert lsn < events_a[1].value["source"]["lsn"] <= commit
    assert events_a[2].value["after"]["name"] == "renamed"
    assert events_a[3].value["before"]["id"] == 2 and events_a[3].value["after"] is None
    assert events_a[4].change_id == events_a[3].change_id  # the tombstone carries its delete's identity
    assert len({e.change_id for e in events_a[:4]}) == 4

    assert events_b[0].value["after"]["payload"] is not None
    assert events_b[1].key is None and events_b[1].value["op"] == "t"

    # Everything acknowledged was confirmed (the final status update at stop): the slot is past the last commit.
    last_commit = Lsn(events_b[1].value["source"]["commit_lsn"])
    wait_for(lambda: Lsn.parse(env.slot_row()[2]) > last_commit, 10, what="the final confirmation")  # type: ignore[index]


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "encode-workers"])
def test_primary_key_update_becomes_delete_and_create(source_env: SourceEnv, workers: int) -> None:
    env = source_env
    env.source_options["encode_workers"] = workers
    table = env.table("pk", "CREATE TABLE {t} (id int PRIMARY KEY, v text)")
    with env.running(snapshot={"mode": "never"}) as source:
        source.wait_ready()
        env.sql(f"INSERT INTO {table} VALUES (1, 'a')")
        env.sql(f"UPDATE {table} SET id = 2 WHERE id = 1")
        events = env.read(env.topic(table), min_count=4)
    shape = [(e.key, e.value["op"] if e.value else None) for e in events]
    assert shape == [({"id": 1}, "c"), ({"id": 1}, "d"), ({"id": 1}, None), ({"id": 2}, "c")]
    assert events[3].value["after"] == {"id": 2, "v": "a"}
    assert events[1].change_id != events[3].change_id
    assert events[1].value["source"]["lsn"] == events[3].value["source"]["lsn"]
    # Debezium's headers for the two halves of a key change: each names the other key.
    assert json.loads(events[1].headers["__debezium.newkey"]) == {"id": 2}
    assert json.loads(events[3].headers["__debezium.oldkey"]) == {"id": 1}
    assert "__debezium.oldkey" not in events[0].headers


def test_idle_slot_advances_and_status_shows_lag(source_env: SourceEnv) -> None:
    """Writes to tables the connector does not capture must not pin WAL: the slot follows the server."""
    env = source_env
    env.table("captured", "CREATE TABLE {t} (id int PRIMARY KEY)")
    other = f"{env.name}x_uncaptured"  # outside the include pattern
    env.sql(f"CREATE TABLE {other} (id int PRIMARY KEY, v text)")
    env.cleanup.append(f"DROP TABLE IF EXISTS {other}")
    with env.running(snapshot={"mode": "never"}) as source:
        source.wait_ready()
        env.sql(f"INSERT INTO {other} SELECT g, repeat('x', 100) FROM generate_series(1, 5000) g")
        target = Lsn.parse(env.sql("SELECT pg_current_wal_lsn()::text")[0][0])
        wait_for(lambda: Lsn.parse(env.slot_row()[2]) >= target, 60, what="the idle slot to advance")  # type: ignore[index]
        status = wait_for(lambda: (s := source.source.status()).get("lag_bytes") is not None and s, 30)
    assert status["state"] == "streaming" and status["slot"] == env.slot
    assert Lsn.parse(status["confirmed_flush_lsn"]) >= target
    assert isinstance(status["lag_bytes"], int)
    assert source.source.status()["state"] == "stopped"
    stopped = source.source.inspect()
    assert stopped["slot"] == env.slot and stopped["slot_state"] == "inactive"
    assert stopped["snapshot"]["state"] == "skipped"

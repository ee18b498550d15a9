"""The source's set of tables: keyless tables never reach the publication, new matching tables are captured
(added to the publication, their existing rows copied) at start-up and while streaming."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from pgsource_support import Event, SourceEnv, without_markers

from core.errors import PrerequisiteError
from sources.postgres.selection import TableRef, publication_tables
from sources.postgres.slots import StateStore
from tests.support.helpers import wait_for

pytestmark = pytest.mark.integration


def published(env: SourceEnv) -> list[str]:
    return [t.table for t in publication_tables(env.conn, env.publication)]


def test_a_keyless_table_never_joins_the_publication_and_the_application_keeps_writing(
    source_env: SourceEnv,
) -> None:
    env = source_env
    a = env.table("a", "CREATE TABLE {t} (id int PRIMARY KEY, v text)")
    with env.running(snapshot={"mode": "never"}) as source:
        source.wait_ready()
    # While the connector is stopped, the application creates a keyless table matching `tables.include`.
    nopk = env.table("nopk", "CREATE TABLE {t} (id int, v text)")
    env.sql(f"INSERT INTO {nopk} VALUES (1, 'x')")
    with env.running(snapshot={"mode": "never"}) as source:
        source.wait_ready()
        assert published(env) == [a]
        env.sql(f"UPDATE {nopk} SET v = 'y' WHERE id = 1")  # failed when the table was published
        env.sql(f"DELETE FROM {nopk} WHERE id = 1")
        env.sql(f"INSERT INTO {a} VALUES (1, 'streamed')")
        events = env.read(env.topic(a), min_count=1)
    assert [(e.key, e.value["op"]) for e in events] == [({"id": 1}, "c")]


def test_on_keyless_table_stop_refuses_to_start_without_touching_the_publication(source_env: SourceEnv) -> None:
    env = source_env
    a = env.table("a", "CREATE TABLE {t} (id int PRIMARY KEY)")
    with env.running(snapshot={"mode": "never"}) as source:
        source.wait_ready()
    nopk = env.table("nopk", "CREATE TABLE {t} (id int, v text)")
    env.sql(f"INSERT INTO {nopk} VALUES (1, 'x')")
    with pytest.raises(PrerequisiteError, match=f"{nopk} has no primary key"):
        tables = {"include": [f"public.{env.name}_*"], "on_keyless_table": "stop"}
        env.source(snapshot={"mode": "never"}, tables=tables).run(threading.Event())
    assert published(env) == [a]
    env.sql(f"UPDATE {nopk} SET v = 'y' WHERE id = 1")


def test_a_keyless_table_an_earlier_version_published_is_removed(source_env: SourceEnv) -> None:
    env = source_env
    a = env.table("a", "CREATE TABLE {t} (id int PRIMARY KEY)")
    nopk = env.table("nopk", "CREATE TABLE {t} (id int, v text)")
    env.sql(f'CREATE PUBLICATION "{env.publication}" FOR TABLE {a}, {nopk}')
    env.sql(f"INSERT INTO {nopk} VALUES (1, 'x')")
    with env.running(snapshot={"mode": "never"}) as source:
        source.wait_ready()
        assert published(env) == [a]
        env.sql(f"UPDATE {nopk} SET v = 'y' WHERE id = 1")
    assert TableRef("public", nopk) not in publication_tables(env.conn, env.publication)


def materialize(events: list[Event]) -> dict[int, dict[str, Any]]:
    """The rows a sink ends with: per key, the change with the highest (commit_lsn, lsn) wins (the row guard)."""
    rows: dict[int, tuple[tuple[int, int], dict[str, Any] | None]] = {}
    for event in events:
        if event.value is None:
            continue  # tombstone
        source = event.value["source"]
        position = (source["commit_lsn"], source["lsn"])
        key = event.key["id"]
        if key not in rows or rows[key][0] < position:
            rows[key] = (position, event.value["after"])
    return {k: after for k, (_, after) in rows.items() if after is not None}


def source_rows(env: SourceEnv, table: str) -> dict[int, dict[str, Any]]:
    return {r[0]: {"id": r[0], "v": r[1]} for r in env.sql(f"SELECT id, v FROM {table}")}


def test_a_table_created_while_streaming_is_added_and_its_earlier_rows_copied(source_env: SourceEnv) -> None:
    env = source_env
    a = env.table("a", "CREATE TABLE {t} (id int PRIMARY KEY, v text)")
    with env.running(snapshot={"mode": "initial"}, tables=discovery(env)) as source:
        source.wait_ready()
        new = env.table("new", "CREATE TABLE {t} (id int PRIMARY KEY, v text)")
        env.sql(f"INSERT INTO {new} SELECT g, 'before ' || g FROM generate_series(1, 5) g")
        wait_for(lambda: new in published(env), 30, what="the new table to join the publication")
        env.sql(f"INSERT INTO {new} SELECT g, 'after ' || g FROM generate_series(6, 10) g")
        env.sql(f"UPDATE {new} SET v = 'updated' WHERE id IN (2, 7)")
        env.sql(f"DELETE FROM {new} WHERE id IN (3, 8)")
        env.sql(f"INSERT INTO {a} VALUES (1, 'still streaming')")
        wait_for(lambda: not StateStore(env.conn).copies(env.slot), 30, what="the copy to finish")
        events = without_markers(env.read(env.topic(new), min_count=10))
        assert [e.key for e in without_markers(env.read(env.topic(a), min_count=2))] == [{"id": 1}]
        assert source.source.status()["table_copies"][f"public.{new}"]["done"] is True
    # The copy reads the table as of its own consistent point, which may fall before or after the statements that
    # follow the table's joining the publication: every row written before it joined and never deleted is copied,
    # and the rows rebuilt by highest position (what the sink's guard does) equal the source either way.
    copied = {e.key["id"] for e in events if e.value and e.value["op"] == "r"}
    assert {1, 2, 4, 5} <= copied
    assert materialize(events) == source_rows(env, new)


def test_a_table_created_while_stopped_is_copied_on_start(source_env: SourceEnv) -> None:
    env = source_env
    env.table("a", "CREATE TABLE {t} (id int PRIMARY KEY, v text)")
    with env.running(snapshot={"mode": "initial"}) as source:
        source.wait_ready()
    new = env.table("new", "CREATE TABLE {t} (id int PRIMARY KEY, v text)")
    env.sql(f"INSERT INTO {new} SELECT g, 'while stopped ' || g FROM generate_series(1, 10) g")
    with env.running(snapshot={"mode": "initial"}) as source:
        source.wait_ready()
        env.sql(f"INSERT INTO {new} VALUES (11, 'streamed')")
        env.sql(f"UPDATE {new} SET v = 'updated' WHERE id = 4")
        events = without_markers(env.read(env.topic(new), min_count=12))
    # Rows written after the start may be in the copy too (it runs once streaming began); the row guard decides.
    assert {e.key["id"] for e in events if e.value and e.value["op"] == "r"} >= set(range(1, 11))
    assert materialize(events) == source_rows(env, new)
    assert StateStore(env.conn).copies(env.slot) == []


def test_a_copy_interrupted_by_a_crash_is_redone_on_start(source_env: SourceEnv) -> None:
    env = source_env
    a = env.table("a", "CREATE TABLE {t} (id int PRIMARY KEY, v text)")
    with env.running(snapshot={"mode": "never"}) as source:
        source.wait_ready()
    env.sql(f"INSERT INTO {a} SELECT g, 'x' FROM generate_series(1, 3) g")
    # What a crash between recording the copy and finishing it leaves behind.
    StateStore(env.conn).add_copies(env.slot, [f"public.{a}"])
    with env.running(snapshot={"mode": "never"}) as source:
        source.wait_ready()
        wait_for(lambda: not StateStore(env.conn).copies(env.slot), 30, what="the copy to finish")
        events = without_markers(env.read(env.topic(a), min_count=6))
    copied = [e for e in events if e.value["op"] == "r"]  # beside the inserts the slot streams on start
    assert [e.key["id"] for e in copied] == [1, 2, 3]
    assert copied[-1].value["source"]["snapshot"] == "last"


def discovery(env: SourceEnv) -> dict[str, Any]:
    return {"include": [f"public.{env.name}_*"], "discovery_interval_s": 1}

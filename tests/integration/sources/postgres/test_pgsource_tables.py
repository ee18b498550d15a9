"""The source's set of tables: keyless tables never reach the publication, new matching tables are captured
(added to the publication, their existing rows copied) at start-up and while streaming."""

from __future__ import annotations

import threading

import pytest
from pgsource_support import SourceEnv

from core.errors import PrerequisiteError
from sources.postgres.selection import TableRef, publication_tables

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

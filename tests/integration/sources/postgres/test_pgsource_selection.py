"""The publication follows the config: tables added and dropped, column lists and row filters pushed down."""

from __future__ import annotations

import pytest
from pgsource_support import SourceEnv, without_markers

from sources.postgres.selection import publication_tables, resolve_tables, sync_publication

pytestmark = pytest.mark.integration


def test_publication_follows_the_table_selection(source_env: SourceEnv) -> None:
    env = source_env
    a = env.table("a", "CREATE TABLE {t} (id int PRIMARY KEY)")
    b = env.table("b", "CREATE TABLE {t} (id int PRIMARY KEY)")
    only_a = env.config(tables={"include": [f"public.{a}"]}).source
    assert only_a is not None
    sync_publication(env.conn, only_a, resolve_tables(env.conn, only_a))
    assert [t.table for t in publication_tables(env.conn, env.publication)] == [a]
    both = env.config().source
    assert both is not None
    sync_publication(env.conn, both, resolve_tables(env.conn, both))
    assert [t.table for t in publication_tables(env.conn, env.publication)] == [a, b]
    without_a = env.config(tables={"include": [f"public.{env.name}_*"], "exclude": [f"public.{a}"]}).source
    assert without_a is not None
    sync_publication(env.conn, without_a, resolve_tables(env.conn, without_a))
    assert [t.table for t in publication_tables(env.conn, env.publication)] == [b]


def test_column_lists_and_row_filters_are_pushed_into_the_publication(source_env: SourceEnv) -> None:
    env = source_env
    table = env.table("cf", "CREATE TABLE {t} (id int PRIMARY KEY, country text, secret text, note text)")
    env.sql(f"ALTER TABLE {table} REPLICA IDENTITY FULL")  # a row filter on updates/deletes needs its columns
    options = {f"public.{table}": {"columns_exclude": ["secret"], "row_filter": "country = 'NL'"}}
    env.sql(f"INSERT INTO {table} VALUES (10, 'NL', 's', 'snapshot'), (11, 'BE', 's', 'not in the snapshot')")
    with env.running(snapshot={"mode": "initial"}, table_options=options) as source:
        source.wait_ready()
        row = env.sql(
            "SELECT attnames, rowfilter FROM pg_publication_tables WHERE pubname = %s AND tablename = %s",
            (env.publication, table),
        )
        assert row and list(row[0][0]) == ["id", "country", "note"] and "NL" in row[0][1]
        env.sql(f"INSERT INTO {table} VALUES (1, 'NL', 's1', 'kept'), (2, 'DE', 's2', 'filtered')")
        events = without_markers(env.read(env.topic(table), min_count=3))
    assert [(e.key["id"], e.value["op"]) for e in events] == [(10, "r"), (1, "c")]
    assert events[1].value["after"] == {"id": 1, "country": "NL", "note": "kept"}

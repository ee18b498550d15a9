"""The ledger's scope is the destination table: a change takes effect once in each table it is meant for.

Two pipelines reading one topic into two destination tables both apply every change; two consumer groups (or
two regions) writing one table apply each change once between them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from core import metrics
from sinks.postgres.state import LEGACY_DESTINATION, ensure_state
from tests.integration.sinks.conftest import (
    Env,
    RunningSink,
    caught_up,
    log_end,
    run_until_caught_up,
    running_sinks,
    table_texts,
    to_config,
    wait_all_caught_up,
    wait_until,
)
from tests.integration.sinks.test_sink_apply import COLUMNS, mixed_ops

pytestmark = pytest.mark.integration


def ledger_entries(conn: psycopg.Connection[Any], change_ids: list[str]) -> dict[str, int]:
    """Destination table name -> ledger entries among `change_ids`."""
    rows = conn.execute(
        """SELECT destination::regclass::text, count(*) FROM cdc.applied_changes
           WHERE change_id = ANY(%s::uuid[]) GROUP BY 1""",
        (change_ids,),
    ).fetchall()
    return {name: count for name, count in rows}


def applied_total(table: str) -> float:
    return sum(
        metrics.REGISTRY.get_sample_value("cdc_sink_applied_total", {"table": table, "op": op}) or 0.0
        for op in "cudrt"
    )


def test_two_target_schemas_from_one_topic_both_complete(env: Env) -> None:
    feed = env.feed(COLUMNS, partitions=2)
    mixed_ops(feed, random.Random(11), 300)
    first, second = env.unique_name("first"), env.unique_name("second")
    run_until_caught_up(env, env.config([feed.topic], target_schema=first), [feed.topic])
    # Another pipeline (its own group) into another schema of the same database: a replica, a projection.
    run_until_caught_up(env, env.config([feed.topic], target_schema=second), [feed.topic])

    columns = list(feed.schemas.column_names)
    for schema in (first, second):
        assert table_texts(env.target, sql.Identifier(schema, feed.table), columns, ["id"]) == feed.expected()
    distinct = len(set(feed.change_ids))
    assert ledger_entries(env.target, feed.change_ids) == {
        f"{first}.{feed.table}": distinct,
        f"{second}.{feed.table}": distinct,
    }


def test_two_groups_into_one_table_apply_each_change_once(env: Env) -> None:
    feed = env.feed(COLUMNS, partitions=3)
    mixed_ops(feed, random.Random(12), 600)
    env.flush()
    schema = env.unique_name("shared")
    configs = [to_config(env.config([feed.topic], target_schema=schema)) for _ in range(2)]
    assert configs[0].group_id != configs[1].group_id
    ends = log_end(env.stack.kafka_bootstrap, [feed.topic])
    with running_sinks(configs) as sinks:  # racing each other on every change
        wait_all_caught_up(env, configs, sinks, ends, 120)

    table = f"{schema}.{feed.table}"
    assert table_texts(env.target, sql.Identifier(schema, feed.table), list(feed.schemas.column_names),
                       ["id"]) == feed.expected()
    distinct = len(set(feed.change_ids))
    assert ledger_entries(env.target, feed.change_ids) == {table: distinct}
    # Between them, the two groups applied each change exactly once (the counter is per process, both ran here).
    assert applied_total(table) == distinct


@pytest.fixture
def scratch_target(env: Env) -> Iterator[str]:
    """A database of its own on the target server (its `cdc` schema is not shared with other tests)."""
    name = env.unique_name("ledgerdb")
    env.target.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    params = conninfo_to_dict(env.stack.target_dsn)
    params["dbname"] = name
    try:
        yield make_conninfo(**params)
    finally:
        env.target.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_a_ledger_keyed_by_change_id_alone_is_migrated(env: Env, scratch_target: str) -> None:
    feed = env.feed("id int PRIMARY KEY, v text")
    feed.insert(id=1, v="a")
    feed.insert(id=2, v="b")
    with psycopg.connect(scratch_target, autocommit=True) as conn:
        # The layout before per-table scope, holding both change ids as applied (to some unknown table).
        conn.execute("CREATE SCHEMA cdc")
        conn.execute(
            """CREATE TABLE cdc.applied_changes (change_id uuid PRIMARY KEY, topic text NOT NULL,
               partition integer NOT NULL, "offset" bigint NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        conn.execute(
            """INSERT INTO cdc.applied_changes (change_id, topic, partition, "offset")
               SELECT id, %s, 0, o FROM unnest(%s::uuid[]) WITH ORDINALITY AS x(id, o)""",
            (feed.topic, feed.change_ids),
        )
        ensure_state(conn)
        ensure_state(conn)  # idempotent once migrated
        key = conn.execute(
            """SELECT array_agg(a.attname::text ORDER BY k.pos) FROM pg_index i
               CROSS JOIN unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, pos)
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
               WHERE i.indrelid = 'cdc.applied_changes'::regclass AND i.indisprimary"""
        ).fetchone()
        assert key is not None and key[0] == ["change_id", "destination"]
        legacy = conn.execute("SELECT DISTINCT destination FROM cdc.applied_changes").fetchall()
        assert legacy == [(LEGACY_DESTINATION,)]

        # Legacy entries name no table: the pipeline applies those changes (the row guard keeps it harmless).
        data = env.config([feed.topic])
        data["sink"]["dsn"] = scratch_target
        config = to_config(data)
        ends = log_end(env.stack.kafka_bootstrap, [feed.topic])
        env.flush()
        running = RunningSink(config)
        try:
            wait_until(lambda: caught_up(conn, config.group_id, ends), 120, "the sink to catch up", running.alive)
        finally:
            running.close()
        assert running.error is None, running.error
        assert table_texts(conn, sql.Identifier("public", feed.table), ["id", "v"], ["id"]) == [
            ("1", "a"), ("2", "b"),
        ]
        assert ledger_entries(conn, feed.change_ids) == {"-": 2, f"{feed.table}": 2}

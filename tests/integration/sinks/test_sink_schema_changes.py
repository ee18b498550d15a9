"""Source DDL mid-stream, as the sink sees it: a running sink, then the source's new schema (with the `pg.default` and
`aliases` field properties a source registers); the destination must equal the source row by row, with one ledger
row per change, under each policy."""

from __future__ import annotations

from typing import Any

import pytest
from psycopg import sql

from core.errors import SchemaError
from tests.integration.sinks.conftest import (
    Env,
    Feed,
    RunningSink,
    caught_up,
    ledger_count,
    log_end,
    table_texts,
    to_config,
    wait_until,
)

pytestmark = pytest.mark.integration


def catch_up(env: Env, running: RunningSink, group: str, feed: Feed) -> None:
    env.flush()
    ends = log_end(env.stack.kafka_bootstrap, [feed.topic])
    try:
        wait_until(lambda: caught_up(env.target, group, ends), 60, "the sink to catch up", running.alive)
    except AssertionError:
        if running.error is not None:
            raise running.error from None
        raise


def alter(env: Env, feed: Feed, ddl: str, properties: dict[str, dict[str, Any]] | None = None) -> None:
    env.source.execute(sql.SQL(ddl).format(sql.Identifier(feed.schema, feed.table)))  # type: ignore[arg-type]
    feed.refresh_schema(properties)


def destination(env: Env, feed: Feed) -> list[tuple[Any, ...]]:
    return table_texts(env.target, sql.Identifier(feed.table), list(feed.schemas.column_names), ["id"])


def destination_columns(env: Env, feed: Feed) -> list[str]:
    rows = env.target.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
        "AND attname NOT LIKE '\\_\\_cdc\\_%%' ORDER BY attnum",
        (sql.Identifier(feed.table).as_string(env.target),),
    ).fetchall()
    return [r[0] for r in rows]


def mid_stream(env: Env, feed: Feed, data: dict[str, Any], ddl: str,
               properties: dict[str, dict[str, Any]] | None, after: Any) -> None:
    """20 rows applied by a running sink, then `ddl` on the source and `after(feed)`, applied by the same sink."""
    for i in range(1, 21):
        feed.insert(id=i, **{k: v for k, v in _initial(feed, i).items()})
    config = to_config(data)
    running = RunningSink(config)
    try:
        catch_up(env, running, config.group_id, feed)
        alter(env, feed, ddl, properties)
        after(feed)
        catch_up(env, running, config.group_id, feed)
    finally:
        running.close()
    if running.error is not None:
        raise running.error


def _initial(feed: Feed, i: int) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in feed.schemas.column_names:
        if name != "id":
            values[name] = i if name == "n" else f"{name}{i}"
    return values


def assert_equal_to_source(env: Env, feed: Feed) -> None:
    assert destination(env, feed) == feed.expected()
    assert ledger_count(env, feed.change_ids) == len(feed.change_ids)


def test_add_column_with_default_leaves_existing_rows_reading_it(env: Env) -> None:
    feed = env.feed("id int PRIMARY KEY, v text")
    mid_stream(env, feed, env.config([feed.topic]), "ALTER TABLE {} ADD COLUMN d text DEFAULT 'dflt'",
               {"d": {"pg.default": "dflt"}},
               lambda f: (f.insert(id=21, v="new", d="own"), f.insert(id=22, v="new"), f.update({"id": 3}, v="u")))
    assert feed.schemas.column_names == ("id", "v", "d")
    assert_equal_to_source(env, feed)
    assert [r[2] for r in destination(env, feed)].count("dflt") == 21


def test_integer_widened_to_bigint_takes_values_beyond_2_31(env: Env) -> None:
    feed = env.feed("id int PRIMARY KEY, n int")
    mid_stream(env, feed, env.config([feed.topic]), "ALTER TABLE {} ALTER COLUMN n TYPE bigint", None,
               lambda f: (f.insert(id=21, n=5_000_000_000), f.update({"id": 1}, n=-5_000_000_000)))
    assert_equal_to_source(env, feed)
    row = env.target.execute(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s::regclass AND attname = 'n'",
        (sql.Identifier(feed.table).as_string(env.target),),
    ).fetchone()
    assert row == ("bigint",)


@pytest.mark.parametrize("policy", ["drop", "keep_nullable"])
def test_dropped_column_under_each_policy(env: Env, policy: str) -> None:
    feed = env.feed("id int PRIMARY KEY, a text NOT NULL, v text")
    data = env.config([feed.topic], schema_changes={"on_column_dropped": policy})
    not_null = sql.SQL("ALTER TABLE {} ALTER COLUMN a SET NOT NULL").format(sql.Identifier(feed.table))
    # `a` made NOT NULL in the destination too: rows written without it need keep_nullable's DROP NOT NULL.
    mid_stream(env, feed, data, "ALTER TABLE {} DROP COLUMN a", None,
               lambda f: (env.target.execute(not_null), f.insert(id=21, v="new"), f.update({"id": 2}, v="u")))
    assert_equal_to_source(env, feed)
    if policy == "drop":
        assert destination_columns(env, feed) == ["id", "v"]
    else:
        assert destination_columns(env, feed) == ["id", "a", "v"]
        kept = dict(table_texts(env.target, sql.Identifier(feed.table), ["id", "a"], ["id"]))
        assert kept["1"] == "a1" and kept["21"] is None


def test_dropped_column_stops_by_default_naming_the_fix(env: Env) -> None:
    feed = env.feed("id int PRIMARY KEY, a text, v text")
    with pytest.raises(SchemaError, match="on_column_dropped") as stopped:
        mid_stream(env, feed, env.config([feed.topic]), "ALTER TABLE {} DROP COLUMN a", None,
                   lambda f: f.insert(id=21, v="new"))
    assert "'a'" in str(stopped.value)
    # The batch that needed the change is not applied: offsets stay before it, the table as it was.
    assert destination_columns(env, feed) == ["id", "a", "v"]
    assert ledger_count(env, feed.change_ids) == 20


@pytest.mark.parametrize("policy", ["rename", "drop_add"])
def test_renamed_column_under_each_policy(env: Env, policy: str) -> None:
    feed = env.feed("id int PRIMARY KEY, keep text, v text")
    data = env.config([feed.topic], schema_changes={"on_column_renamed": policy, "on_column_dropped": "drop"})
    mid_stream(env, feed, data, "ALTER TABLE {} RENAME COLUMN keep TO kept", {"kept": {"aliases": ["keep"]}},
               lambda f: (f.insert(id=21, kept="k21", v="new"), f.update({"id": 2}, v="u")))
    assert destination_columns(env, feed) == (["id", "kept", "v"] if policy == "rename" else ["id", "v", "kept"])
    if policy == "rename":
        assert_equal_to_source(env, feed)
    else:
        # drop + add: the old values went with the old column; rows written since carry the new one.
        kept = dict(table_texts(env.target, sql.Identifier(feed.table), ["id", "kept"], ["id"]))
        assert kept == {**{str(i): None for i in range(1, 21)}, "2": "keep2", "21": "k21"}
        assert ledger_count(env, feed.change_ids) == len(feed.change_ids)

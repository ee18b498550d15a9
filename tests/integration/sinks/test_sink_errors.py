"""Bad input: poison messages (dead-letter or stop), constraint violations, hostile identifiers, schema changes."""

from __future__ import annotations

import logging
import struct
from typing import Any

import pytest
from psycopg import sql

from core.errors import ConfigError, PoisonMessageError, SchemaError
from tests.integration.sinks.conftest import (
    Env,
    RunningSink,
    read_all,
    run_until_caught_up,
    stored_offsets,
    table_texts,
    to_config,
    wait_until,
)

pytestmark = pytest.mark.integration

SECRET = "SECRET-PAYLOAD-7f3a"


def poison_corpus(env: Env, feed: Any) -> list[bytes]:
    """Wrong magic byte, unknown schema id, truncated body; each carrying a recognisable payload."""
    topic, value_id = feed.topic, feed.value_id
    key = feed.encoder.encode(feed.key_id, feed.schemas.key_schema, {"id": 99})
    body = SECRET.encode() * 3
    corpus = [
        b"\x01" + struct.pack(">I", value_id) + body,
        b"\x00" + struct.pack(">I", 2_000_000_000) + body,
        b"\x00" + struct.pack(">I", value_id) + b"\x02",
    ]
    for value in corpus:
        env.producer.produce(topic, key=key, value=value)
    return corpus


def test_poison_messages_go_to_the_dead_letter_topic(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    feed = env.feed("id int PRIMARY KEY, v text, CHECK (v <> 'bad')")
    dlq = env.create_topic(env.unique_name("dlq"))
    feed.insert(id=1, v="one")
    corpus = poison_corpus(env, feed)
    # Oversized: a valid change whose record exceeds errors.max_record_bytes.
    big, _ = feed.schemas.row(["2", SECRET * 200])
    feed.emit("c", None, big)
    # Unapplicable: decodes, but violates a constraint of the destination table.
    bad, _ = feed.schemas.row(["3", "bad"])
    feed.emit("c", None, bad)
    feed.insert(id=4, v="four")
    # The destination table exists with the constraint (as a user would have created it).
    env.target.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, v text CHECK (v <> 'bad'))").format(
        sql.Identifier(feed.table)))
    env.source.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
        sql.Identifier(feed.table), sql.Identifier(f"{feed.table}_v_check")))

    data = env.config([feed.topic], errors={"tolerance": "all", "dead_letter_topic": dlq, "max_record_bytes": 2000})
    with caplog.at_level(logging.DEBUG):
        run_until_caught_up(env, data, [feed.topic])

    assert table_texts(env.target, sql.Identifier(feed.table), ["id", "v"], ["id"]) == [("1", "one"), ("4", "four")]
    dead = read_all(env, dlq, 5)
    assert len(dead) == 5
    headers = [dict(m.headers()) for m in dead]
    assert all(h["cdc.source.topic"] == feed.topic.encode() for h in headers)
    assert sorted(int(h["cdc.source.offset"]) for h in headers) == [1, 2, 3, 4, 5]
    errors = [h["cdc.error"].decode() for h in headers]
    assert "bad magic byte" in errors[0]
    assert "unknown schema id" in errors[1]
    assert "truncated" in errors[2] or "corrupt" in errors[2]
    assert "max_record_bytes" in errors[3]
    assert "check constraint" in errors[4]
    assert [m.value() for m in dead[:3]] == corpus
    assert SECRET not in caplog.text


def test_poison_message_stops_the_sink_without_moving_offsets(env: Env) -> None:
    feed = env.feed("id int PRIMARY KEY, v text")
    feed.insert(id=1, v="one")
    env.flush()
    config = to_config(env.config([feed.topic]))
    run_until_caught_up(env, env.config([feed.topic], group_id=config.group_id), [feed.topic])
    assert stored_offsets(env.target, config.group_id) == {(feed.topic, 0): 1}

    poison_corpus(env, feed)
    feed.insert(id=2, v="two")
    env.flush()
    running = RunningSink(config)
    wait_until(lambda: not running.alive(), 60, "the sink to stop")
    assert isinstance(running.error, PoisonMessageError)
    assert f"{feed.topic}[0]@1" in str(running.error)
    assert "bad magic byte" in str(running.error)
    assert stored_offsets(env.target, config.group_id) == {(feed.topic, 0): 1}
    assert table_texts(env.target, sql.Identifier(feed.table), ["id"], ["id"]) == [("1",)]


def test_a_poison_key_is_named_as_the_key(env: Env) -> None:
    feed = env.feed("id int PRIMARY KEY, v text")
    unknown_key = b"\x00" + struct.pack(">I", 2_000_000_001) + b"\x02"
    env.producer.produce(feed.topic, key=unknown_key, value=None)  # the value decodes (a tombstone); the key not
    env.flush()
    running = RunningSink(to_config(env.config([feed.topic])))
    wait_until(lambda: not running.alive(), 60, "the sink to stop")
    assert isinstance(running.error, PoisonMessageError)
    assert f"{feed.topic}[0]@0: its key: unknown schema id 2000000001" in str(running.error)


HOSTILE_COLUMNS = """ "id" int PRIMARY KEY, "select" text, "Mixed Case" text, "we""ird" text,
                      "; DROP TABLE x;--" text, "ünï 表" text"""


@pytest.mark.parametrize(
    "name",
    ["Robert'); DROP TABLE students;--", "select", "MixedCase", "ünïcödé 表", 'quo"te'],
)
def test_hostile_identifiers_are_created_exactly(env: Env, name: str) -> None:
    schema = env.unique_name("hs")
    feed = env.feed(HOSTILE_COLUMNS, schema=schema, table=name, topic=f"test.{schema}.{env.unique_name('t')}")
    feed.insert(**{"id": 1, "select": "s", "Mixed Case": "m", 'we"ird': "w", "; DROP TABLE x;--": "d", "ünï 表": "u"})
    feed.update({"id": 1}, **{"ünï 表": "u2"})
    run_until_caught_up(env, env.config([feed.topic], target_schema=schema), [feed.topic])
    columns = list(feed.schemas.column_names)
    assert table_texts(env.target, sql.Identifier(schema, name), columns, ["id"]) == [("1", "s", "m", "w", "d", "u2")]


def test_names_postgres_would_truncate_are_refused(env: Env) -> None:
    feed = env.feed("id int PRIMARY KEY")
    feed.insert(id=1)
    long_name = "t" * 60 + "_é_1"  # 65 bytes: PostgreSQL would cut it (and "..._é_2" would collide with it)
    data = env.config([feed.topic], table_map={feed.topic: long_name})
    with pytest.raises(ConfigError, match="63 bytes"):
        run_until_caught_up(env, data, [feed.topic], timeout=60)


def test_schema_evolution_adds_columns_and_stops_on_unsafe_changes(env: Env) -> None:
    feed = env.feed("id int PRIMARY KEY, v smallint")
    feed.insert(id=1, v=1)
    data = env.config([feed.topic])
    run_until_caught_up(env, data, [feed.topic])

    env.source.execute(sql.SQL("ALTER TABLE {} ADD COLUMN extra text, ALTER COLUMN v TYPE bigint").format(
        sql.Identifier(feed.table)))
    feed.refresh_schema()
    feed.insert(id=2, v=2**40, extra="x")
    run_until_caught_up(env, data, [feed.topic])
    assert table_texts(env.target, sql.Identifier(feed.table), ["id", "v", "extra"], ["id"]) == feed.expected()

    env.source.execute(sql.SQL("ALTER TABLE {} DROP COLUMN extra").format(sql.Identifier(feed.table)))
    feed.refresh_schema()
    feed.insert(id=3, v=3)
    with pytest.raises(SchemaError, match="extra"):
        run_until_caught_up(env, data, [feed.topic], timeout=60)
    ignore = {**data, "sink": {**data["sink"], "on_unsafe_schema_change": "ignore"}}
    run_until_caught_up(env, ignore, [feed.topic])
    assert table_texts(env.target, sql.Identifier(feed.table), ["id", "v"], ["id"]) == feed.expected(["id", "v"])

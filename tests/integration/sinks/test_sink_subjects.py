"""A message whose schema id belongs to another topic's subject is refused, never decoded into the wrong table.

This is what a registry that lost its schemas produces: ids already in Kafka are handed out again for other
tables' schemas. Here the foreign message is written on purpose: table A's topic, table B's schema ids.
"""

from __future__ import annotations

from typing import Any

import pytest
from psycopg import sql

from core.errors import PoisonMessageError
from tests.integration.sinks.conftest import (
    Env,
    Feed,
    RunningSink,
    caught_up,
    log_end,
    read_all,
    run_until_caught_up,
    stored_offsets,
    table_texts,
    to_config,
    wait_until,
)

pytestmark = pytest.mark.integration


def emit_foreign(a: Feed, b: Feed) -> None:
    """One change of B (B's key and value schema ids) on A's topic."""
    row, _ = b.schemas.row(["7", "1.50", "true"])
    own_topic, b.topic = b.topic, a.topic
    try:
        b.emit("c", None, row)
    finally:
        b.topic = own_topic


def feeds(env: Env) -> tuple[Feed, Feed]:
    a = env.feed("id int PRIMARY KEY, label text")
    b = env.feed("id int PRIMARY KEY, amount numeric(10,2), flag boolean")
    a.insert(id=1, label="one")
    emit_foreign(a, b)
    a.insert(id=2, label="two")
    env.flush()
    return a, b


def test_a_schema_id_of_another_topic_stops_the_sink_naming_where_id_and_subjects(env: Env) -> None:
    a, b = feeds(env)
    config = to_config(env.config([a.topic]))
    running = RunningSink(config)
    ends = log_end(env.stack.kafka_bootstrap, [a.topic])
    try:
        # Without the check the sink applies all three messages and goes on.
        wait_until(lambda: not running.alive() or caught_up(env.target, config.group_id, ends), 60,
                   "the sink to stop or catch up")
    finally:
        running.close()
    assert isinstance(running.error, PoisonMessageError), running.error
    message = str(running.error)
    assert f"{a.topic}[0]@1" in message
    assert f"schema id {b.key_id}" in message
    assert f"{b.topic}-key" in message
    assert stored_offsets(env.target, config.group_id) == {}  # the batch holding it was not applied


def test_a_schema_id_of_another_topic_is_dead_lettered_with_its_cause(env: Env) -> None:
    a, b = feeds(env)
    dlq = env.create_topic(env.unique_name("dlq"))
    run_until_caught_up(env, env.config([a.topic], errors={"tolerance": "all", "dead_letter_topic": dlq}), [a.topic])

    assert table_texts(env.target, sql.Identifier(a.table), ["id", "label"], ["id"]) == [("1", "one"), ("2", "two")]
    dead = read_all(env, dlq, 1)
    assert len(dead) == 1
    headers: dict[str, Any] = dict(dead[0].headers())
    assert headers["cdc.source.topic"] == a.topic.encode()
    assert headers["cdc.source.partition"] == b"0"
    assert headers["cdc.source.offset"] == b"1"
    assert headers["change_id"] == b.change_ids[-1].encode()
    error = headers["cdc.error"].decode()
    assert f"schema id {b.key_id}" in error
    assert f"{b.topic}-key" in error


def test_with_the_check_off_the_message_is_applied_as_it_decodes(env: Env) -> None:
    a, b = feeds(env)
    run_until_caught_up(env, env.config([a.topic], errors={"check_schema_subjects": False}), [a.topic])
    assert table_texts(env.target, sql.Identifier(a.table), ["id"], ["id"]) == [("1",), ("2",)]
    # B's envelope names B's source table, which decides the destination table.
    assert table_texts(env.target, sql.Identifier(b.table), ["id", "amount"], ["id"]) == [("7", "1.50")]

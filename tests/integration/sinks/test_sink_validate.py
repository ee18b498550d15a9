"""`validate()` and `inspect()` of the sink against the real stack."""

from __future__ import annotations

import pytest

from sinks.postgres import PostgresSink
from tests.integration.sinks.conftest import Env, run_until_caught_up, to_config
from transforms.base import TransformChain

pytestmark = pytest.mark.integration


def test_validate_passes_for_a_working_config_and_names_each_problem(env: Env) -> None:
    topic = env.create_topic(env.unique_name("topic"))
    dlq = env.create_topic(env.unique_name("dlq"))
    good = env.config([topic], errors={"tolerance": "all", "dead_letter_topic": dlq})
    assert PostgresSink(to_config(good), TransformChain()).validate() == []

    bad = env.config([topic, "no-such-topic-x"], errors={"tolerance": "all", "dead_letter_topic": "no-such-dlq"})
    bad["sink"]["dsn"] = env.stack.target_dsn + "_missing_database"
    messages = [p.message for p in PostgresSink(to_config(bad), TransformChain()).validate()]
    assert any("destination database" in m for m in messages)
    assert any("no-such-dlq" in m for m in messages)
    assert any("no-such-topic-x" in m for m in messages)


def test_inspect_reads_the_stored_offsets(env: Env) -> None:
    feed = env.feed("id int PRIMARY KEY, v text")
    for i in range(5):
        feed.insert(id=i, v="x")
    data = env.config([feed.topic])
    run_until_caught_up(env, data, [feed.topic])
    feed.insert(id=10, v="later")
    env.flush()
    stored = PostgresSink(to_config(data), TransformChain()).inspect()
    assert stored["partitions"] == [{"topic": feed.topic, "partition": 0, "next_offset": 5}]

"""An update that changes the key while a TOASTed column is unchanged: the new row keeps the old row's value.

PostgreSQL sends no value for an unchanged TOASTed column; with the default replica identity the old tuple holds
only the key. The sink takes the value from the old key's row in the same transaction that deletes it.
"""

from __future__ import annotations

import pytest
from psycopg import sql

from tests.integration.sinks.conftest import Env, run_until_caught_up, table_texts

pytestmark = pytest.mark.integration

BIG = "B" * 5000


def rows(env: Env, table: str) -> list[tuple[str | None, ...]]:
    return table_texts(env.target, sql.Identifier(table), ["id", "v", "big"], ["id"])


def test_key_change_keeps_an_unchanged_toast_value_from_an_earlier_batch(env: Env) -> None:
    feed = env.feed("id int PRIMARY KEY, v text, big text")
    feed.insert(id=1, v="a", big=BIG)
    run_until_caught_up(env, env.config([feed.topic]), [feed.topic])
    feed.change_key({"id": 1}, {"id": 2}, toast=("big",))
    run_until_caught_up(env, env.config([feed.topic]), [feed.topic])
    assert rows(env, feed.table) == [("2", "a", BIG)]
    assert rows(env, feed.table) == [tuple(r) for r in feed.expected(["id", "v", "big"])]


def test_key_changes_within_one_batch_and_chained(env: Env) -> None:
    feed = env.feed("id int PRIMARY KEY, v text, big text")
    feed.insert(id=10, v="x", big="X" * 4000)
    run_until_caught_up(env, env.config([feed.topic]), [feed.topic])
    feed.insert(id=1, v="a", big=BIG)
    feed.change_key({"id": 1}, {"id": 2}, toast=("big",))  # the insert earlier in the batch knows the value
    feed.change_key({"id": 10}, {"id": 11}, toast=("big",))  # from the destination row ...
    feed.change_key({"id": 11}, {"id": 12}, toast=("big",))  # ... through a key that is new in this batch
    feed.insert(id=10, v="again", big="new")  # the old key comes back in the same batch
    run_until_caught_up(env, env.config([feed.topic]), [feed.topic])
    expected = [tuple(r) for r in feed.expected(["id", "v", "big"])]
    assert sorted(expected) == sorted([("2", "a", BIG), ("10", "again", "new"), ("12", "x", "X" * 4000)])
    assert rows(env, feed.table) == expected


def test_a_batch_never_ends_between_the_halves_of_a_key_change(env: Env) -> None:
    feed = env.feed("id int PRIMARY KEY, v text, big text")
    for i in range(1, 6):
        feed.insert(id=i, v="a", big=f"{i}" * 3000)
    run_until_caught_up(env, env.config([feed.topic]), [feed.topic])
    for i in range(1, 6):
        feed.change_key({"id": i}, {"id": 100 + i}, toast=("big",))
    # Batches of 2 and 3 records: without holding back, some end after a delete or its tombstone.
    for size in (2, 3):
        table = env.unique_name("dst")
        run_until_caught_up(
            env, env.config([feed.topic], table_map={feed.topic: table}, batch={"max_records": size}),
            [feed.topic],
        )
        assert sorted(rows(env, table)) == sorted((str(100 + i), "a", f"{i}" * 3000) for i in range(1, 6))

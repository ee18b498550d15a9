"""The sink end to end against the real stack: envelopes in Kafka -> destination rows, exactly once."""

from __future__ import annotations

import random
from typing import Any

import pytest
from psycopg import sql

from tests.integration.sinks.conftest import (
    Env,
    applied_rows,
    assert_applied_once,
    ledger_count,
    run_until_caught_up,
    table_texts,
)

pytestmark = pytest.mark.integration

COLUMNS = """id bigint PRIMARY KEY, name text, amount numeric(12,2), tags text[], doc jsonb,
             at timestamptz, day date, big text"""


def mixed_ops(feed: Any, rng: random.Random, n: int) -> None:
    """`n` random inserts, updates and deletes; repeated calls on one feed continue its key space."""
    live: list[int] = feed.live
    for i in range(n):
        next_id = len(feed.change_ids) + 1
        roll = rng.random()
        if roll < 0.45 or len(live) < 3:
            feed.insert(id=next_id, name=f"n{next_id}", amount=f"{rng.randint(0, 10**6) / 100:.2f}",
                        tags=["a", f"t{i}"], doc=f'{{"i": {i}}}', at="2024-05-06 07:08:09.123456+00",
                        day="2024-02-29", big="x" * rng.randint(0, 50))
            live.append(next_id)
        elif roll < 0.85:
            key = rng.choice(live)
            feed.update({"id": key}, name=f"u{i}", amount=f"{rng.randint(0, 10**6) / 100:.2f}")
        else:
            key = live.pop(rng.randrange(len(live)))
            feed.delete({"id": key})


def test_mixed_operations_across_tables_match_the_source(env: Env) -> None:
    rng = random.Random(4)
    feeds = [env.feed(COLUMNS, partitions=3) for _ in range(3)]
    for feed in feeds:
        mixed_ops(feed, rng, 400)
    topics = [f.topic for f in feeds]
    run_until_caught_up(env, env.config(topics), topics)

    for feed in feeds:
        assert_applied_once(env, feed)


def test_replay_from_offset_zero_changes_nothing(env: Env) -> None:
    rng = random.Random(5)
    feed = env.feed(COLUMNS, partitions=2)
    mixed_ops(feed, rng, 300)
    data = env.config([feed.topic])
    run_until_caught_up(env, data, [feed.topic])
    before = env.target.execute(
        sql.SQL("SELECT t::text FROM {} t ORDER BY id").format(sql.Identifier(feed.table))
    ).fetchall()
    assert applied_rows(env, feed) == feed.expected()

    # A second group starts from offset 0: every change is a duplicate; nothing moves, not even bookkeeping.
    replay = env.config([feed.topic])
    run_until_caught_up(env, replay, [feed.topic])
    after = env.target.execute(
        sql.SQL("SELECT t::text FROM {} t ORDER BY id").format(sql.Identifier(feed.table))
    ).fetchall()
    assert after == before
    assert ledger_count(env, feed.change_ids) == len(feed.change_ids)


def test_old_change_never_overwrites_a_newer_row(env: Env) -> None:
    feed = env.feed("id int PRIMARY KEY, v text")
    feed.insert(id=1, v="first")
    feed.update({"id": 1}, v="second")
    run_until_caught_up(env, env.config([feed.topic]), [feed.topic])
    # An older change (lower LSN, a different id: e.g. from another cluster after the ledger was pruned).
    old = feed.schemas.row(["1", "stale"])[0]
    feed.emit("u", None, old, position=(100, 90))
    feed.emit("d", old, None, position=(100, 91))
    run_until_caught_up(env, env.config([feed.topic]), [feed.topic])
    assert table_texts(env.target, sql.Identifier(feed.table), ["id", "v"], ["id"]) == [("1", "second")]


def test_unchanged_toast_keeps_the_stored_value(env: Env) -> None:
    feed = env.feed("id int PRIMARY KEY, v text, big text, n int")
    feed.insert(id=1, v="a", big="B" * 5000, n=1)
    feed.update({"id": 1}, toast=("big",), v="b")
    feed.insert(id=2, v="a", big="C" * 5000, n=1)
    run_until_caught_up(env, env.config([feed.topic]), [feed.topic])
    feed.update({"id": 2}, toast=("big",), v="c")  # in a later batch than the insert
    run_until_caught_up(env, env.config([feed.topic]), [feed.topic])
    rows = table_texts(env.target, sql.Identifier(feed.table), ["id", "v", "big"], ["id"])
    assert rows == [("1", "b", "B" * 5000), ("2", "c", "C" * 5000)]


def test_truncate_and_soft_deletes(env: Env) -> None:
    feed = env.feed("id int PRIMARY KEY, v text")
    for i in range(1, 6):
        feed.insert(id=i, v=f"v{i}")
    feed.delete({"id": 2})
    feed.truncate()
    feed.insert(id=7, v="after")
    feed.delete({"id": 7})
    feed.insert(id=8, v="kept")
    run_until_caught_up(env, env.config([feed.topic], delete_handling="soft"), [feed.topic])
    rows = table_texts(env.target, sql.Identifier(feed.table), ["id", "v", "__cdc_deleted"], ["id"])
    assert [r for r in rows if r[2] == "false"] == [("8", "kept", "false")]
    assert {r[0] for r in rows if r[2] == "true"} == {"1", "2", "3", "4", "5", "7"}


def test_append_mode_keeps_every_change(env: Env) -> None:
    feed = env.feed("id int PRIMARY KEY, v text")
    feed.insert(id=1, v="a")
    feed.update({"id": 1}, v="b")
    feed.delete({"id": 1})
    table = env.unique_name("log")
    data = env.config([feed.topic], mode="append", table_map={feed.topic: table})
    run_until_caught_up(env, data, [feed.topic])
    run_until_caught_up(env, env.config([feed.topic], mode="append", table_map={feed.topic: table}), [feed.topic])
    rows = table_texts(env.target, sql.Identifier(table), ["__cdc_op", "id", "v"], ["__cdc_lsn"])
    assert rows == [("c", "1", "a"), ("u", "1", "b"), ("d", "1", None)]


@pytest.mark.parametrize(
    "unwrap",
    [{"type": "unwrap", "delete_handling": "rewrite"},
     {"type": "unwrap", "delete_handling": "tombstone", "drop_tombstones": False}],
    ids=["rewrite", "tombstone"],
)
def test_flat_records_after_unwrap_match_the_source(env: Env, unwrap: dict[str, Any]) -> None:
    feed = env.feed("id int PRIMARY KEY, v text, big text")
    rng = random.Random(21)
    for i in range(1, 60):
        feed.insert(id=i, v=f"v{i}", big="B" * 3000)
    for _ in range(80):
        key = rng.randint(1, 59)
        if rng.random() < 0.7:
            feed.update({"id": key}, toast=("big",), v=f"u{rng.random()}")  # big not sent: placeholder
        else:
            feed.source.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(feed.ident), (key,))
            feed.emit("d", feed._key_image({"id": key}), None)
            feed.source.execute(sql.SQL("INSERT INTO {} VALUES (%s, 're', 'R')").format(feed.ident), (key,))
            after, _ = feed.schemas.row([str(key), "re", "R"])
            feed.emit("c", None, after)
    data = env.config([feed.topic])
    data["transforms"] = [unwrap]
    run_until_caught_up(env, data, [feed.topic])
    assert applied_rows(env, feed) == feed.expected()


def test_rows_before_a_truncate_in_the_same_batch_stay_gone(env: Env) -> None:
    feed = env.feed("id int PRIMARY KEY, v text")
    feed.insert(id=1, v="a")
    feed.insert(id=2, v="b")
    feed.truncate()
    feed.insert(id=3, v="c")  # same batch, same table, a second run after the truncate
    run_until_caught_up(env, env.config([feed.topic]), [feed.topic])
    assert table_texts(env.target, sql.Identifier(feed.table), ["id", "v"], ["id"]) == [("3", "c")]


NATIVE_COLUMNS = """id bigint PRIMARY KEY, name text, amount numeric(12,2), at timestamptz, local timestamp,
                    flag boolean, n int"""
AWKWARD_TEXTS = ["", "tab\there", "back\\slash", "line\nbreak\r\n", "\\N", "é😀", "\b\f\v", "x" * 300]


def test_rows_read_natively_into_copy_lines_match_the_source(env: Env) -> None:
    """Every column kind the native reader claims (copylines.py), with values COPY must escape or that sit at the
    edges of what a kind mirrors (timestamps beyond Python's years, which the pure path writes), through the
    real sink and destination connection."""
    from schemas.accel import AVAILABLE
    from sinks.postgres.changes import shape_of
    from sinks.postgres.copylines import change_reader

    rng = random.Random(12)
    feed = env.feed(NATIVE_COLUMNS, partitions=2)
    if AVAILABLE:  # every column is claimed: the sink reads natively (unless CDC_ACCEL=0: then the pure path)
        schemas = feed.schemas
        assert schemas.key_schema is not None
        shape = shape_of(schemas.value_schema, schemas.key_schema)
        assert change_reader(schemas.value_schema, shape, accelerated=True) is not None
    times = ["2024-05-06 07:08:09.123456+00", "1970-01-01 00:00:00+00", "0001-01-01 00:00:00+00",
             "9999-12-31 23:59:59.999999+00", "1969-12-31 23:59:59.000001+00", "infinity", "-infinity",
             "4713-01-01 00:00:00+00 BC", "10000-01-01 00:00:00+00"]  # fmt: skip
    live: list[int] = []
    for i in range(300):
        if rng.random() < 0.5 or len(live) < 3:
            key = rng.randint(-(2**63), 2**63 - 1)
            amounts = [None, "0.00", "-0.01", "9999999999.99", f"{rng.randint(-(10**6), 10**6) / 100:.2f}"]
            local = rng.choice(times).removesuffix("+00") if rng.random() < 0.9 else None
            feed.insert(id=key, name=rng.choice([*AWKWARD_TEXTS, None, f"n{i}"]), amount=rng.choice(amounts),
                        at=rng.choice([None, *times]), local=local.replace("+00 BC", " BC") if local else None,
                        flag=rng.choice([None, True, False]), n=rng.choice([None, 0, -(2**31), 2**31 - 1]))  # fmt: skip
            live.append(key)
        elif rng.random() < 0.8:
            feed.update({"id": rng.choice(live)}, name=rng.choice(AWKWARD_TEXTS), at=rng.choice(times))
        else:
            feed.delete({"id": live.pop(rng.randrange(len(live)))})
    run_until_caught_up(env, env.config([feed.topic]), [feed.topic])
    assert_applied_once(env, feed)

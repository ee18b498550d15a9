"""Delivery failures freeze the slot; a dropped replication connection is retried."""

from __future__ import annotations

import pytest
from pgsource_support import SourceEnv

from core.errors import DeliveryError
from core.positions import Lsn
from tests.support.helpers import wait_for

pytestmark = pytest.mark.integration


def confirmed(env: SourceEnv) -> Lsn:
    row = env.slot_row()
    assert row is not None
    return Lsn.parse(row[2])


def test_a_record_kafka_refuses_stops_the_source_without_confirming_it(source_env: SourceEnv) -> None:
    env = source_env
    table = env.table("huge", "CREATE TABLE {t} (id int PRIMARY KEY, v text)")
    source_ctx = env.running(snapshot={"mode": "never"})
    source = source_ctx.__enter__()
    try:
        source.wait_ready()
        env.sql(f"INSERT INTO {table} VALUES (1, 'small')")
        small_end = env.sql("SELECT pg_current_wal_lsn()::text")[0][0]
        wait_for(lambda: confirmed(env) >= Lsn.parse(small_end), 30, what="the small row to be confirmed")
        # ~4 MB of hex (about 2 MB after lz4): above the broker's default 1 MB message limit.
        env.sql(f"INSERT INTO {table} SELECT 2, string_agg(md5(random()::text), '') FROM generate_series(1, 130000)")
        # The insert position, not pg_current_wal_lsn(): with synchronous_commit off the write position may still
        # be short of the commit record, and the slot may legitimately confirm up to the commit's start.
        big_commit = env.sql("SELECT pg_current_wal_insert_lsn()::text")[0][0]
        error = source.join_error(120)
        assert isinstance(error, DeliveryError), error
        assert "did not acknowledge" in str(error)
    finally:
        source.error = None
        source_ctx.__exit__(None, None, None)
    assert confirmed(env) < Lsn.parse(big_commit)
    assert [e.key["id"] for e in env.read(env.topic(table), min_count=1)] == [1]
    # Restarting re-reads the refused change (it was never confirmed) and fails the same way.
    env.sql(f"DELETE FROM {table} WHERE id = 2")
    before = confirmed(env)
    with pytest.raises(DeliveryError), env.running(snapshot={"mode": "never"}) as again:
        again.join_error(120)
    assert confirmed(env) == before


def test_a_terminated_walsender_is_reconnected(source_env: SourceEnv) -> None:
    env = source_env
    table = env.table("retry", "CREATE TABLE {t} (id int PRIMARY KEY)")
    with env.running(snapshot={"mode": "never"}) as source:
        source.wait_ready()
        env.sql(f"INSERT INTO {table} VALUES (1)")
        pid = env.slot_row()[1]  # type: ignore[index]
        env.sql("SELECT pg_terminate_backend(%s)", (pid,))
        wait_for(lambda: (row := env.slot_row()) is not None and row[0] and row[1] != pid, 60, what="a reconnect")
        env.sql(f"INSERT INTO {table} VALUES (2)")
        events = env.read(env.topic(table), min_count=2)
    assert {e.key["id"] for e in events} == {1, 2}

"""Prerequisite problems, a lost slot and a second instance on the same slot end with clear messages."""

from __future__ import annotations

import threading

import pytest
from pgsource_support import RunningSource, SourceEnv

from core.errors import PrerequisiteError
from sources.postgres.slots import SlotInUseError, SlotLostError
from tests.support.helpers import wait_for

pytestmark = pytest.mark.integration


def test_table_without_usable_key_is_reported_with_the_three_fixes(source_env: SourceEnv) -> None:
    env = source_env
    table = env.table("nokey", "CREATE TABLE {t} (a int, b text)")
    source = env.source()
    problems = source.validate()
    assert len(problems) == 1
    assert table in problems[0].message and "no primary key" in problems[0].message
    for fix in ("add a primary key", "REPLICA IDENTITY FULL", "key_columns"):
        assert fix in problems[0].fix
    with pytest.raises(PrerequisiteError, match="no primary key"):
        source.run(threading.Event())
    # The third fix works: REPLICA IDENTITY FULL plus configured key columns.
    env.sql(f"ALTER TABLE {table} REPLICA IDENTITY FULL")
    fixed = env.source(table_options={f"public.{table}": {"key_columns": ["a"]}})
    assert fixed.validate() == []


def test_role_without_replication_or_select(source_env: SourceEnv) -> None:
    env = source_env
    env.table("priv", "CREATE TABLE {t} (id int PRIMARY KEY)")
    role = f"{env.name}_role"
    env.sql(f"CREATE ROLE {role} LOGIN")
    try:
        dsn = env.stack.source_dsn.replace("postgres@", f"{role}@", 1)
        assert role in dsn
        source = env.source(dsn=dsn)
        messages = " | ".join(f"{p.message} -> {p.fix}" for p in source.validate())
        assert "lacks the REPLICATION attribute" in messages
        assert f"ALTER ROLE {role} REPLICATION" in messages
        assert "no SELECT privilege" in messages
    finally:
        env.sql(f"DROP ROLE {role}")


def test_second_instance_is_refused_naming_the_pid_or_waits(source_env: SourceEnv) -> None:
    env = source_env
    env.table("dup", "CREATE TABLE {t} (id int PRIMARY KEY)")
    with env.running(snapshot={"mode": "never"}) as first:
        first.wait_ready()
        pid = env.slot_row()[1]  # type: ignore[index]
        second = RunningSource(env.source(snapshot={"mode": "never"}))
        second.start()
        error = second.join_error(60)
        assert isinstance(error, SlotInUseError)
        assert f"pid {pid}" in str(error)
        standby = RunningSource(
            env.source(snapshot={"mode": "never"}, slot={"name": env.slot, "on_conflict": "wait"})
        )
        standby.start()
        assert not standby.source.ready()
    # The first one stopped: the standby takes over.
    try:
        standby.wait_ready()
    finally:
        standby.stop()


def test_a_vanished_slot_is_a_loud_error_and_never_recreated(source_env: SourceEnv) -> None:
    env = source_env
    env.table("lost", "CREATE TABLE {t} (id int PRIMARY KEY)")
    with env.running(snapshot={"mode": "never"}) as source:
        source.wait_ready()
    env.drop_slot()
    runner = RunningSource(env.source(snapshot={"mode": "initial"}))
    runner.start()
    error = runner.join_error(60)
    assert isinstance(error, SlotLostError)
    assert "may be missing" in str(error) and "when_needed" in str(error)
    assert env.slot_row() is None
    # when_needed re-snapshots on a new slot.
    with env.running(snapshot={"mode": "when_needed"}) as again:
        again.wait_ready()
        wait_for(lambda: env.slot_row() is not None, 10)


def test_missing_existing_publication_is_reported(source_env: SourceEnv) -> None:
    env = source_env
    env.table("pub", "CREATE TABLE {t} (id int PRIMARY KEY)")
    source = env.source(publication={"name": env.publication, "mode": "existing"})
    problems = source.validate()
    expected = f"publication {env.publication!r} does not exist (publication.mode: existing)"
    assert [p.message for p in problems] == [expected]
    with pytest.raises(PrerequisiteError, match="does not exist"):
        source.run(threading.Event())


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "encode-workers"])
def test_an_unmappable_column_stops_the_source_naming_it(source_env: SourceEnv, workers: int) -> None:
    env = source_env
    table = env.table("odd", "CREATE TABLE {t} (id int PRIMARY KEY, p aclitem)")
    runner = RunningSource(env.source(snapshot={"mode": "never"}, encode_workers=workers))
    runner.start()
    runner.wait_ready()
    env.sql(f"INSERT INTO {table} VALUES (1, 'postgres=r/postgres')")
    error = runner.join_error(60)
    assert error is not None and f"public.{table}.p" in str(error)
    assert "skip_unsupported_columns" in str(error)

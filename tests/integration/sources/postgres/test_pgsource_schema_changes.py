"""Schema changes under a running (or stopped) source: defaults, drops while stopped, renames, partitioned tables.

Each test reads the topic back and the value schema the registry holds for it (docs/source.md, Schema changes).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pgsource_support import SourceEnv, without_markers

pytestmark = pytest.mark.integration


def value_fields(env: SourceEnv, topic: str) -> dict[str, dict[str, Any]]:
    """The Value record's fields of the latest value schema registered for `topic`, by name."""
    subject = f"{topic}-value"
    client = env._registry_client  # its latest-version lookup is cached: ask for the newest version by number
    latest = client.get_version(subject, max(client.get_versions(subject)))
    envelope = json.loads(latest.schema.schema_str)
    before = next(f for f in envelope["fields"] if f["name"] == "before")
    return {f["name"]: f for f in before["type"][1]["fields"]}


def afters(env: SourceEnv, topic: str, count: int) -> list[dict[str, Any]]:
    events = without_markers(env.read(topic, min_count=count))
    return [e.value["after"] for e in events if e.value is not None and e.value["after"] is not None]


def test_added_column_with_a_default_carries_it_and_its_values(source_env: SourceEnv) -> None:
    env = source_env
    t = env.table("dflt", "CREATE TABLE {t} (id int PRIMARY KEY, v text)")
    with env.running(snapshot={"mode": "never"}) as source:
        source.wait_ready()
        env.sql(f"INSERT INTO {t} SELECT g, 'before' FROM generate_series(1, 20) g")
        env.sql(f"ALTER TABLE {t} ADD COLUMN d text DEFAULT 'dflt', ADD COLUMN n bigint DEFAULT 42::bigint, "
                "ADD COLUMN at timestamptz DEFAULT now()")  # fmt: skip
        env.sql(f"INSERT INTO {t} (id, v) SELECT g, 'after' FROM generate_series(21, 30) g")
        env.sql(f"INSERT INTO {t} (id, v, d, n) VALUES (31, 'explicit', 'mine', 7)")
        env.sql(f"UPDATE {t} SET v = 'touched' WHERE id = 1")
        rows = afters(env, env.topic(t), 32)
    assert [r["id"] for r in rows] == [*range(1, 32), 1]
    assert all("d" not in r for r in rows[:20])
    assert all(r["d"] == "dflt" and r["n"] == 42 for r in rows[20:30])
    assert (rows[30]["d"], rows[30]["n"]) == ("mine", 7)
    assert (rows[31]["v"], rows[31]["d"]) == ("touched", "dflt")  # an old row reads the default, as in PostgreSQL
    fields = value_fields(env, env.topic(t))
    assert fields["d"]["pg.default"] == "dflt" and fields["n"]["pg.default"] == "42"
    assert "pg.default" not in fields["at"]  # now(): not a constant
    assert "pg.default" not in fields["v"]
    # schema_style debezium (the default): the constant default is Debezium's `connect.default` and the field's default.
    assert fields["d"]["type"] == [{"type": "string", "connect.default": "dflt"}, "null"]
    assert fields["d"]["default"] == "dflt" and fields["n"]["default"] == 42
    assert fields["at"]["type"] == ["null", {"type": "string", "connect.version": 1,
                                             "connect.name": "io.debezium.time.ZonedTimestamp"}]  # fmt: skip


def test_a_column_dropped_while_stopped_streams_through_after_a_restart(source_env: SourceEnv) -> None:
    env = source_env
    t = env.table("drop", "CREATE TABLE {t} (id int PRIMARY KEY, v text)")
    with env.running(snapshot={"mode": "never"}) as source:
        source.wait_ready()
        env.sql(f"INSERT INTO {t} VALUES (1, 'one')")
        env.read(env.topic(t), min_count=1)
    env.sql(f"ALTER TABLE {t} ADD COLUMN x int")
    env.sql(f"INSERT INTO {t} VALUES (2, 'two', 22)")
    env.sql(f"ALTER TABLE {t} DROP COLUMN x")
    env.sql(f"INSERT INTO {t} VALUES (3, 'three')")
    with env.running(snapshot={"mode": "never"}) as source:
        source.wait_ready()
        rows = afters(env, env.topic(t), 3)
    # Each record decodes with the schema it was written with: the dropped column's value is published.
    assert rows == [{"id": 1, "v": "one"}, {"id": 2, "v": "two", "x": 22}, {"id": 3, "v": "three"}]


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "encode-workers"])
def test_a_renamed_column_carries_its_old_name_as_alias(source_env: SourceEnv, workers: int) -> None:
    env = source_env
    env.source_options["encode_workers"] = workers
    t = env.table("ren", "CREATE TABLE {t} (id int PRIMARY KEY, keep text, n int)")
    topic = env.topic(t)
    with env.running(snapshot={"mode": "never"}) as source:
        source.wait_ready()
        env.sql(f"INSERT INTO {t} VALUES (1, 'a', 1)")
        env.sql(f"ALTER TABLE {t} RENAME COLUMN keep TO kept")
        env.sql(f"INSERT INTO {t} VALUES (2, 'b', 2)")
        env.sql(f"ALTER TABLE {t} ADD COLUMN z int")  # a later version keeps the alias
        env.sql(f"INSERT INTO {t} VALUES (3, 'c', 3, 3)")
        rows = afters(env, topic, 3)
    assert rows == [{"id": 1, "keep": "a", "n": 1}, {"id": 2, "kept": "b", "n": 2},
                    {"id": 3, "kept": "c", "n": 3, "z": 3}]  # fmt: skip
    assert value_fields(env, topic)["kept"]["aliases"] == ["keep"]
    assert "aliases" not in value_fields(env, topic)["n"]
    # Renamed while stopped: the first Relation after the start is compared with the registry's latest schema.
    env.sql(f"ALTER TABLE {t} RENAME COLUMN kept TO held")
    env.sql(f"INSERT INTO {t} VALUES (4, 'd', 4, 4)")
    with env.running(snapshot={"mode": "never"}) as source:
        source.wait_ready()
        rows = afters(env, topic, 4)
    assert rows[-1] == {"id": 4, "held": "d", "n": 4, "z": 4}
    assert value_fields(env, topic)["held"]["aliases"] == ["kept", "keep"]


def test_a_partitioned_table_goes_to_one_topic(source_env: SourceEnv) -> None:
    env = source_env
    t = env.table("parted", "CREATE TABLE {t} (id int, region text, v text, PRIMARY KEY (id, region)) "
                            "PARTITION BY LIST (region)")  # fmt: skip
    env.sql(f"CREATE TABLE {t}_eu PARTITION OF {t} FOR VALUES IN ('eu')")
    env.sql(f"CREATE TABLE {t}_us PARTITION OF {t} FOR VALUES IN ('us')")
    env.sql(f"INSERT INTO {t} VALUES (1, 'eu', 'snap'), (2, 'us', 'snap')")
    with env.running() as source:
        source.wait_ready()
        env.sql(f"INSERT INTO {t} VALUES (3, 'eu', 'stream'), (4, 'us', 'stream')")
        env.sql(f"UPDATE {t} SET v = 'moved' WHERE id = 1")
        events = without_markers(env.read(env.topic(t), min_count=5))
    seen = [(e.value["op"], e.value["after"]["id"], e.value["source"]["table"]) for e in events]
    assert sorted(seen[:2]) == [("r", 1, t), ("r", 2, t)]
    assert seen[2:] == [("c", 3, t), ("c", 4, t), ("u", 1, t)]
    assert env.sql("SELECT pubviaroot FROM pg_publication WHERE pubname = %s", (env.publication,)) == [(True,)]

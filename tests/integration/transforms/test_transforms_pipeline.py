"""Transforms on both sides of a real pipeline: route + mask + unwrap at the source, rename + insert at the sink.

`cdc run` replicates a table through Kafka with the chains in the config; the target must hold the
source rows with the masked column hashed, the renamed column, the inserted columns, and deletes applied
(unwrap rewrites them as `__deleted` rows, and the `change_id` header keeps the sink idempotent).
"""

from __future__ import annotations

import hashlib
import json
import signal
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import SchemaRegistryClient
from psycopg import sql

from tests.integration.pipeline_support import drop_replication_state, free_port, start_connector, write_config
from tests.support.helpers import http_get, wait_for

pytestmark = pytest.mark.integration

SALT = "integration-salt"


def rows(dsn: str, table: str, columns: list[str]) -> list[tuple[Any, ...]]:
    query = sql.SQL("SELECT {} FROM {} ORDER BY id").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns), sql.Identifier("public", table)
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        return list(conn.execute(query).fetchall())


def test_source_and_sink_chains_through_the_real_pipeline(stack: Any, unique_name: Any, tmp_path: Path) -> None:
    name, table = unique_name("smt"), unique_name("people")
    with psycopg.connect(stack.source_dsn, autocommit=True) as conn:
        t = sql.Identifier(table)
        create = "CREATE TABLE {} (id bigint PRIMARY KEY, email text NOT NULL, amount numeric(12,2), note text)"
        conn.execute(sql.SQL(create).format(t))
        insert = "INSERT INTO {} SELECT g, 'user' || g || '@x.org', g * 1.5, 'note ' || g FROM generate_series(1, 50) g"
        conn.execute(sql.SQL(insert).format(t))
    transforms = {
        "source": [
            {"type": "route", "regex": f"{name}\\.public\\.(.*)", "replacement": f"{name}.$1"},
            {"type": "mask", "fields": ["email"], "mode": "hash", "salt": SALT},
            {"type": "unwrap", "delete_handling": "rewrite"},
        ],
        "sink": [
            {"type": "rename", "renames": {"note": "remark"}},
            {"type": "insert", "static_field": "origin", "static_value": "smt-test", "offset_field": "kafka_offset"},
        ],
    }
    port = free_port()
    config_path = tmp_path / "connector.yaml"
    write_config(config_path, name, table, port, transforms)
    process = start_connector(config_path, stack, tmp_path / "cdc.log")
    try:
        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"the connector exited ({process.returncode})")
            return http_get(port, "/readyz")[0] == 200

        wait_for(ready, 90, interval=0.5, what="/readyz")
        with psycopg.connect(stack.source_dsn, autocommit=True) as conn:
            t = sql.Identifier(table)
            late = "INSERT INTO {} SELECT g, 'late' || g || '@x.org', g, NULL FROM generate_series(51, 60) g"
            conn.execute(sql.SQL(late).format(t))
            conn.execute(sql.SQL("UPDATE {} SET note = 'updated', email = 'changed@x.org' WHERE id % 5 = 0").format(t))
            conn.execute(sql.SQL("DELETE FROM {} WHERE id % 7 = 0").format(t))
        source = rows(stack.source_dsn, table, ["id", "email", "amount", "note"])
        expected = [
            (i, hashlib.sha256(SALT.encode() + email.encode()).hexdigest(), Decimal(amount), note, "smt-test")
            for i, email, amount, note in source
        ]

        def target_matches() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"the connector exited ({process.returncode})")
            try:
                return rows(stack.target_dsn, table, ["id", "email", "amount", "remark", "origin"]) == expected
            except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
                return False

        wait_for(target_matches, 120, interval=0.5, what="the target to hold the transformed source rows")
        offsets = rows(stack.target_dsn, table, ["id", "kafka_offset"])
        assert all(offset is not None for _, offset in offsets)
        # The topics are the routed ones, and what the registry holds is the unwrapped, masked row.
        topics = set(AdminClient({"bootstrap.servers": stack.kafka_bootstrap}).list_topics(timeout=10).topics)
        assert f"{name}.{table}" in topics
        assert f"{name}.public.{table}" not in topics
        with SchemaRegistryClient({"url": stack.registry_url}) as registry:
            value_schema = json.loads(registry.get_latest_version(f"{name}.{table}-value").schema.schema_str)
            key_schema = json.loads(registry.get_latest_version(f"{name}.{table}-key").schema.schema_str)
        fields = {f["name"]: f for f in value_schema["fields"]}
        assert value_schema["type"] == "record"
        assert {"id", "email", "amount", "note", "__deleted"} <= set(fields)
        assert not {"before", "after", "op", "source"} & set(fields)
        assert fields["email"]["type"] in ("string", ["null", "string"])
        assert [f["name"] for f in key_schema["fields"]] == ["id"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        assert "Traceback" not in (tmp_path / "cdc.log").read_text(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        drop_replication_state(stack.source_dsn, name, name)

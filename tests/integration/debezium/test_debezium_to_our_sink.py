"""Debezium's PostgreSQL connector writes, our sink reads (issue 12, proof 3).

A source table with a column of every encoding in `tests/support/debezium_types.py` is captured by the real
Debezium connector on a Kafka Connect worker: a snapshot of some rows, then streamed inserts, updates, deletes and
an update of the primary key. Our sink then applies Debezium's topic: the destination equals the source row by
row (the `::text` of every column; the documented text where the column's encoding is `lossy`), the ledger holds
one entry per change (ids derived from Debezium's `source` block, `sinks/postgres/debezium.py`), and a second
consumer group replaying the topic changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from psycopg import sql

from devstack.connect import drop_slot_and_publication, postgres_source_settings
from schemas.registry import SchemaRegistry, SchemaRegistryConfig
from schemas.serde import Decoder
from sinks.postgres import debezium
from tests.integration.debezium.conftest import StartWorker
from tests.integration.sinks.conftest import Env, ledger_count, run_until_caught_up, table_texts
from tests.support.debezium_types import ENUM_DDL, TABLES, TIME_ZONE, DebeziumColumn
from tests.support.helpers import consume_all, pg_connect, scratch_schema

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# A column each case's streamed update changes, with its new value as a literal.
_UPDATE = {"adaptive": ("c_text", "'changed'"), "connect": ("c_date", "'2025-01-02'"),
           "propagated": ("c_varchar", "'changed'")}
SNAPSHOT_KEYS = (1, 2, 3)
CHANGES = 10
"""Records Debezium writes: 3 snapshot reads, insert 4, update 1, delete 2 (+ tombstone), key 3 -> 5 (a delete, its
tombstone and a create)."""


def _ddl(schema: str, columns: tuple[DebeziumColumn, ...]) -> sql.Composable:
    defs = [
        sql.SQL("{} {}{}").format(
            sql.Identifier(c.name),
            sql.Identifier(schema, "dbz_mood") if c.source_type == "dbz_mood" else sql.SQL(c.source_type),  # type: ignore[arg-type]
            sql.SQL(" PRIMARY KEY") if c.key else sql.SQL(""),
        )
        for c in columns
    ]
    return sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(schema, "items"), sql.SQL(", ").join(defs))


def _insert(schema: str, columns: tuple[DebeziumColumn, ...], key: int) -> sql.Composable:
    values = [sql.Literal(key) if c.key else sql.SQL(c.literal) for c in columns]  # type: ignore[arg-type]
    return sql.SQL("INSERT INTO {} VALUES ({})").format(sql.Identifier(schema, "items"), sql.SQL(", ").join(values))


def _debezium_settings(columns: tuple[DebeziumColumn, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for column in columns:
        out.update({k: str(v) for k, v in column.debezium_only.items()})
    return out


@pytest.mark.parametrize("mode", list(TABLES))
def test_debezium_source_applied_by_our_sink_once(
    env: Env, unique_name: Callable[[str], str], connect_worker: StartWorker, mode: str
) -> None:
    columns = TABLES[mode]
    names = [c.name for c in columns]
    stack = env.stack
    schema, prefix = unique_name("dbz"), unique_name("dbz")
    slot, publication = unique_name("dbz_slot"), unique_name("dbz_pub")
    topic = f"{prefix}.{schema}.items"
    destination = unique_name(f"dbz_{mode}")
    items = sql.Identifier(schema, "items")
    with pg_connect(stack.source_dsn) as conn, scratch_schema(conn, schema):
        conn.execute(sql.SQL("SET TimeZone = {}").format(sql.Literal(TIME_ZONE)))
        if any(c.source_type == "dbz_mood" for c in columns):
            conn.execute(sql.SQL(ENUM_DDL.format(schema=sql.Identifier(schema).as_string(conn))))  # type: ignore[arg-type]
        conn.execute(_ddl(schema, columns))
        for key in SNAPSHOT_KEYS:
            conn.execute(_insert(schema, columns, key))
        worker = None
        try:
            settings = postgres_source_settings(
                stack.source_dsn, stack.registry_url, topic_prefix=prefix, tables=[f"{schema}.items"],
                slot=slot, publication=publication, **_debezium_settings(columns),
            )
            worker = connect_worker({prefix: settings})
            consume_all(stack.kafka_bootstrap, topic, min_count=len(SNAPSHOT_KEYS), timeout=120, idle=0.2)
            # Streamed in two transactions of two changes each.
            column, literal = _UPDATE[mode]
            with conn.transaction():
                conn.execute(_insert(schema, columns, 4))
                conn.execute(sql.SQL("UPDATE {} SET {} = {} WHERE id = 1").format(
                    items, sql.Identifier(column), sql.SQL(literal)))  # type: ignore[arg-type]
            with conn.transaction():
                conn.execute(sql.SQL("DELETE FROM {} WHERE id = 2").format(items))
                conn.execute(sql.SQL("UPDATE {} SET id = 5 WHERE id = 3").format(items))
            messages = consume_all(stack.kafka_bootstrap, topic, min_count=CHANGES, timeout=120, idle=0.5)
        finally:
            if worker is not None:
                worker.stop()
            drop_slot_and_publication(stack.source_dsn, slot, publication)
        expected = _rows(table_texts(conn, items, names, ["id"]), names)
    for row in expected:  # where Debezium's encoding loses part of the value, the documented result
        row.update({c.name: c.text for c in columns if c.lossy})
    assert [e["id"] for e in expected] == ["1", "4", "5"]

    with SchemaRegistry(SchemaRegistryConfig(url=stack.registry_url)) as registry:
        decoder = Decoder(registry)
        events: list[tuple[dict[str, Any], Any]] = [
            (decoder.decode(m.value())[0], decoder.decode(m.key())[0]) for m in messages if m.value() is not None
        ]
    assert [v["op"] for v, _ in events] == ["r", "r", "r", "c", "u", "d", "d", "c"]
    # What docs/event-format.md says of Debezium's `sequence`: its first LSN is never above the event's own, so a
    # streamed change's row-guard position is its own `lsn`.
    assert all(debezium.position(v["source"], v["op"]) == (v["source"]["lsn"],) * 2 for v, _ in events[3:])
    change_ids = [str(debezium.change_id(v["source"], v["op"], k)) for v, k in events]
    assert len(set(change_ids)) == len(change_ids)

    data = env.config([topic], table_map={topic: destination})
    run_until_caught_up(env, data, [topic])
    env.target.execute(sql.SQL("SET TimeZone = {}").format(sql.Literal(TIME_ZONE)))
    applied = _rows(table_texts(env.target, sql.Identifier(destination), names, ["id"]), names)
    assert _differences(applied, expected) == []
    types = env.target.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped", (destination,)
    ).fetchall()
    assert {n: t for n, t in types if n in names} == {c.name: c.destination_type for c in columns}
    assert applied == expected
    assert ledger_count(env, change_ids) == len(change_ids)
    assert _ledger_rows(env, destination) == len(change_ids)

    # A second consumer group reads Debezium's records again: same ids, nothing applied twice.
    run_until_caught_up(env, env.config([topic], table_map={topic: destination}), [topic])
    assert _rows(table_texts(env.target, sql.Identifier(destination), names, ["id"]), names) == expected
    assert _ledger_rows(env, destination) == len(change_ids)


def _rows(rows: list[tuple[Any, ...]], names: list[str]) -> list[dict[str, Any]]:
    """Rows by column name, so that a difference names its column."""
    return [dict(zip(names, row, strict=True)) for row in rows]


def _differences(applied: list[dict[str, Any]], expected: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """(id, column, destination text, source text) of each value the destination has differently."""
    return [(want["id"], name, got.get(name), text) for got, want in zip(applied, expected, strict=False)
            for name, text in want.items() if got.get(name) != text]


def _ledger_rows(env: Env, destination: str) -> int:
    row = env.target.execute(
        "SELECT count(*) FROM cdc.applied_changes WHERE destination = %s::regclass::oid", (destination,)
    ).fetchone()
    assert row is not None
    return int(row[0])

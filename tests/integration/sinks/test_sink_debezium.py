"""Our sink reads topics Debezium's PostgreSQL connector wrote: hand-built envelopes of Debezium's exact shape
(no change id), for a table of each encoding (`tests/support/debezium_types.py`), applied once, with a replay by a
second consumer group adding nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from psycopg import sql

from core.records import AvroSchema
from schemas.serde import Encoder
from sinks.postgres import debezium
from tests.integration.sinks.conftest import Env, ledger_count, run_until_caught_up, table_texts
from tests.support.debezium_types import (
    TABLES,
    TIME_ZONE,
    DebeziumColumn,
    key_schema,
    row_of,
    source_block,
    value_schema,
)

pytestmark = pytest.mark.integration

_TEXT_CHANGE = {"adaptive": ("c_text", "changed"), "connect": ("c_date", 20090),
                "propagated": ("c_varchar", "changed")}
_TEXT_AFTER = {"adaptive": "changed", "connect": "2025-01-02", "propagated": "changed"}


@dataclass
class DebeziumTopic:
    """One table's topic as Debezium writes it: snapshot reads, then streamed transactions."""

    env: Env
    columns: tuple[DebeziumColumn, ...]
    table: str
    topic: str
    key_id: int = 0
    value_id: int = 0
    encoder: Encoder = field(default_factory=Encoder)
    change_ids: list[str] = field(default_factory=list)
    last_commit: int | None = None

    def __post_init__(self) -> None:
        name = self.topic
        self.key_schema = AvroSchema.of(key_schema(name, self.columns))
        self.value_schema = AvroSchema.of(value_schema(name, self.columns))
        self.key_id = self.env.registry.register(f"{self.topic}-key", self.key_schema)
        self.value_id = self.env.registry.register(f"{self.topic}-value", self.value_schema)

    def send(self, op: str, key: int, row: dict[str, Any] | None, *, lsn: int, tx: int | None,
             snapshot: str = "false", last_commit: int | None = None) -> None:
        source = source_block(db="shop", schema="public", table=self.table, lsn=lsn, last_commit=last_commit,
                              tx=tx, snapshot=snapshot)
        value = {"before": row if op == "d" else None, "after": None if op == "d" else row, "source": source,
                 "transaction": None, "op": op, "ts_ms": 1_735_732_801_000, "ts_us": None, "ts_ns": None}
        key_bytes = self.encoder.encode(self.key_id, self.key_schema, {"id": key})
        self.env.producer.produce(self.topic, key=key_bytes,
                                  value=self.encoder.encode(self.value_id, self.value_schema, value))
        if op == "d":
            self.env.producer.produce(self.topic, key=key_bytes, value=None)  # Debezium's tombstone: no headers
        self.change_ids.append(str(debezium.change_id(source, op, {"id": key})))

    def transaction(self, tx: int, begin: int, commit: int, *changes: tuple[str, int, dict[str, Any] | None]) -> None:
        """Changes at `begin`, `begin + 8`, ...; `sequence[0]` is the previous transaction's commit."""
        for i, (op, key, row) in enumerate(changes):
            self.send(op, key, row, lsn=begin + 8 * i, tx=tx, last_commit=self.last_commit)
        self.last_commit = commit

    def key_change(self, tx: int, lsn: int, commit: int, old: int, new: int, columns: tuple[DebeziumColumn, ...]
                   ) -> None:
        """An update of the key, as Debezium writes it: a delete of the old key (and its tombstone), then a create
        of the new one, both with the update's source block (same `lsn`)."""
        self.send("d", old, row_of(columns, id=old), lsn=lsn, tx=tx, last_commit=self.last_commit)
        self.send("c", new, row_of(columns, id=new), lsn=lsn, tx=tx, last_commit=self.last_commit)
        self.last_commit = commit


@pytest.mark.parametrize("mode", list(TABLES))
def test_debezium_topics_apply_once_and_a_replay_adds_nothing(env: Env, mode: str) -> None:
    columns = TABLES[mode]
    table = env.unique_name(f"dbz_{mode}")
    topic = env.create_topic(f"{env.unique_name('dbz')}.public.{table}")
    feed = DebeziumTopic(env, columns, table, topic)
    changed, new_value = _TEXT_CHANGE[mode]
    snapshot_lsn = 0x2000000
    # The snapshot: rows 1, 2, 3.
    for key, marker in ((1, "first"), (2, "true"), (3, "last")):
        feed.send("r", key, row_of(columns, id=key), lsn=snapshot_lsn, tx=None, snapshot=marker)
    data = env.config([topic])
    run_until_caught_up(env, data, [topic])  # the snapshot rows are in the destination before the stream comes
    # A transaction that began before the snapshot and committed after it: first streamed, no last commit known,
    # its changes below the snapshot's LSN. It must still win over the snapshot rows.
    feed.transaction(900, snapshot_lsn - 0x100, snapshot_lsn + 0x40,
                     ("u", 1, row_of(columns, id=1, **{changed: new_value})))
    # Two interleaved transactions: 902 writes at a lower LSN than 901 but commits after it.
    feed.transaction(901, snapshot_lsn + 0x300, snapshot_lsn + 0x400, ("c", 4, row_of(columns, id=4)),
                     ("d", 2, row_of(columns, id=2)))
    feed.key_change(902, snapshot_lsn + 0x200, snapshot_lsn + 0x500, 3, 5, columns)
    feed.transaction(903, snapshot_lsn + 0x600, snapshot_lsn + 0x700, ("d", 4, row_of(columns, id=4)))
    run_until_caught_up(env, data, [topic])
    env.target.execute(sql.SQL("SET TimeZone = {}").format(sql.Literal(TIME_ZONE)))
    names = [c.name for c in columns]
    unchanged = tuple(c.text for c in columns)
    expected = [
        ("1", *(_TEXT_AFTER[mode] if c.name == changed else c.text for c in columns[1:])),
        ("5", *unchanged[1:]),
    ]
    assert table_texts(env.target, sql.Identifier(table), names, ["id"]) == expected
    types = env.target.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped", (table,)
    ).fetchall()
    assert {n: t for n, t in types if n in names} == {c.name: c.destination_type for c in columns}
    assert len(set(feed.change_ids)) == len(feed.change_ids) == 9
    assert ledger_count(env, feed.change_ids) == len(feed.change_ids)

    # A second consumer group reads the same records again: same ids, nothing applied twice.
    replay = env.config([topic])
    run_until_caught_up(env, replay, [topic])
    assert ledger_count(env, feed.change_ids) == len(feed.change_ids)
    assert table_texts(env.target, sql.Identifier(table), names, ["id"]) == expected
    row = env.target.execute(
        "SELECT count(*) FROM cdc.applied_changes WHERE destination = %s::regclass::oid", (table,)
    ).fetchone()
    assert row is not None and row[0] == len(feed.change_ids)

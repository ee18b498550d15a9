"""A snapshot interrupted by SIGTERM, rows deleted at the source while the connector is down, a restart: the
redone snapshot (new slot, new consistent point, new change ids) must leave the destination equal to the
source, without the deleted rows the first, partial snapshot had already put in Kafka."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.integration.pipeline_support import (
    drop_replication_state,
    drop_tables,
    free_port,
    start_connector,
    stop_connector,
    table_digest,
    wait_until,
    write_config,
)
from tests.integration.sinks.conftest import caught_up, log_end
from tests.support.helpers import http_get

pytestmark = pytest.mark.integration

ROWS = 40_000
DELETED = 1_000


def _status(port: int) -> dict[str, Any]:
    code, body = http_get(port, "/status")
    return json.loads(body) if code == 200 else {}


def _snapshot_rows(port: int) -> int:
    snapshot = (_status(port).get("source") or {}).get("snapshot") or {}
    return int(snapshot.get("rows") or 0)


def _caught_up(stack: Any, slot: str, group: str, topic: str) -> bool:
    """The snapshot is done and the sink has committed every message of the topic."""
    with psycopg.connect(stack.source_dsn, autocommit=True) as conn:
        state = conn.execute("SELECT snapshot_state FROM cdc.source_state WHERE slot_name = %s", (slot,)).fetchone()
    if state != ("done",):
        return False
    with psycopg.connect(stack.target_dsn, autocommit=True) as conn:
        return caught_up(conn, group, log_end(stack.kafka_bootstrap, [topic]))


@pytest.mark.parametrize(
    ("partitions", "delete_handling"), [(1, "hard"), (3, "soft")], ids=["one-partition-hard", "three-partitions-soft"]
)
def test_redone_snapshot_removes_rows_deleted_while_down(
    stack: Any, unique_name: Any, tmp_path: Path, partitions: int, delete_handling: str
) -> None:
    name, table = unique_name("resnap"), unique_name("items")
    t = sql.Identifier(table)
    with psycopg.connect(stack.source_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, v text NOT NULL)").format(t))
        conn.execute(
            sql.SQL("INSERT INTO {} SELECT g, 'row ' || g FROM generate_series(1, %s) g").format(t), (ROWS,)
        )
    port = free_port()
    config_path = tmp_path / "connector.yaml"
    write_config(config_path, name, table, port)
    config = json.loads(config_path.read_text())
    # Small chunks: the source checks for a stop between chunks, so SIGTERM lands inside the snapshot.
    config["source"]["snapshot"]["chunk_size"] = 50
    config["kafka"]["topic_partitions"] = partitions
    config["sink"]["delete_handling"] = delete_handling
    config_path.write_text(json.dumps(config))
    log_path = tmp_path / "cdc.log"
    process = start_connector(config_path, stack, log_path)
    try:
        wait_until(lambda: _snapshot_rows(port) >= 2 * DELETED, 90, "the snapshot to be under way", process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log_path.read_text(errors="replace")[-3000:]
        with psycopg.connect(stack.source_dsn, autocommit=True) as conn:
            state = conn.execute(
                "SELECT snapshot_state FROM cdc.source_state WHERE slot_name = %s", (name,)
            ).fetchone()
            assert state == ("running",), "SIGTERM did not land inside the snapshot: make the table bigger"
            # While the connector is down: rows the partial snapshot already sent to Kafka disappear.
            conn.execute(sql.SQL("DELETE FROM {} WHERE id <= %s").format(t), (DELETED,))

        process = start_connector(config_path, stack, log_path)
        topic = f"{name}.public.{table}"
        wait_until(lambda: _caught_up(stack, name, f"cdc-{name}", topic), 120, "the pipeline to catch up", process)
        columns = ["id", "v"]
        expected = table_digest(stack.source_dsn, "public", table, columns)
        assert expected[0] == ROWS - DELETED
        with psycopg.connect(stack.target_dsn, autocommit=True) as conn:
            live = sql.SQL("WHERE NOT __cdc_deleted") if delete_handling == "soft" else sql.SQL("")
            conn.execute(sql.SQL("CREATE TEMP VIEW live AS SELECT id, v FROM {} {}").format(
                sql.Identifier("public", table), live
            ))
            row = conn.execute(
                "SELECT count(*), coalesce(md5(string_agg(row(id, v)::text, ',' ORDER BY id)), '') FROM live"
            ).fetchone()
        assert row is not None and (int(row[0]), str(row[1])) == expected, (
            f"destination has {row[0] if row else '?'} live rows, source {expected[0]}"
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        stop_connector(process)
        drop_replication_state(stack.source_dsn, name, name)
        drop_tables(stack.source_dsn, t)
        drop_tables(stack.target_dsn, sql.Identifier("public", table))
        with psycopg.connect(stack.source_dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM cdc.source_state WHERE slot_name = %s", (name,))

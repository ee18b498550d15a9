"""`cdc run` end to end on the real stack: PostgreSQL -> source -> Kafka -> sink -> PostgreSQL.

One `cdc run` runs both sides of one config, as a user would, on threads of one process or with the sink in a
child process; the test changes the source while it runs, waits until the target equals the source, checks the
probes (the same in both modes), then stops it with SIGTERM.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from tests.integration.pipeline_support import (
    PROCESSES,
    drop_replication_state,
    free_port,
    start_connector,
    stop_connector,
    table_digest,
    wait_until,
    write_config,
)
from tests.support.helpers import http_get, rows_read_by_pg8000

pytestmark = pytest.mark.integration


def _applied(metrics: bytes) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics.decode())
        for sample in family.samples
        if sample.name == "cdc_sink_applied_total"
    )


@pytest.mark.parametrize("processes", PROCESSES)
def test_cdc_run_replicates_changes_and_stops_cleanly_on_sigterm(
    stack: Any, unique_name: Any, tmp_path: Path, processes: str
) -> None:
    name, table = unique_name("e2e"), unique_name("orders")
    columns = ["id", "customer", "amount", "note", "created_at"]
    with psycopg.connect(stack.source_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (id bigint PRIMARY KEY, customer text NOT NULL, amount numeric(12,2), note text, "
                "created_at timestamptz NOT NULL DEFAULT now())"
            ).format(sql.Identifier(table))
        )
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (id, customer, amount, note) "
                "SELECT g, 'customer ' || g, g * 1.25, CASE WHEN g % 3 = 0 THEN NULL ELSE 'naïve ☃ ' || g END "
                "FROM generate_series(1, 200) g"
            ).format(sql.Identifier(table))
        )
    port = free_port()
    config_path = tmp_path / "connector.yaml"
    write_config(config_path, name, table, port)
    process = start_connector(config_path, stack, tmp_path / "cdc.log", processes)
    try:
        wait_until(lambda: http_get(port, "/readyz")[0] == 200, 90, "/readyz", process)
        with psycopg.connect(stack.source_dsn, autocommit=True) as conn:
            t = sql.Identifier(table)
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (id, customer, amount) SELECT g, 'late ' || g, g FROM generate_series(201, 300) g"
                ).format(t)
            )
            conn.execute(sql.SQL("UPDATE {} SET amount = amount + 1, note = 'updated' WHERE id % 10 = 0").format(t))
            conn.execute(sql.SQL("DELETE FROM {} WHERE id % 7 = 0").format(t))
            with conn.transaction():
                conn.execute(sql.SQL("UPDATE {} SET customer = 'moved' WHERE id = 1").format(t))
                conn.execute(sql.SQL("UPDATE {} SET customer = 'moved again' WHERE id = 1").format(t))
        expected = table_digest(stack.source_dsn, "public", table, columns)

        def target_matches() -> bool:
            try:
                return table_digest(stack.target_dsn, "public", table, columns) == expected
            except psycopg.errors.UndefinedTable:
                return False

        wait_until(target_matches, 120, "the target to equal the source", process)
        # Every change the ledger holds (below), counted by the sink wherever it runs.
        applied = 200 + 1 + 100 + 30 + 42 + 2
        wait_until(lambda: _applied(http_get(port, "/metrics")[1]) == applied, 30, "/metrics to count every change",
                   process)  # fmt: skip
        assert b"cdc_source_events_total" in http_get(port, "/metrics")[1]
        assert http_get(port, "/healthz")[0] == 200
        status = json.loads(http_get(port, "/status")[1])
        assert status["sink"]["assigned"] >= 1 and status["sink"]["partitions"], status
        assert status["source"]
        assert ("sink runs in process" in (tmp_path / "cdc.log").read_text()) == (processes == "2")
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        log = (tmp_path / "cdc.log").read_text(errors="replace")
        assert "Traceback" not in log
        with psycopg.connect(stack.target_dsn, autocommit=True) as conn:
            ledger = conn.execute(
                "SELECT count(*), count(DISTINCT change_id) FROM cdc.applied_changes WHERE topic LIKE %s",
                (f"{name}.%",),
            ).fetchone()
        assert ledger is not None
        # 200 snapshot rows + the snapshot-complete marker + 100 inserts + 30 updates + 42 deletes + 2 updates:
        # each applied once.
        assert ledger[0] == ledger[1] == applied
        with psycopg.connect(stack.source_dsn, autocommit=True) as conn:
            listed = sql.SQL(", ").join(map(sql.Identifier, columns))
            source_rows = [
                list(row)
                for row in conn.execute(sql.SQL("SELECT {} FROM {} ORDER BY 1").format(listed, sql.Identifier(table)))
            ]
        assert rows_read_by_pg8000(stack.target_dsn, "public", table, columns) == source_rows
    finally:
        stop_connector(process)
        drop_replication_state(stack.source_dsn, name, name)

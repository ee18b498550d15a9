"""`cdc run` end to end on the real stack: PostgreSQL -> source -> Kafka -> sink -> PostgreSQL.

One process runs both sides of one config, as a user would; the test changes the source while it runs,
waits until the target equals the source, checks the probes, then stops it with SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def table_digest(dsn: str, schema: str, table: str, columns: list[str]) -> tuple[int, str]:
    query = sql.SQL(
        "SELECT count(*), coalesce(md5(string_agg(row({cols})::text, ',' ORDER BY id)), '') FROM {t}"
    ).format(
        cols=sql.SQL(", ").join(sql.Identifier(c) for c in columns), t=sql.Identifier(schema, table)
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def wait_until(predicate: Any, timeout: float, what: str, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the connector exited ({process.returncode}) while waiting for {what}")
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def drop_replication_state(dsn: str, slot: str, publication: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(50):
            row = conn.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
            if row is None:
                break
            if row[0] is None:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                break
            time.sleep(0.2)
        conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(publication)))


def write_config(path: Path, name: str, table: str, port: int, transforms: dict[str, Any] | None = None) -> None:
    config = {
        "name": name,
        "kafka": {"bootstrap_servers": "${CDC_KAFKA_BOOTSTRAP}"},
        "schema_registry": {"url": "${CDC_SCHEMA_REGISTRY_URL}"},
        "source": {
            "dsn": "${CDC_SOURCE_DSN}",
            "topic_prefix": name,
            "slot": {"name": name},
            "publication": {"name": name},
            "tables": {"include": [f"public.{table}"]},
            "snapshot": {"mode": "initial"},
            "heartbeat": {"interval_s": 1},
            "status_interval_s": 1,
        },
        "sink": {
            "dsn": "${CDC_TARGET_DSN}",
            "topics_regex": f"^{name}\\..*",
            "target_schema": "public",
            "table_name_format": "{table}",
            "batch": {"max_records": 500, "max_wait_ms": 100},
        },
        "transforms": transforms or {"source": [], "sink": []},
        "server": {"port": port},
    }
    path.write_text(json.dumps(config))  # JSON is YAML


def start_connector(config_path: Path, stack: Any, log_path: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        CDC_SOURCE_DSN=stack.source_dsn,
        CDC_TARGET_DSN=stack.target_dsn,
        CDC_KAFKA_BOOTSTRAP=stack.kafka_bootstrap,
        CDC_SCHEMA_REGISTRY_URL=stack.registry_url,
    )
    with log_path.open("wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "connector.cli", "--env-file", os.devnull, "run", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )


def test_cdc_run_replicates_changes_and_stops_cleanly_on_sigterm(stack: Any, unique_name: Any, tmp_path: Path) -> None:
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
    process = start_connector(config_path, stack, tmp_path / "cdc.log")
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
        code, metrics = http_get(port, "/metrics")
        assert code == 200
        assert b"cdc_sink_applied" in metrics
        assert http_get(port, "/healthz")[0] == 200
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
        # 200 snapshot rows + 100 inserts + 30 updates + 42 deletes + 2 updates: each applied once.
        assert ledger[0] == ledger[1] == 200 + 100 + 30 + 42 + 2
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        drop_replication_state(stack.source_dsn, name, name)

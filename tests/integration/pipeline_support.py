"""Helpers for tests that run `cdc run` as a subprocess against the real stack."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tests.support.helpers import wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
    """`wait_for`, failing at once if the connector process has exited."""

    def check() -> Any:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the connector exited ({process.returncode}) while waiting for {what}")
        return predicate()

    wait_for(check, timeout, interval=0.5, what=what)


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


def source_section(name: str, table: str, *, prefix: str | None = None) -> dict[str, Any]:
    """The `source` config of one table of `public`, slot and publication named `name`, topics under `prefix`."""
    return {
        "dsn": "${CDC_SOURCE_DSN}",
        "topic_prefix": prefix or name,
        "slot": {"name": name},
        "publication": {"name": name},
        "tables": {"include": [f"public.{table}"]},
        "snapshot": {"mode": "initial"},
        "heartbeat": {"interval_s": 1},
        "status_interval_s": 1,
    }


def sink_section(name: str) -> dict[str, Any]:
    """The `sink` config applying every topic under `name` to `public`, tables named as in the source."""
    return {
        "dsn": "${CDC_TARGET_DSN}",
        "topics_regex": f"^{name}\\..*",
        "target_schema": "public",
        "table_name_format": "{table}",
        "batch": {"max_records": 500, "max_wait_ms": 100},
    }


def write_config(path: Path, name: str, table: str, port: int, transforms: dict[str, Any] | None = None) -> None:
    config = {
        "name": name,
        "kafka": {"bootstrap_servers": "${CDC_KAFKA_BOOTSTRAP}"},
        "schema_registry": {"url": "${CDC_SCHEMA_REGISTRY_URL}"},
        "source": source_section(name, table),
        "sink": sink_section(name),
        "transforms": transforms or {"source": [], "sink": []},
        "server": {"port": port},
    }
    path.write_text(json.dumps(config))  # JSON is YAML


PROCESSES = ["1", "2"]
"""`cdc run --processes`: the source and the sink on threads of one process, or the sink in a child process."""


def start_connector(
    config_path: Path, stack: Any, log_path: Path, processes: str | None = None, **popen: Any
) -> subprocess.Popen[bytes]:
    """`cdc run` on `config_path`; `processes` passes `--processes` (else the config's `processes` decides)."""
    env = dict(os.environ)
    env.update(
        CDC_SOURCE_DSN=stack.source_dsn,
        CDC_TARGET_DSN=stack.target_dsn,
        CDC_KAFKA_BOOTSTRAP=stack.kafka_bootstrap,
        CDC_SCHEMA_REGISTRY_URL=stack.registry_url,
    )
    with log_path.open("wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "connector.cli", "--env-file", os.devnull, "run", str(config_path)]
            + ([] if processes is None else ["--processes", processes]),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            **popen,
        )


def stop_connector(process: subprocess.Popen[bytes]) -> None:
    """Kill the connector if it still runs (cleanup after a test that may have failed half way)."""
    if process.poll() is None:
        process.kill()
        process.wait(10)


def drop_tables(dsn: str, *tables: sql.Identifier) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in tables:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))

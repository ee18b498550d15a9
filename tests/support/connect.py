"""Kafka Connect workers for the Debezium compatibility tests: where their jars are cached, connector settings."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from psycopg import sql
from psycopg.conninfo import make_conninfo

from tests.support.examples import REPO_ROOT
from tests.support.helpers import pg_connect


def connect_home() -> Path:
    """Where the Connect jars are cached between sessions: `$CDC_HOME`, else `.cdc` at the repository root."""
    return Path(os.environ.get("CDC_HOME") or REPO_ROOT / ".cdc").expanduser().absolute()


def drop_slot_and_publication(dsn: str, slot: str, publication: str, *, timeout: float = 30.0) -> None:
    """Remove what Debezium's connector leaves in the source (its slot stays behind when it stops)."""
    with pg_connect(dsn) as conn:
        deadline = time.monotonic() + timeout
        while True:
            row = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
            if row is None:
                break
            if not row[0]:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                break
            if time.monotonic() >= deadline:
                raise AssertionError(f"slot {slot} still active {timeout:.0f}s after its worker stopped")
            time.sleep(0.2)
        conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(publication)))


@contextmanager
def scratch_database(dsn: str, name: str) -> Iterator[str]:
    """A database `name` created on `dsn`'s server for one test (Debezium's JDBC sink writes into it); its DSN.

    Dropped on leaving, sessions still in it (a sink that did not stop cleanly) closed by force.
    """
    database = sql.Identifier(name)
    with pg_connect(dsn) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(database))
    try:
        yield make_conninfo(dsn, dbname=name)
    finally:
        with pg_connect(dsn) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(database))

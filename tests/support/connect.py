"""Kafka Connect workers for the Debezium compatibility tests: where their jars are cached, connector settings."""

from __future__ import annotations

import os
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

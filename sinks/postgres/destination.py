"""The destination database as the sink's batch loop uses it: one session, its applier, and the stored offsets.

Every call may fail with a psycopg error; the caller decides (through `core.errors`) whether to retry, isolate
poison or stop. A broken connection is replaced on the next call, and the applier forgets its session state then.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

from core.timeouts import libpq_options
from sinks.postgres.apply import Applier, ApplyResult
from sinks.postgres.changes import Change
from sinks.postgres.config import PostgresSinkConfig
from sinks.postgres.messages import Partition
from sinks.postgres.state import ensure_state, read_offsets
from sinks.postgres.tables import TableManager


class PostgresDestination:
    """One connection to the destination (opened on first use) and the `Applier` bound to it."""

    def __init__(self, config: PostgresSinkConfig, group_id: str) -> None:
        self._config = config
        self._group_id = group_id
        self._dsn = config.dsn.get_secret_value()
        self._applier = Applier(config, group_id, TableManager(config))
        self._conn: psycopg.Connection[Any] | None = None

    def setup(self) -> None:
        """Create schema `cdc` and its tables where missing."""
        ensure_state(self._connection())

    def read_offsets(self, partitions: Sequence[Partition]) -> dict[Partition, int]:
        return read_offsets(self._connection(), self._group_id, list(partitions))

    def apply(self, changes: Sequence[Change], offsets: Mapping[Partition, int]) -> ApplyResult:
        """Steps 2-5 of the commit order (`sinks.postgres.loop`): one transaction, committed on return."""
        return self._applier.apply(self._connection(), changes, offsets)

    def isolate(self, changes: Sequence[Change]) -> list[tuple[Change, Exception]]:
        """The changes the destination refuses on their own (everything rolled back)."""
        return self._applier.isolate(self._connection(), changes)

    def drop_broken(self) -> None:
        """Close a connection that broke (between retries), so its socket is not held while waiting."""
        if self._conn is not None and self._conn.broken:
            self._conn.close()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
            self._applier.reset()
            self._conn = psycopg.connect(
                self._dsn,
                autocommit=True,
                application_name=f"cdc-sink-{self._group_id}"[:63],
                **libpq_options(self._config.connect_timeout_s),
            )
        return self._conn

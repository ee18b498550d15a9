"""Heartbeats: a logical message written into the source's WAL so an idle captured database still lets the slot
advance (the stream carries the message, the next confirmation releases the WAL before it)."""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql

from core.errors import RetriableError
from core.timeouts import libpq_options
from sources.postgres.replication import first_value_within

log = logging.getLogger(__name__)

HEARTBEAT_PREFIX = "cdc-heartbeat"


class Heartbeat:
    """Emits one heartbeat message per `beat()` over its own connection (opened on first use)."""

    def __init__(self, dsn: str, *, connect_timeout_s: int) -> None:
        self._dsn = dsn
        self._connect_timeout_s = connect_timeout_s
        self._conn: psycopg.Connection | None = None

    def beat(self, timeout: float) -> None:
        """Emit a heartbeat, waiting at most `timeout` seconds; a failure is logged, never raised."""
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(
                    self._dsn,
                    autocommit=True,
                    application_name="cdc-connector-heartbeat",
                    **libpq_options(self._connect_timeout_s),
                )
            query = sql.SQL("SELECT pg_logical_emit_message(false, {}, now()::text)::text").format(
                sql.Literal(HEARTBEAT_PREFIX)
            )
            first_value_within(self._conn, query, timeout)
        except (psycopg.Error, RetriableError) as exc:
            # A missed heartbeat only delays WAL release; streaming goes on.
            log.warning("heartbeat failed: %s", str(exc).strip())

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

"""Slot lag monitoring: how many bytes of WAL the slot holds back, read while streaming."""

from __future__ import annotations

import logging

import psycopg

from core.metrics import SOURCE_SLOT_LAG_BYTES
from sources.postgres.slots import slot_lag_bytes

log = logging.getLogger(__name__)


class LagMonitor:
    """Reads the slot's lag over the run's normal connection and exports it as a metric."""

    def __init__(self, conn: psycopg.Connection, slot_name: str) -> None:
        self._conn = conn
        self._slot_name = slot_name

    def read(self, timeout: float) -> int | None:
        """The lag in bytes, None when it cannot be read now (logged). A silent database raises RetriableError:
        it stops the stream, not just the lag report."""
        try:
            lag = slot_lag_bytes(self._conn, self._slot_name, timeout=timeout)
        except psycopg.Error as exc:
            log.warning("cannot read the slot lag: %s", str(exc).strip())
            return None
        if lag is not None:
            SOURCE_SLOT_LAG_BYTES.set(lag)
        return lag

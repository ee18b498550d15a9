"""A replication slot as `pg_replication_slots` describes it, for tests of the decisions taken on it."""

from __future__ import annotations

from core.positions import Lsn
from sources.postgres.slots import SlotInfo


def slot_info(**changes: object) -> SlotInfo:
    """A healthy, idle pgoutput slot `s` of database `db` at LSN 100, with `changes` applied."""
    values: dict[str, object] = {
        "name": "s", "plugin": "pgoutput", "database": "db", "active": False, "active_pid": None,
        "confirmed_flush": Lsn(100), "restart_lsn": Lsn(50), "wal_status": "reserved", "lag_bytes": 0,
    }  # fmt: skip
    values.update(changes)
    return SlotInfo(**values)  # type: ignore[arg-type]

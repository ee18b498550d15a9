"""Deterministic change identities (see docs/event-format.md, "change_id"; the layout is `core.change_ids`).

The namespace is derived from the server's system identifier and the database name, so two databases never
share ids; the name is the change's WAL coordinates (streamed) or the snapshot identity plus the row key
(snapshot), the position its commit LSN (streamed) or the snapshot's consistent point. Reading the same WAL, or
the same snapshot, again yields the same UUIDs, and they ascend with the WAL.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from core.change_ids import OrderedIds

_ROOT = uuid.UUID("6f1e3c1a-8d0b-5c57-9b7e-2f0f2c8d4a11")


def namespace_for(system_identifier: str, database: str) -> uuid.UUID:
    """The namespace of one source database (a UUIDv5 of its system identifier and name)."""
    return uuid.uuid5(_ROOT, f"{system_identifier}/{database}")


class ChangeIds:
    """Mints change ids (UUID text) within one source database's namespace."""

    __slots__ = ("_ids",)

    def __init__(self, namespace: uuid.UUID) -> None:
        self._ids = OrderedIds(namespace)

    @property
    def namespace(self) -> uuid.UUID:
        return self._ids.namespace

    def streamed(self, commit_lsn: int, lsn: int, ordinal: int) -> str:
        """A streamed change, at `commit_lsn`, named `{commit_lsn}:{lsn}:{ordinal}` (decimal; ordinal = position
        within its transaction)."""
        return self._ids.text(commit_lsn, f"{commit_lsn}:{lsn}:{ordinal}")

    def key_change_delete(self, commit_lsn: int, lsn: int, ordinal: int) -> str:
        """The delete half of an update that changed the row's key: named `{commit_lsn}:{lsn}:{ordinal}:d`.

        The create half keeps the update's own id.
        """
        return self._ids.text(commit_lsn, f"{commit_lsn}:{lsn}:{ordinal}:d")

    def snapshot(self, consistent_point: int, schema: str, table: str, key: Sequence[Any]) -> str:
        """A snapshot row, at `consistent_point`, named `snapshot:{consistent_point}:{schema}.{table}:{key as
        canonical JSON}`.

        `key` holds the key columns' PostgreSQL text values in key order (text keeps it independent of the
        Avro mapping and exact for numerics).
        """
        canonical = json.dumps(list(key), ensure_ascii=False, separators=(",", ":"))
        return self._ids.text(consistent_point, f"snapshot:{consistent_point}:{schema}.{table}:{canonical}")

    def snapshot_complete(self, consistent_point: int, schema: str, table: str) -> str:
        """The end of one table's snapshot, at `consistent_point`, named
        `snapshot-complete:{consistent_point}:{schema}.{table}`."""
        return self._ids.text(consistent_point, f"snapshot-complete:{consistent_point}:{schema}.{table}")

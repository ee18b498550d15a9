"""Deterministic change identities (see docs/event-format.md, "change_id").

The namespace is derived from the server's system identifier and the database name, so two databases never
share ids; the name is the change's WAL coordinates (streamed) or the snapshot identity plus the row key
(snapshot). Reading the same WAL, or the same snapshot, again yields the same UUIDs.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

_ROOT = uuid.UUID("6f1e3c1a-8d0b-5c57-9b7e-2f0f2c8d4a11")


def namespace_for(system_identifier: str, database: str) -> uuid.UUID:
    """The UUIDv5 namespace of one source database."""
    return uuid.uuid5(_ROOT, f"{system_identifier}/{database}")


class ChangeIds:
    """Mints change ids within one source database's namespace."""

    __slots__ = ("_namespace",)

    def __init__(self, namespace: uuid.UUID) -> None:
        self._namespace = namespace

    @property
    def namespace(self) -> uuid.UUID:
        return self._namespace

    def streamed(self, commit_lsn: int, lsn: int, ordinal: int) -> str:
        """A streamed change: `{commit_lsn}:{lsn}:{ordinal}` (decimal), ordinal = position within its transaction."""
        return str(uuid.uuid5(self._namespace, f"{commit_lsn}:{lsn}:{ordinal}"))

    def snapshot(self, consistent_point: int, schema: str, table: str, key: Sequence[Any]) -> str:
        """A snapshot row: `snapshot:{consistent_point}:{schema}.{table}:{key as canonical JSON}`.

        `key` holds the key columns' PostgreSQL text values in key order (text keeps it independent of the
        Avro mapping and exact for numerics).
        """
        canonical = json.dumps(list(key), ensure_ascii=False, separators=(",", ":"))
        return str(uuid.uuid5(self._namespace, f"snapshot:{consistent_point}:{schema}.{table}:{canonical}"))

"""Deterministic change identities (see docs/event-format.md, "change_id").

The namespace is derived from the server's system identifier and the database name, so two databases never
share ids; the name is the change's WAL coordinates (streamed) or the snapshot identity plus the row key
(snapshot). Reading the same WAL, or the same snapshot, again yields the same UUIDs.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from typing import Any

_ROOT = uuid.UUID("6f1e3c1a-8d0b-5c57-9b7e-2f0f2c8d4a11")


def namespace_for(system_identifier: str, database: str) -> uuid.UUID:
    """The UUIDv5 namespace of one source database."""
    return uuid.uuid5(_ROOT, f"{system_identifier}/{database}")


_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


class ChangeIds:
    """Mints change ids within one source database's namespace.

    Equal to `str(uuid.uuid5(namespace, name))`, computed from a pre-hashed namespace because it runs once per
    event (about three times faster than going through `uuid.UUID`).
    """

    __slots__ = ("_base", "_namespace")

    def __init__(self, namespace: uuid.UUID) -> None:
        self._namespace = namespace
        self._base = hashlib.sha1(namespace.bytes, usedforsecurity=False)

    def _uuid5(self, name: str) -> str:
        digest = self._base.copy()
        digest.update(name.encode())
        h = digest.hexdigest()
        # Version 5 replaces the 13th hex digit; the RFC 4122 variant sets the top two bits of the 17th.
        return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"

    @property
    def namespace(self) -> uuid.UUID:
        return self._namespace

    def streamed(self, commit_lsn: int, lsn: int, ordinal: int) -> str:
        """A streamed change: `{commit_lsn}:{lsn}:{ordinal}` (decimal), ordinal = position within its transaction."""
        return self._uuid5(f"{commit_lsn}:{lsn}:{ordinal}")

    def key_change_delete(self, commit_lsn: int, lsn: int, ordinal: int) -> str:
        """The delete half of an update that changed the row's key: `{commit_lsn}:{lsn}:{ordinal}:d`.

        The create half keeps the update's own id.
        """
        return self._uuid5(f"{commit_lsn}:{lsn}:{ordinal}:d")

    def snapshot(self, consistent_point: int, schema: str, table: str, key: Sequence[Any]) -> str:
        """A snapshot row: `snapshot:{consistent_point}:{schema}.{table}:{key as canonical JSON}`.

        `key` holds the key columns' PostgreSQL text values in key order (text keeps it independent of the
        Avro mapping and exact for numerics).
        """
        canonical = json.dumps(list(key), ensure_ascii=False, separators=(",", ":"))
        return self._uuid5(f"snapshot:{consistent_point}:{schema}.{table}:{canonical}")

    def snapshot_complete(self, consistent_point: int, schema: str, table: str) -> str:
        """The end of one table's snapshot: `snapshot-complete:{consistent_point}:{schema}.{table}`."""
        return self._uuid5(f"snapshot-complete:{consistent_point}:{schema}.{table}")

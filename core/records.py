"""The record that flows between sources, transforms and sinks.

A `Record` is immutable; transforms return new records (`dataclasses.replace`). Key and value are
plain Python structures that match `key_schema` / `value_schema` (Avro, as parsed JSON), so every
record can be encoded against a schema the registry holds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

AvroDefinition = Any
"""A parsed Avro schema: a dict (record, enum, ...), a list (union) or a str (primitive/named)."""


@dataclass(frozen=True, slots=True)
class AvroSchema:
    """An Avro schema with its canonical text; equal schemas compare and hash equal (cache keys)."""

    definition: AvroDefinition = field(compare=False, hash=False)
    text: str

    @classmethod
    def of(cls, definition: AvroDefinition) -> AvroSchema:
        return cls(definition, json.dumps(definition, sort_keys=True, separators=(",", ":")))

    @classmethod
    def parse(cls, text: str) -> AvroSchema:
        return cls.of(json.loads(text))

    @property
    def name(self) -> str | None:
        if isinstance(self.definition, Mapping):
            name = self.definition.get("name")
            namespace = self.definition.get("namespace")
            if name and namespace and "." not in name:
                return f"{namespace}.{name}"
            return name
        return None


Headers = tuple[tuple[str, bytes], ...]

NEW_KEY_HEADER = "__debezium.newkey"
"""On the delete of an update that changed the key: the new key (JSON). Debezium's name for it."""
OLD_KEY_HEADER = "__debezium.oldkey"
"""On the create of an update that changed the key: the old key (JSON). Debezium's name for it."""
SNAPSHOT_COMPLETE_HEADER = "cdc.snapshot.complete"
"""Header of the record that ends one table's snapshot (see docs/event-format.md, "Snapshot complete")."""


@dataclass(frozen=True, slots=True)
class Record:
    """One message: where it goes (or came from), its key, its value and their schemas.

    `value is None` is a tombstone. `partition`/`offset`/`timestamp_ms` are set on the sink side
    (where the record came from) and may be set by transforms on the source side.
    """

    topic: str
    key: Any
    value: Any
    key_schema: AvroSchema | None
    value_schema: AvroSchema | None
    headers: Headers = ()
    partition: int | None = None
    offset: int | None = None
    timestamp_ms: int | None = None

    @property
    def is_tombstone(self) -> bool:
        return self.value is None

    @property
    def is_snapshot_complete(self) -> bool:
        """The marker that ends a table's snapshot: no key, no value, header `cdc.snapshot.complete`."""
        return self.value is None and self.header(SNAPSHOT_COMPLETE_HEADER) is not None

    def header(self, name: str) -> bytes | None:
        """The last value of header `name`, as Kafka clients read it."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found


class RecordChain(Protocol):
    """A chain of transforms as a source or sink sees it (`transforms.TransformChain` is one).

    Components never import the transforms: the application builds the chain and hands it in.
    """

    def __len__(self) -> int:
        """The number of transforms; 0 means records pass through untouched."""

    def apply(self, record: Record) -> list[Record]:
        """The records that replace `record` (empty to drop it)."""

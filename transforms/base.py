"""The contract of a single-message transform and of the chain that runs them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from core.records import Record

_KEEP: Any = object()


def evolve(
    record: Record,
    *,
    topic: Any = _KEEP,
    key: Any = _KEEP,
    value: Any = _KEEP,
    key_schema: Any = _KEEP,
    value_schema: Any = _KEEP,
    headers: Any = _KEEP,
) -> Record:
    """`dataclasses.replace` for a `Record`, about twice as fast: it runs once per transform per message."""
    return Record(
        record.topic if topic is _KEEP else topic,
        record.key if key is _KEEP else key,
        record.value if value is _KEEP else value,
        record.key_schema if key_schema is _KEEP else key_schema,
        record.value_schema if value_schema is _KEEP else value_schema,
        record.headers if headers is _KEEP else headers,
        record.partition,
        record.offset,
        record.timestamp_ms,
    )


class Transform(ABC):
    """Maps one record to zero, one or several records.

    Implementations derive any output schema once per input schema and cache it, so
    `apply` is plain data manipulation on the hot path.
    """

    @abstractmethod
    def apply(self, record: Record) -> Sequence[Record]:
        """Return the records that replace `record` (empty to drop it)."""


class TransformChain:
    """Transforms applied in order; an empty chain passes records through untouched."""

    def __init__(self, transforms: Sequence[Transform] = ()) -> None:
        self._transforms = tuple(transforms)

    def __len__(self) -> int:
        return len(self._transforms)

    def apply(self, record: Record) -> list[Record]:
        records = [record]
        for transform in self._transforms:
            out: list[Record] = []
            for item in records:
                out.extend(transform.apply(item))
            records = out
            if not records:
                break
        return records

"""The contract of a single-message transform and of the chain that runs them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from connector.records import Record


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

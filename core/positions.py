"""Positions as value objects: a PostgreSQL LSN."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

_LSN_TEXT = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")


@dataclass(frozen=True, slots=True, order=True)
class Lsn:
    """A WAL position. Parses and prints PostgreSQL's `16/B374D848`; orders totally.

    `Lsn.INVALID` (0/0) means "no position", as in PostgreSQL's InvalidXLogRecPtr.
    """

    value: int

    INVALID: ClassVar[Lsn]

    def __post_init__(self) -> None:
        if not 0 <= self.value < 1 << 64:
            raise ValueError(f"LSN out of range: {self.value}")

    @classmethod
    def parse(cls, text: str) -> Lsn:
        match = _LSN_TEXT.match(text.strip())
        if match is None:
            raise ValueError(f"not an LSN: {text!r}")
        return cls((int(match.group(1), 16) << 32) | int(match.group(2), 16))

    def __str__(self) -> str:
        return f"{self.value >> 32:X}/{self.value & 0xFFFFFFFF:X}"

    def __int__(self) -> int:
        return self.value

    @property
    def is_valid(self) -> bool:
        return self.value != 0

    def __add__(self, delta: int) -> Lsn:
        return Lsn(self.value + delta)

    def __sub__(self, other: Lsn) -> int:
        return self.value - other.value


Lsn.INVALID = Lsn(0)

"""Preflight check results shared by `cdc validate` and the runtime's startup checks."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """Something that stops the connector from running, and how to fix it."""

    component: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"[{self.component}] {self.message} -> fix: {self.fix}"

"""`cdc schemas check` against the registry: one verdict per subject, with what changed and the fix.

The schemas to check come from the caller (the source derives the ones it would produce); the registry's
verdict is authoritative and `schemas.compat` names the fields behind a rejection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.compat import problems_for
from schemas.envelope import TableSchemas
from schemas.registry import SchemaRegistry


@dataclass(frozen=True, slots=True)
class SubjectVerdict:
    """The verdict for one subject: `{topic}-key` or `{topic}-value`."""

    subject: str
    table: str
    kind: str  # "key" | "value"
    exists: bool
    compatible: bool
    level: str
    latest_version: int | None
    changes: tuple[str, ...]
    problems: tuple[str, ...]

    @property
    def status(self) -> str:
        if not self.compatible:
            return "incompatible"
        if not self.exists:
            return "new"
        return "compatible" if self.changes else "unchanged"

    def line(self) -> str:
        """One line for a user: what changed and the fix (incompatible) or the status."""
        if self.compatible:
            return f"{self.status}: {self.subject}" + (f" ({'; '.join(self.changes)})" if self.changes else "")
        what = "; ".join(self.changes or self.problems) or "rejected by the registry"
        return (
            f"incompatible: {self.subject} ({self.level}, latest version {self.latest_version}): {what}. "
            f"Fix: {fix_for(self)}"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "table": self.table,
            "kind": self.kind,
            "status": self.status,
            "exists": self.exists,
            "compatible": self.compatible,
            "level": self.level,
            "latest_version": self.latest_version,
            "changes": list(self.changes),
            "problems": list(self.problems),
        }


def fix_for(check: SubjectVerdict) -> str:
    text = " ".join(check.changes + check.problems)
    if "removed" in text or "no default" in text:
        return "keep the column (or make it nullable first and drop it in a later release) or relax the compatibility"
    if "changed type" in text or "cannot be read" in text:
        return "add a new column with the new type and backfill it instead of changing the type in place"
    if "became required" in text:
        return "keep the column nullable in the schema (e.g. keep it out of the key)"
    return "make the change additive (new nullable columns) or register under a new topic"


def check_against_registry(registry: SchemaRegistry, derived: list[TableSchemas]) -> list[SubjectVerdict]:
    """Check each derived schema against its subject's latest version (a new subject is compatible)."""
    checks = []
    for table_schemas in derived:
        pairs = [("key", table_schemas.key_schema), ("value", table_schemas.value_schema)]
        for kind, schema in pairs:
            if schema is None:
                continue  # keyless table: records have a null key, no key subject
            subject = f"{table_schemas.topic}-{kind}"
            result = registry.check(subject, schema)
            problems: list[str] = []
            if result.latest_schema is not None and not result.compatible:
                problems = problems_for(registry.compatibility, schema, [result.latest_schema])
            checks.append(
                SubjectVerdict(
                    subject=subject,
                    table=table_schemas.table.qualified_name,
                    kind=kind,
                    exists=result.exists,
                    compatible=result.compatible,
                    level=result.level or registry.compatibility,
                    latest_version=result.latest_version,
                    changes=tuple(result.messages),
                    problems=tuple(problems),
                )
            )
    return checks

"""What a destination table must go through to take a new value schema: the pure decisions, no database.

`plan` compares the table's columns as the catalog has them with a `Shape` and returns the DDL steps, in the
order they run, or raises `SchemaError` naming table, column, both types and the fix when the policy says stop.
`sinks.postgres.tables` runs the steps inside the batch's transaction. The rules (docs/sink.md, "Schema changes"):

- a field that is no column: a rename when one of its Avro `aliases` names a column that is no field any more
  (`on_column_renamed: rename`), else a new column, with `DEFAULT <pg.default>` when the field carries one;
- a column whose type cannot hold the field's: widened when the new type holds every old value (`widens`),
  else refused (or written into as it is, `on_unsafe_schema_change: ignore`);
- a column that is no field (nor renamed): `on_column_dropped` (`stop`, `drop`, `keep_nullable`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from core.errors import SchemaError
from sinks.postgres.changes import CDC_COLUMN_PREFIX, Column, Shape
from sinks.postgres.types import DestinationType, holds

DropPolicy = Literal["stop", "drop", "keep_nullable"]
RenamePolicy = Literal["rename", "drop_add"]

_TIMESTAMPS = {
    "timestamp without time zone": "timestamp with time zone",
}


def widens_zone(have: DestinationType, want: DestinationType) -> bool:
    """`timestamp` -> `timestamptz` (not arrays: their elements cannot be given a zone in one expression)."""
    return not have.arrays and not want.arrays and _TIMESTAMPS.get(have.base) == want.base


def widens(have: DestinationType, want: DestinationType) -> bool:
    """True when a column of type `have` may be altered to `want` without losing or changing a stored value.

    `timestamp` -> `timestamptz` counts: the stored local times are read as UTC (see docs/sink.md).
    """
    if holds(want, have):
        return True
    if have.arrays != want.arrays:
        return False
    precise = not want.mods or (bool(have.mods) and want.mods[0] >= have.mods[0])
    if widens_zone(have, want):
        return precise
    if have.base == want.base == "character":
        # char(n) pads to n: a longer char(m) reads the same values padded further, compared equal.
        return precise
    return False


@dataclass(frozen=True, slots=True)
class Existing:
    """One destination column as the catalog has it."""

    type_text: str
    not_null: bool
    has_default: bool


@dataclass(frozen=True, slots=True)
class Policy:
    auto_evolve: bool
    on_type_conflict: Literal["stop", "ignore"]
    on_column_dropped: DropPolicy
    on_column_renamed: RenamePolicy


@dataclass(frozen=True, slots=True)
class AddColumn:
    column: str
    type: DestinationType
    default: str | None


@dataclass(frozen=True, slots=True)
class Widen:
    column: str
    old: DestinationType
    new: DestinationType


@dataclass(frozen=True, slots=True)
class RenameColumn:
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class DropColumn:
    column: str


@dataclass(frozen=True, slots=True)
class DropNotNull:
    column: str


Step = AddColumn | Widen | RenameColumn | DropColumn | DropNotNull


def renames(shape: Shape, existing: Mapping[str, Existing]) -> dict[str, str]:
    """New column name -> the destination column it renames: a field that is no column, one of whose aliases is
    a column that is not itself a field (nor claimed by an earlier field)."""
    names = set(shape.names)
    out: dict[str, str] = {}
    for column in shape.columns:
        if column.name in existing:
            continue
        for alias in column.aliases:
            if alias in existing and alias not in names and alias not in out.values():
                out[column.name] = alias
                break
    return out


def _refuse_type(table: str, column: str, have: DestinationType, want: DestinationType) -> SchemaError:
    return SchemaError(
        f"column {column!r} of {table} is {have} but the source now sends {want}, which it cannot hold "
        "(a narrowing or a change of kind, not a widening)",
        hint=f"migrate the column yourself (ALTER TABLE {table} ALTER COLUMN {column} TYPE {want} USING ...), or set "
        "`sink.on_unsafe_schema_change: ignore` to write into it anyway",
    )


def _type_step(table: str, name: str, column: Column, found: Existing, policy: Policy) -> Step | None:
    have = DestinationType.parse(found.type_text)
    want = column.type.pg_type
    if have is None or holds(have, want):
        return None  # a non built-in target type is the user's choice; values are cast on insert
    if policy.auto_evolve and widens(have, want):
        return Widen(name, have, want)
    if policy.on_type_conflict == "stop":
        raise _refuse_type(table, name, have, want)
    return None


def plan(table: str, existing: Mapping[str, Existing], shape: Shape, policy: Policy) -> list[Step]:
    """The steps that make `existing` take `shape`: renames first (so a renamed column is widened under its new
    name), then adds and type changes in field order, then the columns no field writes any more."""
    steps: list[Step] = []
    renamed = renames(shape, existing) if policy.on_column_renamed == "rename" else {}
    if renamed and not policy.auto_evolve:
        new, old = next(iter(renamed.items()))
        raise SchemaError(
            f"column {old!r} of {table} was renamed to {new!r} in the source",
            hint=f"rename it in the destination (ALTER TABLE {table} RENAME COLUMN {old} TO {new}), "
            "or set `sink.auto_evolve: true`",
        )
    steps.extend(RenameColumn(old, new) for new, old in renamed.items())
    for column in shape.columns:
        name = column.name
        found = existing.get(renamed.get(name, name))
        if found is None:
            if not policy.auto_evolve:
                if policy.on_type_conflict == "stop":
                    raise SchemaError(
                        f"column {name!r} is new in the source but missing in {table}",
                        hint="add it, set `sink.auto_evolve: true`, or `sink.on_unsafe_schema_change: ignore`",
                    )
                continue
            steps.append(AddColumn(name, column.type.pg_type, column.default))
            continue
        step = _type_step(table, name, column, found, policy)
        if step is not None:
            steps.append(step)
    written = set(shape.names) | set(renamed.values())
    for name, found in existing.items():
        if name in written or name.startswith(CDC_COLUMN_PREFIX):
            continue
        match policy.on_column_dropped:
            case "stop":
                raise SchemaError(
                    f"column {name!r} ({found.type_text}) of {table} is not in the source's schema any more "
                    "(dropped, or renamed without an alias)",
                    hint=f"drop it (ALTER TABLE {table} DROP COLUMN {name}) or rename it in the destination, or set "
                    "`sink.schema_changes.on_column_dropped: drop` or `keep_nullable`",
                )
            case "drop":
                steps.append(DropColumn(name))
            case "keep_nullable":
                if found.not_null and not found.has_default:
                    steps.append(DropNotNull(name))
    return steps


def changes_columns(steps: list[Step]) -> bool:
    """Whether `steps` add, rename or drop columns (rather than only widen or relax them)."""
    return any(isinstance(s, (AddColumn, RenameColumn, DropColumn)) for s in steps)

"""Renamed columns, as the stream shows them, become Avro field aliases (docs/source.md, Schema changes).

A table's shape is the list of its published fields: column, field name, PostgreSQL type, aliases. When a new
shape has the same number of fields as the last one published and exactly one column was replaced by another
at the same position with the same type, the old name being gone, the new field carries the old field's name
(and its aliases) as `aliases`: Avro's own rename, so a reader of the new schema reads old data through it and
a sink can rename its column. Aliases, once given, stay with the field while it keeps its name, so later
versions of the schema (and, through the registry, later runs) keep them. The one rule is `aliases_for`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.records import AvroSchema
from schemas.envelope import TableSchemas
from schemas.types import AVRO_ALIASES, PG_NAME, PG_TYPE

Aliases = Mapping[str, tuple[str, ...]]
"""Column name -> the aliases of its field."""


@dataclass(frozen=True, slots=True)
class FieldShape:
    column: str
    field: str
    type_name: str
    aliases: tuple[str, ...] = ()


Shape = tuple[FieldShape, ...]


def shape_of(schemas: TableSchemas) -> Shape:
    """The published fields of a table's schemas."""
    return tuple(FieldShape(c.column.name, c.field_name, c.column.type_name, c.column.aliases) for c in schemas.codecs)


def shape_of_envelope(schema: AvroSchema) -> Shape | None:
    """The fields of a registered envelope schema (this source's form); None for a schema of another form."""
    definition = schema.definition
    if not isinstance(definition, dict):
        return None
    for field in definition.get("fields", ()):
        if field.get("name") != "before" or not isinstance(field.get("type"), list):
            continue
        for branch in field["type"]:
            if isinstance(branch, dict) and branch.get("type") == "record":
                return tuple(_field_shape(f) for f in branch.get("fields", ()))
    return None


def _field_shape(field: Mapping[str, Any]) -> FieldShape:
    name = str(field["name"])
    return FieldShape(
        column=str(field.get(PG_NAME, name)),
        field=name,
        type_name=str(field.get(PG_TYPE, "")),
        aliases=tuple(str(a) for a in field.get(AVRO_ALIASES, ())),
    )


def aliases_for(previous: Shape | None, current: Shape) -> dict[str, tuple[str, ...]]:
    """The aliases of the fields of `current`, the shape that follows `previous` (None: nothing known)."""
    if previous is None:
        return {}
    earlier = {f.column: f for f in previous}
    out = {f.column: earlier[f.column].aliases for f in current if f.column in earlier and earlier[f.column].aliases}
    renamed = _renamed(previous, current)
    if renamed is not None:
        old, new = renamed
        out[new.column] = tuple(dict.fromkeys(a for a in (old.field, *old.aliases) if a != new.field))
    return out


def _renamed(previous: Shape, current: Shape) -> tuple[FieldShape, FieldShape] | None:
    if len(previous) != len(current):
        return None
    replaced = [(old, new) for old, new in zip(previous, current, strict=True) if old.column != new.column]
    if len(replaced) != 1:
        return None
    old, new = replaced[0]
    if old.type_name != new.type_name or old.column in {f.column for f in current}:
        return None
    if new.field in old.aliases:
        return None  # the stream replays the shape from before a rename that was already published
    return old, new

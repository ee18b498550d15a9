"""Avro schema surgery for transforms: moving a type out of its schema, nullability, base types.

Transforms that change a shape first `schemas.avro.normalize` the input definition: every named type is
then defined under its full name (no `namespace` key) and every reference is a full name, so a subtree
can be moved into another schema without its names changing meaning. `standalone` inlines the
definitions a moved subtree refers to but does not define (the envelope defines `Value` in
`before` and only names it in `after`).
"""

from __future__ import annotations

from typing import Any

from core.records import AvroDefinition
from schemas.avro import NAMED_KINDS, PRIMITIVES, NamedTypes

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


def standalone(definition: AvroDefinition, named: NamedTypes, defined: set[str] | None = None) -> AvroDefinition:
    """A normalized subtree made valid on its own: the first reference to a type it does not define inlines it.

    Pass the same `defined` set when several subtrees end up in one schema (each name is defined once).
    """
    seen = set() if defined is None else defined
    if isinstance(definition, str):
        if definition in PRIMITIVES or definition in seen or definition not in named:
            return definition
        return standalone(named[definition], named, seen)
    if isinstance(definition, list):
        return [standalone(branch, named, seen) for branch in definition]
    if not isinstance(definition, dict):
        return definition
    kind = definition.get("type")
    if kind in NAMED_KINDS:
        name = definition["name"]
        if name in seen:
            return name
        seen.add(name)
        if "fields" in definition:
            fields = [{**f, "type": standalone(f["type"], named, seen)} for f in definition["fields"]]
            return {**definition, "fields": fields}
        return definition
    if kind == "array":
        return {**definition, "items": standalone(definition["items"], named, seen)}
    if kind == "map":
        return {**definition, "values": standalone(definition["values"], named, seen)}
    if isinstance(kind, str):
        return definition
    return {**definition, "type": standalone(kind, named, seen)}


def split_nullable(type_: AvroDefinition) -> tuple[AvroDefinition, bool]:
    """(the non-null type, whether null is allowed) of a field type; a union of several types stays a union."""
    if isinstance(type_, list):
        rest = [branch for branch in type_ if branch != "null"]
        nullable = len(rest) != len(type_)
        return (rest[0] if len(rest) == 1 else rest), nullable
    return type_, type_ == "null"


def make_nullable(type_: AvroDefinition) -> AvroDefinition:
    if isinstance(type_, list):
        return type_ if "null" in type_ else ["null", *type_]
    return type_ if type_ == "null" else ["null", type_]


def base_type(type_: AvroDefinition, named: NamedTypes) -> tuple[str, str | None]:
    """(Avro type name, logical type) of a non-union type: `("long", "timestamp-micros")`, `("record", None)`."""
    if isinstance(type_, list):
        return "union", None
    if isinstance(type_, str):
        if type_ in PRIMITIVES:
            return type_, None
        found = named.get(type_)
        return (str(found["type"]), None) if found else ("unknown", None)
    kind = type_.get("type")
    if isinstance(kind, str) and kind in PRIMITIVES:
        return kind, type_.get("logicalType")
    if isinstance(kind, str):
        return kind, type_.get("logicalType")
    return base_type(kind, named)


def replace_fields(record: dict[str, Any], fields: list[dict[str, Any]]) -> dict[str, Any]:
    return {**record, "fields": fields}


def field_names(record: dict[str, Any]) -> list[str]:
    return [f["name"] for f in record["fields"]]


def resolve(type_: AvroDefinition, named: NamedTypes) -> AvroDefinition:
    """A named reference replaced by its definition (one level)."""
    if isinstance(type_, str) and type_ not in PRIMITIVES:
        return named.get(type_, type_)
    return type_


def without_pg_type(field: dict[str, Any]) -> dict[str, Any]:
    """A field whose type a transform changed no longer claims its PostgreSQL column type."""
    return {k: v for k, v in field.items() if k != "pg.type"}


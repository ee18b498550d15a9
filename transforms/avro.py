"""Avro schema surgery for transforms: full names, named-type lookup, moving a type out of its schema.

Transforms that change a shape first `normalize` the input definition: every named type is then
defined under its full name (no `namespace` key) and every reference is a full name, so a subtree
can be moved into another schema without its names changing meaning. `standalone` inlines the
definitions a moved subtree refers to but does not define (the envelope defines `Value` in
`before` and only names it in `after`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from core.records import AvroDefinition

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
NAMED_KINDS = frozenset({"record", "error", "enum", "fixed"})
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"

Registry = dict[str, dict[str, Any]]


def _full_name(name: str, namespace: str | None) -> str:
    if "." in name:
        return name
    return f"{namespace}.{name}" if namespace else name


def normalize(definition: AvroDefinition, enclosing: str | None = None) -> AvroDefinition:
    """A copy where named types are defined and referred to by full name (no namespace inheritance)."""
    if isinstance(definition, str):
        return definition if definition in PRIMITIVES else _full_name(definition, enclosing)
    if isinstance(definition, list):
        return [normalize(branch, enclosing) for branch in definition]
    if not isinstance(definition, dict):
        return definition
    kind = definition.get("type")
    if kind in NAMED_KINDS:
        name = str(definition["name"])
        namespace = definition.get("namespace", enclosing) if "." not in name else None
        full = _full_name(name, namespace or None)
        out = {k: v for k, v in definition.items() if k != "namespace"}
        out["name"] = full
        if kind in ("record", "error"):
            inner = full.rpartition(".")[0] or None
            out["fields"] = [{**f, "type": normalize(f["type"], inner)} for f in definition["fields"]]
        return out
    if kind == "array":
        return {**definition, "items": normalize(definition["items"], enclosing)}
    if kind == "map":
        return {**definition, "values": normalize(definition["values"], enclosing)}
    return {**definition, "type": normalize(kind, enclosing)}


def walk_named(definition: AvroDefinition) -> Iterator[dict[str, Any]]:
    """Every named type defined in a normalized definition, in definition order."""
    if isinstance(definition, list):
        for branch in definition:
            yield from walk_named(branch)
    elif isinstance(definition, dict):
        kind = definition.get("type")
        if kind in NAMED_KINDS:
            yield definition
            for f in definition.get("fields", ()):
                yield from walk_named(f["type"])
        elif kind == "array":
            yield from walk_named(definition["items"])
        elif kind == "map":
            yield from walk_named(definition["values"])
        elif not isinstance(kind, str):
            yield from walk_named(kind)


def registry_of(definition: AvroDefinition) -> Registry:
    return {named["name"]: named for named in walk_named(definition)}


def standalone(definition: AvroDefinition, registry: Registry, defined: set[str] | None = None) -> AvroDefinition:
    """A normalized subtree made valid on its own: the first reference to a type it does not define inlines it.

    Pass the same `defined` set when several subtrees end up in one schema (each name is defined once).
    """
    seen = set() if defined is None else defined
    if isinstance(definition, str):
        if definition in PRIMITIVES or definition in seen or definition not in registry:
            return definition
        return standalone(registry[definition], registry, seen)
    if isinstance(definition, list):
        return [standalone(branch, registry, seen) for branch in definition]
    if not isinstance(definition, dict):
        return definition
    kind = definition.get("type")
    if kind in NAMED_KINDS:
        name = definition["name"]
        if name in seen:
            return name
        seen.add(name)
        if "fields" in definition:
            fields = [{**f, "type": standalone(f["type"], registry, seen)} for f in definition["fields"]]
            return {**definition, "fields": fields}
        return definition
    if kind == "array":
        return {**definition, "items": standalone(definition["items"], registry, seen)}
    if kind == "map":
        return {**definition, "values": standalone(definition["values"], registry, seen)}
    if isinstance(kind, str):
        return definition
    return {**definition, "type": standalone(kind, registry, seen)}


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


def base_type(type_: AvroDefinition, registry: Registry) -> tuple[str, str | None]:
    """(Avro type name, logical type) of a non-union type: `("long", "timestamp-micros")`, `("record", None)`."""
    if isinstance(type_, list):
        return "union", None
    if isinstance(type_, str):
        if type_ in PRIMITIVES:
            return type_, None
        named = registry.get(type_)
        return (str(named["type"]), None) if named else ("unknown", None)
    kind = type_.get("type")
    if isinstance(kind, str) and kind in PRIMITIVES:
        return kind, type_.get("logicalType")
    if isinstance(kind, str):
        return kind, type_.get("logicalType")
    return base_type(kind, registry)


def replace_fields(record: dict[str, Any], fields: list[dict[str, Any]]) -> dict[str, Any]:
    return {**record, "fields": fields}


def field_names(record: dict[str, Any]) -> list[str]:
    return [f["name"] for f in record["fields"]]


def resolve(type_: AvroDefinition, registry: Registry) -> AvroDefinition:
    """A named reference replaced by its definition (one level)."""
    if isinstance(type_, str) and type_ not in PRIMITIVES:
        return registry.get(type_, type_)
    return type_


def without_pg_type(field: dict[str, Any]) -> dict[str, Any]:
    """A field whose type a transform changed no longer claims its PostgreSQL column type."""
    return {k: v for k, v in field.items() if k != "pg.type"}


Converter = Callable[[Any], Any]

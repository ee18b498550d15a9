"""Avro named types, as the Avro specification defines them: full names, namespaces, lookup, normalisation.

The rules (specification, "Names"): a name containing a dot is a full name and its namespace is the part
before the last dot; otherwise the type's `namespace` attribute applies, else the namespace of the
enclosing named type (an empty namespace is the null namespace). Primitive type names are never
namespaced. The namespace a named type passes on to the types it defines is the namespace of its own full
name. A reference without a dot means the type of that name in the enclosing namespace, else in the null
namespace (as the Java implementation resolves it).

`normalize` rewrites a definition so every named type is defined and referred to by its full name (no
`namespace` attributes, no inheritance): a subtree then means the same wherever it is moved, and a
`NamedTypes` index (full name -> definition) resolves every reference in it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from core.records import AvroDefinition

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
NAMED_KINDS = frozenset({"record", "error", "enum", "fixed"})
RECORD_KINDS = frozenset({"record", "error"})

NamedTypes = dict[str, dict[str, Any]]
"""Named-type definitions by full name."""


def full_name(name: str, namespace: str | None) -> str:
    """The full name of `name` defined or referred to in `namespace` (None or "" = the null namespace)."""
    if "." in name or name in PRIMITIVES or not namespace:
        return name
    return f"{namespace}.{name}"


def namespace_of(full: str) -> str | None:
    """The namespace of a full name (None for the null namespace)."""
    return full.rpartition(".")[0] or None


def defined_name(definition: Mapping[str, Any], enclosing: str | None) -> str:
    """The full name of a named type's definition met in namespace `enclosing`."""
    name = str(definition["name"])
    return full_name(name, definition.get("namespace", enclosing))


def lookup(reference: str, namespace: str | None, named: Mapping[str, Any]) -> Any:
    """The definition a reference names from within `namespace`, or None (primitives are not looked up)."""
    if reference in PRIMITIVES:
        return None
    found = named.get(full_name(reference, namespace))
    return found if found is not None else named.get(reference)


def walk_named(definition: AvroDefinition, enclosing: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(full name, definition) of every named type defined in `definition`, in definition order."""
    if isinstance(definition, list):
        for branch in definition:
            yield from walk_named(branch, enclosing)
    elif isinstance(definition, dict):
        kind = definition.get("type")
        if kind in NAMED_KINDS and "name" in definition:
            full = defined_name(definition, enclosing)
            yield full, definition
            inner = namespace_of(full)
            for f in definition.get("fields", ()) if kind in RECORD_KINDS else ():
                yield from walk_named(f["type"], inner)
        elif kind == "array":
            yield from walk_named(definition["items"], enclosing)
        elif kind == "map":
            yield from walk_named(definition["values"], enclosing)
        elif isinstance(kind, (dict, list)):
            yield from walk_named(kind, enclosing)


def named_types(definition: AvroDefinition) -> NamedTypes:
    """The named types a definition defines, by full name (the first definition of a name wins)."""
    out: NamedTypes = {}
    for full, named in walk_named(definition):
        out.setdefault(full, named)
    return out


def normalize(definition: AvroDefinition) -> AvroDefinition:
    """A copy where named types are defined and referred to by full name (no namespace inheritance).

    A reference resolves as `lookup` resolves it; one to a type the definition does not define takes the
    enclosing namespace.
    """
    return _normalized(definition, None, named_types(definition))


def _normalized(definition: AvroDefinition, enclosing: str | None, named: NamedTypes) -> AvroDefinition:
    if isinstance(definition, str):
        full = full_name(definition, enclosing)
        return definition if full not in named and definition in named else full
    if isinstance(definition, list):
        return [_normalized(branch, enclosing, named) for branch in definition]
    if not isinstance(definition, dict):
        return definition
    kind = definition.get("type")
    if kind in NAMED_KINDS:
        full = defined_name(definition, enclosing)
        out = {k: v for k, v in definition.items() if k != "namespace"}
        out["name"] = full
        if enclosing and "." not in full:
            out["namespace"] = ""  # the null namespace, inside a namespaced type: it must be said
        if kind in RECORD_KINDS:
            inner = namespace_of(full)
            out["fields"] = [{**f, "type": _normalized(f["type"], inner, named)} for f in definition["fields"]]
        return out
    if kind == "array":
        return {**definition, "items": _normalized(definition["items"], enclosing, named)}
    if kind == "map":
        return {**definition, "values": _normalized(definition["values"], enclosing, named)}
    return {**definition, "type": _normalized(kind, enclosing, named)}

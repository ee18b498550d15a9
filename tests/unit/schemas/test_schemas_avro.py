"""The Avro name rules (schemas/avro.py): full names, namespaces, the named-type index, normalisation."""

from __future__ import annotations

from typing import Any

import fastavro
import pytest

from schemas.avro import PRIMITIVES, full_name, lookup, named_types, namespace_of, normalize

pytestmark = pytest.mark.unit


def test_full_names_follow_the_specification() -> None:
    assert full_name("X", "a.b") == "a.b.X"
    assert full_name("c.X", "a.b") == "c.X"  # a dotted name is already a full name
    assert full_name("X", None) == full_name("X", "") == "X"  # the null namespace
    assert all(full_name(p, "a.b") == p for p in PRIMITIVES)  # primitives are never namespaced
    assert namespace_of("a.b.X") == "a.b" and namespace_of("X") is None


SCHEMA: dict[str, Any] = {
    "type": "record", "name": "Outer", "namespace": "a",
    "fields": [
        # Inherits `a`.
        {"name": "inner", "type": {"type": "record", "name": "Inner", "fields": [
            # A dotted name: its own namespace (`b`) is what its fields inherit, not the enclosing `a`.
            {"name": "moved", "type": {"type": "record", "name": "b.Moved", "fields": [
                {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["x"]}},
            ]}},
        ]}},
        # An explicit empty namespace: the null namespace.
        {"name": "plain", "type": {"type": "fixed", "name": "Plain", "namespace": "", "size": 2}},
        {"name": "again", "type": "Inner"},  # short reference within `a`
        {"name": "e_ref", "type": "b.E"},
        {"name": "items", "type": {"type": "array", "items": {"type": "error", "name": "Err", "fields": []}}},
    ],
}  # fmt: skip


def test_the_index_names_every_defined_type_by_full_name() -> None:
    assert list(named_types(SCHEMA)) == ["a.Outer", "a.Inner", "b.Moved", "b.E", "Plain", "a.Err"]
    found: dict[str, Any] = {}
    fastavro.parse_schema(SCHEMA, named_schemas=found)  # another implementation of the rules agrees
    assert set(found) == set(named_types(SCHEMA))


def test_lookup_tries_the_enclosing_namespace_then_the_null_namespace() -> None:
    named = named_types(SCHEMA)
    assert lookup("Inner", "a", named)["name"] == "Inner"
    # Not in `a`: the null namespace's type (as the Java implementation resolves it).
    assert lookup("Plain", "a", named)["name"] == "Plain"
    assert lookup("E", "b", named)["name"] == "E"
    assert lookup("E", "a", named) is None
    assert lookup("string", "a", named) is None


def test_normalize_spells_out_full_names_and_keeps_the_meaning() -> None:
    normalized = normalize(SCHEMA)
    assert list(named_types(normalized)) == list(named_types(SCHEMA))
    fields = {f["name"]: f["type"] for f in normalized["fields"]}  # type: ignore[index]
    assert "namespace" not in normalized  # type: ignore[operator]
    assert fields["again"] == "a.Inner" and fields["e_ref"] == "b.E"
    assert fields["plain"]["namespace"] == ""  # the null namespace inside `a` must be said
    moved = fields["inner"]["fields"][0]["type"]
    assert moved["name"] == "b.Moved" and moved["fields"][0]["type"]["name"] == "b.E"
    # Same canonical form as the original: the same schema.
    canonical = fastavro.schema.to_parsing_canonical_form
    assert canonical(fastavro.parse_schema(normalized)) == canonical(fastavro.parse_schema(SCHEMA))


def test_normalize_resolves_a_short_reference_to_the_null_namespace_when_the_enclosing_one_lacks_it() -> None:
    schema = {"type": "record", "name": "R", "namespace": "a", "fields": [
        {"name": "p", "type": {"type": "fixed", "name": "P", "namespace": "", "size": 1}},
        {"name": "q", "type": "P"},
        {"name": "u", "type": ["null", "Unknown"]},
    ]}  # fmt: skip
    fields = {f["name"]: f["type"] for f in normalize(schema)["fields"]}  # type: ignore[index]
    assert fields["q"] == "P" and fields["u"] == ["null", "a.Unknown"]

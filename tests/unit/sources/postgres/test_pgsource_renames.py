"""Rename detection: one column replaced by another of the same type at the same position -> a field alias."""

from __future__ import annotations

from dataclasses import replace

from schemas.envelope import build_table_schemas
from sources.postgres.renames import FieldShape, aliases_for, shape_of, shape_of_envelope
from tests.unit.schemas.schemas_support import column, table


def shape(*fields: tuple[str, str] | tuple[str, str, tuple[str, ...]]) -> tuple[FieldShape, ...]:
    return tuple(FieldShape(f[0], f[0], f[1], f[2] if len(f) == 3 else ()) for f in fields)  # type: ignore[misc]


def test_a_renamed_column_gets_its_old_name_as_alias() -> None:
    before = shape(("id", "integer"), ("keep", "text"), ("n", "integer"))
    after = shape(("id", "integer"), ("kept", "text"), ("n", "integer"))
    assert aliases_for(before, after) == {"kept": ("keep",)}


def test_no_rename_without_a_previous_shape_or_when_unchanged() -> None:
    current = shape(("id", "integer"), ("keep", "text"))
    assert aliases_for(None, current) == {}
    assert aliases_for(current, current) == {}


def test_other_changes_are_not_renames() -> None:
    before = shape(("id", "integer"), ("a", "text"), ("b", "text"))
    assert aliases_for(before, shape(("id", "integer"), ("x", "integer"), ("b", "text"))) == {}  # another type
    assert aliases_for(before, shape(("id", "integer"), ("x", "text"), ("y", "text"))) == {}  # two replaced
    assert aliases_for(before, shape(("id", "integer"), ("a", "text"), ("b", "text"), ("c", "text"))) == {}  # added
    assert aliases_for(before, shape(("id", "integer"), ("b", "text"))) == {}  # dropped
    assert aliases_for(before, shape(("id", "integer"), ("b", "text"), ("a", "text"))) == {}  # reordered names


def test_aliases_stay_with_the_field_and_accumulate() -> None:
    renamed = shape(("id", "integer"), ("kept", "text", ("keep",)))
    grown = shape(("id", "integer"), ("kept", "text"), ("z", "integer"))
    assert aliases_for(renamed, grown) == {"kept": ("keep",)}
    again = shape(("id", "integer"), ("held", "text"))
    assert aliases_for(renamed, again) == {"held": ("kept", "keep")}


def test_replaying_the_shape_before_a_published_rename_is_not_a_rename_back() -> None:
    latest = shape(("id", "integer"), ("kept", "text", ("keep",)))
    replayed = shape(("id", "integer"), ("keep", "text"))
    assert aliases_for(latest, replayed) == {}


def test_the_registered_envelope_gives_back_the_shape_it_was_built_from() -> None:
    info = table(column("id", "int4", key_position=1), replace(column("Kept Name", "text"), aliases=("keep",)))
    schemas = build_table_schemas(info, topic="p.public.t", topic_prefix="p")
    assert shape_of_envelope(schemas.value_schema) == shape_of(schemas)
    assert shape_of(schemas)[1] == FieldShape("Kept Name", "Kept_Name", "text", ("keep",))

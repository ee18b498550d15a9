"""The sink's schema-change decisions: which type changes widen, renames from aliases, the drop policy."""

from __future__ import annotations

import pytest

from core.errors import SchemaError
from sinks.postgres.changes import Column, Shape
from sinks.postgres.evolution import (
    AddColumn,
    DropColumn,
    DropNotNull,
    Existing,
    Policy,
    RenameColumn,
    Widen,
    plan,
    renames,
    widens,
)
from sinks.postgres.types import ColumnType, DestinationType


def t(text: str) -> DestinationType:
    parsed = DestinationType.parse(text)
    assert parsed is not None, text
    return parsed


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("smallint", "integer"), ("integer", "bigint"), ("smallint", "bigint"), ("real", "double precision"),
        ("numeric(10,2)", "numeric(12,2)"), ("numeric(10,2)", "numeric(12,4)"), ("numeric(10,2)", "numeric"),
        ("integer", "numeric"), ("character varying(10)", "character varying(20)"),
        ("character varying(10)", "text"), ("character varying(10)", "character varying"),
        ("character(3)", "character(5)"),
        ("timestamp without time zone", "timestamp with time zone"),
        ("timestamp(3) without time zone", "timestamp with time zone"),
        ("timestamp(3) with time zone", "timestamp(6) with time zone"), ("integer[]", "bigint[]"),
    ],
)  # fmt: skip
def test_widening(old: str, new: str) -> None:
    assert widens(t(old), t(new))


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("bigint", "integer"), ("double precision", "real"), ("numeric(12,2)", "numeric(10,2)"),
        ("numeric(10,2)", "numeric(10,4)"), ("numeric", "numeric(10,2)"), ("text", "character varying(10)"),
        ("character varying(20)", "character varying(10)"), ("character(5)", "character(3)"),
        ("timestamp with time zone", "timestamp without time zone"),
        ("timestamp(6) without time zone", "timestamp(3) with time zone"),
        ("timestamp without time zone[]", "timestamp with time zone[]"), ("text", "integer"), ("integer", "text"),
        ("integer", "integer[]"), ("bigint", "real"),
    ],
)  # fmt: skip
def test_narrowing_or_other_kinds_are_refused(old: str, new: str) -> None:
    assert not widens(t(old), t(new))


def col(name: str, type_text: str = "integer", default: str | None = None, aliases: tuple[str, ...] = ()) -> Column:
    return Column(name, name, ColumnType(t(type_text), True), default, aliases)


def shape(*columns: Column) -> Shape:
    return Shape(tuple(columns), ("id",), flat=False, key_fields=("id",))


def table(**columns: str) -> dict[str, Existing]:
    return {"id": Existing("integer", True, False), **{n: Existing(v, False, False) for n, v in columns.items()}}


def policy(dropped: str = "stop", renamed: str = "rename", conflict: str = "stop", evolve: bool = True) -> Policy:
    return Policy(evolve, conflict, dropped, renamed)  # type: ignore[arg-type]


def test_unchanged_shape_needs_nothing() -> None:
    assert plan("public.t", table(v="text"), shape(col("id"), col("v", "text")), policy()) == []


def test_new_column_carries_its_default() -> None:
    steps = plan("public.t", table(), shape(col("id"), col("d", "text", default="dflt")), policy())
    assert steps == [AddColumn("d", t("text"), "dflt")]


def test_widening_and_refusal_name_table_column_and_types() -> None:
    assert plan("public.t", table(n="integer"), shape(col("id"), col("n", "bigint")), policy()) == [
        Widen("n", t("integer"), t("bigint"))
    ]
    with pytest.raises(SchemaError) as refused:
        plan("public.t", table(n="bigint"), shape(col("id"), col("n", "text")), policy())
    message = str(refused.value) + (refused.value.hint or "")
    for part in ("public.t", "'n'", "bigint", "text", "ALTER TABLE"):
        assert part in message
    # `ignore` writes into the column as it is.
    assert plan("public.t", table(n="bigint"), shape(col("id"), col("n", "text")), policy(conflict="ignore")) == []


def test_rename_detected_from_an_alias_that_names_a_column_no_field_writes() -> None:
    existing = table(keep="text")
    renamed = shape(col("id"), col("kept", "text", aliases=("keep",)))
    assert renames(renamed, existing) == {"kept": "keep"}
    assert plan("public.t", existing, renamed, policy()) == [RenameColumn("keep", "kept")]
    # The alias is still a field (both columns exist in the source): no rename, `kept` is new.
    both = shape(col("id"), col("keep", "text"), col("kept", "text", aliases=("keep",)))
    assert renames(both, existing) == {}
    assert plan("public.t", existing, both, policy()) == [AddColumn("kept", t("text"), None)]
    # An alias naming no destination column: a plain new column.
    assert renames(shape(col("id"), col("kept", "text", aliases=("other",))), existing) == {}


def test_renamed_column_is_widened_under_its_new_name() -> None:
    steps = plan("public.t", table(n="integer"), shape(col("id"), col("m", "bigint", aliases=("n",))), policy())
    assert steps == [RenameColumn("n", "m"), Widen("m", t("integer"), t("bigint"))]


def test_drop_add_adds_the_new_column_and_applies_the_drop_policy_to_the_old() -> None:
    existing = table(keep="text")
    renamed = shape(col("id"), col("kept", "text", aliases=("keep",)))
    assert plan("public.t", existing, renamed, policy("drop", "drop_add")) == [
        AddColumn("kept", t("text"), None), DropColumn("keep")
    ]
    with pytest.raises(SchemaError, match="'keep'"):
        plan("public.t", existing, renamed, policy("stop", "drop_add"))


def test_drop_policy() -> None:
    existing = {**table(a="text"), "b": Existing("text", True, False), "c": Existing("text", True, True)}
    gone = shape(col("id"))
    with pytest.raises(SchemaError, match="on_column_dropped") as stopped:
        plan("public.t", existing, gone, policy("stop"))
    assert "'a'" in str(stopped.value)
    assert plan("public.t", existing, gone, policy("drop")) == [DropColumn("a"), DropColumn("b"), DropColumn("c")]
    # Only a NOT NULL column without a default needs relaxing for rows that no longer write it.
    assert plan("public.t", existing, gone, policy("keep_nullable")) == [DropNotNull("b")]


def test_bookkeeping_columns_are_never_dropped() -> None:
    existing = {**table(), "__cdc_lsn": Existing("bigint", True, False)}
    assert plan("public.t", existing, shape(col("id")), policy("drop")) == []


def test_without_auto_evolve_new_and_renamed_columns_stop() -> None:
    with pytest.raises(SchemaError, match="auto_evolve"):
        plan("public.t", table(), shape(col("id"), col("d")), policy(evolve=False))
    with pytest.raises(SchemaError, match="renamed"):
        plan("public.t", table(keep="text"), shape(col("id"), col("kept", "text", aliases=("keep",))),
             policy(evolve=False))

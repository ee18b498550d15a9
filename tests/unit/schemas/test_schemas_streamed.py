"""Constant defaults (`pg.default`), field aliases, and tables typed from the stream's Relation message."""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from typing import Any

import fastavro
import pytest

from schemas.catalog import constant_default, streamed_table
from schemas.envelope import build_table_schemas
from schemas.serde import without_raw_logical_types
from tests.unit.schemas.schemas_support import column, table


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("0", "0"),
        ("'dflt'::text", "dflt"),
        ("(42)::bigint", "42"),
        ("'-1'::integer", "-1"),
        ("(-7)", "-7"),
        ("1.5", "1.5"),
        ("true", "t"),
        ("false", "f"),
        ("'2020-01-01'::date", "2020-01-01"),
        ("'it''s'::text", "it's"),
        ("'x'::character varying", "x"),
        ("'{a,b}'::text[]", "{a,b}"),
        ("'{\"a\": 1}'::jsonb", '{"a": 1}'),
        ("'2020-01-01 10:00:00+00'::timestamp(3) with time zone", "2020-01-01 10:00:00+00"),
    ],
)
def test_constant_defaults_travel_as_their_text(expr: str, value: str) -> None:
    assert constant_default(expr) == value


@pytest.mark.parametrize(
    "expr",
    [
        None,
        "now()",
        "CURRENT_TIMESTAMP",
        "nextval('t_id_seq'::regclass)",
        "(1 + 2)",
        "lower('A'::text)",
        "('a'::text || 'b'::text)",
        "gen_random_uuid()",
        "NULL::text",
        "ARRAY[1, 2]",
        "'x'::text || 'y'",
    ],
)
def test_defaults_that_are_not_constants_are_absent(expr: str | None) -> None:
    assert constant_default(expr) is None


def _value_fields(schema: dict[str, Any]) -> list[dict[str, Any]]:
    return next(f for f in schema["fields"] if f["name"] == "before")["type"][1]["fields"]


def test_default_and_aliases_are_field_properties_and_nothing_else_changes() -> None:
    plain = table(column("id", "int4", key_position=1, not_null=True), column("d", "text"))
    with_extras = replace(plain, columns=(plain.columns[0], replace(plain.columns[1], default="dflt", aliases=("c",))))
    before = build_table_schemas(plain, topic="p.public.t", topic_prefix="p")
    after = build_table_schemas(with_extras, topic="p.public.t", topic_prefix="p")
    field = _value_fields(after.value_schema.definition)[1]
    assert field["pg.default"] == "dflt"
    assert field["aliases"] == ["c"]
    assert field["default"] is None and field["type"] == ["null", "string"]
    assert "pg.default" not in _value_fields(before.value_schema.definition)[1]
    assert "aliases" not in _value_fields(before.value_schema.definition)[1]
    assert after.key_schema == before.key_schema


def test_a_reader_with_the_alias_reads_data_written_under_the_old_name() -> None:
    old = build_table_schemas(table(column("id", "int4", key_position=1), column("keep", "text")),
                              topic="p.public.t", topic_prefix="p")  # fmt: skip
    renamed = table(column("id", "int4", key_position=1), replace(column("kept", "text"), aliases=("keep",)))
    new = build_table_schemas(renamed, topic="p.public.t", topic_prefix="p")
    writer = fastavro.parse_schema(without_raw_logical_types(old.value_schema.definition))
    reader = fastavro.parse_schema(without_raw_logical_types(new.value_schema.definition))
    row, _ = old.row(["1", "v"])
    envelope = old.envelope(op="c", before=None, after=row, source={
        "version": "x", "connector": "postgresql", "name": "n", "ts_ms": 0, "snapshot": None, "db": "d",
        "sequence": None, "schema": "public", "table": "t", "txId": None, "lsn": None, "xmin": None,
        "commit_lsn": None,
    }, ts_ms=0, change_id="00000000-0000-0000-0000-000000000000")  # fmt: skip
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, writer, envelope)
    buffer.seek(0)
    read = fastavro.schemaless_reader(buffer, writer, reader)
    assert read["after"] == {"id": 1, "kept": "v"}


@dataclass(frozen=True)
class Streamed:
    name: str
    type_oid: int
    type_modifier: int = -1
    is_key: bool = False


def test_streamed_columns_the_catalog_no_longer_has_are_typed_from_the_stream() -> None:
    catalog = table(column("id", "int4", key_position=1, not_null=True), replace(column("b", "text"), default="z"))
    dropped = replace(column("x", "int8", type_name="bigint"), attnum=0)
    info = streamed_table(
        catalog, schema="public", name="t", relation_id=99, replica_identity="d",
        columns=[Streamed("id", 1, is_key=True), Streamed("x", 20), Streamed("b", 1)], typed={1: dropped},
    )  # fmt: skip
    assert [c.name for c in info.columns] == ["id", "x", "b"]
    assert info.columns[1].type_name == "bigint" and info.columns[1].default is None
    assert info.columns[2].default == "z"  # the catalog's, for a column it still has
    assert info.key_columns == ("id",)
    schemas = build_table_schemas(info, topic="p.public.t", topic_prefix="p")
    assert schemas.row(["1", "5000000000", "v"])[0] == {"id": 1, "x": 5000000000, "b": "v"}


def test_a_table_gone_from_the_catalog_is_described_by_the_stream_alone() -> None:
    typed = {0: column("id", "int4"), 1: replace(column("v", "text"), attnum=2)}
    info = streamed_table(
        None, schema="public", name="gone", relation_id=4242, replica_identity="d",
        columns=[Streamed("id", 1, is_key=True), Streamed("v", 1)], typed=typed,
    )  # fmt: skip
    assert info.oid == 4242 and info.key_columns == ("id",) and not info.has_primary_key


def test_key_order_is_the_catalogs_when_the_stream_flags_the_same_columns() -> None:
    catalog = table(column("a", "int4", key_position=2), column("b", "int4", key_position=1))
    same = streamed_table(
        catalog, schema="public", name="t", relation_id=1, replica_identity="d",
        columns=[Streamed("a", 1, is_key=True), Streamed("b", 1, is_key=True)], typed={},
    )  # fmt: skip
    assert same.key_columns == ("b", "a")
    changed = streamed_table(
        catalog, schema="public", name="t", relation_id=1, replica_identity="d",
        columns=[Streamed("a", 1, is_key=True), Streamed("b", 1)], typed={},
    )  # fmt: skip
    assert changed.key_columns == ("a",)
    full = streamed_table(
        replace(catalog, replica_identity="f"), schema="public", name="t", relation_id=1, replica_identity="f",
        columns=[Streamed("a", 1, is_key=True), Streamed("b", 1, is_key=True)], typed={},
    )  # fmt: skip
    assert full.key_columns == ("b", "a")

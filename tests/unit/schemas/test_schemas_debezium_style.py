"""`schema_style: debezium` registers and writes what Debezium's PostgreSQL connector does, column by column
(the expectations, read from the real connector, are in tests/support/debezium_schemas.py)."""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest

from core.metrics import SOURCE_UNREPRESENTABLE_VALUES
from schemas.catalog import ColumnInfo
from schemas.envelope import build_table_schemas, source_block
from schemas.types import DecimalHandling, SchemaStyle, column_codec
from tests.support import debezium_schemas as dbz
from tests.unit.schemas.schemas_support import array_of, column, numeric_typmod, pg_type, table

pytestmark = pytest.mark.unit

_OURS = ("pg.", "aliases")


def _column(spec: dbz.DebeziumField, attnum: int) -> ColumnInfo:
    if spec.typname == dbz.ENUM:
        element = pg_type("mood", kind="e", schema="s", labels=dbz.ENUM_LABELS)
    elif spec.typname == dbz.DOMAIN:
        element = pg_type("numeric")
    else:
        kind = "m" if spec.typname.endswith("multirange") else "r" if spec.typname.endswith("range") else "b"
        element = pg_type(spec.typname, kind=kind, schema="pg_catalog")
    resolved = array_of(element) if spec.array else element
    return column(
        spec.name, resolved, type_name=spec.ddl, not_null=spec.not_null, typmod=spec.typmod, attnum=attnum,
        key_position=dbz.KEY.index(spec.name) + 1 if spec.name in dbz.KEY else None, default=spec.default,
    )  # fmt: skip


def _schemas(style: SchemaStyle = SchemaStyle.DEBEZIUM) -> Any:
    info = table(*(_column(c, i + 1) for i, c in enumerate(dbz.COLUMNS)), schema="s", name="items")
    return build_table_schemas(info, topic="p.s.items", topic_prefix="p", schema_style=style)


def _without_ours(field: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in field.items() if k != "name" and not k.startswith(_OURS)}


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, float) and math.isnan(want):
        return isinstance(got, float) and math.isnan(got)
    if isinstance(want, list) and isinstance(got, list):
        return len(got) == len(want) and all(_same(g, w) for g, w in zip(got, want, strict=True))
    if isinstance(want, dict) and isinstance(got, dict):
        return got.keys() == want.keys() and all(_same(got[k], want[k]) for k in want)
    return bool(got == want) and type(got) is type(want)


def test_every_captured_column_has_debeziums_field() -> None:
    fields = {c.column.name: c.field for c in _schemas().codecs}
    differences = [
        (spec.name, _without_ours(fields[spec.name]), spec.field)
        for spec in dbz.COLUMNS
        if spec.captured and _without_ours(fields[spec.name]) != (spec.ours_field or spec.field)
    ]
    assert differences == []
    assert [spec.name for spec in dbz.COLUMNS if spec.ours_field is not None] == ["c_enum_arr"]


def test_types_debezium_does_not_capture_keep_our_string_encoding() -> None:
    fields = {c.column.name: c.field for c in _schemas().codecs}
    types = {name: fields[name]["type"] for name in dbz.NOT_CAPTURED}
    assert types == {n: ["null", "string"] for n in dbz.NOT_CAPTURED}


def test_every_value_is_debeziums() -> None:
    codecs = {c.column.name: c for c in _schemas().codecs}
    wrong = [
        (spec.name, spec.text, codecs[spec.name].from_text(spec.text), spec.ours_first)
        for spec in dbz.COLUMNS
        if spec.captured and not _same(codecs[spec.name].from_text(spec.text), spec.ours_first)
    ]
    assert wrong == []


def test_special_values_are_debeziums_or_the_documented_difference() -> None:
    codecs = {c.column.name: c for c in _schemas().codecs}
    specials = [spec for spec in dbz.COLUMNS if spec.special is not None]
    assert {s.name for s in specials} >= {"c_num", "c_num_any", "c_date", "c_ts", "c_ts3", "c_tstz", "c_timetz"}
    wrong = []
    for spec in specials:
        assert spec.special is not None
        got = codecs[spec.name].from_text(spec.special[0])
        if not _same(got, spec.ours_special):
            wrong.append((spec.name, spec.special[0], got, spec.ours_special))
    assert wrong == []


def test_key_envelope_and_source_are_debeziums_plus_our_extras() -> None:
    schemas = _schemas()
    assert schemas.key_schema is not None
    key = schemas.key_schema.definition
    assert {**key, "fields": [_without_ours(f) | {"name": f["name"]} for f in key["fields"]]} == dbz.key_schema(
        "p.s.items"
    )
    envelope = schemas.value_schema.definition
    names = [f["name"] for f in envelope["fields"]]
    extras = dbz.OUR_EXTRAS["envelope"]
    assert names == [*dbz.ENVELOPE_FIELDS, *extras]
    by_name = {f["name"]: f for f in envelope["fields"]}
    assert {n: by_name[n]["type"] for n in extras} == extras
    assert envelope["connect.version"] == 2 and envelope["connect.name"] == "p.s.items.Envelope"
    assert by_name["transaction"] == {"name": "transaction", "type": ["null", dbz.TRANSACTION], "default": None}
    for name in ("ts_us", "ts_ns"):
        assert by_name[name] == {"name": name, "type": ["null", "long"], "default": None}
    source = by_name["source"]["type"]
    ours_only = [f for f in source["fields"] if f["name"] in dbz.OUR_EXTRAS["source"]]
    assert {**source, "fields": [f for f in source["fields"] if f not in ours_only]} == dbz.SOURCE
    assert [(f["name"], f["type"]) for f in ours_only] == list(dbz.OUR_EXTRAS["source"].items())


def test_streamed_source_block_says_snapshot_false_and_gives_micro_and_nano_times() -> None:
    block = source_block(name="n", db="d", schema="s", table="t", ts_ms=5, lsn=9, commit_lsn=12, tx_id=3,
                         style=SchemaStyle.DEBEZIUM)  # fmt: skip
    assert (block["snapshot"], block["ts_us"], block["ts_ns"], block["origin"], block["origin_lsn"]) == (
        "false", 5000, 5_000_000, None, None
    )
    native = source_block(name="n", db="d", schema="s", table="t", ts_ms=5, lsn=9, commit_lsn=12, tx_id=3)
    assert native["snapshot"] is None and "ts_us" not in native


def test_avro_native_keeps_its_encodings() -> None:
    codecs = {c.column.name: c for c in _schemas(SchemaStyle.AVRO_NATIVE).codecs}
    assert codecs["c_num"].from_text("NaN") == "NaN"
    assert codecs["c_timetz"].from_text("23:30:00-05:30") == "23:30:00-05:30"
    assert codecs["c_tstz"].field["type"] == ["null", {"type": "long", "logicalType": "timestamp-micros"}]


def test_unrepresentable_numerics_are_null_counted_and_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    info = table(column("id", "int4", not_null=True, key_position=1),
                 column("amount", "numeric", typmod=numeric_typmod(12, 2)), schema="s", name="lossy")  # fmt: skip
    codec = column_codec(info, info.columns[1], decimal_handling=DecimalHandling.PRECISE,
                         schema_style=SchemaStyle.DEBEZIUM)  # fmt: skip
    counter = SOURCE_UNREPRESENTABLE_VALUES.labels(table="s.lossy", column="amount")
    before = counter._value.get()
    with caplog.at_level(logging.WARNING, logger="schemas.types"):
        assert [codec.from_text(t) for t in ("NaN", "1.50", "NaN")] == [None, codec.from_text("1.50"), None]
    assert counter._value.get() - before == 2
    assert len([r for r in caplog.records if "s.lossy.amount" in r.getMessage()]) == 1


def test_a_key_only_before_gives_not_null_columns_their_default_or_zero() -> None:
    codecs = {c.column.name: c for c in _schemas().codecs}
    assert codecs["c_int2_nn"].from_text(None) == 3
    assert codecs["c_text_nn"].from_text(None) == "dflt"
    assert codecs["c_int4"].from_text(None) is None


def test_a_key_only_before_gives_not_null_columns_valid_zeros_of_their_type() -> None:
    mood = pg_type("mood", kind="e", schema="s", labels=("sad", "happy"))
    info = table(
        column("id", "int4", not_null=True, key_position=1), column("at", "timestamptz", not_null=True),
        column("ip", "inet", not_null=True), column("tags", array_of(pg_type("text")), not_null=True),
        column("m", mood, not_null=True), column("b", "bit", typmod=3, not_null=True),
        column("doc", "jsonb", not_null=True), schema="s", name="z",
    )  # fmt: skip
    schemas = build_table_schemas(info, topic="p.s.z", topic_prefix="p", schema_style=SchemaStyle.DEBEZIUM)
    row, _ = schemas.row(["1", None, None, None, None, None, None])
    assert row == {"id": 1, "at": "1970-01-01T00:00:00.000000Z", "ip": "::", "tags": [], "m": "sad",
                   "b": b"", "doc": "{}"}  # fmt: skip

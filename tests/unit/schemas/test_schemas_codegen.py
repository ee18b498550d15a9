"""The generated writers give exactly fastavro's bytes, on random values of every type our envelopes use."""

from __future__ import annotations

import io
import random
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import fastavro
import pytest

from core.records import AvroSchema
from schemas.codegen import compile_reader, compile_writer, zigzag
from schemas.envelope import build_table_schemas, source_block
from schemas.serde import Encoder, without_raw_logical_types
from schemas.types import DecimalHandling, SchemaStyle
from tests.unit.schemas.schemas_support import array_of, column, numeric_typmod, pg_type, table

pytestmark = pytest.mark.unit

_SCALARS = ["int2", "int4", "int8", "float4", "float8", "bool", "text", "bytea", "uuid", "date", "time", "timetz",
            "timestamp", "timestamptz", "interval", "jsonb", "inet"]  # fmt: skip


def every_type_table() -> Any:
    columns = [column("id", "int8", not_null=True, key_position=1), column("k2", "text", not_null=True,
                                                                         key_position=2)]  # fmt: skip
    for typname in _SCALARS:
        columns.append(column(f"c_{typname}", typname, toastable=typname in ("text", "bytea", "jsonb")))
        columns.append(column(f"a_{typname}", array_of(pg_type(typname)), toastable=True))
    columns.append(column("n_fixed", "numeric", typmod=numeric_typmod(12, 3), toastable=True))
    columns.append(column("n_var", "numeric", toastable=True))
    columns.append(column("n_var2", "numeric", toastable=True))
    columns.append(column("n_arr", array_of(pg_type("numeric")), typmod=numeric_typmod(6, 2), toastable=True))
    columns.append(column("nn_int", "int4", not_null=True))
    columns.append(column("mood", pg_type("mood", kind="e", schema="public", labels=("a", "b"))))
    # Types whose `debezium` encodings differ from the ones above (precision-dependent, records, bits, defaults).
    columns.append(column("c_time3", "time", typmod=3))
    columns.append(column("c_ts3", "timestamp", typmod=3))
    columns.append(column("c_tstz0", "timestamptz", typmod=0))
    columns.append(column("c_point", "point"))
    columns.append(column("a_point", array_of(pg_type("point")), toastable=True))
    columns.append(column("c_bit5", "bit", typmod=5))
    columns.append(column("c_bit1", "bit", typmod=1))
    columns.append(column("c_money", "money"))
    columns.append(column("nn_default", "int2", not_null=True, default="3"))
    columns.append(column("n_default", "text", default="dflt"))
    columns.append(column("a_mood", array_of(pg_type("mood", kind="e", schema="public", labels=("a", "b")))))
    return table(*columns, schema="public", name="every")


def _random_decimal(rng: random.Random, precision: int, scale: int) -> Decimal:
    digits = rng.randint(1, precision)
    unscaled = rng.randint(-(10**digits - 1), 10**digits - 1)
    return Decimal(unscaled).scaleb(-scale)


_NAMED = {"io.debezium.data.VariableScaleDecimal": {"type": "record", "name": "VariableScaleDecimal"},
          "io.debezium.data.geometry.Point": {"type": "record", "name": "Point", "fields": [
              {"name": "x", "type": "double"}, {"name": "y", "type": "double"},
              {"name": "wkb", "type": ["null", "bytes"]}, {"name": "srid", "type": ["null", "int"]}]}}  # fmt: skip


def random_value(avro: Any, rng: random.Random) -> Any:
    if isinstance(avro, list):
        return random_value(rng.choice(avro), rng)
    if isinstance(avro, str) and avro in _NAMED:
        avro = _NAMED[avro]
    kind = avro.get("type") if isinstance(avro, dict) else avro
    logical = avro.get("logicalType") if isinstance(avro, dict) else None
    if kind == "null":
        return None
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, -1, 63, -64, 64, 8191, -8192, 8192, rng.randint(-(2**31), 2**31 - 1)])
    if kind == "long":
        return rng.choice([0, 2**63 - 1, -(2**63), rng.randint(-(2**63), 2**63 - 1), rng.randint(-300, 300)])
    if kind in ("float", "double"):
        return rng.choice([0.0, -0.0, float("nan"), float("inf"), float("-inf"), rng.uniform(-1e6, 1e6), 1e-300])
    if kind == "string":
        if logical == "uuid":
            value = uuid.UUID(int=rng.getrandbits(128))
            return str(value) if rng.random() < 0.8 else value
        return "".join(rng.choice("aé€😀 \n\"\\x") for _ in range(rng.choice([0, 1, 5, 200])))
    if kind == "bytes":
        if logical == "decimal":
            return _random_decimal(rng, avro["precision"], avro.get("scale", 0))
        return rng.randbytes(rng.choice([0, 1, 16, 300]))
    if kind == "array":
        return [random_value(avro["items"], rng) for _ in range(rng.choice([0, 1, 3, 70]))]
    if kind == "record" and avro["name"] == "VariableScaleDecimal":
        return {"scale": rng.randint(0, 40), "value": rng.randbytes(rng.randint(1, 20))}
    if kind == "record":
        return {f["name"]: random_value(f["type"], rng) for f in avro["fields"]}
    raise AssertionError(f"no generator for {avro!r}")


def fastavro_bytes(schema: AvroSchema, value: Any) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(schema.definition), value)
    return buffer.getvalue()


def test_zigzag_matches_avro() -> None:
    assert zigzag(0) == b"\x00"
    assert zigzag(-1) == b"\x01"
    assert zigzag(1) == b"\x02"
    assert zigzag(-64) == b"\x7f"
    assert zigzag(64) == b"\x80\x01"
    assert zigzag(2**63 - 1) == b"\xfe" + b"\xff" * 8 + b"\x01"


@pytest.mark.parametrize("style", list(SchemaStyle))
@pytest.mark.parametrize("handling", list(DecimalHandling))
def test_generated_writer_is_byte_identical_to_fastavro(handling: DecimalHandling, style: SchemaStyle) -> None:
    schemas = build_table_schemas(every_type_table(), topic="p.public.every", topic_prefix="p",
                                  decimal_handling=handling, schema_style=style)  # fmt: skip
    writer = compile_writer(schemas.value_schema.definition)
    key_writer = compile_writer(schemas.key_schema.definition)  # type: ignore[union-attr]
    assert writer is not None and key_writer is not None
    rng = random.Random(20261123)
    encoder = Encoder()
    for round_ in range(300):
        rows = [{c.field_name: random_value(c.avro, rng) for c in schemas.codecs} for _ in range(2)]
        event = schemas.envelope(
            op=rng.choice("cudrt"),
            before=rows[0] if round_ % 3 else None,
            after=rows[1] if round_ % 4 else None,
            source=source_block(name="n", db="d", schema="public", table="every", ts_ms=rng.randint(0, 2**41),
                                snapshot=rng.choice([None, "true", "last"]), tx_id=rng.choice([None, 7]),
                                lsn=rng.choice([None, 2**40]), commit_lsn=rng.choice([None, 2**40 + 5]),
                                style=style),
            ts_ms=rng.choice([None, 1700000000000]),
            change_id=str(uuid.uuid4()),
            unchanged_toast=rng.choice([(), ("c_text",), ("c_text", "a_int4")]),
        )  # fmt: skip
        expected = fastavro_bytes(schemas.value_schema, event)
        assert bytes(writer(bytearray(), event)) == expected, f"round {round_}"
        assert encoder.encode(9, schemas.value_schema, event) == b"\x00\x00\x00\x00\x09" + expected
        key = schemas.key(rows[1])
        assert bytes(key_writer(bytearray(), key)) == fastavro_bytes(schemas.key_schema, key)  # type: ignore[arg-type]


def test_values_outside_the_generated_path_fall_back_to_fastavro() -> None:
    schema = AvroSchema.of({"type": "record", "name": "R", "fields": [
        {"name": "when", "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}]},
        {"name": "n", "type": "long"},
        {"name": "d", "type": ["null", {"type": "bytes", "logicalType": "decimal", "precision": 4, "scale": 2}]},
    ]})  # fmt: skip
    value = {"when": datetime(2024, 1, 2, tzinfo=UTC), "n": True, "d": Decimal("1.5")}
    assert Encoder().encode(1, schema, value)[5:] == fastavro_bytes(schema, value)
    with pytest.raises(ValueError, match="precision"):
        Encoder().encode(1, schema, {"when": None, "n": 1, "d": Decimal("123.45")})


def test_unsupported_schemas_are_not_compiled() -> None:
    assert compile_writer({"type": "map", "values": "string"}) is None
    assert compile_writer(["null", "int", "long"]) is None
    schema = AvroSchema.of({"type": "map", "values": "long"})
    assert Encoder().encode(1, schema, {"a": 1})[5:] == fastavro_bytes(schema, {"a": 1})


def _nan_safe(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return "float-nan"
    if isinstance(value, dict):
        return {k: _nan_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_safe(v) for v in value]
    return value


def fastavro_read(definition: Any, data: bytes) -> tuple[Any, int]:
    stream = io.BytesIO(data)
    value = fastavro.schemaless_reader(stream, fastavro.parse_schema(definition), None)
    return value, stream.tell()


@pytest.mark.parametrize("style", list(SchemaStyle))
@pytest.mark.parametrize("handling", list(DecimalHandling))
def test_generated_reader_returns_what_fastavro_returns(handling: DecimalHandling, style: SchemaStyle) -> None:
    schemas = build_table_schemas(every_type_table(), topic="p.public.every", topic_prefix="p",
                                  decimal_handling=handling, schema_style=style)  # fmt: skip
    definition = without_raw_logical_types(schemas.value_schema.definition)
    parsed = fastavro.parse_schema(definition)
    reader = compile_reader(definition)
    assert reader is not None
    rng = random.Random(7)
    for round_ in range(200):
        rows = [{c.field_name: random_value(c.avro, rng) for c in schemas.codecs} for _ in range(2)]
        event = schemas.envelope(op="u", before=rows[0] if round_ % 2 else None, after=rows[1],
                                 source=source_block(name="n", db="d", schema="public", table="every", ts_ms=1,
                                                     style=style),
                                 ts_ms=None, change_id=str(uuid.uuid4()), unchanged_toast=("x",))  # fmt: skip
        data = b"\x00\x00\x00\x00\x01" + fastavro_bytes(schemas.value_schema, event)
        value, end = reader(data, 5)
        stream = io.BytesIO(data[5:])
        expected = fastavro.schemaless_reader(stream, parsed, None)
        assert _nan_safe(value) == _nan_safe(expected), f"round {round_}"
        assert end == len(data)


def test_generated_reader_fails_where_fastavro_fails() -> None:
    """Random corruption: both readers fail, or both read the same value and stop at the same byte."""
    schemas = build_table_schemas(every_type_table(), topic="p.public.every", topic_prefix="p")
    definition = without_raw_logical_types(schemas.value_schema.definition)
    reader = compile_reader(definition)
    assert reader is not None
    rng = random.Random(11)
    agreed_failures = 0
    for _ in range(400):
        row = {c.field_name: random_value(c.avro, rng) for c in schemas.codecs}
        event = schemas.envelope(op="c", before=None, after=row, ts_ms=1, change_id=str(uuid.uuid4()),
                                 source=source_block(name="n", db="d", schema="p", table="t", ts_ms=1))  # fmt: skip
        data = bytearray(fastavro_bytes(schemas.value_schema, event))
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data))]
        ours: Any
        theirs: Any
        try:
            ours = reader(bytes(data), 0)
        except Exception:
            ours = "failed"
        try:
            theirs = fastavro_read(definition, bytes(data))
        except Exception:
            theirs = "failed"
        assert _nan_safe(ours) == _nan_safe(theirs)
        agreed_failures += ours == "failed"
    assert agreed_failures > 50  # the corruption did exercise the failure paths


@pytest.mark.parametrize(
    "items",
    ["null", {"type": "record", "name": "Nothing", "fields": [{"name": "n", "type": "null"}]}],
    ids=["nulls", "empty-records"],
)
def test_generated_reader_refuses_a_corrupt_count_of_zero_byte_items(items: Any) -> None:
    """Zero-byte items never exhaust the input: a count of 2^62 must fail at once, not grow a list forever."""
    reader = compile_reader({"type": "array", "items": items})
    assert reader is not None
    assert reader(bytes([4, 0]), 0) == ([None, None] if items == "null" else [{"n": None}] * 2, 2)
    huge = bytes([0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F, 0])  # zigzag varint of 2^62 - 1
    with pytest.raises(ValueError, match="array block too long"):
        reader(huge, 0)

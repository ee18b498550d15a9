"""The compiled reader (schemas/accel.py, built from accel/) returns exactly what the pure reader returns.

Random schemas (records nested in unions and arrays, named references, decimals, Debezium's
VariableScaleDecimal) and random values with edge cases are written by fastavro and read by the pure
generated reader, the compiled one and fastavro; values are compared strictly (types, NaN bits, decimal
exponents, key order). Corrupted messages give the same value or the same exception in both readers.

Without the `cdc_accel` package both readers are the pure one and these tests still run (proving nothing
about the compiled reader); `CDC_ACCEL_REQUIRED=1` (set by `make pytest` where cargo exists) makes its
absence a failure.
"""

from __future__ import annotations

import io
import os
import random
import struct
import sys
from decimal import Decimal
from typing import Any

import fastavro
import pytest

from schemas.accel import AVAILABLE, ENABLED, cdc_accel, compile_reader
from schemas.envelope import build_table_schemas, source_block
from schemas.serde import without_raw_logical_types
from tests.unit.schemas.test_schemas_codegen import every_type_table
from tests.unit.schemas.test_schemas_codegen import random_value as column_value

WIRE = b"\x00\x00\x00\x00\x01"

LONGS = [0, 1, -1, 63, -64, 64, -65, 8191, -8192, 2**31 - 1, -(2**31), 2**53 + 1, 2**62, 2**63 - 1, -(2**63)]
INTS = [0, 1, -1, 2**31 - 1, -(2**31)]
FLOATS = [0.0, -0.0, float("nan"), float("inf"), float("-inf"), 1.5, 3.4028234663852886e38, 1.401298464324817e-45]
DOUBLES = [0.0, -0.0, float("nan"), float("inf"), float("-inf"), 5e-324, 1.7976931348623157e308, 0.1]
STRINGS = ["", "a", "é", "😀", "\x00", "日本語", "a\u2028b", "x" * 300]

VARIABLE_SCALE_DECIMAL = {
    "type": "record",
    "name": "VariableScaleDecimal",
    "namespace": "io.debezium.data",
    "fields": [{"name": "scale", "type": "int"}, {"name": "value", "type": "bytes"}],
    "connect.name": "io.debezium.data.VariableScaleDecimal",
}


def test_the_accelerator_is_built_where_required() -> None:
    if os.environ.get("CDC_ACCEL_REQUIRED") == "1":
        assert AVAILABLE, "cdc_accel is not installed: run `make accel`"
    definition = {"type": "record", "name": "r", "fields": [{"name": "a", "type": "long"}]}
    reader = compile_reader(definition, accelerated=True)
    assert reader is not None
    assert isinstance(reader, cdc_accel.Reader) if AVAILABLE else callable(reader)
    assert reader(WIRE + b"\x03", 5) == ({"a": -2}, 6)
    default = compile_reader(definition)
    compiled = AVAILABLE and isinstance(default, cdc_accel.Reader)
    assert compiled == ENABLED == (AVAILABLE and os.environ.get("CDC_ACCEL") != "0")


def test_schemas_the_pure_generator_does_not_compile_are_left_to_fastavro() -> None:
    for definition in ({"type": "map", "values": "long"}, {"type": "enum", "name": "e", "symbols": ["A"]},
                       {"type": "fixed", "name": "f", "size": 2}, {"type": "long", "logicalType": "timestamp-micros"},
                       ["null", "Unknown"]):  # fmt: skip
        assert compile_reader(definition) is None


def test_disabled_accelerator_returns_the_pure_reader() -> None:
    reader = compile_reader(["null", "long"], accelerated=False)
    assert reader is not None
    assert not AVAILABLE or not isinstance(reader, cdc_accel.Reader)


class _Schemas:
    """Random schemas: each named record is defined once, later uses may refer to it by name."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.defined: dict[str, Any] = {}  # name -> definition, of completed records only
        self.count = 0
        self.vsd_defined = False

    def schema(self, depth: int) -> Any:
        rng = self.rng
        kinds = ["null", "boolean", "int", "long", "float", "double", "string", "bytes", "decimal"]
        if depth < 3:
            kinds += ["record", "record", "array", "union", "union", "vsd"]
        if self.defined:
            kinds.append("ref")
        kind = rng.choice(kinds)
        if kind == "decimal":
            precision = rng.randint(1, 40)
            return {"type": "bytes", "logicalType": "decimal", "precision": precision,
                    "scale": rng.randint(0, precision)}  # fmt: skip
        if kind == "record":
            self.count += 1
            name = f"R{self.count}"
            fields = [{"name": f"f{i}", "type": self.schema(depth + 1)} for i in range(rng.randint(0, 5))]
            definition = {"type": "record", "name": name, "fields": fields}
            self.defined[name] = definition
            return definition
        if kind == "array":
            return {"type": "array", "items": self.schema(depth + 1)}
        if kind == "union":
            return self.union(depth)
        if kind == "vsd":
            return ["null", self.vsd()]
        if kind == "ref":
            return rng.choice(sorted(self.defined))
        return kind if rng.random() < 0.7 else {"type": kind}

    def vsd(self) -> Any:
        if self.vsd_defined:
            return "io.debezium.data.VariableScaleDecimal"
        self.vsd_defined = True
        self.defined["io.debezium.data.VariableScaleDecimal"] = VARIABLE_SCALE_DECIMAL
        return dict(VARIABLE_SCALE_DECIMAL)

    def union(self, depth: int) -> list[Any]:
        """Branches of distinct kinds (fastavro's rule), records and arrays possibly holding further unions."""
        rng = self.rng
        kinds = rng.sample(["null", "boolean", "long", "double", "string", "bytes", "record", "array"],
                           rng.randint(1, 4))  # fmt: skip
        branches: list[Any] = []
        for kind in kinds:
            if kind == "record":
                self.count += 1
                name = f"R{self.count}"
                fields = [{"name": "u", "type": self.union(depth + 1) if depth < 4 else "long"},
                          {"name": "v", "type": self.schema(depth + 1)}]  # fmt: skip
                branches.append({"type": "record", "name": name, "fields": fields})
                self.defined[name] = branches[-1]
            elif kind == "array":
                branches.append({"type": "array", "items": self.schema(depth + 1)})
            else:
                branches.append(kind)
        return branches


def _decimal(rng: random.Random, precision: int, scale: int) -> Decimal:
    unscaled = rng.randint(-(10**precision) + 1, 10**precision - 1) if rng.random() < 0.8 else 0
    return Decimal(unscaled).scaleb(-scale)


def random_value(avro: Any, named: dict[str, Any], rng: random.Random) -> Any:
    if isinstance(avro, str) and avro in named:
        avro = named[avro]
    if isinstance(avro, list):
        return random_value(rng.choice(avro), named, rng)
    spec = avro if isinstance(avro, dict) else {"type": avro}
    kind = spec["type"]
    if isinstance(kind, dict | list):
        return random_value(kind, named, rng)
    if spec.get("logicalType") == "decimal":
        if rng.random() < 0.2:  # raw bytes: more digits than the precision, or longer than 16 bytes
            return rng.randbytes(rng.choice([0, 1, 17, 20]))
        return _decimal(rng, spec["precision"], spec["scale"])
    if kind == "record":
        if spec.get("name") == "VariableScaleDecimal":
            scale = rng.randint(0, 30)
            unscaled = rng.randint(-(10**30), 10**30)
            return {"scale": scale, "value": unscaled.to_bytes((unscaled.bit_length() + 8) // 8, "big", signed=True)}
        return {f["name"]: random_value(f["type"], named, rng) for f in spec["fields"]}
    if kind == "array":
        return [random_value(spec["items"], named, rng) for _ in range(rng.choice([0, 0, 1, 3]))]
    pick = rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice(INTS) if pick else rng.randint(-(2**31), 2**31 - 1)
    if kind == "long":
        return rng.choice(LONGS) if pick else rng.getrandbits(64) - 2**63
    if kind == "float":
        return rng.choice(FLOATS) if pick else struct.unpack("<f", struct.pack("<f", rng.uniform(-1e30, 1e30)))[0]
    if kind == "double":
        return rng.choice(DOUBLES) if pick else struct.unpack("<d", rng.randbytes(8))[0]
    if kind == "string":
        if pick:
            return rng.choice(STRINGS)
        return "".join(chr(rng.choice([rng.randint(32, 126), rng.randint(0x80, 0xD7FF), rng.randint(0xE000, 0x10FFFF)]))
                       for _ in range(rng.randint(0, 12)))  # fmt: skip
    if kind == "bytes":
        return rng.randbytes(rng.choice([0, 1, 5, 200]))
    raise AssertionError(kind)


def canonical(value: Any) -> Any:
    """A form in which equal means identical: types, float bits (NaN payloads), decimal exponents, key order."""
    if value is None or type(value) in (bool, int, str, bytes):
        return (type(value).__name__, value)
    if type(value) is float:
        return ("float", struct.pack("<d", value))
    if type(value) is Decimal:
        return ("Decimal", value.as_tuple())
    if type(value) is dict:
        return ("dict", [(k, canonical(v)) for k, v in value.items()])
    if type(value) is list:
        return ("list", [canonical(v) for v in value])
    if type(value) is tuple:
        return ("tuple", [canonical(v) for v in value])
    raise AssertionError(type(value))


def outcome(reader: Any, data: bytes) -> Any:
    try:
        return canonical(reader(data, 5))
    except Exception as exc:
        return ("raised", type(exc).__name__, str(exc))


def fastavro_read(definition: Any, data: bytes) -> Any:
    stream = io.BytesIO(data[5:])
    value = fastavro.schemaless_reader(stream, fastavro.parse_schema(definition), None)
    return canonical((value, stream.tell() + 5))


def _cases(seed: int, schemas: int, values: int) -> Any:
    rng = random.Random(seed)
    for _ in range(schemas):
        maker = _Schemas(rng)
        fields = [{"name": f"c{i}", "type": maker.schema(0)} for i in range(rng.randint(1, 6))]
        definition = {"type": "record", "name": "Envelope", "namespace": "n", "fields": fields}
        parsed = fastavro.parse_schema(definition)
        named = {**maker.defined}
        for _ in range(values):
            value = random_value(definition, named, rng)
            stream = io.BytesIO()
            fastavro.schemaless_writer(stream, parsed, value)
            yield definition, named, WIRE + stream.getvalue(), rng


def test_compiled_reader_returns_what_the_pure_reader_and_fastavro_return() -> None:
    checked = 0
    for definition, _, data, _ in _cases(seed=13, schemas=150, values=12):
        pure = compile_reader(definition, accelerated=False)
        compiled = compile_reader(definition, accelerated=True)
        assert pure is not None
        assert compiled is not None
        expected = canonical(pure(data, 5))
        assert canonical(compiled(data, 5)) == expected, definition
        assert fastavro_read(definition, data) == expected
        checked += 1
    assert checked == 1800


def _zero_size_items(avro: Any, named: dict[str, Any], seen: frozenset[str] = frozenset()) -> bool:
    """Whether some array's items can take zero bytes: a corrupt count there makes every reader build a list
    as long as the count says (valid Avro allows any count of nulls), which is no test of equality."""
    if isinstance(avro, str):
        return avro in named and avro not in seen and _zero_size_items(named[avro], named, seen | {avro})
    if isinstance(avro, list):
        return any(_zero_size_items(b, named, seen) for b in avro)
    kind = avro["type"]
    if isinstance(kind, dict | list):
        return _zero_size_items(kind, named, seen)
    if kind == "array":
        return _empty(avro["items"], named) or _zero_size_items(avro["items"], named, seen)
    if kind == "record":
        return any(_zero_size_items(f["type"], named, seen | {avro["name"]}) for f in avro["fields"])
    return False


def _empty(avro: Any, named: dict[str, Any]) -> bool:
    if isinstance(avro, str):
        return avro == "null" or (avro in named and _empty(named[avro], named))
    if isinstance(avro, list):
        return False  # the branch index takes a byte
    kind = avro["type"]
    if isinstance(kind, dict | list):
        return _empty(kind, named)
    return kind == "null" or (kind == "record" and all(_empty(f["type"], named) for f in avro["fields"]))


def test_corrupt_and_truncated_messages_fail_the_same_way() -> None:
    failures = 0
    for definition, named, data, rng in _cases(seed=17, schemas=80, values=10):
        if _zero_size_items(definition, named):
            continue
        pure = compile_reader(definition, accelerated=False)
        compiled = compile_reader(definition, accelerated=True)
        broken = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            broken[rng.randrange(5, len(broken))] = rng.randrange(256)
        if rng.random() < 0.4:
            broken = broken[: rng.randrange(5, len(broken))]
        expected = outcome(pure, bytes(broken))
        assert outcome(compiled, bytes(broken)) == expected
        failures += expected[0] == "raised"
    assert failures > 100  # the corruption did reach the failure paths


LONG_RECORD = {"type": "record", "name": "r", "fields": [{"name": "a", "type": "long"}, {"name": "b", "type": "float"}]}


@pytest.mark.parametrize(
    "body",
    [
        b"\xff" * 9 + b"\x01" + b"\x00\x00\x80\x3f",  # 2**64 - 1 zig-zagged: -(2**63)
        b"\xfe" + b"\xff" * 8 + b"\x01" + b"\x00\x00\x80\x3f",  # 2**63 - 1
        b"\xff" * 9 + b"\x03" + b"\x00\x00\x80\x3f",  # 65 bits: a Python int beyond 64 bits
        b"\x80" * 12 + b"\x00" + b"\x00\x00\x80\x3f",  # an over-long zero
        b"\x02\x01\x00\x80\x7f",  # a signalling float NaN
        b"\x02\x00\x00\xc0\xff",  # a negative quiet NaN
        b"\x02\x00\x00\x80",  # truncated float
        b"\x02",  # no float at all
        b"\xff",  # truncated varint
    ],
)
def test_edge_case_bytes_read_the_same(body: bytes) -> None:
    pure = compile_reader(LONG_RECORD, accelerated=False)
    compiled = compile_reader(LONG_RECORD, accelerated=True)
    assert outcome(compiled, WIRE + body) == outcome(pure, WIRE + body)


@pytest.mark.parametrize(
    "body",
    [
        b"\x02\x00",  # empty bytes: zero
        b"\x02\x02\xff",  # -1
        b"\x02\x22" + b"\x7f" + b"\xff" * 16,  # 17 bytes: beyond the compiled fast path
        b"\x02\x0a\x00\x98\x96\x7f\xff",  # more digits than the precision: fastavro rounds
        b"\x03",  # union index -2
        b"\x02\x05\x01",  # negative size
        b"\x02\x04\x01",  # size beyond the message
    ],
)
def test_decimal_edge_cases_read_the_same(body: bytes) -> None:
    definition = ["null", {"type": "bytes", "logicalType": "decimal", "precision": 5, "scale": 2}]
    pure = compile_reader(definition, accelerated=False)
    compiled = compile_reader(definition, accelerated=True)
    assert outcome(compiled, WIRE + body) == outcome(pure, WIRE + body)


def test_decimals_without_usable_precision_read_the_same() -> None:
    for spec in ({"precision": 0}, {"precision": 3, "scale": 4}, {"precision": 4, "scale": 1.5}, {"scale": 2}):
        definition = {"type": "bytes", "logicalType": "decimal", **spec}
        pure = compile_reader(definition, accelerated=False)
        compiled = compile_reader(definition, accelerated=True)
        for body in (b"\x02\x7b", b"\x04\x30\x39", b"\x00"):
            assert outcome(compiled, WIRE + body) == outcome(pure, WIRE + body)


def test_recursive_records_deeper_than_the_compiled_limit_read_the_same() -> None:
    definition = {"type": "record", "name": "Node",
                  "fields": [{"name": "v", "type": "long"}, {"name": "next", "type": ["null", "Node"]}]}  # fmt: skip
    pure = compile_reader(definition, accelerated=False)
    compiled = compile_reader(definition, accelerated=True)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(5000)  # for canonical(), two frames a level
    try:
        for depth in (0, 1, 50, 420):
            body = b"\x02\x02" * depth + b"\x02\x00"
            assert outcome(compiled, WIRE + body) == outcome(pure, WIRE + body)
            assert outcome(compiled, WIRE + body)[0] == "tuple"
    finally:
        sys.setrecursionlimit(limit)


def test_bytes_like_input_is_read_as_the_pure_reader_reads_it() -> None:
    pure = compile_reader(LONG_RECORD, accelerated=False)
    compiled = compile_reader(LONG_RECORD, accelerated=True)
    data = bytearray(WIRE + b"\x04\x00\x00\x80\x3f")
    assert outcome(compiled, data) == outcome(pure, data) == canonical(({"a": 2, "b": 1.0}, 10))  # type: ignore[arg-type]


def test_envelope_schemas_are_compiled_and_read_alike() -> None:
    schemas = build_table_schemas(every_type_table(), topic="p.public.every", topic_prefix="p")
    definition = without_raw_logical_types(schemas.value_schema.definition)
    pure = compile_reader(definition, accelerated=False)
    compiled = compile_reader(definition, accelerated=True)
    assert not AVAILABLE or isinstance(compiled, cdc_accel.Reader)
    rng = random.Random(5)
    for round_ in range(100):
        rows = [{c.field_name: column_value(c.avro, rng) for c in schemas.codecs} for _ in range(2)]
        event = schemas.envelope(op="u", before=rows[0] if round_ % 2 else None, after=rows[1], ts_ms=None,
                                 source=source_block(name="n", db="d", schema="public", table="every", ts_ms=1),
                                 change_id="c", unchanged_toast=("x",))  # fmt: skip
        stream = io.BytesIO()
        fastavro.schemaless_writer(stream, fastavro.parse_schema(schemas.value_schema.definition), event)
        data = WIRE + stream.getvalue()
        assert outcome(compiled, data) == outcome(pure, data)

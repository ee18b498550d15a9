"""Envelopes read natively into COPY lines (sinks/postgres/copylines.py) write exactly what the pure path writes.

For random envelope schemas over every column kind the native reader claims (int, long, boolean, string, decimal,
a numeric's `[decimal, string]`, integer timestamps of each logical type and Debezium/Connect name, each nullable
or not) and random values with edge cases, one message is decoded by a `ChangeDecoder` on the pure path and by
one on the native path: the changes agree field for field (the native row decodes lazily to the same row), and
the bytes COPY receives are equal: the native line plus its bookkeeping tail against psycopg's own `write_row`
formatting (its C and its Python implementation) of the pure path's values. Messages the native reader leaves to
the pure path (NUL in a string, timestamps beyond Python's datetime, unsent TOAST columns, no change id) are
checked to be left.
"""

from __future__ import annotations

import io
import random
import struct
import threading
import uuid
from decimal import Decimal
from typing import Any, cast

import fastavro
import pytest
from psycopg import _copy_base
from psycopg.adapt import Transformer

from core.errors import Endpoints, RetryBudget
from core.records import AvroSchema
from schemas.accel import AVAILABLE
from schemas.registry import SchemaRegistry
from schemas.serde import Decoder
from sinks.postgres.apply import copy_values
from sinks.postgres.changes import Change
from sinks.postgres.config import PostgresSinkConfig
from sinks.postgres.copylines import LazyRow, line_tail
from sinks.postgres.decoding import ChangeDecoder
from sinks.postgres.retry import RetryPolicy
from tests.unit.sinks.test_sink_loop import FakeMessage
from transforms.base import TransformChain

pytestmark = pytest.mark.skipif(not AVAILABLE, reason="cdc_accel is not built (make accel)")

TOPIC = "db.public.items"
DECIMAL_PRECISION = 12

LONGS = [0, 1, -1, 63, -64, 2**31 - 1, -(2**31), 2**53 + 1, 2**63 - 1, -(2**63)]
STRINGS = ["", "a", "é", "😀", "日本語", "a\tb", "\\", "\n\r\b\f\v", "a\u2028b", "x" * 300, "\\N", '"{,}"']
# (units per second, Avro type of the column); all read as raw integers and converted by `types._epoch`.
TIMESTAMPS = [
    (1_000_000, {"type": "long", "logicalType": "timestamp-micros"}),
    (1_000, {"type": "long", "logicalType": "timestamp-millis"}),
    (1_000_000, {"type": "long", "logicalType": "local-timestamp-micros"}),
    (1_000, {"type": "long", "logicalType": "local-timestamp-millis"}),
    (1_000, {"type": "long", "connect.name": "io.debezium.time.Timestamp"}),
    (1_000_000, {"type": "long", "connect.name": "io.debezium.time.MicroTimestamp"}),
    (1_000_000_000, {"type": "long", "connect.name": "io.debezium.time.NanoTimestamp"}),
]
# Within Python's datetime (years 1..9999) in microseconds; the edges and a few ordinary instants.
PY_MIN, PY_MAX = -62_135_596_800_000_000, 253_402_300_799_999_999
MICROS = [0, 1, -1, 999_999, 1_000_000, PY_MIN, PY_MAX, 1_700_000_000_000_000, -86_400_000_000, 951_782_400_000_000]


class Registry:
    def __init__(self, schemas: dict[int, AvroSchema]) -> None:
        self.schemas = schemas

    def schema_by_id(self, schema_id: int) -> AvroSchema:
        return self.schemas[schema_id]


def column(rng: random.Random, i: int) -> tuple[dict[str, Any], Any]:
    """A random field and a generator of its values."""
    kind = rng.choice(["int", "long", "boolean", "string", "decimal", "numeric", "timestamp"])
    avro: Any
    if kind == "int":
        avro, values = "int", lambda: rng.choice([0, 1, -1, 2**31 - 1, -(2**31), rng.randint(-(2**31), 2**31 - 1)])
    elif kind == "long":
        avro, values = "long", lambda: rng.choice([*LONGS, rng.randint(-(2**63), 2**63 - 1)])
    elif kind == "boolean":
        avro, values = "boolean", lambda: rng.random() < 0.5
    elif kind == "string":

        def text() -> str:
            if rng.random() < 0.5:
                return rng.choice(STRINGS)
            return "".join(chr(rng.choice([rng.randint(1, 127), rng.randint(128, 0xD7FF)])) for _ in range(8))

        avro, values = "string", text
    elif kind in ("decimal", "numeric"):
        scale = rng.choice([0, 1, 2, 6, 10, DECIMAL_PRECISION])
        avro = {"type": "bytes", "logicalType": "decimal", "precision": DECIMAL_PRECISION, "scale": scale}

        def number() -> Decimal:
            digits = rng.choice([0, 1, rng.randint(1, DECIMAL_PRECISION)])
            unscaled = rng.choice([0, rng.randint(-(10**digits) + 1, 10**digits - 1)])
            return Decimal(unscaled).scaleb(-scale)

        values = number
        if kind == "numeric":  # the source's numeric: [decimal, string] (NaN and the infinities as text)
            avro = [avro, "string"]
            values = lambda: number() if rng.random() < 0.7 else rng.choice(["NaN", "Infinity", "-Infinity"])  # noqa: E731
    else:
        units, avro = rng.choice(TIMESTAMPS)

        def instant() -> int:
            micros = rng.choice([*MICROS, rng.randint(PY_MIN, PY_MAX)])
            value = micros * units // 1_000_000 if units >= 1_000_000 else -(-micros * units // 1_000_000)
            return value if -(2**63) <= value < 2**63 else rng.randint(-(2**63), 2**63 - 1)  # nanos: a long

        values = instant
    nullable = rng.random() < 0.5
    field = {
        "name": f"c{i}",
        "type": (["null", *avro] if isinstance(avro, list) else ["null", avro]) if nullable else avro,
    }
    return field, (lambda: None if nullable and rng.random() < 0.2 else values())


def envelope_schema(fields: list[dict[str, Any]]) -> dict[str, Any]:
    row = {"type": "record", "name": "Value", "namespace": TOPIC, "fields": fields}
    source = {
        "type": "record", "name": "Source", "namespace": "io.cdc",
        "fields": [{"name": "version", "type": "string"}, {"name": "schema", "type": "string"},
                   {"name": "table", "type": "string"}, {"name": "lsn", "type": ["null", "long"]},
                   {"name": "commit_lsn", "type": ["null", "long"]}, {"name": "xmin", "type": ["null", "long"]}],
    }  # fmt: skip
    transaction = {
        "type": "record", "name": "Tx",
        "fields": [{"name": "id", "type": "string"}, {"name": "order", "type": {"type": "array", "items": "long"}}],
    }  # fmt: skip
    return {
        "type": "record", "name": "Envelope", "namespace": TOPIC,
        "fields": [{"name": "before", "type": ["null", row]}, {"name": "after", "type": ["null", f"{TOPIC}.Value"]},
                   {"name": "source", "type": source}, {"name": "op", "type": "string"},
                   {"name": "ts_ms", "type": ["null", "long"]}, {"name": "transaction", "type": ["null", transaction]},
                   {"name": "change_id", "type": ["null", {"type": "string", "logicalType": "uuid"}]},
                   {"name": "unchanged_toast", "type": {"type": "array", "items": "string"}}],
    }  # fmt: skip


def wire(schema: dict[str, Any], value: Any, schema_id: int) -> bytes:
    out = io.BytesIO()
    out.write(b"\x00" + struct.pack(">I", schema_id))
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), value)
    return out.getvalue()


def decoder(schemas: dict[int, AvroSchema], *, accelerated: bool) -> ChangeDecoder:
    config = PostgresSinkConfig.model_validate({"dsn": "postgresql://x/y", "topics": [TOPIC]})
    retry = RetryPolicy(config.retry, RetryBudget(None), Endpoints(), threading.Event())
    registry = cast(SchemaRegistry, Registry(schemas))
    return ChangeDecoder(
        Decoder(registry, accelerated=accelerated), None, TransformChain(), config.errors, retry,
        accelerated=accelerated,
    )  # fmt: skip


def copied(change: Change, op: str, toast: int, *, python: bool) -> bytes:
    """What `Applier._copy` sends to COPY for `change` (its shape's columns being the table's)."""
    if change.line is not None:
        return change.line + line_tail(change, op, toast)
    names = change.shape.names
    converted = [(i, c.type.convert) for i, c in enumerate(change.shape.columns) if c.type.convert is not None]
    position = {name: i for i, name in enumerate(names)}
    values = copy_values(change, op, toast, names=names, whole=True, converted=converted, position=position)
    out = bytearray()
    (_copy_base._format_row_text if python else _copy_base.format_row_text)(values, Transformer(), out)
    return bytes(out)


def both(schema: dict[str, Any], key_schema: dict[str, Any], key: Any, value: Any) -> tuple[Change, Change | None]:
    """(pure change, native change or None when the native reader left the message to the pure path)."""
    schemas = {7: AvroSchema.of(schema), 8: AvroSchema.of(key_schema)}
    message = FakeMessage(TOPIC, 0, 11, wire(key_schema, key, 8), wire(schema, value, 7))
    pure = decoder(schemas, accelerated=False)
    native = decoder(schemas, accelerated=True)
    [first] = native.decode(message)  # type: ignore[arg-type]
    assert first.line is None  # the first message of a schema id fetches it: the pure path
    [expected] = pure.decode(message)  # type: ignore[arg-type]
    assert expected.line is None
    [got] = native.decode(message)  # type: ignore[arg-type]
    return expected, (got if got.line is not None else None)


def random_case(rng: random.Random) -> tuple[dict[str, Any], dict[str, Any], list[Any]]:
    columns = [column(rng, i) for i in range(rng.randint(1, 8))]
    fields = [{"name": "id", "type": "long"}, *(f for f, _ in columns)]
    key_schema = {"type": "record", "name": "Key", "namespace": TOPIC, "fields": [fields[0]]}
    return envelope_schema(fields), key_schema, [lambda: rng.randint(-(2**63), 2**63 - 1), *(v for _, v in columns)]


def spelling(rng: random.Random, value: uuid.UUID) -> str:
    """A text `uuid.UUID` reads as `value`: canonical (read natively) or another spelling (left to the pure path)."""
    text = str(value)
    return rng.choice([text, text, text, text.upper(), "{" + text + "}", value.hex, "urn:uuid:" + text])


def envelope(rng: random.Random, row: dict[str, Any], op: str) -> dict[str, Any]:
    lsn = rng.randint(0, 2**63 - 1)
    return {
        "before": row if op == "d" else rng.choice([None, row]),
        "after": None if op == "d" else row,
        "source": {"version": "1", "schema": "public", "table": "items", "lsn": lsn,
                   "commit_lsn": rng.choice([None, lsn + 1]), "xmin": None},
        "op": op, "ts_ms": rng.choice([None, 0, -5, 1_700_000_000_000]),
        "transaction": rng.choice([None, {"id": "t", "order": [1, 2, 3]}]),
        "change_id": spelling(rng, uuid.UUID(int=rng.getrandbits(128))), "unchanged_toast": [],
    }  # fmt: skip


@pytest.mark.parametrize("seed", range(40))
def test_native_lines_equal_what_the_pure_path_copies(seed: int) -> None:
    rng = random.Random(seed)
    schema, key_schema, makers = random_case(rng)
    names = [f["name"] for f in schema["fields"][0]["type"][1]["fields"]]
    native_count = 0
    for _ in range(25):
        row = {name: make() for name, make in zip(names, makers, strict=True)}
        op = rng.choice("cudr")
        expected, got = both(schema, key_schema, {"id": row["id"]}, envelope(rng, row, op))
        if got is None:
            continue  # left to the pure path (e.g. a NUL, a timestamp the converter writes as text)
        native_count += 1
        assert got._replace(row=None, line=None) == expected._replace(row=None)
        assert type(got.change_id) is uuid.UUID and got.change_id.is_safe == expected.change_id.is_safe
        assert isinstance(got.row, LazyRow)
        assert dict(got.row) == dict(expected.row or {})
        stage_op, toast = ("d" if op == "d" else "u"), rng.choice([0, 3])
        line = copied(got, stage_op, toast, python=False)
        assert line == copied(expected, stage_op, toast, python=False)
        assert line == copied(expected, stage_op, toast, python=True)
    assert native_count > 0


def test_messages_the_native_reader_leaves_to_the_pure_path() -> None:
    rng = random.Random(1)
    fields = [{"name": "id", "type": "long"}, {"name": "s", "type": "string"},
              {"name": "t", "type": {"type": "long", "logicalType": "timestamp-micros"}}]  # fmt: skip
    schema = envelope_schema(fields)
    key_schema = {"type": "record", "name": "Key", "namespace": TOPIC, "fields": [fields[0]]}
    plain = {"id": 1, "s": "a", "t": 0}
    assert both(schema, key_schema, {"id": 1}, envelope(rng, plain, "c"))[1] is not None
    for row, change in [
        ({**plain, "s": "a\x00b"}, {}),  # psycopg refuses NUL: the pure path raises that
        ({**plain, "t": 2**63 - 1}, {}),  # infinity: written as text by the converter
        ({**plain, "t": PY_MAX + 1}, {}),  # beyond year 9999
        (plain, {"unchanged_toast": ["s"]}),
        (plain, {"change_id": None}),  # the id comes from a header or Debezium's source block then
        (plain, {"op": "t"}),
    ]:
        value = {**envelope(rng, row, "u"), **change}
        _, got = both(schema, key_schema, {"id": 1}, value)
        assert got is None


def test_a_column_without_a_kind_keeps_the_schema_on_the_pure_path() -> None:
    rng = random.Random(2)
    fields = [{"name": "id", "type": "long"}, {"name": "f", "type": "double"}]
    schema = envelope_schema(fields)
    key_schema = {"type": "record", "name": "Key", "namespace": TOPIC, "fields": [fields[0]]}
    _, got = both(schema, key_schema, {"id": 1}, envelope(rng, {"id": 1, "f": 0.5}, "c"))
    assert got is None

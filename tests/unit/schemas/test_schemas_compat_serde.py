"""Change descriptions, local Avro resolution rules, and the wire-format decoder's poison-message reasons."""

from __future__ import annotations

import copy
import uuid
from typing import Any

import pytest

from core.errors import PoisonMessageError, RetriableError
from core.records import AvroSchema
from schemas.compat import describe_changes, encoding_style, incompatibilities, problems_for
from schemas.envelope import build_table_schemas, source_block
from schemas.registry import SchemaNotFoundError, redact_url
from schemas.serde import Decoder, Encoder
from schemas.types import SchemaStyle
from tests.unit.schemas.schemas_support import column, table

pytestmark = pytest.mark.unit


def envelope_schema(*columns: Any) -> AvroSchema:
    return build_table_schemas(table(*columns), topic="p.public.t", topic_prefix="p").value_schema


BASE = (column("id", "int4", not_null=True, key_position=1), column("name", "text"), column("n", "int4"))


def test_describe_changes_in_column_terms() -> None:
    old = envelope_schema(*BASE)
    assert describe_changes(old, old) == []
    added = envelope_schema(*BASE, column("extra", "text"))
    assert describe_changes(old, added) == ["column extra added (nullable, default null)"]
    removed = envelope_schema(*BASE[:2])
    assert describe_changes(old, removed) == ["column n removed"]
    retyped = envelope_schema(BASE[0], BASE[1], column("n", "int8"))
    assert describe_changes(old, retyped) == ["column n changed type: int4 (int) -> int8 (long)"]
    key_dropped = envelope_schema(column("name", "text", not_null=True, key_position=1), BASE[2])
    assert "column id removed (it had no default, so readers of the old schema need it)" in describe_changes(
        old, key_dropped
    )
    assert "column name became required (not null)" in describe_changes(old, key_dropped)


def test_avro_resolution_rules() -> None:
    old = envelope_schema(*BASE)
    widened = envelope_schema(BASE[0], BASE[1], column("n", "int8"))
    assert incompatibilities(widened, old) == []  # int -> long promotes
    assert incompatibilities(old, widened) == ["before.n: long values cannot be read as null | int"]
    assert problems_for("BACKWARD", widened, [old]) == []
    assert problems_for("FORWARD", widened, [old])
    retyped = envelope_schema(BASE[0], column("name", "int4"), BASE[2])
    backward = problems_for("BACKWARD", retyped, [old])
    assert backward and "before.name: string values cannot be read as null | int" in backward[0]
    assert problems_for("NONE", retyped, [old]) == []
    added = envelope_schema(*BASE, column("extra", "text"))
    assert problems_for("FULL_TRANSITIVE", added, [old, old]) == []


def test_redact_url_drops_credentials() -> None:
    assert redact_url("https://user:s3cret@registry:8081/apis/ccompat/v7") == "https://registry:8081/apis/ccompat/v7"
    assert redact_url("http://127.0.0.1:8081") == "http://127.0.0.1:8081"


class FakeRegistry:
    """Knows schema ids in memory; `down` simulates an unreachable registry."""

    def __init__(self, schemas: dict[int, AvroSchema]) -> None:
        self.schemas = schemas
        self.down = False
        self.lookups = 0

    def schema_by_id(self, schema_id: int) -> AvroSchema:
        self.lookups += 1
        if self.down:
            raise RetriableError("schema registry at http://r is unreachable")
        if schema_id not in self.schemas:
            raise SchemaNotFoundError(f"schema registry at http://r has no schema with id {schema_id}")
        return self.schemas[schema_id]


def sample() -> tuple[AvroSchema, dict[str, Any]]:
    t = table(column("id", "int8", not_null=True, key_position=1), column("at", "timestamptz"),
              column("d", "date"), column("u", "uuid"))  # fmt: skip
    schemas = build_table_schemas(t, topic="p.public.t", topic_prefix="p")
    row, _ = schemas.row(["1", "infinity", "12345-01-01", "6ba7b810-9dad-11d1-80b4-00c04fd430c8"])
    event = schemas.envelope(op="c", before=None, after=row, source=source_block(name="n", db="d", schema="public",
                             table="t", ts_ms=1), ts_ms=2, change_id=str(uuid.uuid4()))  # fmt: skip
    return schemas.value_schema, event


# Every decoder test runs with the compiled reader (where installed) and with the pure one.
ACCELERATED = pytest.mark.parametrize("accelerated", [True, False], ids=["compiled", "pure"])


@ACCELERATED
def test_decoder_round_trip_returns_raw_temporal_values(accelerated: bool) -> None:
    schema, event = sample()
    registry = FakeRegistry({7: schema})
    decoder = Decoder(registry, accelerated=accelerated)  # type: ignore[arg-type]
    data = Encoder().encode(7, schema, event)
    assert data[:5] == b"\x00\x00\x00\x00\x07"
    value, writer_schema, schema_id = decoder.decode(data)
    assert (writer_schema, schema_id) == (schema, 7)
    assert value == event  # infinity and year 12345 come back as the integers the source wrote
    assert isinstance(value["change_id"], str)
    decoder.decode(data)
    assert registry.lookups == 1  # parsed schema cached per id


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty message"),
        (b"\x00\x00\x01", "shorter than the 5-byte wire-format header"),
        (b"\x01\x00\x00\x00\x07rest", "bad magic byte 0x01"),
        (b"\x00\x00\x00\x00\x63\x00", "unknown schema id 99"),
    ],
)
@ACCELERATED
def test_decoder_names_the_reason(data: bytes, reason: str, accelerated: bool) -> None:
    schema, _ = sample()
    with pytest.raises(PoisonMessageError, match=reason):
        Decoder(FakeRegistry({7: schema}), accelerated=accelerated).decode(data)  # type: ignore[arg-type]


@ACCELERATED
def test_decoder_truncated_corrupt_and_trailing_bytes(accelerated: bool) -> None:
    schema, event = sample()
    decoder = Decoder(FakeRegistry({7: schema}), accelerated=accelerated)  # type: ignore[arg-type]
    data = Encoder().encode(7, schema, event)
    with pytest.raises(PoisonMessageError, match="truncated Avro body"):
        decoder.decode(data[:-4])
    with pytest.raises(PoisonMessageError, match="3 bytes left after the value"):
        decoder.decode(data + b"abc")
    corrupt = bytearray(data)
    corrupt[5] = 0x09  # `before` union index 4 (-5 zigzag): no such branch
    with pytest.raises(PoisonMessageError, match="corrupt Avro body for schema id 7"):
        decoder.decode(bytes(corrupt))


def test_decoder_keeps_registry_outages_retriable() -> None:
    schema, event = sample()
    registry = FakeRegistry({7: schema})
    registry.down = True
    with pytest.raises(RetriableError):
        Decoder(registry).decode(Encoder().encode(7, schema, event))  # type: ignore[arg-type]


def test_encoder_caches_per_schema_text() -> None:
    schema, event = sample()
    other = AvroSchema.of(copy.deepcopy(schema.definition))
    encoder = Encoder()
    assert encoder.encode(1, schema, event) == encoder.encode(1, other, event)


@pytest.mark.parametrize("style", list(SchemaStyle))
@pytest.mark.parametrize("type_name", ["int4", "date", "int2"])
def test_encoding_style_is_read_off_envelopes_and_typed_keys(style: SchemaStyle, type_name: str) -> None:
    built = build_table_schemas(
        table(column("id", type_name, not_null=True, key_position=1), column("name", "text")),
        topic="p.public.t", topic_prefix="p", schema_style=style,
    )  # fmt: skip
    assert encoding_style(built.value_schema) == style.value
    # A key says it only through a type that only one style marks: avro_native's logical date, Debezium's int16.
    telling = {"date": SchemaStyle.AVRO_NATIVE, "int2": SchemaStyle.DEBEZIUM}.get(type_name)
    expected_key = style.value if telling == style else None
    assert encoding_style(built.key_schema) == expected_key

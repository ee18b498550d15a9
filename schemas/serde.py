"""Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro binary body (no container).

`Encoder` and `Decoder` use a writer/reader generated per schema (schemas/codegen.py, same results as
fastavro, about twice as fast for our union-heavy envelopes) and fastavro for anything else; `Decoder`
reads with the compiled reader of schemas/accel.py where that is installed (same values). `Decoder`
resolves ids through the registry (cached) and turns every way a message can be malformed into a
`PoisonMessageError` that says which way.

Decoded values: temporal fields (`date`, `time-micros`, `timestamp-micros`, `local-timestamp-micros`) come
back as the Avro integers and `uuid` strings as strings, not as Python objects: PostgreSQL values such as
`infinity`, years beyond 9999 or before 1 AD, and `24:00:00` have no `datetime` equivalent, and a decoder
must never fail on a value the source legitimately wrote (docs/types.md lists the sentinels).
"""

from __future__ import annotations

import io
import struct
import threading
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer

from core.errors import ConnectorError, PoisonMessageError
from core.records import AvroSchema
from schemas.accel import ENABLED as ACCELERATED
from schemas.accel import compile_reader
from schemas.codegen import Fallback, compile_writer
from schemas.registry import SchemaRegistry, SchemaRegistryConfig

MAGIC = 0
_UNSET = object()
HEADER = struct.Struct(">bI")
HEADER_SIZE = HEADER.size

_RAW_LOGICAL_TYPES = frozenset({"date", "time-micros", "time-millis", "timestamp-micros", "timestamp-millis",
                                "local-timestamp-micros", "local-timestamp-millis", "uuid"})  # fmt: skip


def without_raw_logical_types(definition: Any) -> Any:
    """A copy of an Avro schema definition without the logical types the decoder returns raw."""
    if isinstance(definition, list):
        return [without_raw_logical_types(branch) for branch in definition]
    if not isinstance(definition, dict):
        return definition
    out = {}
    for key, value in definition.items():
        if key == "logicalType" and value in _RAW_LOGICAL_TYPES:
            continue
        if key in ("type", "items", "values"):
            out[key] = without_raw_logical_types(value)
        elif key == "fields":
            out[key] = [{**f, "type": without_raw_logical_types(f["type"])} for f in value]
        else:
            out[key] = value
    return out


class Encoder:
    """Encodes values to Confluent wire format. One instance per thread (it reuses its buffer).

    Each schema gets a writer generated for it (schemas/codegen.py) when it uses only the Avro features
    our envelopes use; values it does not handle, and other schemas, are written by fastavro. Both give
    the same bytes. `specialised=False` always uses fastavro.
    """

    def __init__(self, *, specialised: bool = True) -> None:
        self._parsed: dict[str, Any] = {}
        self._writers: dict[str, Any] = {}
        self._specialised = specialised
        self._buffer = io.BytesIO()

    def parsed(self, schema: AvroSchema) -> Any:
        parsed = self._parsed.get(schema.text)
        if parsed is None:
            parsed = parse_schema(schema.definition)
            self._parsed[schema.text] = parsed
        return parsed

    def encode(self, schema_id: int, schema: AvroSchema, value: Any) -> bytes:
        writer = self._writers.get(schema.text, _UNSET)
        if writer is _UNSET:
            writer = compile_writer(schema.definition) if self._specialised else None
            self._writers[schema.text] = writer
        if writer is not None:
            try:
                return bytes(writer(bytearray(HEADER.pack(MAGIC, schema_id)), value))
            except (Fallback, LookupError, TypeError, AttributeError, ValueError, OverflowError):
                pass  # a value shape the generated writer does not take: fastavro decides
        parsed = self._parsed.get(schema.text)
        if parsed is None:
            parsed = self.parsed(schema)
        buffer = self._buffer
        buffer.seek(0)
        buffer.truncate()
        buffer.write(HEADER.pack(MAGIC, schema_id))
        schemaless_writer(buffer, parsed, value)
        return buffer.getvalue()


class RegistrySerializer:
    """Confluent wire format with schemas registered on first use (the registry caches the ids).

    `KafkaDelivery`'s serializer; `close()` ends the registry's HTTP client.
    """

    def __init__(self, config: SchemaRegistryConfig) -> None:
        self._registry = SchemaRegistry(config)
        self._encoder = Encoder()

    def __call__(self, topic: str, schema: AvroSchema, value: Any, is_key: bool) -> bytes:
        return self._encoder.encode(self.schema_id(topic, schema, is_key), schema, value)

    def schema_id(self, topic: str, schema: AvroSchema, is_key: bool) -> int:
        """The id `__call__` frames values with (registering the schema on first use)."""
        return self._registry.register(f"{topic}-{'key' if is_key else 'value'}", schema)

    def latest(self, topic: str, is_key: bool = False) -> AvroSchema | None:
        """The latest schema registered under the topic's subject, None when there is none."""
        return self._registry.newest(f"{topic}-{'key' if is_key else 'value'}")

    def close(self) -> None:
        self._registry.close()


class Decoder:
    """Decodes Confluent wire-format messages; thread-safe (no shared buffers, caches under a lock).

    `accelerated` uses the compiled reader (schemas/accel.py) where it is installed and not disabled by
    `CDC_ACCEL=0`; it returns what the pure reader returns.
    """

    def __init__(self, registry: SchemaRegistry, *, specialised: bool = True, accelerated: bool = ACCELERATED) -> None:
        self._registry = registry
        self._specialised = specialised
        self._accelerated = accelerated
        self._lock = threading.Lock()
        self._by_id: dict[int, tuple[AvroSchema, Any, Any]] = {}

    def _schema(self, schema_id: int) -> tuple[AvroSchema, Any, Any]:
        found = self._by_id.get(schema_id)  # entries are only ever added: a lock-free read is safe
        if found is not None:
            return found
        try:
            schema = self._registry.schema_by_id(schema_id)
        except ConnectorError as exc:
            if exc.retriable:
                raise
            raise PoisonMessageError(f"unknown schema id {schema_id}: {exc.message}", hint=exc.hint) from None
        definition = without_raw_logical_types(schema.definition)
        reader = compile_reader(definition, accelerated=self._accelerated) if self._specialised else None
        found = (schema, parse_schema(definition), reader)
        with self._lock:
            self._by_id[schema_id] = found
        return found

    def cached(self, data: bytes) -> tuple[AvroSchema, int] | None:
        """(writer schema, schema id) of a well-formed wire header whose schema is already known, else None
        (`decode` then fetches it, or says what is wrong)."""
        if len(data) < HEADER_SIZE:
            return None
        magic, schema_id = HEADER.unpack_from(data)
        found = self._by_id.get(schema_id) if magic == MAGIC else None
        return (found[0], schema_id) if found is not None else None

    def decode(self, data: bytes | None) -> tuple[Any, AvroSchema, int]:
        """(value, writer schema, schema id) of a message; PoisonMessageError says why it cannot be read."""
        if not data:
            raise PoisonMessageError("empty message: expected Confluent wire format (magic byte 0 + schema id)")
        if len(data) < HEADER_SIZE:
            raise PoisonMessageError(f"message of {len(data)} bytes is shorter than the 5-byte wire-format header")
        magic, schema_id = HEADER.unpack_from(data)
        if magic != MAGIC:
            raise PoisonMessageError(
                f"bad magic byte {data[0]:#04x}: not Confluent wire format",
                hint="the producer did not use a schema-registry Avro serializer",
            )
        found = self._by_id.get(schema_id)
        schema, parsed, reader = found if found is not None else self._schema(schema_id)
        if reader is not None:
            try:
                value, end = reader(data if type(data) is bytes else bytes(data), HEADER_SIZE)
            except (IndexError, EOFError, struct.error) as exc:
                raise PoisonMessageError(
                    f"truncated Avro body ({len(data) - HEADER_SIZE} bytes) for schema id {schema_id}"
                ) from exc
            except Exception as exc:  # ValueError (bad union index), UnicodeDecodeError, decimal errors
                raise PoisonMessageError(f"corrupt Avro body for schema id {schema_id}: {type(exc).__name__}") from exc
            if end != len(data):
                raise PoisonMessageError(
                    f"corrupt Avro body for schema id {schema_id}: {len(data) - end} bytes left after the value"
                )
            return value, schema, schema_id
        stream = io.BytesIO(data)
        stream.seek(HEADER_SIZE)
        try:
            value = schemaless_reader(stream, parsed, None)
        except (EOFError, StopIteration) as exc:
            raise PoisonMessageError(
                f"truncated Avro body ({len(data) - HEADER_SIZE} bytes) for schema id {schema_id}"
            ) from exc
        except Exception as exc:  # fastavro raises many types on corrupt input (ValueError, UnicodeError, ...)
            raise PoisonMessageError(f"corrupt Avro body for schema id {schema_id}: {type(exc).__name__}") from exc
        if stream.tell() != len(data):
            raise PoisonMessageError(
                f"corrupt Avro body for schema id {schema_id}: {len(data) - stream.tell()} bytes left after the value"
            )
        return value, schema, schema_id

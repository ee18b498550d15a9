"""Consumed messages -> the changes to apply: Confluent wire format, subject check, the sink's transforms."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Message

from core.errors import ConnectorError, PoisonMessageError, SchemaError
from core.records import AvroSchema, Record, RecordChain
from schemas.accel import ENABLED as ACCELERATED
from schemas.accel import ChangeReader
from schemas.serde import HEADER_SIZE, Decoder
from schemas.subjects import SubjectCheck
from sinks.postgres.changes import Change, _shape_for, to_changes
from sinks.postgres.config import ErrorsConfig
from sinks.postgres.copylines import change_reader, native_change
from sinks.postgres.messages import Partition, coordinates, headers_of
from sinks.postgres.retry import RetryPolicy


@dataclass(slots=True)
class DecodedBatch:
    """A batch's changes, the messages that cannot be applied (with why), and the next offset per partition."""

    messages: Sequence[Message]
    changes: list[Change] = field(default_factory=list)
    failures: list[tuple[Message, ConnectorError]] = field(default_factory=list)
    offsets: dict[Partition, int] = field(default_factory=dict)


class ChangeDecoder:
    """Decodes messages into changes. A message that cannot be read is a failure of its own (`PoisonMessageError`
    or `SchemaError`); an unreachable registry is retried under `retry`."""

    def __init__(
        self,
        decoder: Decoder,
        subjects: SubjectCheck | None,
        chain: RecordChain,
        errors: ErrorsConfig,
        retry: RetryPolicy,
        *,
        accelerated: bool = ACCELERATED,
    ) -> None:
        self._decoder = decoder
        self._subjects = subjects
        self._chain = chain
        self._errors = errors
        self._retry = retry
        # Envelopes read natively into COPY lines (copylines.py): with no transforms to hand values to.
        self._native = accelerated and isinstance(decoder, Decoder) and not len(chain)
        self._readers: dict[int, tuple[AvroSchema, ChangeReader | None]] = {}

    def decode_batch(self, messages: Sequence[Message]) -> DecodedBatch:
        batch = DecodedBatch(messages)
        for message in messages:
            topic, partition, offset = coordinates(message)
            if batch.offsets.get((topic, partition), 0) <= offset:
                batch.offsets[(topic, partition)] = offset + 1
            try:
                batch.changes.extend(self.decode(message))
            except (PoisonMessageError, SchemaError) as exc:
                batch.failures.append((message, exc))
        return batch

    def decode(self, message: Message) -> list[Change]:
        topic, partition, offset = coordinates(message)
        raw_key, raw_value = message.key(), message.value()
        size = len(raw_key or b"") + len(raw_value or b"")
        if size > self._errors.max_record_bytes:
            raise PoisonMessageError(
                f"record of {size} bytes exceeds errors.max_record_bytes ({self._errors.max_record_bytes})"
            )
        key = key_schema = value = value_schema = None
        if raw_key is not None:
            key, key_schema = self._decode_one(raw_key, topic, True)
        if self._native and raw_value is not None:
            change = self._native_change(raw_value, topic, partition, offset, key=key, key_schema=key_schema)
            if change is not None:
                return [change]
        if raw_value is not None:
            value, value_schema = self._decode_one(raw_value, topic, False)
        _, timestamp = message.timestamp()
        record = Record(
            topic=topic,
            key=key,
            value=value,
            key_schema=key_schema,
            value_schema=value_schema,
            headers=tuple(headers_of(message)),
            partition=partition,
            offset=offset,
            timestamp_ms=timestamp if timestamp >= 0 else None,
        )
        if not len(self._chain):
            return to_changes(record)
        out: list[Change] = []
        for item in self._chain.apply(record):
            out.extend(to_changes(item))
        return out

    def _native_change(
        self, data: bytes, topic: str, partition: int, offset: int, *, key: Any, key_schema: AvroSchema | None
    ) -> Change | None:
        """The change read natively, or None: the pure path reads the message (and raises what is wrong)."""
        found = self._decoder.cached(data)
        if found is None:
            return None
        schema, schema_id = found
        known = self._readers.get(schema_id)
        try:
            if self._subjects is not None:
                self._subjects.check(topic, schema_id, schema, False)
            shape = _shape_for(schema, key_schema)
            if known is None or known[0] is not schema:
                known = self._readers[schema_id] = (schema, change_reader(schema, shape, accelerated=True))
        except ConnectorError:
            return None
        read = known[1]
        if read is None:
            return None

        def load() -> Any:
            value = self._decoder.decode(data)[0]
            return shape.row_of(value["before"] if value["op"] == "d" else value["after"])

        return native_change(
            read, data, HEADER_SIZE, topic=topic, partition=partition, offset=offset, shape=shape, key=key, load=load
        )

    def _decode_one(self, data: bytes, topic: str, is_key: bool) -> tuple[Any, Any]:
        part = "key" if is_key else "value"
        try:
            try:
                return self._read(data, topic, is_key)
            except ConnectorError as exc:
                if not exc.retriable:
                    raise
                # The registry is unreachable (only happens on a cache miss): retry with backoff.
                return self._retry.call(lambda: self._read(data, topic, is_key), f"decoding a {part}")
        except PoisonMessageError as exc:
            raise PoisonMessageError(f"its {part}: {exc.message}", hint=exc.hint) from exc
        except SchemaError as exc:
            raise SchemaError(f"its {part}: {exc.message}", hint=exc.hint) from exc

    def _read(self, data: bytes, topic: str, is_key: bool) -> tuple[Any, Any]:
        value, schema, schema_id = self._decoder.decode(data)
        if self._subjects is not None:
            self._subjects.check(topic, schema_id, schema, is_key)
        return value, schema

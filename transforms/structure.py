"""Transforms that change a record's shape: unwrap, hoist, extract_field, value_to_key, headers, outbox."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from core.records import AvroSchema, Headers, Record
from schemas.avro import NamedTypes, named_types, normalize
from transforms.avro import make_nullable, resolve, split_nullable, standalone
from transforms.base import Transform, evolve
from transforms.config import (
    ExtractFieldOptions,
    HeadersOptions,
    HoistOptions,
    OutboxOptions,
    UnwrapOptions,
    ValueToKeyOptions,
)
from transforms.envelope import envelope_row_name, is_envelope, is_envelope_schema, row_of, value_bytes
from transforms.exceptions import option_error
from transforms.expression import compile_name


def header_text(value: Any) -> bytes | None:
    """How a field value travels as a header: UTF-8 text, `true`/`false`, ISO dates; null is no header."""
    return None if value is None else value_bytes(value)


def _find_field(record: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((f for f in record["fields"] if f["name"] == name), None)


# --- unwrap -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _UnwrapPlan:
    schema: AvroSchema
    fields: tuple[tuple[str, Callable[[dict[str, Any]], Any]], ...]
    headers: tuple[tuple[str, Callable[[dict[str, Any]], Any]], ...]


class Unwrap(Transform):
    """Debezium's ExtractNewRecordState; keeps every header (the sink needs `change_id`)."""

    def __init__(self, options: UnwrapOptions, label: str) -> None:
        self.options = options
        self.label = label
        self._plans: dict[AvroSchema, _UnwrapPlan | None] = {}
        self._deleted = f"{options.prefix}deleted"

    def _getter(
        self, envelope: dict[str, Any], name: str, option: str
    ) -> tuple[str, Any, Callable[[dict[str, Any]], Any]]:
        """(added name, Avro type, value getter) of `op`, `source.lsn`, or a bare source field name."""
        index = named_types(envelope)
        source_field = _find_field(envelope, "source")
        source = resolve(split_nullable(source_field["type"])[0], index) if source_field else None
        source_fields = source.get("fields", []) if isinstance(source, dict) else []
        added = self.options.prefix + name.replace(".", "_")
        if name.startswith("source."):
            inner = name.partition(".")[2]
            field = next((f for f in source_fields if f["name"] == inner), None)
            if field is not None:
                return added, standalone(field["type"], index), lambda v: (v.get("source") or {}).get(inner)
        else:
            top = _find_field(envelope, name)
            if top is not None and name not in ("before", "after", "source"):
                return added, standalone(top["type"], index), lambda v: v.get(name)
            field = next((f for f in source_fields if f["name"] == name), None)
            if field is not None:
                return added, standalone(field["type"], index), lambda v: (v.get("source") or {}).get(name)
        raise option_error(self.label, option, f"`{name}` is neither an envelope field nor a `source` field")

    def _plan(self, schema: AvroSchema) -> _UnwrapPlan | None:
        envelope = normalize(schema.definition)
        if not is_envelope_schema(envelope):
            return None
        index = named_types(envelope)
        row_name = envelope_row_name(envelope, index)
        if row_name is None:
            return None
        row = standalone(index[row_name], index)
        fields = list(row["fields"])
        existing = {f["name"] for f in fields}
        getters = []
        for name in self.options.add_fields:
            added, type_, getter = self._getter(envelope, name, "add_fields")
            if added in existing:
                raise option_error(self.label, "add_fields", f"`{row_name}` already has a field `{added}`")
            existing.add(added)
            fields.append({"name": added, "type": type_})
            getters.append((added, getter))
        if self.options.delete_handling == "rewrite":
            if self._deleted in existing:
                raise option_error(self.label, "delete_handling", f"`{row_name}` already has a field `{self._deleted}`")
            fields.append({"name": self._deleted, "type": "string"})
        headers = []
        for name in self.options.add_headers:
            added, _, getter = self._getter(envelope, name, "add_headers")
            headers.append((added, getter))
        return _UnwrapPlan(AvroSchema.of({**row, "fields": fields}), tuple(getters), tuple(headers))

    def apply(self, record: Record) -> Sequence[Record]:
        value = record.value
        if value is None:
            # A snapshot-complete marker is no delete's tombstone: it carries the end of a table's snapshot.
            return () if self.options.drop_tombstones and not record.is_snapshot_complete else (record,)
        if not is_envelope(value) or record.value_schema is None:
            return (record,)
        if record.value_schema in self._plans:
            plan = self._plans[record.value_schema]
        else:
            plan = self._plans[record.value_schema] = self._plan(record.value_schema)
        if plan is None:
            return (record,)
        op = value["op"]
        if op == "d":
            handling = self.options.delete_handling
            if handling == "drop":
                return ()
            if handling == "tombstone":
                return (evolve(record, value=None, value_schema=plan.schema, headers=self._headers(record, plan)),)
            row = value["before"]
        elif op == "t":
            return () if self.options.truncate_handling == "drop" else (record,)
        else:
            row = value["after"]
        if row is None:
            return (record,)
        out = dict(row)
        for name, getter in plan.fields:
            out[name] = getter(value)
        if self.options.delete_handling == "rewrite":
            out[self._deleted] = "true" if op == "d" else "false"
        return (evolve(record, value=out, value_schema=plan.schema, headers=self._headers(record, plan)),)

    @staticmethod
    def _headers(record: Record, plan: _UnwrapPlan) -> Headers:
        if not plan.headers:
            return record.headers
        added = []
        for name, getter in plan.headers:
            text = header_text(getter(record.value))
            if text is not None:
                added.append((name, text))
        return record.headers + tuple(added)


# --- hoist / extract_field --------------------------------------------------------------------


class _SchemaCached(Transform):
    """Applies a per-schema plan to the value or the key (`apply_to`); null values pass unchanged."""

    def __init__(self, label: str, on_key: bool) -> None:
        self.label = label
        self._on_key = on_key
        self._plans: dict[AvroSchema, tuple[AvroSchema, Callable[[Any], Any]]] = {}

    def plan(self, definition: Any, index: NamedTypes) -> tuple[Any, Callable[[Any], Any]]:
        raise NotImplementedError

    def apply(self, record: Record) -> Sequence[Record]:
        data, schema = (record.key, record.key_schema) if self._on_key else (record.value, record.value_schema)
        if data is None or schema is None:
            return (record,)
        if schema in self._plans:
            new_schema, convert = self._plans[schema]
        else:
            definition = normalize(schema.definition)
            new_definition, convert = self.plan(definition, named_types(definition))
            new_schema = AvroSchema.of(new_definition)
            self._plans[schema] = (new_schema, convert)
        if self._on_key:
            return (evolve(record, key=convert(data), key_schema=new_schema),)
        return (evolve(record, value=convert(data), value_schema=new_schema),)


class Hoist(_SchemaCached):
    def __init__(self, options: HoistOptions, label: str) -> None:
        super().__init__(label, options.apply_to == "key")
        self.options = options

    def plan(self, definition: Any, index: NamedTypes) -> tuple[Any, Callable[[Any], Any]]:
        name = self.options.record_name
        if name is None:
            inner_name = definition.get("name", "") if isinstance(definition, dict) else ""
            namespace = str(inner_name).rpartition(".")[0]
            name = f"{namespace}.Hoisted" if namespace else "Hoisted"
        field = self.options.field
        return {"type": "record", "name": name, "fields": [{"name": field, "type": definition}]}, lambda v: {field: v}


class ExtractField(_SchemaCached):
    def __init__(self, options: ExtractFieldOptions, label: str) -> None:
        super().__init__(label, options.apply_to == "key")
        self._path = tuple(options.field.split("."))

    def plan(self, definition: Any, index: NamedTypes) -> tuple[Any, Callable[[Any], Any]]:
        type_: Any = definition
        nullable = False
        for segment in self._path:
            inner, maybe_null = split_nullable(type_)
            nullable = nullable or maybe_null
            record = resolve(inner, index)
            is_record = isinstance(record, dict) and record.get("type") == "record"
            field = _find_field(record, segment) if is_record else None
            if field is None:
                where = record.get("name") if isinstance(record, dict) else str(record)
                raise option_error(self.label, "field", f"`{segment}` is not a field of `{where}`")
            type_ = field["type"]
        result = standalone(make_nullable(type_) if nullable else type_, index)
        path = self._path

        def extract(value: Any) -> Any:
            for segment in path:
                if not isinstance(value, dict):
                    return None
                value = value.get(segment)
            return value

        return result, extract


# --- value_to_key -----------------------------------------------------------------------------


class ValueToKey(Transform):
    """The key becomes a record of value fields; for envelopes, fields of the row (`after`, else `before`)."""

    def __init__(self, options: ValueToKeyOptions, label: str) -> None:
        self.label = label
        self._fields = tuple(options.fields)
        self._plans: dict[AvroSchema, AvroSchema] = {}

    def _plan(self, schema: AvroSchema) -> AvroSchema:
        definition = normalize(schema.definition)
        index = named_types(definition)
        row: Any = definition
        if is_envelope_schema(definition):
            row_name = envelope_row_name(definition, index)
            row = index.get(row_name or "")
        if not isinstance(row, dict) or row.get("type") != "record":
            raise option_error(self.label, "fields", "the value is not a record")
        defined: set[str] = set()
        fields = []
        for name in self._fields:
            field = _find_field(row, name)
            if field is None:
                raise option_error(self.label, "fields", f"`{name}` is not a field of `{row['name']}`")
            fields.append({**field, "type": standalone(field["type"], index, defined)})
        namespace = str(row["name"]).rpartition(".")[0]
        return AvroSchema.of({"type": "record", "name": f"{namespace}.Key" if namespace else "Key", "fields": fields})

    def apply(self, record: Record) -> Sequence[Record]:
        if record.value is None or record.value_schema is None:
            return (record,)
        if record.value_schema in self._plans:
            key_schema = self._plans[record.value_schema]
        else:
            key_schema = self._plans[record.value_schema] = self._plan(record.value_schema)
        row = row_of(record.value) or {}
        return (evolve(record, key={name: row.get(name) for name in self._fields}, key_schema=key_schema),)


# --- headers ----------------------------------------------------------------------------------


class HeadersTransform(Transform):
    def __init__(self, options: HeadersOptions, label: str) -> None:
        self.label = label
        self._drop = frozenset(options.drop)
        self._copy = tuple((name, compile_name(path)) for name, path in options.from_fields.items())
        self._insert = tuple((name, text.encode()) for name, text in options.insert.items())

    @property
    def drops(self) -> frozenset[str]:
        return self._drop

    def apply(self, record: Record) -> Sequence[Record]:
        headers = [h for h in record.headers if h[0] not in self._drop] if self._drop else list(record.headers)
        for name, getter in self._copy:
            text = header_text(getter(record))
            if text is not None:
                headers.append((name, text))
        headers.extend(self._insert)
        return (evolve(record, headers=tuple(headers)),)


# --- outbox -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _OutboxPlan:
    key_schema: AvroSchema
    value_schema: AvroSchema


class Outbox(Transform):
    """Debezium's outbox event router: inserts into an outbox table become events; other ops are dropped."""

    def __init__(self, options: OutboxOptions, label: str) -> None:
        self.options = options
        self.label = label
        self._plans: dict[AvroSchema, _OutboxPlan] = {}

    def _plan(self, schema: AvroSchema) -> _OutboxPlan:
        definition = normalize(schema.definition)
        index = named_types(definition)
        row_name = envelope_row_name(definition, index) if is_envelope_schema(definition) else None
        row = index.get(row_name or "")
        if row is None:
            raise option_error(self.label, "type", "outbox records must be change events (envelopes)")
        o = self.options
        fields: dict[str, dict[str, Any]] = {}
        for option in ("id_field", "aggregate_type_field", "aggregate_id_field", "type_field", "payload_field"):
            column = getattr(o, option)
            field = _find_field(row, column)
            if field is None:
                raise option_error(
                    self.label, option, f"`{row_name}` has no column `{column}`",
                    hint="select the outbox table with `predicate: {type: table_in, tables: [...]}`",
                )
            fields[option] = field
        key_type = standalone(fields["aggregate_id_field"]["type"], index)
        value_type = standalone(fields["payload_field"]["type"], index)
        return _OutboxPlan(AvroSchema.of(key_type), AvroSchema.of(value_type))

    def apply(self, record: Record) -> Sequence[Record]:
        value = record.value
        if value is None:
            return ()
        if not is_envelope(value) or record.value_schema is None:
            return (record,)
        if value["op"] != "c" or value["after"] is None:
            return ()
        if record.value_schema in self._plans:
            plan = self._plans[record.value_schema]
        else:
            plan = self._plans[record.value_schema] = self._plan(record.value_schema)
        o = self.options
        row = value["after"]
        event_type = row.get(o.type_field)
        topic = o.topic_format.format(
            aggregatetype=row.get(o.aggregate_type_field),
            aggregateid=row.get(o.aggregate_id_field),
            type=event_type,
            topic=record.topic,
        )
        headers = list(record.headers)
        for name, field_value in (("id", row.get(o.id_field)), ("type", event_type)):
            text = header_text(field_value)
            if text is not None:
                headers.append((name, text))
        return (
            evolve(
                record,
                topic=topic,
                key=row.get(o.aggregate_id_field),
                key_schema=plan.key_schema,
                value=row.get(o.payload_field),
                value_schema=plan.value_schema,
                headers=tuple(headers),
            ),
        )

"""Envelope awareness: field-level transforms reach the rows inside a Debezium envelope.

Kafka Connect's field transforms see the envelope itself (`before`, `after`, `source`...), so masking a
column needs `unwrap` first. Here a field-level transform (`FieldTransform`) describes what it does to
one row record; applied to an envelope it rewrites the `Value` record that `before` defines and
`after` names (schema once, both row values per record); applied to a flat record it rewrites
that record. Output schemas are derived once per input schema and cached.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

from core.records import AvroSchema, Record
from schemas.avro import NamedTypes, named_types, normalize
from transforms.avro import split_nullable, standalone
from transforms.base import Transform, evolve

ENVELOPE_FIELDS = frozenset({"before", "after", "op", "source"})
ROW_FIELDS = ("before", "after")

RowConverter = Callable[[dict[str, Any], Record], dict[str, Any]]
"""Maps one row value (and the record it belongs to, for transforms that read topic or offset) onto the new row."""

RowPlan = tuple[dict[str, Any], RowConverter]
"""A derived row record definition and the function that maps a row value onto it."""

RowPlanner = Callable[[dict[str, Any], NamedTypes], "RowPlan | None"]
"""Maps a normalized row record definition onto a `RowPlan`, or None when it leaves it unchanged."""


@dataclass(frozen=True, slots=True)
class Plan:
    """What a transform does to values of one input schema."""

    schema: AvroSchema
    convert: Callable[[Any, Record], Any]


def is_envelope(value: Any) -> bool:
    """A Debezium change event value (cheap data check for the hot path)."""
    return isinstance(value, dict) and "op" in value and "after" in value and "before" in value and "source" in value


def is_envelope_schema(definition: Any) -> bool:
    if not isinstance(definition, dict) or definition.get("type") != "record":
        return False
    return {f["name"] for f in definition.get("fields", ())} >= ENVELOPE_FIELDS


def row_of(value: Any) -> Any:
    """The row a value describes: the envelope's `after` (or `before` for deletes), else the value."""
    if is_envelope(value):
        after = value["after"]
        return after if after is not None else value["before"]
    return value


def table_of(record: Record) -> tuple[str | None, str | None]:
    """(schema, table) from the envelope's `source`, else from a `{prefix}.{schema}.{table}` topic."""
    value = record.value
    if is_envelope(value) and isinstance(value.get("source"), dict):
        source = value["source"]
        return source.get("schema"), source.get("table")
    parts = record.topic.split(".")
    if len(parts) >= 3:
        return parts[-2], parts[-1]
    return None, None


def op_of(record: Record) -> str | None:
    value = record.value
    return value["op"] if is_envelope(value) else None


def envelope_row_name(envelope: dict[str, Any], index: NamedTypes) -> str | None:
    """Full name of the row record of a normalized envelope definition."""
    for field in envelope["fields"]:
        if field["name"] not in ROW_FIELDS:
            continue
        inner, _ = split_nullable(field["type"])
        if isinstance(inner, dict) and inner.get("type") == "record":
            return str(inner["name"])
        if isinstance(inner, str) and index.get(inner, {}).get("type") == "record":
            return inner
    return None


ToastMap = Callable[[list[str]], list[str]]
"""Maps the envelope's `unchanged_toast` column names the way a transform maps row fields (rename, drop)."""


def _plan_envelope(
    envelope: dict[str, Any], planner: RowPlanner, toast: ToastMap | None, blank_toast: bool
) -> Plan | None:
    index = named_types(envelope)
    row_name = envelope_row_name(envelope, index)
    if row_name is None:
        return None
    planned = planner(index[row_name], index)
    if planned is None:
        return None
    new_row, convert = planned
    # A dropped field may have defined a named type that a kept field only names: define it at its first use.
    new_row = standalone(new_row, index)
    placed = False
    fields = []
    for original in envelope["fields"]:
        field = original
        if field["name"] in ROW_FIELDS:
            declared = field["type"]
            branches = declared if isinstance(declared, list) else [declared]
            out = []
            for branch in branches:
                name = branch.get("name") if isinstance(branch, dict) else branch
                if name == row_name:
                    # Avro defines a name once: the first row field carries the definition, the other names it.
                    out.append(new_row["name"] if placed else new_row)
                    placed = True
                else:
                    out.append(branch)
            field = {**field, "type": out if isinstance(declared, list) else out[0]}
        fields.append(field)

    # Unchanged TOAST placeholders are not values: a converting transform sees null there (sinks skip them).
    blankable = frozenset(f["name"] for f in index[row_name]["fields"] if split_nullable(f["type"])[1])

    def convert_envelope(value: Any, record: Record) -> Any:
        if not isinstance(value, dict):
            return value
        out = dict(value)
        unchanged = value.get("unchanged_toast") if blank_toast else None
        for name in ROW_FIELDS:
            row = value.get(name)
            if row is not None:
                if unchanged and name == "after":
                    row = {**row, **{column: None for column in unchanged if column in blankable}}
                out[name] = convert(row, record)
        if toast is not None and value.get("unchanged_toast"):
            out["unchanged_toast"] = toast(value["unchanged_toast"])
        return out

    return Plan(AvroSchema.of({**envelope, "fields": fields}), convert_envelope)


def plan_value(
    schema: AvroSchema, planner: RowPlanner, toast: ToastMap | None = None, blank_toast: bool = False
) -> Plan | None:
    """The plan for a value schema: rows of an envelope, or the record itself."""
    definition = normalize(schema.definition)
    if is_envelope_schema(definition):
        return _keep_text(schema, definition, _plan_envelope(definition, planner, toast, blank_toast))
    return _keep_text(schema, definition, plan_record(definition, planner))


def _keep_text(schema: AvroSchema, normalized: Any, plan: Plan | None) -> Plan | None:
    """A plan that leaves the schema as it was keeps the original text (no new index version)."""
    if plan is not None and plan.schema == AvroSchema.of(normalized):
        return Plan(schema, plan.convert)
    return plan


def plan_record(definition: Any, planner: RowPlanner) -> Plan | None:
    """The plan for a flat (normalized) record schema; other shapes are left alone."""
    if not isinstance(definition, dict) or definition.get("type") != "record":
        return None
    index = named_types(definition)
    planned = planner(definition, index)
    if planned is None:
        return None
    return Plan(AvroSchema.of(standalone(planned[0], index)), planned[1])


ApplyTo = Literal["value", "key", "both"]


class FieldTransform(Transform):
    """A transform of row fields: applied to envelope rows, flat values and/or keys per `apply_to`."""

    def __init__(self, label: str, apply_to: ApplyTo = "value") -> None:
        self.label = label
        self._on_value = apply_to in ("value", "both")
        self._on_key = apply_to in ("key", "both")
        self._value_plans: dict[AvroSchema, Plan | None] = {}
        self._key_plans: dict[AvroSchema, Plan | None] = {}

    @abstractmethod
    def plan_row(self, row: dict[str, Any], index: NamedTypes) -> RowPlan | None:
        """Derive the new row definition (normalized) and its value converter; None when nothing changes."""

    toast_columns: ToastMap | None = None
    """Set by transforms that rename or remove fields, so `unchanged_toast` keeps naming row fields."""

    converts_values: bool = False
    """True for transforms that parse values (cast, timestamp_convert): they see unchanged TOAST columns as null."""

    def apply(self, record: Record) -> Sequence[Record]:
        value, value_schema, key, key_schema = record.value, record.value_schema, record.key, record.key_schema
        changed = False
        if self._on_value and value is not None and value_schema is not None:
            if value_schema in self._value_plans:
                plan = self._value_plans[value_schema]
            else:
                plan = plan_value(value_schema, self.plan_row, self.toast_columns, self.converts_values)
                self._value_plans[value_schema] = plan
            if plan is not None:
                value, value_schema, changed = plan.convert(value, record), plan.schema, True
        if self._on_key and key is not None and key_schema is not None:
            if key_schema in self._key_plans:
                plan = self._key_plans[key_schema]
            else:
                normalized = normalize(key_schema.definition)
                plan = _keep_text(key_schema, normalized, plan_record(normalized, self.plan_row))
                self._key_plans[key_schema] = plan
            if plan is not None:
                key, key_schema, changed = plan.convert(key, record), plan.schema, True
        if not changed:
            return (record,)
        return (evolve(record, key=key, key_schema=key_schema, value=value, value_schema=value_schema),)


def value_bytes(value: Any) -> bytes:
    """A field value as text bytes (headers, hashing): ISO-8601 for dates and times, `true`/`false` for booleans."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, (datetime, date)):
        return value.isoformat().encode()
    return str(value).encode()

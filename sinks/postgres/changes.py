"""From a consumed record to a `Change`: what to do to which row, with its identity and WAL position.

Two record shapes are understood:

- the Debezium-style envelope (`before`/`after`/`source`/`op`/`change_id`/`unchanged_toast`, see
  docs/event-format.md); one without a change id (neither field nor header) is Debezium's own, whose id and
  position are derived from its `source` block (`debezium.py`);
- flat records, after a source-side `unwrap`: the value is the row, `change_id` comes from the header of that
  name, `(commit_lsn, lsn)` from the header `source_lsn` (`commit:lsn`, decimal); a null value (tombstone with a
  key) or `__deleted == "true"` is a delete; a string or bytes value equal to the source's unchanged-TOAST
  placeholder (`__cdc_unavailable_value`) marks that column as not sent. Fields whose name starts with `__`
  (and carry no `pg.name`) are metadata, not columns.

A tombstone without a `change_id` header (the compaction marker the source writes after a delete whose envelope
already carried the delete) changes nothing and yields no change.

A record without key and value that has the header `cdc.snapshot.complete` ends one table's snapshot (see
docs/event-format.md): it becomes a truncate-like change flagged `snapshot_complete`, positioned just below the
snapshot's own rows, which the apply path turns into a guarded removal of what that snapshot did not write.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, NamedTuple, TypeGuard

from core.errors import PoisonMessageError, SchemaError
from core.records import SNAPSHOT_COMPLETE_HEADER, AvroSchema, Record
from schemas.avro import named_types, normalize
from schemas.types import UNAVAILABLE_BYTES, UNAVAILABLE_VALUE
from sinks.postgres import debezium
from sinks.postgres.types import ColumnType, column_type

UPSERT_OPS = frozenset("cur")
_PLACEHOLDERS = (UNAVAILABLE_VALUE, UNAVAILABLE_BYTES)
CDC_COLUMN_PREFIX = "__cdc_"
_NONE: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Column:
    """A destination column: its name (the field's `pg.name` when present, else the field name) and Avro field."""

    name: str
    field: str
    type: ColumnType
    default: str | None = None
    """The source column's constant default in PostgreSQL's text format (field property `pg.default`)."""
    aliases: tuple[str, ...] = ()
    """Earlier names of the column (the field's Avro `aliases`): a rename in the source."""


@dataclass(frozen=True, slots=True)
class Shape:
    """The destination shape a value schema implies: columns in schema order, key columns in key order."""

    columns: tuple[Column, ...]
    key: tuple[str, ...]
    flat: bool
    key_fields: tuple[str, ...] = ()
    key_only: bool = False
    """Derived from a tombstone's key schema: enough to delete, not to create or evolve a table."""
    # Derived once per shape (shapes are cached per schema), read for every message.
    names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _fields: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False)
    _key_pairs: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False)
    _as_is: bool = field(init=False, repr=False, compare=False)
    _key_as_is: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(c.name for c in self.columns))
        object.__setattr__(self, "_fields", tuple((c.name, c.field) for c in self.columns))
        object.__setattr__(self, "_key_pairs", tuple(zip(self.key, self.key_fields, strict=False)))
        object.__setattr__(self, "_as_is", all(c.name == c.field for c in self.columns))
        object.__setattr__(self, "_key_as_is", self.key == self.key_fields)

    def row_of(self, image: Mapping[str, Any]) -> dict[str, Any]:
        """The row in column order. An image that already is exactly that (names, order) is used as it is:
        rows are only read downstream (`collapse` copies before it changes one)."""
        if self._as_is and type(image) is dict and tuple(image) == self.names:
            return image
        return {name: image.get(f) for name, f in self._fields}

    def key_of(self, key: Mapping[str, Any]) -> dict[str, Any]:
        if len(self._key_pairs) != len(self.key):
            raise ValueError("key and key_fields differ in length")
        if self._key_as_is and type(key) is dict and tuple(key) == self.key:
            return key
        return {name: key.get(f) for name, f in self._key_pairs}


class Change(NamedTuple):
    """One row change, ready to apply. `row` is the new row (c/u/r) or the old one (d, append mode only).

    A named tuple rather than a frozen dataclass: one is built per message, and a tuple is built in one C call
    where a frozen dataclass sets each of its fields through `object.__setattr__` (about 8x dearer).
    """

    topic: str
    partition: int
    offset: int
    op: str
    change_id: uuid.UUID
    commit_lsn: int
    lsn: int
    source_schema: str
    source_table: str
    shape: Shape
    key: Mapping[str, Any] | None
    row: Mapping[str, Any] | None
    unchanged_toast: frozenset[str] = frozenset()
    ts_ms: int | None = None
    snapshot_complete: bool = False
    """The end of a table's snapshot (op `t`): remove the rows positioned before it, if the sink is set to."""
    line: bytes | None = None
    """`row` as a line of text COPY (its columns in shape order), when read natively (`copylines.py`)."""

    @property
    def position(self) -> tuple[int, int]:
        return (self.commit_lsn, self.lsn)

    @property
    def key_tuple(self) -> tuple[Any, ...]:
        key = self.key
        if key is None:
            return ()
        values = tuple(key.get(name) for name in self.shape.key)
        for value in values:
            if isinstance(value, (list, dict)):
                return tuple(_hashable(v) for v in values)
        return values


def _is_mapping(value: Any) -> TypeGuard[Mapping[str, Any]]:
    # Decoded records are dicts: `isinstance(value, Mapping)` goes through the ABC machinery, dearer per message.
    return type(value) is dict or isinstance(value, Mapping)


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def _resolve(definition: Any, named: Mapping[str, Any]) -> Any:
    """`definition` with references to named types replaced by their definitions, also inside unions, array
    items and map values (a schema defines a named type once and refers to it by name afterwards, e.g. the
    `VariableScaleDecimal` of a second unconstrained numeric column, or of a `numeric[]`'s elements). The
    fields of a named record are not entered: such a record maps to one jsonb column, and recursion stops."""
    if isinstance(definition, str):
        return named.get(definition, definition)
    if isinstance(definition, list):
        return [_resolve(m, named) for m in definition]
    if isinstance(definition, Mapping):
        kind = definition.get("type")
        if kind == "array":
            return {**definition, "items": _resolve(definition.get("items"), named)}
        if kind == "map":
            return {**definition, "values": _resolve(definition.get("values"), named)}
        if isinstance(kind, str) and kind in named:
            return {**definition, "type": named[kind]}
        if isinstance(kind, (Mapping, list)):
            return {**definition, "type": _resolve(kind, named)}
    return definition


def _record_of(definition: Any, named: Mapping[str, Any]) -> Mapping[str, Any] | None:
    definition = _resolve(definition, named)
    if isinstance(definition, list):
        for member in definition:
            record = _record_of(member, named)
            if record is not None:
                return record
        return None
    if isinstance(definition, Mapping):
        if definition.get("type") in ("record", "error"):
            return definition
        if isinstance(definition.get("type"), (Mapping, list)):
            return _record_of(definition["type"], named)
    return None


def _is_envelope(record: Mapping[str, Any]) -> bool:
    names = {f.get("name") for f in record.get("fields", ())}
    return {"op", "after", "source"} <= names


@lru_cache(maxsize=4096)
def shape_of(value_schema: AvroSchema, key_schema: AvroSchema | None) -> Shape:
    """The shape of a (value, key) schema pair; cached because schemas repeat on every message."""
    definition = normalize(value_schema.definition)
    named = named_types(definition)
    top = _record_of(definition, named)
    if top is None:
        raise SchemaError(
            f"value schema {value_schema.name or '?'} is not a record",
            hint="the sink applies row records or Debezium-style envelopes",
        )
    flat = not _is_envelope(top)
    if flat:
        row = top
    else:
        after = next(f for f in top["fields"] if f.get("name") == "after")
        found = _record_of(after.get("type"), named)
        if found is None:
            raise SchemaError(f"envelope {value_schema.name or '?'} has no `after` record")
        row = found
    columns = []
    for item in row.get("fields", ()):
        name = item.get("name")
        if not isinstance(name, str):
            continue
        if flat and name.startswith("__") and "pg.name" not in item:
            continue  # metadata a transform added (`__deleted`, `__op`, ...), not a column
        where = f"{value_schema.name or 'value'}.{name}"
        resolved = {**item, "type": _resolve(item.get("type"), named)}
        column_name = item.get("pg.name") if isinstance(item.get("pg.name"), str) else name
        default = item.get("pg.default")
        aliases = item.get("aliases")
        columns.append(
            Column(
                column_name,
                name,
                column_type(resolved, where),
                default if isinstance(default, str) else None,
                tuple(a for a in aliases if isinstance(a, str)) if isinstance(aliases, list) else (),
            )
        )
    key_fields: tuple[str, ...] = ()
    if key_schema is not None:
        key_definition = normalize(key_schema.definition)
        key_record = _record_of(key_definition, named_types(key_definition))
        if key_record is not None:
            key_fields = tuple(f["name"] for f in key_record.get("fields", ()) if isinstance(f.get("name"), str))
    by_field = {c.field: c.name for c in columns}
    missing = [k for k in key_fields if k not in by_field]
    if missing:
        raise SchemaError(
            f"key fields {missing} are not in the value schema {value_schema.name or '?'}",
            hint="the message key must name columns of the row",
        )
    return Shape(tuple(columns), tuple(by_field[k] for k in key_fields), flat, key_fields)


_by_identity: dict[tuple[int, int], tuple[AvroSchema, AvroSchema | None, Shape]] = {}


def _shape_for(value_schema: AvroSchema, key_schema: AvroSchema | None) -> Shape:
    """`shape_of`, first looked up by the schemas' identity: the decoder hands out one schema object per id, and
    hashing a schema (its whole definition) on every message is dearer than the rest of building a change."""
    where = (id(value_schema), id(key_schema))
    found = _by_identity.get(where)
    if found is not None and found[0] is value_schema and found[1] is key_schema:
        return found[2]
    shape = shape_of(value_schema, key_schema)
    if len(_by_identity) >= 4096:
        _by_identity.clear()  # schemas come and go (ids are reused once an object is freed); stay bounded
    _by_identity[where] = (value_schema, key_schema, shape)  # holding the schemas keeps their ids valid
    return shape


def _source_from_topic(topic: str) -> tuple[str, str]:
    parts = topic.split(".")
    if len(parts) >= 2:
        return parts[-2], parts[-1]
    return "", topic


def _header_text(record: Record, name: str) -> str | None:
    raw = record.header(name)
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PoisonMessageError(f"header {name} is not UTF-8 text") from None


def _parse_uuid(text: Any, what: str) -> uuid.UUID:
    if isinstance(text, uuid.UUID):
        return text
    try:
        return uuid.UUID(str(text))
    except ValueError:
        raise PoisonMessageError(f"{what} is not a UUID") from None


def _header_position(record: Record) -> tuple[int, int] | None:
    text = _header_text(record, "source_lsn")
    if text is None:
        return None
    commit, _, lsn = text.partition(":")
    try:
        return int(commit), int(lsn)
    except ValueError:
        raise PoisonMessageError("header source_lsn is not `commit_lsn:lsn` in decimal") from None


def _coordinates(record: Record) -> tuple[int, int]:
    if record.partition is None or record.offset is None:
        raise PoisonMessageError("record has no partition/offset (the sink sets them; a transform dropped them?)")
    return record.partition, record.offset


def to_changes(record: Record) -> list[Change]:
    """The changes one record carries (none for a plain compaction tombstone). Raises PoisonMessageError."""
    partition, offset = _coordinates(record)
    if record.value is None:
        return _tombstone(record, partition, offset)
    if record.value_schema is None:
        raise PoisonMessageError("record has a value but no value schema")
    shape = _shape_for(record.value_schema, record.key_schema)
    value = record.value
    if not _is_mapping(value):
        raise PoisonMessageError("record value is not a record")
    if shape.flat:
        return [_flat(record, shape, value, partition, offset)]
    return [_envelope(record, shape, value, partition, offset)]


def _tombstone(record: Record, partition: int, offset: int) -> list[Change]:
    if record.key is None and record.header(SNAPSHOT_COMPLETE_HEADER) is not None:
        return [_snapshot_complete(record, partition, offset)]
    change_id = _header_text(record, "change_id")
    if change_id is None or record.key is None or record.key_schema is None:
        return []
    position = _header_position(record)
    if position is None:
        raise PoisonMessageError("tombstone with a change_id header has no source_lsn header")
    key_schema = record.key_schema
    shape = _key_only_shape(key_schema)
    schema, table = _source_from_topic(record.topic)
    return [
        Change(
            record.topic, partition, offset, "d", _parse_uuid(change_id, "header change_id"), *position,
            schema, table, shape, shape.key_of(record.key), None,
        )
    ]  # fmt: skip


_NO_COLUMNS = Shape((), (), flat=True, key_only=True)


def _snapshot_complete(record: Record, partition: int, offset: int) -> Change:
    change_id = _header_text(record, "change_id")
    position = _header_position(record)
    if change_id is None or position is None:
        raise PoisonMessageError("snapshot-complete marker without change_id or source_lsn header")
    try:
        names = json.loads(_header_text(record, SNAPSHOT_COMPLETE_HEADER) or "")
        schema, table = names["schema"], names["table"]
    except (ValueError, TypeError, KeyError):
        raise PoisonMessageError('header cdc.snapshot.complete is not {"schema": ..., "table": ...}') from None
    if not isinstance(schema, str) or not isinstance(table, str):
        raise PoisonMessageError("header cdc.snapshot.complete names no schema and table")
    # Positioned at (consistent point, 0): below every row of this snapshot (consistent point, consistent point)
    # and every change streamed after it, above everything written before it. So the guarded removal spares
    # rows of this snapshot whatever partition they come from, and such rows applied after it still win.
    point = position[0]
    return Change(
        record.topic, partition, offset, "t", _parse_uuid(change_id, "header change_id"), point, 0,
        schema, table, _NO_COLUMNS, None, None, snapshot_complete=True,
    )  # fmt: skip


@lru_cache(maxsize=1024)
def _key_only_shape(key_schema: AvroSchema) -> Shape:
    return replace(shape_of(key_schema, key_schema), flat=True, key_only=True)


def _flat(record: Record, shape: Shape, value: Mapping[str, Any], partition: int, offset: int) -> Change:
    change_id = _header_text(record, "change_id")
    if change_id is None:
        raise PoisonMessageError("flat record has no change_id header")
    position = _header_position(record)
    if position is None:
        raise PoisonMessageError("flat record has no source_lsn header")
    deleted = str(value.get("__deleted", "false")).lower() == "true"
    schema, table = _source_from_topic(record.topic)
    row = shape.row_of(value)
    # `unchanged_toast` went with the envelope; the source's placeholder still marks such values.
    unchanged = frozenset(name for name, item in row.items() if item in _PLACEHOLDERS) if not deleted else frozenset()
    key = shape.key_of(record.key) if _is_mapping(record.key) else {k: row.get(k) for k in shape.key}
    return Change(
        record.topic, partition, offset, "d" if deleted else "u", _parse_uuid(change_id, "header change_id"),
        *position, schema, table, shape, key, row, unchanged,
    )  # fmt: skip


def _identity(
    record: Record, value: Mapping[str, Any], source: Mapping[str, Any], op: str
) -> tuple[uuid.UUID, int, int]:
    """The change id and `(commit_lsn, lsn)` of an envelope: ours carries them; Debezium's own envelope (no change
    id as field or header) has them derived from its source block."""
    raw_id = value.get("change_id") or _header_text(record, "change_id")
    if raw_id is None:
        return debezium.change_id(source, op, record.key), *debezium.position(source, op)
    change_id = _parse_uuid(raw_id, "change_id")
    commit_lsn, lsn = source.get("commit_lsn"), source.get("lsn")
    if not isinstance(lsn, int):
        position = _header_position(record)
        if position is None:
            raise PoisonMessageError("envelope has no source.lsn and no source_lsn header")
        return change_id, *position
    return change_id, (commit_lsn if isinstance(commit_lsn, int) else lsn), lsn


def _envelope(record: Record, shape: Shape, value: Mapping[str, Any], partition: int, offset: int) -> Change:
    op = value.get("op")
    if op not in ("c", "u", "d", "r", "t"):
        raise PoisonMessageError(f"envelope op {op!r} is not one of c, u, d, r, t")
    source = value.get("source") or {}
    if not _is_mapping(source):
        raise PoisonMessageError("envelope source is not a record")
    change_id, commit_lsn, lsn = _identity(record, value, source, op)
    schema, table = source.get("schema"), source.get("table")
    if not isinstance(schema, str) or not isinstance(table, str):
        fallback_schema, fallback_table = _source_from_topic(record.topic)
        schema = schema if isinstance(schema, str) else fallback_schema
        table = table if isinstance(table, str) else fallback_table
    image = value.get("before") if op == "d" else value.get("after")
    if op in UPSERT_OPS and not _is_mapping(image):
        raise PoisonMessageError(f"envelope op {op!r} has no `after` row")
    row = shape.row_of(image) if _is_mapping(image) else None
    key: Mapping[str, Any] | None = None
    if _is_mapping(record.key) and shape.key:
        key = shape.key_of(record.key)
    elif row is not None and shape.key:
        key = {k: row.get(k) for k in shape.key}
    # A create lists them too when it is the second half of an update that changed the key.
    toast = value.get("unchanged_toast") if op in ("u", "c") else None
    unchanged = frozenset(toast) if toast else _NONE
    ts_ms = value.get("ts_ms")
    if not isinstance(ts_ms, int):
        ts_ms = None
    return Change(
        record.topic, partition, offset, op, change_id, commit_lsn, lsn,
        schema, table, shape, key, row, unchanged, ts_ms,
    )  # fmt: skip


def collapse(changes: Sequence[Change]) -> list[Change]:
    """The last change per key, in first-seen key order; `changes` are one table's, in Kafka order, no truncates.

    An update whose TOASTed columns were not sent takes them from an earlier change of the same key in the
    batch when that change knew them, so collapsing never loses a value a per-change apply would have written.
    """
    last: dict[tuple[Any, ...], Change] = {}
    for item in changes:
        change = item
        key = change.key_tuple
        previous = last.get(key)
        if change.unchanged_toast and previous is not None and previous.op in UPSERT_OPS:
            change = _take_known(change, previous)
        last[key] = change
    return list(last.values())


@dataclass(frozen=True, slots=True)
class KeyMove:
    """A key-changing update whose new row lacks unchanged TOASTed values: they are in the row at `old_key`."""

    old_key: Mapping[str, Any]
    columns: frozenset[str]


def carry_across_key_changes(changes: Sequence[Change]) -> tuple[list[Change], dict[tuple[Any, ...], KeyMove]]:
    """Unchanged TOASTed values of key-changing updates, taken from the old key; `changes` as for `collapse`.

    An update that changes the key arrives as a delete of the old key and a create of the new one with the same
    `(commit_lsn, lsn)`; the create lists the columns PostgreSQL did not send in `unchanged_toast`. Values an
    earlier change of the old key in this batch knew are copied into the create here. The rest are returned as
    `KeyMove`s by new key: the applier copies them from the old key's destination row, in the same transaction,
    before the delete removes it. Chains (1 -> 2 -> 3 in one batch) point back to the first old key.
    """
    deletes = {c.position: c for c in changes if c.op == "d"}
    if not deletes:
        return list(changes), {}
    out: list[Change] = []
    latest: dict[tuple[Any, ...], Change] = {}  # last upsert per key so far
    gone: dict[tuple[int, int], Change] = {}  # the last upsert of a key, by the position of the delete that ended it
    moves: dict[tuple[Any, ...], KeyMove] = {}
    for item in changes:
        change = item
        if change.op == "c" and change.unchanged_toast and change.row is not None:
            delete = deletes.get(change.position)
            if delete is not None and delete.key is not None:
                old = delete.key_tuple
                previous = gone.get(change.position) or latest.get(old)
                if previous is not None:
                    change = _take_known(change, previous)
                unknown = change.unchanged_toast
                if unknown:
                    # The old key's row may itself be new in this batch, moved from a key the destination has.
                    earlier = moves.get(old)
                    moves[change.key_tuple] = (
                        KeyMove(earlier.old_key, unknown)
                        if earlier is not None and unknown <= earlier.columns
                        else KeyMove(delete.key, unknown)
                    )
        if change.op in UPSERT_OPS:
            latest[change.key_tuple] = change
        else:
            removed = latest.pop(change.key_tuple, None)
            if removed is not None:
                gone[change.position] = removed
        out.append(change)
    return out, moves


def _take_known(change: Change, previous: Change) -> Change:
    """`change` with the values of its unsent (unchanged TOASTed) columns that `previous`, an earlier upsert of
    the same row, knew."""
    if previous.row is None or change.row is None:
        return change
    known = change.unchanged_toast - previous.unchanged_toast
    if not known:
        return change
    row = dict(change.row)
    for name in known:
        row[name] = previous.row.get(name)
    return change._replace(row=row, unchanged_toast=change.unchanged_toast - known, line=None)


def split_at_truncates(changes: Iterable[Change]) -> list[tuple[list[Change], Change | None]]:
    """Segments of row changes, each followed by the truncate that ends it (None for the last)."""
    segments: list[tuple[list[Change], Change | None]] = []
    current: list[Change] = []
    for change in changes:
        if change.op == "t":
            segments.append((current, change))
            current = []
        else:
            current.append(change)
    segments.append((current, None))
    return segments

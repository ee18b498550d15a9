"""Per-table key and value schemas, and the rows, keys and envelopes that match them.

`build_table_schemas` runs once per table (and again when its relation changes); the returned
`TableSchemas` turns PostgreSQL text values into Avro-ready rows and wraps them into Debezium-compatible
envelopes (docs/event-format.md). Record names are `{topic_prefix}.{schema}.{table}.Key|Value|Envelope`,
each segment made a valid Avro name.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from core import __version__
from core.errors import SchemaError
from core.records import AvroSchema
from schemas.avro import NAMED_KINDS, RECORD_KINDS, defined_name, namespace_of
from schemas.catalog import TableInfo
from schemas.types import (
    CONNECT_NAME,
    CONNECT_VERSION,
    AvroType,
    ColumnCodec,
    DecimalHandling,
    SchemaStyle,
    _identity,
    avro_name,
    column_codec,
)


class _UnchangedToast:
    """The value pgoutput did not send: an unchanged TOASTed column ('u' in the tuple)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"

    def __reduce__(self) -> str:
        return "UNCHANGED_TOAST"


UNCHANGED_TOAST: Final = _UnchangedToast()
"""Pass this for a column whose tuple entry is 'u' (unchanged TOAST)."""

SOURCE_RECORD_NAME = "io.debezium.connector.postgresql.Source"

def _optional(name: str, kind: str) -> dict[str, Any]:
    return {"name": name, "type": ["null", kind], "default": None}


def _source_schema(fields: list[dict[str, Any]], *, connect_version: bool) -> dict[str, Any]:
    # Key order as registered so far: the schema's text, not only its meaning, decides whether it is a new version.
    schema: dict[str, Any] = {
        "type": "record", "name": "Source", "namespace": "io.debezium.connector.postgresql",
        "fields": copy.deepcopy(fields),  # the two schemas share field definitions: never one dict
    }  # fmt: skip
    if connect_version:
        schema[CONNECT_VERSION] = 1
    schema[CONNECT_NAME] = SOURCE_RECORD_NAME
    return schema


_SOURCE_HEAD = [{"name": name, "type": "string"} for name in ("version", "connector", "name")]
_SOURCE_HEAD.append({"name": "ts_ms", "type": "long"})
_SOURCE_TABLE = [{"name": "schema", "type": "string"}, {"name": "table", "type": "string"}]
_SOURCE_TX = [_optional("txId", "long"), _optional("lsn", "long"), _optional("xmin", "long")]
# Ours (docs/event-format.md): the commit's LSN, the first half of the sink's row-guard position.
_COMMIT_LSN = _optional("commit_lsn", "long")

SOURCE_SCHEMA: dict[str, Any] = _source_schema(
    [
        *_SOURCE_HEAD,
        _optional("snapshot", "string"),
        {"name": "db", "type": "string"},
        _optional("sequence", "string"),
        *_SOURCE_TABLE,
        *_SOURCE_TX,
        _COMMIT_LSN,
    ],
    connect_version=False,
)

DEBEZIUM_SNAPSHOT_VALUES = "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"

DEBEZIUM_SOURCE_SCHEMA: dict[str, Any] = _source_schema(
    [
        *_SOURCE_HEAD,
        {"name": "snapshot", "type": [
            {"type": "string", CONNECT_VERSION: 1, "connect.parameters": {"allowed": DEBEZIUM_SNAPSHOT_VALUES},
             "connect.default": "false", CONNECT_NAME: "io.debezium.data.Enum"}, "null"], "default": "false"},
        {"name": "db", "type": "string"},
        _optional("sequence", "string"),
        _optional("ts_us", "long"),
        _optional("ts_ns", "long"),
        *_SOURCE_TABLE,
        *_SOURCE_TX,
        _optional("origin", "string"),
        _optional("origin_lsn", "long"),
        _COMMIT_LSN,
    ],
    connect_version=True,
)  # fmt: skip
"""Debezium 3.6's `source` block as its PostgreSQL connector registers it, and our `commit_lsn` at the end."""

DEBEZIUM_TRANSACTION_SCHEMA: dict[str, Any] = {
    "type": "record", "name": "block", "namespace": "event",
    "fields": [{"name": "id", "type": "string"}, {"name": "total_order", "type": "long"},
               {"name": "data_collection_order", "type": "long"}],
    CONNECT_VERSION: 1, CONNECT_NAME: "event.block",
}  # fmt: skip
"""Debezium's `transaction` block (null unless its `provide.transaction.metadata` is on; ours is always null)."""

DEBEZIUM_CHANGE_ID: dict[str, Any] = {"type": "string", CONNECT_VERSION: 1, CONNECT_NAME: "io.debezium.data.Uuid"}


def source_schema(style: SchemaStyle) -> dict[str, Any]:
    return DEBEZIUM_SOURCE_SCHEMA if style == SchemaStyle.DEBEZIUM else SOURCE_SCHEMA


def source_block(
    *,
    name: str,
    db: str,
    schema: str,
    table: str,
    ts_ms: int,
    snapshot: str | None = None,
    tx_id: int | None = None,
    lsn: Any = None,
    commit_lsn: Any = None,
    xmin: int | None = None,
    sequence: str | None = None,
    version: str = __version__,
    style: SchemaStyle = SchemaStyle.AVRO_NATIVE,
) -> dict[str, Any]:
    """The `source` record of an event. `lsn`/`commit_lsn` accept ints or `Lsn`s.

    `sequence` defaults to Debezium's `["<commit lsn>","<lsn>"]` (decimal strings) when both are known.
    `debezium` style: `snapshot` is `"false"` for a streamed change, `ts_us`/`ts_ns` are `ts_ms` in their units,
    `origin`/`origin_lsn` null.
    """
    lsn_value = None if lsn is None else int(lsn)
    commit_value = None if commit_lsn is None else int(commit_lsn)
    if sequence is None and lsn_value is not None and commit_value is not None:
        sequence = f'["{commit_value}","{lsn_value}"]'
    if style == SchemaStyle.DEBEZIUM:
        return {
            "version": version,
            "connector": "postgresql",
            "name": name,
            "ts_ms": ts_ms,
            "snapshot": "false" if snapshot is None else snapshot,
            "db": db,
            "sequence": sequence,
            "ts_us": ts_ms * 1000,
            "ts_ns": ts_ms * 1_000_000,
            "schema": schema,
            "table": table,
            "txId": tx_id,
            "lsn": lsn_value,
            "xmin": xmin,
            "origin": None,
            "origin_lsn": None,
            "commit_lsn": commit_value,
        }
    return {
        "version": version,
        "connector": "postgresql",
        "name": name,
        "ts_ms": ts_ms,
        "snapshot": snapshot,
        "db": db,
        "sequence": sequence,
        "schema": schema,
        "table": table,
        "txId": tx_id,
        "lsn": lsn_value,
        "xmin": xmin,
        "commit_lsn": commit_value,
    }


def _compile_row_builder(codecs: Sequence[ColumnCodec]) -> Callable[[Sequence[Any]], dict[str, Any]]:
    """`texts -> {field: from_text(text)}` as one generated function: no per-column call for text columns."""
    namespace: dict[str, Any] = {}
    texts = [f"t{i}" for i in range(len(codecs))]
    items = []
    for i, codec in enumerate(codecs):
        namespace[f"_n{i}"] = codec.field_name
        if codec.text_converter is not None:
            namespace[f"_c{i}"] = codec.text_converter
            items.append(f"_n{i}: None if t{i} is None else _c{i}(t{i})")
        elif codec.from_text is _identity:
            items.append(f"_n{i}: t{i}")
        else:
            namespace[f"_c{i}"] = codec.from_text
            items.append(f"_n{i}: _c{i}(t{i})")
    unpack = f"    {', '.join(texts)}, = texts\n" if codecs else ""
    source = f"def build(texts):\n{unpack}    return {{{', '.join(items)}}}\n"
    # Only generated names and constants appear in the source: column names are passed as values.
    exec(compile(source, "<row-builder>", "exec"), namespace)  # noqa: S102
    build: Callable[[Sequence[Any]], dict[str, Any]] = namespace["build"]
    return build


@dataclass(frozen=True)
class TableSchemas:
    """The schemas of one captured table and the builders of its rows, keys and envelopes.

    `codecs` are the captured columns in table order; `row()` takes their text values in that order.
    `key_schema` is None for a keyless table (no primary key, no replica identity index, no configured
    `key_columns`): its records have a null key.
    """

    topic: str
    table: TableInfo
    codecs: tuple[ColumnCodec, ...]
    key_columns: tuple[str, ...]
    key_schema: AvroSchema | None
    value_schema: AvroSchema
    style: SchemaStyle = SchemaStyle.AVRO_NATIVE
    _plan: tuple[tuple[str, Any, Any, str], ...] = field(init=False, repr=False, compare=False)
    _fields: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _key_fields: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _build_row: Callable[[Sequence[Any]], dict[str, Any]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        plan = tuple((c.field_name, c.from_text, c.placeholder, c.column.name) for c in self.codecs)
        object.__setattr__(self, "_plan", plan)
        object.__setattr__(self, "_fields", tuple(c.field_name for c in self.codecs))
        by_column = {c.column.name: c.field_name for c in self.codecs}
        object.__setattr__(self, "_key_fields", tuple(by_column[name] for name in self.key_columns))
        object.__setattr__(self, "_build_row", _compile_row_builder(self.codecs))

    @property
    def column_names(self) -> tuple[str, ...]:
        """The captured columns, in the order `row()` expects their values."""
        return tuple(c.column.name for c in self.codecs)

    @property
    def field_names(self) -> tuple[str, ...]:
        return self._fields

    def row(self, texts: Sequence[str | _UnchangedToast | None]) -> tuple[dict[str, Any], tuple[str, ...]]:
        """Text values (one per codec, None for NULL, UNCHANGED_TOAST for 'u') -> (Avro row, unchanged columns)."""
        if len(texts) != len(self._plan):
            raise SchemaError(
                f"{self.table.qualified_name}: got {len(texts)} values for {len(self._plan)} captured columns",
                hint="the table changed since its schema was built; rebuild it from the relation message",
            )
        if UNCHANGED_TOAST in texts:
            return self._row_with_toast(texts)
        try:
            return self._build_row(texts), ()
        except (ValueError, TypeError, ArithmeticError, IndexError) as exc:
            raise self._conversion_error(texts) from exc

    def _row_with_toast(self, texts: Sequence[Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
        out: dict[str, Any] = {}
        unchanged: list[str] = []
        try:
            for (name, convert, placeholder, column), text in zip(self._plan, texts, strict=True):
                if text is UNCHANGED_TOAST:
                    out[name] = placeholder
                    unchanged.append(column)
                else:
                    out[name] = convert(text)
        except (ValueError, TypeError, ArithmeticError, IndexError) as exc:
            raise self._conversion_error(texts) from exc
        return out, tuple(unchanged)

    def _conversion_error(self, texts: Sequence[Any]) -> SchemaError:
        for codec, text in zip(self.codecs, texts, strict=True):
            if text is UNCHANGED_TOAST:
                continue
            try:
                codec.from_text(text)
            except (ValueError, TypeError, ArithmeticError, IndexError) as exc:
                # The value itself is not printed: it may be personal data.
                return SchemaError(
                    f"cannot convert a value of {self.table.qualified_name}.{codec.column.name} "
                    f"({codec.column.type_name}): {type(exc).__name__}",
                    hint="exclude the column with `columns_exclude` or report the value's shape as a bug",
                )
        return SchemaError(f"cannot convert a row of {self.table.qualified_name}")

    def row_by_name(self, texts: Mapping[str, str | _UnchangedToast | None]) -> tuple[dict[str, Any], tuple[str, ...]]:
        """Like `row()`, from a mapping column name -> text; missing columns are NULL."""
        return self.row([texts.get(c.column.name) for c in self.codecs])

    def key(self, row: Mapping[str, Any]) -> dict[str, Any] | None:
        """The key record of an Avro row (None for a keyless table)."""
        if self.key_schema is None:
            return None
        return {name: row[name] for name in self._key_fields}

    def envelope(
        self,
        *,
        op: str,
        before: Mapping[str, Any] | None,
        after: Mapping[str, Any] | None,
        source: Mapping[str, Any],
        ts_ms: int | None,
        change_id: str,
        unchanged_toast: Sequence[str] = (),
    ) -> dict[str, Any]:
        return envelope_value(
            op=op, before=before, after=after, source=source, ts_ms=ts_ms, change_id=change_id,
            unchanged_toast=unchanged_toast, style=self.style,
        )  # fmt: skip


def envelope_value(
    *,
    op: str,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    source: Mapping[str, Any],
    ts_ms: int | None,
    change_id: str,
    unchanged_toast: Sequence[str] = (),
    style: SchemaStyle = SchemaStyle.AVRO_NATIVE,
) -> dict[str, Any]:
    """An envelope value of `style` (`debezium`: with `transaction` (null), `ts_us` and `ts_ns`)."""
    if style == SchemaStyle.DEBEZIUM:
        return {
            "before": before,
            "after": after,
            "source": source,
            "transaction": None,
            "op": op,
            "ts_ms": ts_ms,
            "ts_us": None if ts_ms is None else ts_ms * 1000,
            "ts_ns": None if ts_ms is None else ts_ms * 1_000_000,
            "change_id": change_id,
            "unchanged_toast": list(unchanged_toast),
        }
    return {
        "before": before,
        "after": after,
        "source": source,
        "op": op,
        "ts_ms": ts_ms,
        "change_id": change_id,
        "unchanged_toast": list(unchanged_toast),
    }


def record_namespace(topic_prefix: str, schema: str, table: str) -> str:
    """`{topic_prefix}.{schema}.{table}` with each dot-separated segment made a valid Avro name."""
    segments = [*topic_prefix.split("."), schema, table]
    return ".".join(avro_name(s) for s in segments if s)


def _dedupe_named(avro: AvroType, seen: set[str], namespace: str | None = None) -> AvroType:
    """Replace every named type defined earlier in the schema by its full name (Avro forbids redefinition)."""
    if isinstance(avro, list):
        return [_dedupe_named(branch, seen, namespace) for branch in avro]
    if not isinstance(avro, dict):
        return avro
    kind = avro.get("type")
    if kind in NAMED_KINDS:
        full = defined_name(avro, namespace)
        if full in seen:
            return full
        seen.add(full)
        if kind in RECORD_KINDS:
            fields = [{**f, "type": _dedupe_named(f["type"], seen, namespace_of(full))} for f in avro["fields"]]
            return {**avro, "fields": fields}
        return avro
    if kind == "array":
        return {**avro, "items": _dedupe_named(avro["items"], seen, namespace)}
    if kind == "map":
        return {**avro, "values": _dedupe_named(avro["values"], seen, namespace)}
    return avro


def _with_unique_names(codecs: list[ColumnCodec]) -> list[ColumnCodec]:
    """Columns whose names are valid Avro names keep them; renamed ones get `_2`, `_3`... on collision."""
    used = {c.field_name for c in codecs if c.field_name == c.column.name}
    out = []
    for codec in codecs:
        if codec.field_name == codec.column.name:
            out.append(codec)
            continue
        name = codec.field_name
        suffix = 2
        while name in used:
            name = f"{codec.field_name}_{suffix}"
            suffix += 1
        used.add(name)
        out.append(replace(codec, field_name=name))
    return out


def build_table_schemas(
    table: TableInfo,
    *,
    topic: str,
    topic_prefix: str,
    decimal_handling: DecimalHandling = DecimalHandling.PRECISE,
    skip_unsupported: bool = False,
    columns_include: Collection[str] | None = None,
    columns_exclude: Collection[str] = (),
    key_columns: Sequence[str] | None = None,
    schema_style: SchemaStyle = SchemaStyle.AVRO_NATIVE,
) -> TableSchemas:
    """The key and value schemas of `table` and the codecs of its captured columns.

    Captured columns: all columns in table order, minus generated columns (pgoutput does not send them
    before PostgreSQL 18), restricted to `columns_include` when given, minus `columns_exclude`.
    `key_columns` overrides the table's primary key / replica identity index (for keyless tables).
    """
    where = table.qualified_name
    names = {c.name for c in table.columns}
    for option, listed in (("columns_include", columns_include or ()), ("columns_exclude", columns_exclude)):
        missing = [n for n in listed if n not in names]
        if missing:
            raise SchemaError(
                f"{where}: `{option}` names columns the table does not have: {', '.join(missing)}",
                hint=f"check the column names in `table_options` for {where}",
            )
    keys = tuple(key_columns) if key_columns is not None else table.key_columns
    missing_keys = [k for k in keys if k not in names]
    if missing_keys:
        raise SchemaError(
            f"{where}: key columns {', '.join(missing_keys)} do not exist",
            hint=f"fix `key_columns` for {where}",
        )

    codecs: list[ColumnCodec] = []
    for column in table.columns:
        if column.generated:
            continue
        if columns_include is not None and column.name not in columns_include:
            if column.name in keys:
                raise SchemaError(
                    f"{where}: key column {column.name} is not in `columns_include`",
                    hint="key columns must be captured; add it to `columns_include`",
                )
            continue
        if column.name in columns_exclude:
            if column.name in keys:
                raise SchemaError(
                    f"{where}: key column {column.name} is in `columns_exclude`",
                    hint="key columns must be captured; remove it from `columns_exclude`",
                )
            continue
        try:
            codecs.append(
                column_codec(
                    table, column, decimal_handling=decimal_handling, key=column.name in keys,
                    schema_style=schema_style,
                )
            )  # fmt: skip
        except SchemaError:
            if skip_unsupported and column.name not in keys:
                continue
            raise
    codecs = _with_unique_names(codecs)

    namespace = record_namespace(topic_prefix, table.schema, table.name)
    value_record = _dedupe_named(
        {"type": "record", "name": "Value", "namespace": namespace, "fields": [c.field for c in codecs],
         CONNECT_NAME: f"{namespace}.Value"},
        set(),
    )  # fmt: skip
    envelope = _envelope_schema(namespace, value_record, schema_style)
    key_schema = None
    if keys:
        by_name = {c.column.name: c for c in codecs}
        key_record = _dedupe_named(
            {"type": "record", "name": "Key", "namespace": namespace,
             "fields": [by_name[k].field for k in keys], CONNECT_NAME: f"{namespace}.Key"},
            set(),
        )  # fmt: skip
        key_schema = AvroSchema.of(key_record)
    return TableSchemas(
        topic=topic,
        table=table,
        codecs=tuple(codecs),
        key_columns=keys,
        key_schema=key_schema,
        value_schema=AvroSchema.of(envelope),
        style=schema_style,
    )


def _envelope_schema(namespace: str, value_record: AvroType, style: SchemaStyle) -> dict[str, Any]:
    row = f"{namespace}.Value"
    if style == SchemaStyle.AVRO_NATIVE:
        return {
            "type": "record",
            "name": "Envelope",
            "namespace": namespace,
            "fields": [
                {"name": "before", "type": ["null", value_record], "default": None},
                {"name": "after", "type": ["null", row], "default": None},
                {"name": "source", "type": SOURCE_SCHEMA},
                {"name": "op", "type": "string"},
                {"name": "ts_ms", "type": ["null", "long"], "default": None},
                {"name": "change_id", "type": {"type": "string", "logicalType": "uuid"}},
                {"name": "unchanged_toast", "type": {"type": "array", "items": "string"}, "default": []},
            ],
            CONNECT_NAME: f"{namespace}.Envelope",
        }
    # Debezium's envelope, field for field; `change_id` and `unchanged_toast` (ours) at the end.
    return {
        "type": "record",
        "name": "Envelope",
        "namespace": namespace,
        "fields": [
            {"name": "before", "type": ["null", value_record], "default": None},
            {"name": "after", "type": ["null", row], "default": None},
            {"name": "source", "type": DEBEZIUM_SOURCE_SCHEMA},
            {"name": "transaction", "type": ["null", DEBEZIUM_TRANSACTION_SCHEMA], "default": None},
            {"name": "op", "type": "string"},
            {"name": "ts_ms", "type": ["null", "long"], "default": None},
            {"name": "ts_us", "type": ["null", "long"], "default": None},
            {"name": "ts_ns", "type": ["null", "long"], "default": None},
            {"name": "change_id", "type": DEBEZIUM_CHANGE_ID},
            {"name": "unchanged_toast", "type": {"type": "array", "items": "string"}, "default": []},
        ],
        CONNECT_VERSION: 2,
        CONNECT_NAME: f"{namespace}.Envelope",
    }


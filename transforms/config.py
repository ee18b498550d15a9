"""Config of the transform chain (`transforms:` section).

Each entry is `{type, ...options, predicate?, negate?}`. `TransformSpec` validates its options against
the option model of its `type` when the config loads, so a bad option is reported with its key path
(`transforms[2].fields`) and `cdc config schema` documents every transform's options.
"""

from __future__ import annotations

import re
import string
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    PrivateAttr,
    SecretStr,
    SerializationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError

from core.settings import Section
from transforms.avro import NAME_PATTERN
from transforms.expression import ExpressionError, compile_condition, compile_name
from transforms.timefmt import TimeFormat

FieldName = Annotated[str, Field(pattern=NAME_PATTERN, description="An Avro field name.")]
Scalar = str | int | float | bool


def _invalid(reason: str) -> PydanticCustomError:
    # The reason goes through the context so braces in user text are not read as placeholders.
    return PydanticCustomError("invalid_option", "{reason}", {"reason": reason})


def _check_regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise _invalid(f"not a valid regular expression: {exc}") from None
    return pattern


def _check_name(path: str) -> str:
    try:
        compile_name(path)
    except ExpressionError as exc:
        raise _invalid(str(exc)) from None
    return path


def _placeholders(template: str, allowed: set[str]) -> str:
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise _invalid(f"not a valid format: {exc}") from None
    for name in names:
        if name not in allowed:
            known = ", ".join("{" + a + "}" for a in sorted(allowed))
            raise _invalid(f"unknown placeholder `{{{name}}}` (known: {known})")
    return template


# --- predicates -------------------------------------------------------------------------------


class TopicMatches(Section):
    """True when the whole topic name matches `pattern`."""

    type: Literal["topic_matches"] = Field(description="Predicate name.")
    pattern: str = Field(description="Regular expression the whole topic name must match.")

    _check = field_validator("pattern")(_check_regex)


class TableIn(Section):
    """True for events of the listed tables (from `source`, or the topic's last two segments after `unwrap`)."""

    type: Literal["table_in"] = Field(description="Predicate name.")
    tables: list[Annotated[str, Field(pattern=r"^[^.]+\.[^.]+$")]] = Field(
        min_length=1, description="`schema.table` names."
    )


class OpIn(Section):
    """True for envelopes whose `op` is listed."""

    type: Literal["op_in"] = Field(description="Predicate name.")
    ops: list[Literal["c", "u", "d", "r", "t"]] = Field(min_length=1, description="Operations: c, u, d, r, t.")


class HasHeader(Section):
    """True when the record has header `name`."""

    type: Literal["has_header"] = Field(description="Predicate name.")
    name: str = Field(min_length=1, description="Header name.")


class IsTombstone(Section):
    """True for tombstones (null value)."""

    type: Literal["is_tombstone"] = Field(description="Predicate name.")


PredicateSpec = Annotated[
    TopicMatches | TableIn | OpIn | HasHeader | IsTombstone,
    Field(discriminator="type"),
]


# --- transform options ------------------------------------------------------------------------


class TransformOptions(Section):
    """Options every transform takes."""

    kind: ClassVar[str] = ""

    type: str = Field(description="Transform name.")
    predicate: PredicateSpec | None = Field(
        None, description="Apply the transform only to records the predicate selects; others pass unchanged."
    )
    negate: bool = Field(False, description="Apply the transform to records the predicate does NOT select.")

    @model_validator(mode="after")
    def _negate_needs_predicate(self) -> TransformOptions:
        if self.negate and self.predicate is None:
            raise _invalid("`negate` needs a `predicate`")
        return self


ApplyTo = Literal["value", "key", "both"]
_APPLY_TO = "Transform the value's rows (`value`), the key (`key`) or both."


class UnwrapOptions(TransformOptions):
    """Debezium ExtractNewRecordState: replace the envelope with the row after the change."""

    kind = "unwrap"
    type: Literal["unwrap"] = Field(description="Transform name.")
    delete_handling: Literal["drop", "tombstone", "rewrite"] = Field(
        "drop",
        description="Deletes: `drop` them, turn them into a `tombstone`, or `rewrite` them as the `before` row "
        "with `__deleted: \"true\"` (every other row gets `__deleted: \"false\"`).",
    )
    drop_tombstones: bool = Field(
        True, description="Drop the tombstones that follow deletes (snapshot-complete markers are kept)."
    )
    add_fields: list[Annotated[str, Field(pattern=r"^(source\.)?[A-Za-z_][A-Za-z0-9_]*$")]] = Field(
        default_factory=list,
        description="Envelope fields added to the row as `{prefix}{name}` (`op` -> `__op`, `source.ts_ms` -> "
        "`__source_ts_ms`; a plain name not in the envelope is read from `source`, as in Debezium).",
    )
    add_headers: list[Annotated[str, Field(pattern=r"^(source\.)?[A-Za-z_][A-Za-z0-9_]*$")]] = Field(
        default_factory=list, description="Envelope fields added as headers `{prefix}{name}` (UTF-8 text)."
    )
    prefix: str = Field("__", pattern=r"^[A-Za-z0-9_]*$", description="Prefix of added fields and headers.")
    truncate_handling: Literal["drop", "keep"] = Field(
        "drop", description="Truncate events (no row): `drop` them or `keep` the envelope unchanged."
    )


class RouteOptions(TransformOptions):
    """Kafka Connect RegexRouter: rename topics matching `regex` (whole name) to `replacement`."""

    kind = "route"
    type: Literal["route"] = Field(description="Transform name.")
    regex: str = Field(description="Regular expression the whole topic name must match.")
    replacement: str = Field(description="New topic name; `$1` / `${name}` insert groups, `$$` is a `$`.")

    _check = field_validator("regex")(_check_regex)

    @model_validator(mode="after")
    def _groups_exist(self) -> RouteOptions:
        compiled = re.compile(self.regex)
        for match in re.finditer(r"\$(?:(\d+)|\{([A-Za-z_][A-Za-z0-9_]*)\}|(\$))", self.replacement):
            number, name = match.group(1), match.group(2)
            if number is not None and int(number) > compiled.groups:
                raise _invalid(f"`replacement` refers to group ${number} but `regex` has {compiled.groups}")
            if name is not None and name not in compiled.groupindex:
                raise _invalid(f"`replacement` refers to group ${{{name}}} that `regex` does not define")
        return self


class RouteByFieldOptions(TransformOptions):
    """Topic from a field value: `format` with `{topic}` and `{value}`."""

    kind = "route_by_field"
    type: Literal["route_by_field"] = Field(description="Transform name.")
    field: str = Field(description="Where the value comes from, as in `filter` (`value.region`, `key.tenant`).")
    format: str = Field("{topic}.{value}", description="New topic name; `{topic}` and `{value}` are replaced.")
    on_missing: Literal["keep", "drop", "fail"] = Field(
        "keep", description="When the field is null or absent: keep the topic, drop the record, or fail."
    )

    _check_field = field_validator("field")(_check_name)

    @field_validator("format")
    @classmethod
    def _check_format(cls, value: str) -> str:
        return _placeholders(value, {"topic", "value"})


class TimestampRouterOptions(TransformOptions):
    """Kafka Connect TimestampRouter: topic by event time, e.g. `{topic}-{yyyyMMdd}`."""

    kind = "timestamp_router"
    type: Literal["timestamp_router"] = Field(description="Transform name.")
    format: str = Field(
        "{topic}-{yyyyMMdd}",
        description="New topic name: `{topic}`, and any other `{...}` is a date pattern (Java letters, UTC) of the "
        "event time (the envelope's `source.ts_ms`, else the record timestamp).",
    )

    @field_validator("format")
    @classmethod
    def _check_format(cls, value: str) -> str:
        if re.search(r"[{}]", re.sub(r"\{[^{}]*\}", "", value)):
            raise _invalid("unbalanced `{` or `}` (placeholders are `{topic}` and `{<date pattern>}`)")
        for piece in re.findall(r"\{([^{}]*)\}", value):
            if piece != "topic":
                try:
                    TimeFormat(piece)
                except ValueError as exc:
                    raise _invalid(str(exc)) from None
        return value


class FilterOptions(TransformOptions):
    """Keep (or drop) records by a condition; without a condition, drop every record the predicate selects."""

    kind = "filter"
    type: Literal["filter"] = Field(description="Transform name.")
    condition: str | None = Field(
        None, description="A condition (`op == 'd' and value.amount > 100`); see docs/transforms.md for the language."
    )
    action: Literal["keep", "drop"] = Field("keep", description="Keep or drop the records the condition is true for.")

    @field_validator("condition")
    @classmethod
    def _parse(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                compile_condition(value)
            except ExpressionError as exc:
                raise _invalid(str(exc)) from None
        return value


class MaskOptions(TransformOptions):
    """Kafka Connect MaskField: replace field values with a fixed value, null, or a salted hash."""

    kind = "mask"
    type: Literal["mask"] = Field(description="Transform name.")
    fields: list[FieldName] = Field(min_length=1, description="Fields to mask (absent ones are ignored).")
    mode: Literal["fixed", "null", "hash"] = Field(
        "fixed",
        description="`fixed`: `replacement` (default: the type's empty value: 0, \"\", false); `null` (nullable "
        "fields only); `hash`: hex SHA-256 of salt + value (the field becomes a string).",
    )
    replacement: Scalar | None = Field(None, description="The fixed value (mode `fixed`); must fit each field's type.")
    salt: SecretStr | None = Field(None, description="Salt of mode `hash` (required with it).")
    apply_to: ApplyTo = Field("value", description=_APPLY_TO)

    @model_validator(mode="after")
    def _mode_options(self) -> MaskOptions:
        if self.mode == "hash" and not self.salt:
            raise _invalid("mode `hash` needs a `salt` (use ${VAR} to keep it out of the file)")
        if self.mode != "fixed" and self.replacement is not None:
            raise _invalid(f"`replacement` is only used with mode `fixed`, not `{self.mode}`")
        if self.mode != "hash" and self.salt is not None:
            raise _invalid("`salt` is only used with mode `hash`")
        return self


class DropOptions(TransformOptions):
    """Kafka Connect ReplaceField `exclude`: remove fields."""

    kind = "drop"
    type: Literal["drop"] = Field(description="Transform name.")
    fields: list[FieldName] = Field(min_length=1, description="Fields to remove (absent ones are ignored).")
    apply_to: ApplyTo = Field("value", description=_APPLY_TO)


class KeepOptions(TransformOptions):
    """Kafka Connect ReplaceField `include`: keep only these fields."""

    kind = "keep"
    type: Literal["keep"] = Field(description="Transform name.")
    fields: list[FieldName] = Field(min_length=1, description="Fields to keep, in their schema order.")
    apply_to: ApplyTo = Field("value", description=_APPLY_TO)


class RenameOptions(TransformOptions):
    """Kafka Connect ReplaceField `renames`."""

    kind = "rename"
    type: Literal["rename"] = Field(description="Transform name.")
    renames: dict[FieldName, FieldName] = Field(min_length=1, description="Old name -> new name.")
    apply_to: ApplyTo = Field(
        "both", description=_APPLY_TO + " Default `both`: a renamed key column keeps matching its row column."
    )

    @field_validator("renames")
    @classmethod
    def _distinct(cls, value: dict[str, str]) -> dict[str, str]:
        targets = list(value.values())
        duplicates = sorted({t for t in targets if targets.count(t) > 1})
        if duplicates:
            raise _invalid(f"several fields renamed to `{duplicates[0]}`")
        return value


class InsertOptions(TransformOptions):
    """Kafka Connect InsertField: add a static field and/or the record's topic, partition, offset, timestamp."""

    kind = "insert"
    type: Literal["insert"] = Field(description="Transform name.")
    static_field: FieldName | None = Field(None, description="Name of a field holding `static_value`.")
    static_value: Scalar | None = Field(None, description="Value of `static_field` (string, number or boolean).")
    topic_field: FieldName | None = Field(None, description="Field receiving the topic name.")
    partition_field: FieldName | None = Field(
        None, description="Field receiving the partition (null on the source side)."
    )
    offset_field: FieldName | None = Field(None, description="Field receiving the offset (null on the source side).")
    timestamp_field: FieldName | None = Field(
        None, description="Field receiving the record timestamp (timestamp-millis, null when unknown)."
    )
    apply_to: Literal["value", "key"] = Field("value", description="Insert into the value's rows or the key.")

    @model_validator(mode="after")
    def _something(self) -> InsertOptions:
        if (self.static_field is None) != (self.static_value is None):
            raise _invalid("`static_field` and `static_value` go together")
        given = (self.static_field, self.topic_field, self.partition_field, self.offset_field, self.timestamp_field)
        names = [n for n in given if n]
        if not names:
            raise _invalid(
                "give at least one of static_field, topic_field, partition_field, offset_field, timestamp_field"
            )
        if len(set(names)) != len(names):
            raise _invalid("the inserted field names must differ")
        return self


CastType = Literal["int8", "int16", "int32", "int64", "float32", "float64", "boolean", "string"]


class CastOptions(TransformOptions):
    """Kafka Connect Cast: change field types."""

    kind = "cast"
    type: Literal["cast"] = Field(description="Transform name.")
    spec: dict[FieldName, CastType] = Field(
        min_length=1, description="Field -> type: int8, int16, int32, int64, float32, float64, boolean, string."
    )
    apply_to: ApplyTo = Field("value", description=_APPLY_TO)


class TimestampConvertOptions(TransformOptions):
    """Kafka Connect TimestampConverter: convert fields between epoch numbers, timestamps, dates and strings."""

    kind = "timestamp_convert"
    type: Literal["timestamp_convert"] = Field(description="Transform name.")
    fields: list[FieldName] = Field(min_length=1, description="Fields to convert (absent ones are ignored).")
    target_type: Literal["unix_ms", "unix_micros", "timestamp_ms", "timestamp_micros", "date", "string"] = Field(
        description="`unix_ms`/`unix_micros`: plain long; `timestamp_ms`/`timestamp_micros`: long with the Avro "
        "timestamp logical type; `date`: int days; `string`: text in `format`."
    )
    format: str | None = Field(
        None, description="Java-style date pattern (`yyyy-MM-dd HH:mm:ss`), UTC: for `string` output and string input."
    )
    unix_precision: Literal["milliseconds", "microseconds"] = Field(
        "milliseconds", description="Unit of input fields that are plain longs."
    )
    apply_to: ApplyTo = Field("value", description=_APPLY_TO)

    @field_validator("format")
    @classmethod
    def _check_format(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                TimeFormat(value)
            except ValueError as exc:
                raise _invalid(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _format_for_strings(self) -> TimestampConvertOptions:
        if self.target_type == "string" and self.format is None:
            raise _invalid("target_type `string` needs a `format`")
        return self


class FlattenOptions(TransformOptions):
    """Kafka Connect Flatten: nested records become fields named `outer{delimiter}inner`."""

    kind = "flatten"
    type: Literal["flatten"] = Field(description="Transform name.")
    delimiter: str = Field(
        "_", pattern=r"^[A-Za-z0-9_]+$", description="Joins names (Avro names allow letters, digits and `_` only)."
    )
    apply_to: ApplyTo = Field("value", description=_APPLY_TO)


class HoistOptions(TransformOptions):
    """Kafka Connect HoistField: wrap the whole value (or key) in a record with one field."""

    kind = "hoist"
    type: Literal["hoist"] = Field(description="Transform name.")
    field: FieldName = Field(description="Name of the one field.")
    record_name: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$",
        description="Full name of the new record (default: the wrapped record's namespace + `.Hoisted`).",
    )
    apply_to: Literal["value", "key"] = Field("value", description="Wrap the value or the key.")


class ExtractFieldOptions(TransformOptions):
    """Kafka Connect ExtractField: replace the whole value (or key) with one of its fields."""

    kind = "extract_field"
    type: Literal["extract_field"] = Field(description="Transform name.")
    field: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")] = Field(
        description="Field name; a dotted path reaches into nested records (`after.id`)."
    )
    apply_to: Literal["value", "key"] = Field("value", description="Extract from the value or the key.")


class ValueToKeyOptions(TransformOptions):
    """Kafka Connect ValueToKey: the key becomes a record of these value fields (the row's, for envelopes)."""

    kind = "value_to_key"
    type: Literal["value_to_key"] = Field(description="Transform name.")
    fields: list[FieldName] = Field(min_length=1, description="Value fields that make up the new key.")


class HeadersOptions(TransformOptions):
    """Kafka Connect InsertHeader / DropHeaders / HeaderFrom in one: drop, then copy, then insert."""

    kind = "headers"
    type: Literal["headers"] = Field(description="Transform name.")
    drop: list[str] = Field(default_factory=list, description="Header names to remove.")
    from_fields: dict[str, str] = Field(
        default_factory=dict,
        description="Header name -> field (`value.tenant`, `key.id`, `source.lsn`, as in `filter`); null skips.",
    )
    insert: dict[str, str] = Field(default_factory=dict, description="Header name -> static text value.")

    @field_validator("from_fields")
    @classmethod
    def _fields(cls, value: dict[str, str]) -> dict[str, str]:
        for path in value.values():
            _check_name(path)
        return value

    @model_validator(mode="after")
    def _something(self) -> HeadersOptions:
        if not (self.drop or self.from_fields or self.insert):
            raise _invalid("give at least one of `drop`, `from_fields`, `insert`")
        return self


class OutboxOptions(TransformOptions):
    """Debezium outbox event router: outbox-table inserts become events on per-aggregate topics."""

    kind = "outbox"
    type: Literal["outbox"] = Field(description="Transform name.")
    id_field: FieldName = Field("id", description="Column with the event id (header `id`).")
    aggregate_type_field: FieldName = Field("aggregatetype", description="Column naming the aggregate type (topic).")
    aggregate_id_field: FieldName = Field("aggregateid", description="Column with the aggregate id (the new key).")
    type_field: FieldName = Field("type", description="Column with the event type (header `type`).")
    payload_field: FieldName = Field("payload", description="Column with the payload (the new value, as stored).")
    topic_format: str = Field(
        "outbox.event.{aggregatetype}",
        description="Topic of each event: `{aggregatetype}`, `{aggregateid}`, `{type}`, `{topic}` are replaced.",
    )

    @field_validator("topic_format")
    @classmethod
    def _check_format(cls, value: str) -> str:
        return _placeholders(value, {"aggregatetype", "aggregateid", "type", "topic"})


class PythonOptions(TransformOptions):
    """A user transform: a function `Record -> Record | None | list[Record]` or a class with `apply(record)`."""

    kind = "python"
    type: Literal["python"] = Field(description="Transform name.")
    callable: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$",
        description="Import path `package.module:name` of a function or class.",
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for a class's constructor.")


OPTION_MODELS: dict[str, type[TransformOptions]] = {
    model.kind: model
    for model in (
        UnwrapOptions,
        RouteOptions,
        RouteByFieldOptions,
        TimestampRouterOptions,
        FilterOptions,
        MaskOptions,
        DropOptions,
        KeepOptions,
        RenameOptions,
        InsertOptions,
        CastOptions,
        TimestampConvertOptions,
        FlattenOptions,
        HoistOptions,
        ExtractFieldOptions,
        ValueToKeyOptions,
        HeadersOptions,
        OutboxOptions,
        PythonOptions,
    )
}


class TransformSpec(Section):
    """One transform in the chain. Options beyond `type` belong to the transform named by `type`."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str = Field(description="Transform name (`unwrap`, `route`, `mask`, ...).")
    _settings: TransformOptions | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _validate_options(self) -> TransformSpec:
        model = OPTION_MODELS.get(self.type)
        if model is None:
            raise PydanticCustomError(
                "unknown_transform",
                "unknown transform type `{type}` (known: {known})",
                {"type": self.type, "known": ", ".join(OPTION_MODELS)},
            )
        self._settings = model.model_validate({**(self.model_extra or {}), "type": self.type})
        return self

    @model_serializer(mode="plain")
    def _dump(self, info: SerializationInfo) -> dict[str, Any]:
        # Dump the validated options, so secrets (`salt`) print as `**********` in `cdc config show`.
        return self.settings.model_dump(mode=info.mode)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def settings(self) -> TransformOptions:
        """The validated options (an instance of the transform's option model)."""
        assert self._settings is not None
        return self._settings

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        variants = [handler(model.__pydantic_core_schema__) for model in OPTION_MODELS.values()]
        return {
            "description": "One transform: `type` names it, its other keys are that transform's options.",
            "oneOf": variants,
        }


class TransformsBySide(Section):
    source: list[TransformSpec] = Field(default_factory=list, description="Applied before producing.")
    sink: list[TransformSpec] = Field(default_factory=list, description="Applied after decoding.")

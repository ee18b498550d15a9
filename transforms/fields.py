"""Field-level transforms: mask, drop, keep, rename, insert, cast, timestamp_convert, flatten.

All are envelope-aware (`FieldTransform`): on a Debezium envelope they rewrite the rows in `before` and
`after`; on a flat record (after `unwrap`, or a key with `apply_to`) the record itself. Fields a
schema does not have are ignored, so one transform can serve many tables. A field whose type changes
loses its `pg.type` property, so sinks derive the column type from the Avro type.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Container
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from core.errors import ConfigError
from core.records import Record
from schemas.avro import NamedTypes
from transforms.avro import base_type, make_nullable, resolve, split_nullable, without_pg_type
from transforms.config import (
    CastOptions,
    DropOptions,
    FlattenOptions,
    InsertOptions,
    KeepOptions,
    MaskOptions,
    RenameOptions,
    TimestampConvertOptions,
)
from transforms.envelope import FieldTransform, RowPlan, value_bytes
from transforms.exceptions import TransformError, option_error
from transforms.timefmt import TimeFormat, from_micros, to_micros

ValueMap = Callable[[Any], Any]


def _retyped(field: dict[str, Any], type_: Any) -> dict[str, Any]:
    """The field with a new type; a default that may not fit the new type is dropped (null stays)."""
    out = without_pg_type(field)
    out["type"] = type_
    if "default" in out and not (out["default"] is None and isinstance(type_, list) and type_[0] == "null"):
        del out["default"]
    return out


def _map_fields(mappers: dict[str, ValueMap]) -> Callable[[dict[str, Any], Record], dict[str, Any]]:
    items = tuple(mappers.items())

    def convert(row: dict[str, Any], _record: Record) -> dict[str, Any]:
        out = dict(row)
        for name, mapper in items:
            if name in out:
                out[name] = mapper(out[name])
        return out

    return convert


FieldPlan = Callable[[dict[str, Any], Any, bool], tuple[dict[str, Any], ValueMap]]


def _plan_fields(row: dict[str, Any], selected: Container[str], plan: FieldPlan) -> RowPlan | None:
    """Rewrite the selected fields of a row one by one (`plan(field, inner type, nullable) -> (new field, value map)`);
    the others pass through unchanged. None when the row has none of them."""
    if not any(f["name"] in selected for f in row["fields"]):
        return None
    fields = []
    mappers: dict[str, ValueMap] = {}
    for field in row["fields"]:
        name = field["name"]
        if name not in selected:
            fields.append(field)
            continue
        inner, nullable = split_nullable(field["type"])
        new_field, mappers[name] = plan(field, inner, nullable)
        fields.append(new_field)
    return {**row, "fields": fields}, _map_fields(mappers)


def _hasher(salt: bytes) -> ValueMap:
    return lambda value: None if value is None else hashlib.sha256(salt + value_bytes(value)).hexdigest()


def _masker(masked: Any) -> ValueMap:
    return lambda value: None if value is None else masked


def _constant(value: Any) -> Callable[[Record], Any]:
    return lambda _record: value


def _through(read: Callable[[Any], int], write: Callable[[int], Any]) -> ValueMap:
    return lambda value: None if value is None else write(read(value))


# --- mask -------------------------------------------------------------------------------------

_INT_RANGES = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}


class Mask(FieldTransform):
    def __init__(self, options: MaskOptions, label: str) -> None:
        super().__init__(label, options.apply_to)
        self.options = options
        self._fields = frozenset(options.fields)
        self._salt = options.salt.get_secret_value().encode() if options.salt else b""

    def _fixed(self, name: str, type_: Any, index: NamedTypes) -> Any:
        kind, logical = base_type(type_, index)
        given = self.options.replacement
        named = resolve(type_, index)
        if given is None:
            empty: dict[str, Any] = {
                "string": "", "int": 0, "long": 0, "float": 0.0, "double": 0.0, "boolean": False, "bytes": b"",
            }  # fmt: skip
            if logical == "uuid":
                return "00000000-0000-0000-0000-000000000000"
            if logical == "decimal":
                return Decimal(0)
            if kind == "enum":
                return named["symbols"][0]
            if kind == "fixed":
                return bytes(named["size"])
            if kind in ("array", "map"):
                return [] if kind == "array" else {}
            if kind in empty:
                return empty[kind]
        else:
            if kind == "string" and isinstance(given, str):
                return given
            if kind in _INT_RANGES and isinstance(given, int) and not isinstance(given, bool):
                low, high = _INT_RANGES[kind]
                if low <= given <= high:
                    return given
            if kind in ("float", "double") and isinstance(given, (int, float)) and not isinstance(given, bool):
                return float(given)
            if kind == "boolean" and isinstance(given, bool):
                return given
            if kind == "bytes" and logical == "decimal" and not isinstance(given, bool):
                try:
                    return Decimal(str(given))
                except InvalidOperation:
                    pass
            elif kind == "bytes" and isinstance(given, str):
                return given.encode()
            if kind == "enum" and given in named.get("symbols", ()):
                return given
            raise option_error(
                self.label,
                "replacement",
                f"{given!r} does not fit field `{name}` of type {kind}",
                hint="give a value of the field's type",
            )
        raise option_error(
            self.label,
            "mode",
            f"field `{name}` of type {kind} has no fixed mask value",
            hint="use mode `null` or `hash`",
        )

    def _fixed_of_union(self, name: str, type_: Any, index: NamedTypes) -> Any:
        """The mask value for the first branch of a union it fits (`numeric` is decimal or string)."""
        if not isinstance(type_, list):
            return self._fixed(name, type_, index)
        for branch in type_[:-1]:
            try:
                return self._fixed(name, branch, index)
            except ConfigError:
                continue
        return self._fixed(name, type_[-1], index)

    def plan_row(self, row: dict[str, Any], index: NamedTypes) -> RowPlan | None:
        mode = self.options.mode

        def plan(field: dict[str, Any], inner: Any, nullable: bool) -> tuple[dict[str, Any], ValueMap]:
            name = field["name"]
            if mode == "null":
                if not nullable:
                    raise option_error(
                        self.label,
                        "mode",
                        f"field `{name}` of `{row['name']}` is not nullable, so it cannot be masked with null",
                        hint="use mode `fixed` or `hash` for it",
                    )
                return field, lambda _v: None
            if mode == "hash":
                return _retyped(field, ["null", "string"] if nullable else "string"), _hasher(self._salt)
            return field, _masker(self._fixed_of_union(name, inner, index))

        return _plan_fields(row, self._fields, plan)


# --- drop / keep / rename ---------------------------------------------------------------------


class Drop(FieldTransform):
    def __init__(self, options: DropOptions, label: str) -> None:
        super().__init__(label, options.apply_to)
        self._fields = frozenset(options.fields)
        self.toast_columns = lambda names: [n for n in names if n not in self._fields]

    def plan_row(self, row: dict[str, Any], index: NamedTypes) -> RowPlan | None:
        fields = [f for f in row["fields"] if f["name"] not in self._fields]
        if len(fields) == len(row["fields"]):
            return None
        dropped = self._fields
        return {**row, "fields": fields}, lambda r, _rec: {k: v for k, v in r.items() if k not in dropped}


class Keep(FieldTransform):
    def __init__(self, options: KeepOptions, label: str) -> None:
        super().__init__(label, options.apply_to)
        self._fields = frozenset(options.fields)
        self.toast_columns = lambda names: [n for n in names if n in self._fields]

    def plan_row(self, row: dict[str, Any], index: NamedTypes) -> RowPlan | None:
        fields = [f for f in row["fields"] if f["name"] in self._fields]
        if len(fields) == len(row["fields"]):
            return None
        names = tuple(f["name"] for f in fields)
        return {**row, "fields": fields}, lambda r, _rec: {n: r.get(n) for n in names}


class Rename(FieldTransform):
    def __init__(self, options: RenameOptions, label: str) -> None:
        super().__init__(label, options.apply_to)
        self._renames = dict(options.renames)
        self.toast_columns = lambda names: [self._renames.get(n, n) for n in names]

    def plan_row(self, row: dict[str, Any], index: NamedTypes) -> RowPlan | None:
        names = [f["name"] for f in row["fields"]]
        if not any(n in self._renames for n in names):
            return None
        renamed = [self._renames.get(n, n) for n in names]
        for old, new in zip(names, renamed, strict=True):
            if new != old and new in names and new not in self._renames:
                problem = f"`{old}` -> `{new}`: `{row['name']}` already has a field `{new}`"
                raise option_error(self.label, "renames", problem)
        fields = [{**f, "name": new} for f, new in zip(row["fields"], renamed, strict=True)]
        mapping = self._renames
        return {**row, "fields": fields}, lambda r, _rec: {mapping.get(k, k): v for k, v in r.items()}


# --- insert -----------------------------------------------------------------------------------


class Insert(FieldTransform):
    def __init__(self, options: InsertOptions, label: str) -> None:
        super().__init__(label, options.apply_to)
        self.options = options

    def plan_row(self, row: dict[str, Any], index: NamedTypes) -> RowPlan:
        o = self.options
        existing = {f["name"] for f in row["fields"]}
        added: list[tuple[str, str, Any, Callable[[Record], Any]]] = []
        if o.static_field is not None:
            value = o.static_value
            kind = (
                "boolean" if isinstance(value, bool)
                else "long" if isinstance(value, int)
                else "double" if isinstance(value, float)
                else "string"
            )  # fmt: skip
            added.append(("static_field", o.static_field, kind, _constant(value)))
        if o.topic_field:
            added.append(("topic_field", o.topic_field, "string", lambda r: r.topic))
        if o.partition_field:
            added.append(("partition_field", o.partition_field, ["null", "int"], lambda r: r.partition))
        if o.offset_field:
            added.append(("offset_field", o.offset_field, ["null", "long"], lambda r: r.offset))
        if o.timestamp_field:
            millis = {"type": "long", "logicalType": "timestamp-millis"}
            added.append(("timestamp_field", o.timestamp_field, ["null", millis], lambda r: r.timestamp_ms))
        fields = list(row["fields"])
        for option, name, type_, _ in added:
            if name in existing:
                raise option_error(self.label, option, f"`{row['name']}` already has a field `{name}`")
            fields.append({"name": name, "type": type_, **({"default": None} if isinstance(type_, list) else {})})
        getters = tuple((name, getter) for _, name, _, getter in added)

        def convert(r: dict[str, Any], record: Record) -> dict[str, Any]:
            out = dict(r)
            for name, getter in getters:
                out[name] = getter(record)
            return out

        return {**row, "fields": fields}, convert


# --- cast -------------------------------------------------------------------------------------

_CAST_AVRO = {
    "int8": "int",
    "int16": "int",
    "int32": "int",
    "int64": "long",
    "float32": "float",
    "float64": "double",
    "boolean": "boolean",
    "string": "string",
}
_CAST_BITS = {"int8": 8, "int16": 16, "int32": 32, "int64": 64}
_CASTABLE = frozenset({"boolean", "int", "long", "float", "double", "string"})


def _caster(target: str, label: str, name: str) -> ValueMap:
    def fail(value: Any, why: str = "") -> TransformError:
        kind = type(value).__name__
        return TransformError(f"{label}: cannot cast field `{name}` value of type {kind} to {target}{why}")

    if target in _CAST_BITS:
        bits = _CAST_BITS[target]
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

        def to_int(value: Any) -> Any:
            if value is None:
                return None
            try:
                number = int(value.strip()) if isinstance(value, str) else int(value)
            except (ValueError, TypeError, OverflowError):
                raise fail(value) from None
            if not low <= number <= high:
                raise fail(value, f" (out of range {low}..{high})")
            return number

        return to_int
    if target in ("float32", "float64"):

        def to_float(value: Any) -> Any:
            if value is None:
                return None
            try:
                return float(value)
            except (ValueError, TypeError):
                raise fail(value) from None

        return to_float
    if target == "boolean":

        def to_bool(value: Any) -> Any:
            if value is None or isinstance(value, bool):
                return value
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered in ("true", "false"):
                    return lowered == "true"
                raise fail(value, " (strings must be `true` or `false`)")
            if isinstance(value, (int, float, Decimal)):
                return value != 0
            raise fail(value)

        return to_bool

    def to_string(value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, bytes):
            return base64.b64encode(value).decode()
        if isinstance(value, (datetime, date)):
            return value.isoformat()
        return str(value)

    return to_string


class Cast(FieldTransform):
    converts_values = True
    def __init__(self, options: CastOptions, label: str) -> None:
        super().__init__(label, options.apply_to)
        self._spec = dict(options.spec)
        self._casters = {name: _caster(target, label, name) for name, target in self._spec.items()}

    def plan_row(self, row: dict[str, Any], index: NamedTypes) -> RowPlan | None:
        def plan(field: dict[str, Any], inner: Any, nullable: bool) -> tuple[dict[str, Any], ValueMap]:
            target = self._spec[field["name"]]
            for branch in inner if isinstance(inner, list) else [inner]:
                kind, logical = base_type(branch, index)
                castable = (logical is None and kind in _CASTABLE) or logical == "decimal"
                if target != "string" and not castable:
                    raise option_error(
                        self.label,
                        "spec",
                        f"field `{field['name']}` of type {logical or kind} cannot be cast to {target}",
                    )
            avro = _CAST_AVRO[target]
            return _retyped(field, ["null", avro] if nullable else avro), self._casters[field["name"]]

        return _plan_fields(row, self._spec, plan)


# --- timestamp_convert ------------------------------------------------------------------------

_DAY_MICROS = 86_400_000_000
_TARGET_TYPES: dict[str, Any] = {
    "unix_ms": "long",
    "unix_micros": "long",
    "timestamp_ms": {"type": "long", "logicalType": "timestamp-millis"},
    "timestamp_micros": {"type": "long", "logicalType": "timestamp-micros"},
    "date": {"type": "int", "logicalType": "date"},
    "string": "string",
}


class TimestampConvert(FieldTransform):
    converts_values = True
    def __init__(self, options: TimestampConvertOptions, label: str) -> None:
        super().__init__(label, options.apply_to)
        self.options = options
        self._fields = frozenset(options.fields)
        self._format = TimeFormat(options.format) if options.format else None
        self._output = self._writer()

    def _writer(self) -> Callable[[int], Any]:
        target = self.options.target_type
        if target == "unix_ms":
            return lambda us: us // 1000
        if target == "unix_micros":
            return lambda us: us
        if target == "timestamp_ms":
            return lambda us: from_micros(us - us % 1000)
        if target == "timestamp_micros":
            return from_micros
        if target == "date":
            return lambda us: from_micros(us).date()
        fmt = self._format
        assert fmt is not None
        return lambda us: fmt.format(from_micros(us))

    def _reader(self, name: str, kind: str, logical: str | None) -> Callable[[Any], int]:
        label = self.label
        if logical in ("timestamp-millis", "local-timestamp-millis"):
            scale = 1000
        elif logical in ("timestamp-micros", "local-timestamp-micros"):
            scale = 1
        elif logical == "date":
            scale = _DAY_MICROS
        elif kind in ("long", "int") and logical is None:
            scale = 1000 if self.options.unix_precision == "milliseconds" else 1
        elif kind == "string":
            fmt = self._format
            if fmt is None:
                raise option_error(label, "format", f"string field `{name}` needs a `format` to be read")

            def parse(value: Any) -> int:
                try:
                    return to_micros(fmt.parse(value))
                except (ValueError, TypeError):
                    problem = f"field `{name}` value does not match format `{fmt.pattern}`"
                    raise TransformError(f"{label}: {problem}") from None

            return parse
        else:
            problem = f"field `{name}` of type {logical or kind} is not a timestamp, date or string"
            raise option_error(label, "fields", problem)

        def read(value: Any) -> int:
            if isinstance(value, datetime):
                return to_micros(value)
            if isinstance(value, date):
                return value.toordinal() * _DAY_MICROS - date(1970, 1, 1).toordinal() * _DAY_MICROS
            if isinstance(value, int) and not isinstance(value, bool):
                return value * scale
            raise TransformError(f"{label}: field `{name}` holds a {type(value).__name__}, not a timestamp")

        return read

    def plan_row(self, row: dict[str, Any], index: NamedTypes) -> RowPlan | None:
        write = self._output
        target = _TARGET_TYPES[self.options.target_type]

        def plan(field: dict[str, Any], inner: Any, nullable: bool) -> tuple[dict[str, Any], ValueMap]:
            kind, logical = base_type(inner, index)
            read = self._reader(field["name"], kind, logical)
            return _retyped(field, ["null", target] if nullable else target), _through(read, write)

        return _plan_fields(row, self._fields, plan)


# --- flatten ----------------------------------------------------------------------------------


class Flatten(FieldTransform):
    def __init__(self, options: FlattenOptions, label: str) -> None:
        super().__init__(label, options.apply_to)
        self._delimiter = options.delimiter

    def _expand(
        self,
        fields: list[dict[str, Any]],
        index: NamedTypes,
        path: tuple[str, ...],
        *,
        nullable_parent: bool,
        out: list[tuple[dict[str, Any], tuple[str, ...]]],
    ) -> None:
        """Append (flat field, path in the nested value) for every leaf under `path`."""
        for field in fields:
            inner, nullable = split_nullable(field["type"])
            resolved = resolve(inner, index)
            here = (*path, field["name"])
            name = self._delimiter.join(here)
            if isinstance(resolved, dict) and resolved.get("type") == "record":
                self._expand(resolved["fields"], index, here, nullable_parent=nullable_parent or nullable, out=out)
            elif nullable_parent:
                flat = {**_retyped(field, make_nullable(field["type"])), "name": name, "default": None}
                out.append((flat, here))
            else:
                out.append(({**field, "name": name}, here))

    def plan_row(self, row: dict[str, Any], index: NamedTypes) -> RowPlan | None:
        def nested(field: dict[str, Any]) -> bool:
            resolved = resolve(split_nullable(field["type"])[0], index)
            return isinstance(resolved, dict) and resolved.get("type") == "record"

        if not any(nested(f) for f in row["fields"]):
            return None
        flat: list[tuple[dict[str, Any], tuple[str, ...]]] = []
        self._expand(row["fields"], index, (), nullable_parent=False, out=flat)
        seen: set[str] = set()
        for field, _ in flat:
            if field["name"] in seen:
                problem = f"flattening `{row['name']}` gives two fields named `{field['name']}`"
                raise option_error(self.label, "delimiter", problem)
            seen.add(field["name"])
        paths = tuple((field["name"], path) for field, path in flat)

        def convert(r: dict[str, Any], _record: Record) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for name, path in paths:
                value: Any = r
                for segment in path:
                    value = value.get(segment) if isinstance(value, dict) else None
                out[name] = value
            return out

        return {**row, "fields": [f for f, _ in flat]}, convert

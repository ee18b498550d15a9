"""PostgreSQL column type -> Avro field type, and the converter from PostgreSQL's text output to that value.

pgoutput (text mode) and a snapshot's `SELECT {output_text(col)}` both hand us values in PostgreSQL's text
output format; `column_codec` picks, once per column, a converter that turns that text into the Python value
fastavro writes. Converters are plain closures with fast paths (`int`, `float`, `str` passthrough) because
they run once per column per row. The mapping table, sentinels and every lossy corner are in docs/types.md.

The text formats of dates, intervals and bytea depend on session settings; sessions that produce the text
(the replication connection, the snapshot connections) apply `SESSION_SETTINGS`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal
from enum import StrEnum
from typing import Any

from psycopg import sql

from core.errors import SchemaError
from schemas.catalog import (
    KIND_ARRAY,
    KIND_COMPOSITE,
    KIND_ENUM,
    KIND_MULTIRANGE,
    KIND_RANGE,
    ColumnInfo,
    PgType,
    TableInfo,
)

AvroType = Any


class DecimalHandling(StrEnum):
    """How `numeric` columns are written (the source's `decimal_handling`; Debezium's `decimal.handling.mode`)."""

    PRECISE = "precise"
    STRING = "string"
    DOUBLE = "double"

TextConverter = Callable[[str], Any]

SESSION_SETTINGS: dict[str, str] = {
    "DateStyle": "ISO, MDY",
    "IntervalStyle": "postgres",
    "bytea_output": "hex",
    "extra_float_digits": "1",
}
"""Settings under which the text converters are exact (PostgreSQL's defaults, made explicit)."""

UNAVAILABLE_VALUE = "__cdc_unavailable_value"
UNAVAILABLE_BYTES = UNAVAILABLE_VALUE.encode()

DATE_POSITIVE_INFINITY = 2**31 - 1
DATE_NEGATIVE_INFINITY = -(2**31)
TIMESTAMP_POSITIVE_INFINITY = 2**63 - 1
TIMESTAMP_NEGATIVE_INFINITY = -(2**63)
_TIMESTAMP_MAX_FINITE = TIMESTAMP_POSITIVE_INFINITY - 1
_TIMESTAMP_MIN_FINITE = TIMESTAMP_NEGATIVE_INFINITY + 1

PG_TYPE = "pg.type"
PG_NAME = "pg.name"
PG_NOT_NULL = "pg.not_null"
PG_DEFAULT = "pg.default"
AVRO_ALIASES = "aliases"
PG_ENUM_LABELS = "pg.enum.labels"
CONNECT_NAME = "connect.name"

VARIABLE_SCALE_DECIMAL_NAME = "io.debezium.data.VariableScaleDecimal"
VARIABLE_SCALE_DECIMAL: dict[str, Any] = {
    "type": "record",
    "name": "VariableScaleDecimal",
    "namespace": "io.debezium.data",
    "fields": [{"name": "scale", "type": "int"}, {"name": "value", "type": "bytes"}],
    CONNECT_NAME: VARIABLE_SCALE_DECIMAL_NAME,
}

_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)
_NUMERIC_SPECIALS = frozenset({"NaN", "Infinity", "-Infinity"})
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_MICROS_PER_SECOND = 1_000_000
_MICROS_PER_DAY = 86_400 * _MICROS_PER_SECOND


@dataclass(frozen=True, slots=True)
class ColumnCodec:
    """How one column travels: its Avro field type and the converter from PostgreSQL text.

    `avro` is the field's type (`["null", T...]` when `nullable`), `value_type` the type without null.
    `from_text(None)` is None. `placeholder` is the value written for an unchanged TOAST column
    (`__cdc_unavailable_value` for strings, its bytes for bytes, else None: such fields are nullable).
    `field_name` is the Avro field name (the column name made a valid Avro name; see docs/types.md).
    """

    column: ColumnInfo
    avro: AvroType
    from_text: Callable[[str | None], Any]
    value_type: AvroType
    nullable: bool
    field_name: str
    placeholder: Any = None
    text_converter: Callable[[str], Any] | None = None
    """`from_text` for non-null text, without the null check (None: the text is the value), for generated rows."""

    @property
    def field(self) -> dict[str, Any]:
        """The Avro field definition of this column (in `Value`, and in `Key` for key columns)."""
        field: dict[str, Any] = {"name": self.field_name, "type": self.avro}
        if self.nullable:
            field["default"] = None
        field[PG_TYPE] = self.column.type_name
        if self.column.not_null and self.nullable:
            # The column is NOT NULL even though the field is optional (see docs/types.md, Nullability).
            field[PG_NOT_NULL] = True
        if self.field_name != self.column.name:
            field[PG_NAME] = self.column.name
        if self.column.default is not None:
            # The column's constant default, so a consumer adding the column can give it (docs/event-format.md).
            field[PG_DEFAULT] = self.column.default
        if self.column.aliases:
            field[AVRO_ALIASES] = list(self.column.aliases)
        return field


def output_text(column: str) -> sql.Composed:
    """A select-list expression giving `column` exactly as pgoutput sends it (the type's output function).

    Use it in snapshot queries instead of `column::text`: the casts to text of `boolean` (`true`),
    `character(n)` (trailing spaces dropped) and `inet` (`/32` added) differ from the output function.
    `concat(x)` calls the output function but turns NULL into '', hence the CASE. (No `format('%s', x)`:
    its `%` would be taken for a placeholder in a query with parameters.) The test is `num_nonnulls`, not
    `IS NOT NULL`: for a composite value `IS NOT NULL` is false as soon as one of its fields is NULL.
    """
    ident = sql.Identifier(column)
    return sql.SQL("CASE WHEN num_nonnulls({c}) = 1 THEN concat({c}) END").format(c=ident)


# ---------------------------------------------------------------------------------------------------------
# Scalar converters (text is never None here)


def _parse_bool(text: str) -> bool:
    return text[0] == "t"  # output function `t`/`f`; a `::text` cast says `true`/`false`


def _parse_bytea(text: str) -> bytes:
    if text.startswith("\\x"):
        return bytes.fromhex(text[2:])
    return _parse_bytea_escape(text)


def _parse_bytea_escape(text: str) -> bytes:
    # bytea_output = escape: printable ASCII as is, `\\` for a backslash, `\ooo` octal for other bytes.
    raw = text.encode()
    out = bytearray()
    i = 0
    n = len(raw)
    while i < n:
        b = raw[i]
        if b == 0x5C:
            if raw[i + 1 : i + 2] == b"\\":
                out.append(0x5C)
                i += 2
            else:
                out.append(int(raw[i + 1 : i + 4], 8))
                i += 4
        else:
            out.append(b)
            i += 1
    return bytes(out)


def days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (astronomical years: 1 BC is year 0)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * ((month + 9) % 12) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _parse_date(text: str) -> int:
    if len(text) == 10:
        return date.fromisoformat(text).toordinal() - _EPOCH_ORDINAL
    if text == "infinity":
        return DATE_POSITIVE_INFINITY
    if text == "-infinity":
        return DATE_NEGATIVE_INFINITY
    bc = text.endswith(" BC")
    return _days(text[:-3] if bc else text, bc=bc)


def _days(date_part: str, *, bc: bool) -> int:
    """Days since 1970-01-01 of PostgreSQL's `YYYY-MM-DD` (a BC year N is astronomical year 1 - N)."""
    year, month, day = date_part.split("-")
    y = int(year)
    return days_from_civil(1 - y if bc else y, int(month), int(day))


def _time_micros(text: str) -> int:
    # HH:MM:SS[.ffffff]; hours may be 24 (`24:00:00` is a valid time).
    micros = (int(text[0:2]) * 3600 + int(text[3:5]) * 60 + int(text[6:8])) * _MICROS_PER_SECOND
    if len(text) > 9:
        micros += int(text[9:].ljust(6, "0"))
    return micros


def _split_offset(text: str) -> tuple[str, int]:
    """Split `HH:MM:SS[.f]+hh[:mm[:ss]]` into the time and the offset in seconds east of UTC."""
    for i in range(len(text) - 1, 7, -1):
        ch = text[i]
        if ch in "+-":
            parts = text[i + 1 :].split(":")
            seconds = int(parts[0]) * 3600
            if len(parts) > 1:
                seconds += int(parts[1]) * 60
            if len(parts) > 2:
                seconds += int(parts[2])
            return text[:i], seconds if ch == "+" else -seconds
    return text, 0


def _format_offset(seconds: int) -> str:
    sign = "+" if seconds >= 0 else "-"
    seconds = abs(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{sign}{hours:02d}:{minutes:02d}" + (f":{secs:02d}" if secs else "")


def _parse_timetz(text: str) -> str:
    time_part, offset = _split_offset(text)
    return time_part + _format_offset(offset)


def _timestamp_micros(text: str, *, with_offset: bool) -> int:
    if text == "infinity":
        return TIMESTAMP_POSITIVE_INFINITY
    if text == "-infinity":
        return TIMESTAMP_NEGATIVE_INFINITY
    bc = text.endswith(" BC")
    if bc:
        text = text[:-3]
    date_part, time_part = text.split(" ", 1)
    offset = 0
    if with_offset:
        time_part, offset = _split_offset(time_part)
    micros = _days(date_part, bc=bc) * _MICROS_PER_DAY + _time_micros(time_part) - offset * _MICROS_PER_SECOND
    # Finite values beyond the Avro long range (the last ~30 years before PostgreSQL's 294277 AD limit)
    # are clamped so they never collide with the infinity sentinels.
    if micros > _TIMESTAMP_MAX_FINITE:
        return _TIMESTAMP_MAX_FINITE
    if micros < _TIMESTAMP_MIN_FINITE:
        return _TIMESTAMP_MIN_FINITE
    return micros


_EPOCH = datetime(1970, 1, 1)
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MICRO = timedelta(microseconds=1)


def _parse_timestamp(text: str) -> int:
    # Years 1-9999 AD (nearly every value) are parsed in C; the rest (BC, infinity, year > 9999) below.
    if len(text) >= 19 and text[10] == " ":
        try:
            return (datetime.fromisoformat(text) - _EPOCH) // _ONE_MICRO
        except (ValueError, TypeError):
            pass
    return _timestamp_micros(text, with_offset=False)


def _parse_timestamptz(text: str) -> int:
    if len(text) >= 22 and text[10] == " ":
        try:
            return (datetime.fromisoformat(text) - _EPOCH_UTC) // _ONE_MICRO
        except (ValueError, TypeError):  # TypeError: no offset in the text (naive minus aware)
            pass
    return _timestamp_micros(text, with_offset=True)


_INTERVAL_UNIT = re.compile(r"([+-]?\d+) (year|years|mon|mons|day|days)\b")
_INTERVAL_TIME = re.compile(r"([+-])?(\d+):(\d\d):(\d\d)(?:\.(\d{1,6}))?$")


def _parse_interval(text: str) -> str:
    """PostgreSQL's `postgres` IntervalStyle output -> ISO 8601 duration, as IntervalStyle iso_8601 prints it."""
    if text.startswith("P"):
        return text
    years = months = days = 0
    for amount, unit in _INTERVAL_UNIT.findall(text):
        value = int(amount)
        if unit.startswith("y"):
            years = value
        elif unit.startswith("m"):
            months = value
        else:
            days = value
    hours = minutes = seconds = micros = 0
    negative_time = False
    match = _INTERVAL_TIME.search(text)
    if match:
        negative_time = match.group(1) == "-"
        hours, minutes, seconds = int(match.group(2)), int(match.group(3)), int(match.group(4))
        micros = int((match.group(5) or "0").ljust(6, "0"))
    elif not _INTERVAL_UNIT.search(text):
        raise ValueError(f"not an interval in IntervalStyle postgres: {text!r}")
    out = ["P"]
    if years:
        out.append(f"{years}Y")
    if months:
        out.append(f"{months}M")
    if days:
        out.append(f"{days}D")
    sign = "-" if negative_time else ""
    time_out = []
    if hours:
        time_out.append(f"{sign}{hours}H")
    if minutes:
        time_out.append(f"{sign}{minutes}M")
    if seconds or micros:
        frac = f".{micros:06d}".rstrip("0") if micros else ""
        time_out.append(f"{sign}{seconds}{frac}S")
    if time_out:
        out.append("T")
        out.extend(time_out)
    elif len(out) == 1:
        return "PT0S"
    return "".join(out)


def _unscaled(text: str) -> tuple[int, int]:
    """Decimal text without exponent (numeric's output) -> (unscaled integer, scale)."""
    dot = text.find(".")
    if dot < 0:
        return int(text), 0
    return int(text[:dot] + text[dot + 1 :]), len(text) - dot - 1


def decimal_to_bytes(unscaled: int) -> bytes:
    """Two's-complement big-endian bytes of an unscaled decimal (Avro's decimal encoding)."""
    return unscaled.to_bytes((unscaled.bit_length() + 8) // 8, "big", signed=True)


def variable_scale_decimal(value: Any) -> Decimal:
    """The Decimal a VariableScaleDecimal record `{scale, value}` stands for (for sinks)."""
    unscaled = int.from_bytes(value["value"], "big", signed=True)
    return Decimal(unscaled).scaleb(-value["scale"], _EXACT)


def _parse_numeric_precise(text: str) -> Any:
    if text in _NUMERIC_SPECIALS:
        return text
    return Decimal(text)


def _parse_numeric_variable(text: str) -> Any:
    if text in _NUMERIC_SPECIALS:
        return text
    unscaled, scale = _unscaled(text)
    return {"scale": scale, "value": decimal_to_bytes(unscaled)}


def _identity(text: str) -> str:
    return text


# ---------------------------------------------------------------------------------------------------------
# Array literals


def parse_array(text: str, element: TextConverter, delimiter: str = ",") -> list[Any]:
    """A one-dimensional PostgreSQL array literal -> list; elements converted, NULL -> None.

    Non-default lower bounds (`[0:2]={...}`) are dropped; a multidimensional value raises ValueError.
    """
    if text[0] == "[":
        text = text[text.index("=") + 1 :]
    if text == "{}":
        return []
    body = text[1:-1]
    if '"' not in body and "\\" not in body and "{" not in body:
        return [None if item == "NULL" else element(item) for item in body.split(delimiter)]
    return _parse_array_slow(body, element, delimiter)


def _parse_array_slow(body: str, element: TextConverter, delimiter: str) -> list[Any]:
    out: list[Any] = []
    i = 0
    n = len(body)
    while i <= n:
        if i < n and body[i] == "{":
            raise ValueError("multidimensional arrays are not supported")
        if i < n and body[i] == '"':
            i += 1
            chars = []
            while body[i] != '"':
                if body[i] == "\\":
                    i += 1
                chars.append(body[i])
                i += 1
            out.append(element("".join(chars)))
            i += 1  # closing quote
        else:
            end = body.find(delimiter, i)
            if end < 0:
                end = n
            item = body[i:end].strip()
            out.append(None if item == "NULL" else element(item))
            i = end
        i += 1  # delimiter
    return out


# ---------------------------------------------------------------------------------------------------------
# Type mapping


@dataclass(frozen=True, slots=True)
class _Scalar:
    avro: AvroType  # a type, or a list of union branches (never containing "null")
    convert: TextConverter
    passthrough: bool = False  # convert is the identity: no call needed


_STRING = _Scalar("string", _identity, passthrough=True)

_BUILTIN_SCALARS: dict[str, _Scalar] = {
    "int2": _Scalar("int", int),
    "int4": _Scalar("int", int),
    "int8": _Scalar("long", int),
    "oid": _Scalar("long", int),
    "float4": _Scalar("float", float),
    "float8": _Scalar("double", float),
    "bool": _Scalar("boolean", _parse_bool),
    "bytea": _Scalar("bytes", _parse_bytea),
    "uuid": _Scalar({"type": "string", "logicalType": "uuid"}, _identity, passthrough=True),
    "date": _Scalar({"type": "int", "logicalType": "date", CONNECT_NAME: "io.debezium.time.Date"}, _parse_date),
    "time": _Scalar(
        {"type": "long", "logicalType": "time-micros", CONNECT_NAME: "io.debezium.time.MicroTime"}, _time_micros
    ),
    "timetz": _Scalar({"type": "string", CONNECT_NAME: "io.debezium.time.ZonedTime"}, _parse_timetz),
    "timestamp": _Scalar(
        {"type": "long", "logicalType": "local-timestamp-micros", CONNECT_NAME: "io.debezium.time.MicroTimestamp"},
        _parse_timestamp,
    ),
    "timestamptz": _Scalar({"type": "long", "logicalType": "timestamp-micros"}, _parse_timestamptz),
    "interval": _Scalar({"type": "string", CONNECT_NAME: "io.debezium.time.Interval"}, _parse_interval),
    "json": _Scalar({"type": "string", CONNECT_NAME: "io.debezium.data.Json"}, _identity, passthrough=True),
    "jsonb": _Scalar({"type": "string", CONNECT_NAME: "io.debezium.data.Json"}, _identity, passthrough=True),
    "xml": _Scalar({"type": "string", CONNECT_NAME: "io.debezium.data.Xml"}, _identity, passthrough=True),
}

# Types whose text form is the natural value: mapped to an Avro string, written back by the sink as text.
_BUILTIN_STRINGS = frozenset(
    {
        "text", "varchar", "bpchar", "name", "char", "inet", "cidr", "macaddr", "macaddr8", "money",
        "bit", "varbit", "tsvector", "tsquery", "point", "line", "lseg", "box", "path", "polygon", "circle",
        "pg_lsn", "xid", "xid8", "cid", "tid", "txid_snapshot", "pg_snapshot", "jsonpath",
        "regclass", "regtype", "regproc", "regprocedure", "regoper", "regoperator", "regnamespace",
        "regrole", "regconfig", "regdictionary", "regcollation",
    }
)  # fmt: skip
_EXTENSION_STRINGS = frozenset({"citext", "hstore", "ltree", "lquery", "ltxtquery"})


def numeric_precision_scale(typmod: int) -> tuple[int, int] | None:
    """(precision, scale) of a numeric typmod, or None for unconstrained numeric."""
    if typmod < 4:
        return None
    packed = typmod - 4
    precision = (packed >> 16) & 0xFFFF
    scale = ((packed & 0x7FF) ^ 1024) - 1024  # PostgreSQL 15+ allows negative scales
    return precision, scale


def _numeric(typmod: int, handling: DecimalHandling) -> _Scalar:
    if handling == DecimalHandling.STRING:
        return _STRING
    if handling == DecimalHandling.DOUBLE:
        return _Scalar("double", float)
    bounds = numeric_precision_scale(typmod)
    if bounds is None:
        return _Scalar([VARIABLE_SCALE_DECIMAL, "string"], _parse_numeric_variable)
    precision, scale = bounds
    # Avro needs 0 <= scale <= precision; PostgreSQL allows scale < 0 (integers) and scale > precision.
    avro_scale = max(scale, 0)
    avro_precision = max(precision - min(scale, 0), avro_scale, 1)
    decimal = {"type": "bytes", "logicalType": "decimal", "precision": avro_precision, "scale": avro_scale}
    return _Scalar([decimal, "string"], _parse_numeric_precise)


def _scalar(pg: PgType, typmod: int, handling: DecimalHandling) -> _Scalar | None:
    if pg.kind == KIND_ENUM:
        return _Scalar(
            {"type": "string", CONNECT_NAME: "io.debezium.data.Enum", PG_ENUM_LABELS: list(pg.enum_labels)},
            _identity,
            passthrough=True,
        )
    if pg.kind in (KIND_RANGE, KIND_MULTIRANGE, KIND_COMPOSITE):
        return _STRING
    if pg.is_builtin:
        if pg.typname == "numeric":
            return _numeric(typmod, handling)
        found = _BUILTIN_SCALARS.get(pg.typname)
        if found is not None:
            return found
        if pg.typname in _BUILTIN_STRINGS:
            return _STRING
        return None
    if pg.typname in _EXTENSION_STRINGS:
        return _STRING
    return None


def _union(*branches: AvroType) -> list[AvroType]:
    out: list[AvroType] = []
    for branch in branches:
        out.extend(branch if isinstance(branch, list) else [branch])
    return out


def _is_string(avro: AvroType) -> bool:
    return avro == "string" or (isinstance(avro, dict) and avro.get("type") == "string")


_AVRO_NAME_BAD = re.compile(r"[^A-Za-z0-9_]")


def avro_name(name: str) -> str:
    """`name` as a valid Avro name: invalid characters become `_`, a leading digit gets a `_` prefix."""
    cleaned = _AVRO_NAME_BAD.sub("_", name) or "_"
    return "_" + cleaned if cleaned[0].isdigit() else cleaned


def _unsupported(table: TableInfo, column: ColumnInfo) -> SchemaError:
    return SchemaError(
        f"cannot map column {table.schema}.{table.name}.{column.name} of type {column.type_name}",
        hint="set `skip_unsupported_columns: true` in the table's `table_options`, exclude the column with "
        "`columns_exclude`, or change its type (e.g. to text) in the source table",
    )


def _nullable_converter(convert: TextConverter) -> Callable[[str | None], Any]:
    def from_text(text: str | None) -> Any:
        return None if text is None else convert(text)

    return from_text


def column_codec(
    table: TableInfo,
    column: ColumnInfo,
    *,
    decimal_handling: DecimalHandling,
    key: bool | None = None,
) -> ColumnCodec:
    """Choose the Avro type and text converter of `column`.

    `key` says whether the column is part of the event key (default: its primary-key / replica-identity
    position). A field is non-nullable only for NOT NULL key columns: a delete under REPLICA IDENTITY
    DEFAULT sends only the key, so every other column must be able to be absent from `before`, and
    unchanged TOAST values of non-string types are null.
    """
    is_key = column.key_position is not None if key is None else key
    resolved = column.resolved
    if resolved.kind == KIND_ARRAY:
        element = resolved.element
        scalar = _scalar(element, column.typmod, decimal_handling) if element is not None else None
        if scalar is None or element is None:
            raise _unsupported(table, column)
        convert_element = scalar.convert
        delimiter = ";" if element.typname == "box" else ","
        value_type: AvroType = {"type": "array", "items": _union("null", scalar.avro)}

        def convert_array(text: str) -> Any:
            return parse_array(text, convert_element, delimiter)

        convert: TextConverter = convert_array
        passthrough = False
    else:
        found = _scalar(resolved, column.typmod, decimal_handling)
        if found is None:
            raise _unsupported(table, column)
        value_type = found.avro
        convert = found.convert
        passthrough = found.passthrough

    nullable = not (is_key and column.not_null)
    if _is_string(value_type):
        placeholder: Any = UNAVAILABLE_VALUE
    elif value_type == "bytes":
        placeholder = UNAVAILABLE_BYTES
    else:
        placeholder = None
        if column.toastable:
            nullable = True
    avro = _union("null", value_type) if nullable else value_type
    from_text: Callable[[str | None], Any] = _identity if passthrough else _nullable_converter(convert)  # type: ignore[assignment]
    return ColumnCodec(
        column=column,
        avro=avro,
        from_text=from_text,
        value_type=value_type,
        nullable=nullable,
        field_name=avro_name(column.name),
        placeholder=placeholder,
        text_converter=None if passthrough else convert,
    )

"""PostgreSQL column type -> Avro field type, and the converter from PostgreSQL's text output to that value.

pgoutput (text mode) and a snapshot's `SELECT {output_text(col)}` both hand us values in PostgreSQL's text
output format; `column_codec` picks, once per column, a converter that turns that text into the Python value
fastavro writes. Converters are plain closures with fast paths (`int`, `float`, `str` passthrough) because
they run once per column per row. The mapping table, sentinels and every lossy corner are in docs/types.md.

The text formats of dates, intervals and bytea depend on session settings; sessions that produce the text
(the replication connection, the snapshot connections) apply `SESSION_SETTINGS`.
"""

from __future__ import annotations

import logging
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal
from enum import StrEnum
from typing import Any

from psycopg import sql

from core.errors import SchemaError
from core.metrics import SOURCE_UNREPRESENTABLE_VALUES
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


class SchemaStyle(StrEnum):
    """How fields are encoded (the source's `schema_style`; docs/event-format.md, Debezium compatibility).

    `debezium`: what Debezium's PostgreSQL connector registers under its default settings, so Kafka Connect's Avro
    converters and Debezium's consumers read our topics; `avro_native`: Avro logical types and NaN-preserving
    numerics, exact for every value PostgreSQL holds, not readable by Connect converters.
    """

    DEBEZIUM = "debezium"
    AVRO_NATIVE = "avro_native"


TextConverter = Callable[[str], Any]
log = logging.getLogger(__name__)

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
CONNECT_VERSION = "connect.version"
CONNECT_PARAMETERS = "connect.parameters"
CONNECT_DEFAULT = "connect.default"
CONNECT_DECIMAL_NAME = "org.apache.kafka.connect.data.Decimal"

VARIABLE_SCALE_DECIMAL_NAME = "io.debezium.data.VariableScaleDecimal"
VARIABLE_SCALE_DECIMAL: dict[str, Any] = {
    "type": "record",
    "name": "VariableScaleDecimal",
    "namespace": "io.debezium.data",
    "fields": [{"name": "scale", "type": "int"}, {"name": "value", "type": "bytes"}],
    CONNECT_NAME: VARIABLE_SCALE_DECIMAL_NAME,
}
DEBEZIUM_VARIABLE_SCALE_DECIMAL: dict[str, Any] = {
    **VARIABLE_SCALE_DECIMAL, "connect.doc": "Variable scaled decimal", CONNECT_VERSION: 1,
}  # fmt: skip
DEBEZIUM_POINT: dict[str, Any] = {
    "type": "record", "name": "Point", "namespace": "io.debezium.data.geometry",
    "fields": [{"name": "x", "type": "double"}, {"name": "y", "type": "double"},
               {"name": "wkb", "type": ["null", "bytes"], "default": None},
               {"name": "srid", "type": ["null", "int"], "default": None}],
    "connect.doc": "Geometry (POINT)", CONNECT_VERSION: 1, CONNECT_NAME: "io.debezium.data.geometry.Point",
}  # fmt: skip

# What Debezium writes for PostgreSQL's timestamp infinities (the JDBC driver's sentinels, in microseconds).
DEBEZIUM_TIMESTAMP_POSITIVE_INFINITY = 9223372036825200000
DEBEZIUM_TIMESTAMP_NEGATIVE_INFINITY = -9223372036832400000
DEBEZIUM_DAYS_PER_MONTH = 365.25 / 12

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
    style: SchemaStyle = SchemaStyle.AVRO_NATIVE
    default_value: Any = None
    """`debezium` style: the column's constant default as the Avro value (Debezium's `connect.default`), or None."""

    @property
    def field(self) -> dict[str, Any]:
        """The Avro field definition of this column (in `Value`, and in `Key` for key columns)."""
        field: dict[str, Any] = {"name": self.field_name, "type": self.avro}
        if self.default_value is not None:
            field["default"] = self.default_value
        elif self.nullable:
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


def _interval_parts(text: str) -> tuple[int, int, int, re.Match[str] | None]:
    """Years, months, days and the time part (a match of `_INTERVAL_TIME`) of an interval in IntervalStyle postgres."""
    years = months = days = 0
    for amount, unit in _INTERVAL_UNIT.findall(text):
        value = int(amount)
        if unit.startswith("y"):
            years = value
        elif unit.startswith("m"):
            months = value
        else:
            days = value
    match = _INTERVAL_TIME.search(text)
    if match is None and not _INTERVAL_UNIT.search(text):
        raise ValueError(f"not an interval in IntervalStyle postgres: {text!r}")
    return years, months, days, match


def _parse_interval(text: str) -> str:
    """PostgreSQL's `postgres` IntervalStyle output -> ISO 8601 duration, as IntervalStyle iso_8601 prints it."""
    if text.startswith("P"):
        return text
    years, months, days, match = _interval_parts(text)
    hours = minutes = seconds = micros = 0
    negative_time = False
    if match:
        negative_time = match.group(1) == "-"
        hours, minutes, seconds = int(match.group(2)), int(match.group(3)), int(match.group(4))
        micros = int((match.group(5) or "0").ljust(6, "0"))
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
# Debezium's encodings (schema_style: debezium), as its PostgreSQL connector writes them under its defaults


def _semantic(kind: str, name: str, **parameters: str) -> dict[str, Any]:
    """A Debezium semantic type as Connect's Avro converter registers it (`connect.name`, no `logicalType`)."""
    out: dict[str, Any] = {"type": kind, CONNECT_VERSION: 1}
    if parameters:
        out[CONNECT_PARAMETERS] = parameters
    out[CONNECT_NAME] = name
    return out


def connect_decimal(precision: int | None, scale: int) -> dict[str, Any]:
    """Connect's `Decimal` as its Avro converter registers it (precision 64 when the schema states none)."""
    parameters = {"scale": str(scale)}
    if precision is not None:
        parameters["connect.decimal.precision"] = str(precision)
    return {
        "type": "bytes", "scale": scale, "precision": 64 if precision is None else precision, CONNECT_VERSION: 1,
        CONNECT_PARAMETERS: parameters, CONNECT_NAME: CONNECT_DECIMAL_NAME, "logicalType": "decimal",
    }  # fmt: skip


def civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a day count since 1970-01-01 (proleptic Gregorian, astronomical years)."""
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


def _iso_year(year: int) -> str:
    # java.time's ISO printing: four digits, a sign beyond them or before year 0.
    if 0 <= year <= 9999:
        return f"{year:04d}"
    return f"+{year}" if year > 0 else f"-{-year:04d}"


def _clock(micros: int, fraction: int | None) -> str:
    """`HH:MM:SS` and the fraction: `fraction` digits, or as many as needed when None."""
    seconds, us = divmod(micros, _MICROS_PER_SECOND)
    minutes, sec = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    out = f"{hours:02d}:{minute:02d}:{sec:02d}"
    if fraction is None:
        return out + (f".{us:06d}".rstrip("0") if us else "")
    return out + (f".{us:06d}"[: fraction + 1] if fraction > 0 else "")


def _zoned_timestamp(precision: int) -> TextConverter:
    """`io.debezium.time.ZonedTimestamp`: the instant in UTC, ISO 8601, the column's precision in fraction digits."""

    def convert(text: str) -> str:
        if text in ("infinity", "-infinity"):
            return text
        days, micros = divmod(_parse_timestamptz(text), _MICROS_PER_DAY)
        year, month, day = civil_from_days(days)
        return f"{_iso_year(year)}-{month:02d}-{day:02d}T{_clock(micros, precision)}Z"

    convert.remember_last = True  # type: ignore[attr-defined]
    return convert


def _zoned_time(text: str) -> str:
    """`io.debezium.time.ZonedTime`: the time converted to UTC (the offset is not kept)."""
    time_part, offset = _split_offset(text)
    micros = (_time_micros(time_part) - offset * _MICROS_PER_SECOND) % _MICROS_PER_DAY
    return _clock(micros, None) + "Z"


def _time_millis(text: str) -> int:
    return _time_micros(text) // 1000


def _debezium_timestamp_micros(text: str) -> int:
    if text == "infinity":
        return DEBEZIUM_TIMESTAMP_POSITIVE_INFINITY
    if text == "-infinity":
        return DEBEZIUM_TIMESTAMP_NEGATIVE_INFINITY
    return _parse_timestamp(text)


def _debezium_timestamp_millis(text: str) -> int:
    micros = _debezium_timestamp_micros(text)
    return int(micros / 1000) if text.endswith("infinity") else micros // 1000


def _micro_duration(text: str) -> int:
    """`io.debezium.time.MicroDuration`: Debezium's arithmetic, in doubles (a month is 365.25 / 12 days)."""
    years, months, days, match = _interval_parts(text)
    hours = minutes = 0
    seconds = 0.0
    if match:
        sign = -1 if match.group(1) == "-" else 1
        hours, minutes = sign * int(match.group(2)), sign * int(match.group(3))
        seconds = sign * (int(match.group(4)) + int((match.group(5) or "0").ljust(6, "0")) / 1e6)
    number_of_days = DEBEZIUM_DAYS_PER_MONTH * (years * 12 + months) + days
    number_of_seconds = ((number_of_days * 24 + hours) * 60 + minutes) * 60 + seconds
    # Java's (long) cast: truncation toward zero, saturating at the long's bounds.
    return max(-(2**63), min(2**63 - 1, int(number_of_seconds * 1e6)))


def _bits(text: str) -> bytes:
    """`io.debezium.data.Bits`: the bit string as a binary number, little-endian, no trailing zero bytes."""
    number = int(text, 2) if text else 0
    return number.to_bytes((number.bit_length() + 7) // 8, "little")


def _bit_boolean(text: str) -> bool:
    return text == "1"


def _point(text: str) -> dict[str, Any]:
    """`io.debezium.data.geometry.Point`: coordinates and their WKB (little-endian point)."""
    x_text, y_text = text[1:-1].split(",")
    x, y = float(x_text), float(y_text)
    return {"x": x, "y": y, "wkb": struct.pack("<BIdd", 1, 1, x, y), "srid": None}


_MONEY_DROP = re.compile(r"[^0-9.\-]")


def _money(text: str) -> Decimal:
    """`money` as printed under lc_monetary with `.` decimals (`$1,234.50`, `-$1.00`, `($1.00)`) -> Decimal."""
    value = Decimal(_MONEY_DROP.sub("", text).replace("-", ""))
    return -value if text.startswith("(") or "-" in text else value


Lossy = Callable[[], None]
"""Called when a value cannot be represented in the chosen style and is written as null."""


def lossy_reporter(table: str, column: str) -> Lossy:
    """Counts `table.column`'s unrepresentable values (`cdc_source_unrepresentable_values`), warning once."""
    counter = SOURCE_UNREPRESENTABLE_VALUES.labels(table=table, column=column)
    warned = False

    def report() -> None:
        nonlocal warned
        counter.inc()
        if not warned:
            warned = True
            log.warning(
                "%s.%s: a value schema_style debezium cannot carry (numeric NaN or Infinity) is written as null, "
                "as Debezium does; use schema_style avro_native or decimal_handling string to keep it",
                table,
                column,
            )

    return report


def _debezium_numeric(convert: TextConverter, lossy: Lossy) -> TextConverter:
    def numeric(text: str) -> Any:
        if text in _NUMERIC_SPECIALS:
            lossy()
            return None
        return convert(text)

    return numeric


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


_REMEMBERED: frozenset[Callable[[str], Any]] = frozenset(
    {_parse_timestamp, _parse_timestamptz, _debezium_timestamp_micros, _debezium_timestamp_millis}
)
"""Conversions worth remembering the last text of (see `_remember_last`); a converter made per column says so with
an attribute `remember_last`."""


def _remember_last(convert: TextConverter) -> TextConverter:
    """`convert` keeping its last text and result (one per column).

    Rows written together often share a timestamp (a `DEFAULT now()` column holds one value per transaction), and
    parsing and formatting timestamps is the dearest conversion of a narrow row. The pair is one tuple replaced
    whole, so threads sharing a table's converters never see one text with another text's result.
    """
    last: tuple[str | None, Any] = (None, None)

    def remembering(text: str) -> Any:
        nonlocal last
        seen = last
        if text == seen[0]:
            return seen[1]
        value = convert(text)
        last = (text, value)
        return value

    return remembering


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


_DEBEZIUM_SCALARS: dict[str, _Scalar] = {
    "int2": _Scalar({"type": "int", "connect.type": "int16"}, int),
    "uuid": _Scalar(_semantic("string", "io.debezium.data.Uuid"), _identity, passthrough=True),
    "date": _Scalar(_semantic("int", "io.debezium.time.Date"), _parse_date),
    "timetz": _Scalar(_semantic("string", "io.debezium.time.ZonedTime"), _zoned_time),
    "interval": _Scalar(_semantic("long", "io.debezium.time.MicroDuration"), _micro_duration),
    "json": _Scalar(_semantic("string", "io.debezium.data.Json"), _identity, passthrough=True),
    "jsonb": _Scalar(_semantic("string", "io.debezium.data.Json"), _identity, passthrough=True),
    "xml": _Scalar(_semantic("string", "io.debezium.data.Xml"), _identity, passthrough=True),
    "tsvector": _Scalar(_semantic("string", "io.debezium.data.Tsvector"), _identity, passthrough=True),
    "point": _Scalar(DEBEZIUM_POINT, _point),
}
"""Where Debezium's encoding differs from ours; other built-in types are encoded alike (int, long, float, double,
boolean, bytes, string) or Debezium does not capture them (they keep our string encoding, docs/event-format.md)."""

_TIME_PRECISION = 6


def _debezium_scalar(pg: PgType, typmod: int, handling: DecimalHandling, lossy: Lossy) -> _Scalar | None:
    name = pg.typname
    if pg.kind == KIND_ENUM:
        allowed = ",".join(pg.enum_labels)
        return _Scalar(_semantic("string", "io.debezium.data.Enum", allowed=allowed), _identity, passthrough=True)
    if not pg.is_builtin:
        return _scalar(pg, typmod, handling)
    precision = typmod if typmod >= 0 else _TIME_PRECISION
    if name == "numeric" and handling == DecimalHandling.PRECISE:
        bounds = numeric_precision_scale(typmod)
        if bounds is None:
            return _Scalar(DEBEZIUM_VARIABLE_SCALE_DECIMAL, _debezium_numeric(_parse_numeric_variable, lossy))
        if bounds[1] >= 0:
            return _Scalar(connect_decimal(*bounds), _debezium_numeric(Decimal, lossy))
        # Debezium registers a negative scale as garbage (numeric(5,-2): scale 2046): our decimal, Connect-style.
        native = _numeric(typmod, handling)
        decimal = native.avro[0]
        return _Scalar(connect_decimal(decimal["precision"], decimal["scale"]), _debezium_numeric(Decimal, lossy))
    if name == "money" and handling == DecimalHandling.PRECISE:
        return _Scalar(connect_decimal(None, 2), _money)
    if name == "time":
        if precision <= 3:
            return _Scalar(_semantic("int", "io.debezium.time.Time"), _time_millis)
        return _Scalar(_semantic("long", "io.debezium.time.MicroTime"), _time_micros)
    if name == "timestamp":
        if precision <= 3:
            return _Scalar(_semantic("long", "io.debezium.time.Timestamp"), _debezium_timestamp_millis)
        return _Scalar(_semantic("long", "io.debezium.time.MicroTimestamp"), _debezium_timestamp_micros)
    if name == "timestamptz":
        return _Scalar(_semantic("string", "io.debezium.time.ZonedTimestamp"), _zoned_timestamp(precision))
    if name in ("bit", "varbit"):
        if name == "bit" and typmod == 1:
            return _Scalar("boolean", _bit_boolean)
        length = str(typmod) if typmod > 0 else "2147483647"
        return _Scalar(_semantic("bytes", "io.debezium.data.Bits", length=length), _bits)
    found = _DEBEZIUM_SCALARS.get(name)
    if found is not None:
        return found
    return _scalar(pg, typmod, handling)


_ZERO_TEXTS: dict[str, str] = {
    "date": "1970-01-01", "time": "00:00:00", "timetz": "00:00:00+00", "timestamp": "1970-01-01 00:00:00",
    "timestamptz": "1970-01-01 00:00:00+00", "interval": "00:00:00", "uuid": "00000000-0000-0000-0000-000000000000",
    "json": "{}", "jsonb": "{}", "bool": "f", "bytea": "\\x", "inet": "::", "cidr": "::/128",
    "macaddr": "00:00:00:00:00:00", "macaddr8": "00:00:00:00:00:00:00:00", "point": "(0,0)", "pg_lsn": "0/0",
    "money": "0", "numeric": "0", "varbit": "", "int4range": "empty", "int8range": "empty", "numrange": "empty",
    "tsrange": "empty", "tstzrange": "empty", "daterange": "empty",
}  # fmt: skip


def _zero_text(column: ColumnInfo) -> str:
    """The text of a valid value of the column's type that stands for "no value": the epoch, zero, empty."""
    resolved = column.resolved
    if resolved.kind == KIND_ARRAY:
        return "{}"
    if resolved.kind == KIND_ENUM:
        return resolved.enum_labels[0] if resolved.enum_labels else ""
    if resolved.typname == "bit":
        return "0" * max(column.typmod, 1)
    return _ZERO_TEXTS.get(resolved.typname, "0" if resolved.category == "N" else "")


def _fallback(column: ColumnInfo, convert: TextConverter) -> Any:
    """Debezium's value for a NOT NULL column without one (a key-only `before`): the type's zero, as a valid value
    of the column's type, so that a consumer can write the image (the epoch, 0, "", an empty array)."""
    try:
        return convert(_zero_text(column))
    except (ValueError, TypeError, ArithmeticError, IndexError):
        return None


_JSON_DEFAULTS = (bool, int, float, str)


def _debezium_default(column: ColumnInfo, convert: TextConverter) -> Any:
    """The column's constant default as Debezium's `connect.default`, where it is a JSON scalar (else None)."""
    if column.default is None:
        return None
    try:
        value = convert(column.default)
    except (ValueError, TypeError, ArithmeticError, IndexError):
        return None
    if not isinstance(value, _JSON_DEFAULTS) or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return value


def _with_default(avro: AvroType, default: Any) -> dict[str, Any]:
    base = {"type": avro} if isinstance(avro, str) else dict(avro)
    return {**base, CONNECT_DEFAULT: default}


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


def _never_lossy() -> None:
    pass


def column_codec(
    table: TableInfo,
    column: ColumnInfo,
    *,
    decimal_handling: DecimalHandling,
    key: bool | None = None,
    schema_style: SchemaStyle = SchemaStyle.AVRO_NATIVE,
    lossy: Lossy | None = None,
) -> ColumnCodec:
    """Choose the Avro type and text converter of `column`.

    `key` says whether the column is part of the event key (default: its primary-key / replica-identity
    position). `avro_native`: a field is non-nullable only for NOT NULL key columns: a delete under REPLICA
    IDENTITY DEFAULT sends only the key, so every other column must be able to be absent from `before`, and
    unchanged TOAST values of non-string types are null. `debezium`: as Debezium, every NOT NULL column is
    required (a key-only `before` gets the column's default or its type's zero, as Debezium's); TOAST-able
    non-string columns stay nullable. `lossy` is called for each value the style writes as null
    (default: `lossy_reporter` of the column).
    """
    is_key = column.key_position is not None if key is None else key
    debezium = schema_style == SchemaStyle.DEBEZIUM
    if debezium and lossy is None:
        lossy = lossy_reporter(f"{table.schema}.{table.name}", column.name)
    report = lossy or _never_lossy

    def scalar_of(pg: PgType) -> _Scalar | None:
        if debezium:
            return _debezium_scalar(pg, column.typmod, decimal_handling, report)
        return _scalar(pg, column.typmod, decimal_handling)

    resolved = column.resolved
    if resolved.kind == KIND_ARRAY:
        element = resolved.element
        scalar = scalar_of(element) if element is not None else None
        if scalar is None or element is None:
            raise _unsupported(table, column)
        convert_element = scalar.convert
        delimiter = ";" if element.typname == "box" else ","
        # Debezium registers an enum array's elements as non-null, so it cannot carry a NULL element; ours can.
        value_type: AvroType = {"type": "array", "items": _union("null", scalar.avro)}

        def convert_array(text: str) -> Any:
            return parse_array(text, convert_element, delimiter)

        convert: TextConverter = convert_array
        passthrough = False
    else:
        found = scalar_of(resolved)
        if found is None:
            raise _unsupported(table, column)
        value_type = found.avro
        convert = found.convert
        passthrough = found.passthrough
        if convert in _REMEMBERED or getattr(convert, "remember_last", False):
            convert = _remember_last(convert)

    nullable = not column.not_null if debezium else not (is_key and column.not_null)
    if _is_string(value_type):
        placeholder: Any = UNAVAILABLE_VALUE
    elif value_type == "bytes":
        placeholder = UNAVAILABLE_BYTES
    else:
        placeholder = None
        if column.toastable:
            nullable = True
    default = _debezium_default(column, convert) if debezium else None
    if default is not None:
        value_type = _with_default(value_type, default)
    # Connect's Avro converter puts the default's branch first (Avro requires it).
    optional = [value_type, "null"] if default is not None else _union("null", value_type)
    avro = optional if nullable else value_type
    from_text: Callable[[str | None], Any] = _identity if passthrough else _nullable_converter(convert)  # type: ignore[assignment]
    text_converter = None if passthrough else convert
    if debezium and not nullable:
        fallback = _fallback(column, convert) if default is None else default
        required = convert

        def from_required(text: str | None) -> Any:
            value = None if text is None else required(text)
            return fallback if value is None else value

        from_text, text_converter = from_required, None
    return ColumnCodec(
        column=column,
        avro=avro,
        from_text=from_text,
        value_type=value_type,
        nullable=nullable,
        field_name=avro_name(column.name),
        placeholder=placeholder,
        text_converter=text_converter,
        style=schema_style,
        default_value=default,
    )

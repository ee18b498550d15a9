"""Avro field -> PostgreSQL column type, and value conversion for the COPY fast path.

A field's `pg.type` property (the source column's type as `format_type` prints it) wins when it names a
built-in type; then Debezium's `__debezium.source.column.type` / `.length` / `.scale` Connect parameters
(written with `column.propagate.source.type`); otherwise the type is derived from the Avro type, its
`logicalType` and its Kafka Connect `connect.name` (Debezium's semantic types and Connect's logical types, with
their `connect.parameters`). Type text reaches SQL only after it matched the grammar below and the built-in
list, so nothing from a schema is spliced into DDL unchecked.
"""

from __future__ import annotations

import decimal
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from core.errors import SchemaError

ValueConverter = Callable[[Any], Any]

_BUILTIN = frozenset(
    {
        "smallint", "integer", "bigint", "numeric", "real", "double precision", "boolean", "text",
        "character varying", "character", "bytea", "date", "time without time zone", "time with time zone",
        "timestamp without time zone", "timestamp with time zone", "interval", "uuid", "json", "jsonb", "xml",
        "inet", "cidr", "macaddr", "macaddr8", "money", "bit", "bit varying", "point", "line", "lseg", "box",
        "path", "polygon", "circle", "tsvector", "tsquery", "oid", "int4range", "int8range", "numrange",
        "tsrange", "tstzrange", "daterange", "pg_lsn", "name", '"char"',
    }
)  # fmt: skip

_TYPE_TEXT = re.compile(
    r'^(?P<base>"char"|[a-z][a-z0-9_ ]*?)(?:\((?P<mods>\d+(?:,-?\d+)?)\))?'
    r"(?P<zone> with(?:out)? time zone)?(?P<arrays>(?:\[\])*)$"
)


@dataclass(frozen=True, slots=True)
class DestinationType:
    """A column type in `format_type` spelling: base name, optional modifiers, array depth."""

    base: str
    mods: tuple[int, ...] = ()
    arrays: int = 0

    @classmethod
    def parse(cls, text: str) -> DestinationType | None:
        """The type if `text` is a built-in type in `format_type` spelling, else None."""
        match = _TYPE_TEXT.match(text.strip())
        if match is None:
            return None
        base = match.group("base") + (match.group("zone") or "")
        if base not in _BUILTIN:
            return None
        mods = tuple(int(m) for m in match.group("mods").split(",")) if match.group("mods") else ()
        return cls(base, mods, len(match.group("arrays")) // 2)

    def __str__(self) -> str:
        mods = f"({','.join(str(m) for m in self.mods)})" if self.mods else ""
        arrays = "[]" * self.arrays
        for zone in (" with time zone", " without time zone"):
            if self.base.endswith(zone):
                return f"{self.base[: -len(zone)]}{mods}{zone}{arrays}"
        return f"{self.base}{mods}{arrays}"


_INT_RANK = {"smallint": 1, "integer": 2, "bigint": 3}
_TEXTUAL = {"character varying", "character", "text"}


def holds(have: DestinationType, want: DestinationType) -> bool:
    """True when a column of type `have` stores every value of type `want` unchanged."""
    if have == want:
        return True
    if have.arrays != want.arrays:
        return False
    if have.base in _INT_RANK and want.base in _INT_RANK:
        return _INT_RANK[have.base] >= _INT_RANK[want.base]
    if have.base == "numeric" and want.base in _INT_RANK:
        return not have.mods or have.mods[0] - (have.mods[1] if len(have.mods) > 1 else 0) >= 19
    if have.base == "numeric" and want.base == "numeric":
        if not have.mods:
            return True
        if not want.mods:
            return False
        hp, hs = have.mods[0], have.mods[1] if len(have.mods) > 1 else 0
        wp, ws = want.mods[0], want.mods[1] if len(want.mods) > 1 else 0
        return hs >= ws and hp - hs >= wp - ws
    if have.base == "double precision" and want.base == "real":
        return True
    if have.base == "text" and want.base in _TEXTUAL:
        return True
    if have.base == "character varying" and want.base in {"character varying", "character"}:
        return not have.mods or (bool(want.mods) and have.mods[0] >= want.mods[0])
    if have.base == want.base and have.base.startswith(("timestamp", "time ")):
        return not have.mods or (bool(want.mods) and have.mods[0] >= want.mods[0])
    return False


@dataclass(frozen=True, slots=True)
class ColumnType:
    """What a sink needs of one value field: the column type and how to turn Avro values into COPY values."""

    pg_type: DestinationType
    nullable: bool
    convert: ValueConverter | None = None


_DATE_INFINITY = 2**31 - 1
_TS_INFINITY = 2**63 - 1
# Debezium writes PostgreSQL's timestamp infinities as the JDBC driver's sentinels (in microseconds).
_DEBEZIUM_INFINITY = {9223372036825200000: "infinity", -9223372036832400000: "-infinity"}
_MICROS_PER_DAY = 86_400_000_000
# Python's datetime covers years 1..9999; beyond that (and BC) the converters write PostgreSQL text.
_PY_MIN_MICROS = -62_135_596_800_000_000
_PY_MAX_MICROS = 253_402_300_799_999_999


def _civil(days: int) -> str:
    """Days since 1970-01-01 -> `YYYY-MM-DD[ BC]` for any year PostgreSQL can hold (Python's date stops at 1..9999)."""
    days += 719468
    era = days // 146097
    doe = days - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (month <= 2)
    if year <= 0:
        return f"{1 - year:04d}-{month:02d}-{day:02d} BC"
    return f"{year:04d}-{month:02d}-{day:02d}"


def _clock_text(micros: int) -> str:
    seconds, fraction = divmod(micros, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return f"{hour:02d}:{minute:02d}:{second:02d}.{fraction:06d}"


def _days(value: Any) -> Any:
    if not isinstance(value, int):
        return value
    if value == _DATE_INFINITY:
        return "infinity"
    if value == -_DATE_INFINITY - 1:
        return "-infinity"
    return _civil(value)


def _epoch(scale: int, *, zone: bool) -> ValueConverter:
    """Integer time since the epoch in 1/scale seconds -> timestamp text (exact, any range, infinities)."""
    suffix = "+00" if zone else ""
    epoch = datetime(1970, 1, 1, tzinfo=UTC if zone else None)

    def convert(value: Any) -> Any:
        if type(value) is not int:
            return value
        micros = value * 1_000_000 // scale
        if _PY_MIN_MICROS <= micros <= _PY_MAX_MICROS:
            # Fast path: psycopg dumps a datetime in C; the text path below covers every other value.
            return epoch + timedelta(microseconds=micros)
        if value == _TS_INFINITY:
            return "infinity"
        if value == -_TS_INFINITY - 1:
            return "-infinity"
        if micros in _DEBEZIUM_INFINITY:
            return _DEBEZIUM_INFINITY[micros]
        days, rest = divmod(micros, _MICROS_PER_DAY)
        text = _civil(days)
        bc = text.endswith(" BC")
        text = text.removesuffix(" BC")
        return f"{text} {_clock_text(rest)}{suffix}{' BC' if bc else ''}"

    _EPOCHS[convert] = (scale, zone)
    return convert


_EPOCHS: dict[ValueConverter, tuple[int, bool]] = {}


def epoch_of(convert: ValueConverter | None) -> tuple[int, bool] | None:
    """(units per second, with time zone) when `convert` is an epoch -> timestamp converter (`_epoch`)."""
    return _EPOCHS.get(convert) if convert is not None else None


def _clock(scale: int) -> ValueConverter:
    def convert(value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return _clock_text(value * 1_000_000 // scale)
        return value

    return convert


def _micro_duration(value: Any) -> Any:
    # Every long of microseconds (Debezium saturates there) is within timedelta's ±999999999 days.
    return timedelta(microseconds=value) if isinstance(value, int) else value


def _zoned_timestamp(value: Any) -> Any:
    """`io.debezium.time.ZonedTimestamp` beyond years 0001..9999 as PostgreSQL reads it: java.time prints year
    12345 as `+12345` and 44 BC as `-0043` (astronomical), PostgreSQL wants `12345` and `0044 ... BC`."""
    if not isinstance(value, str) or not value or value[0] not in "+-0" or value.endswith("infinity"):
        return value
    if value[0] == "+":
        return value[1:]
    if value[0] == "0" and not value.startswith("0000-"):
        return value
    year, rest = (value[1:] if value[0] == "-" else value).split("-", 1)
    bc_year = int(year) + 1 if value[0] == "-" else 1
    return f"{bc_year:04d}-{rest.replace('T', ' ').removesuffix('Z')}+00 BC"


def _point(value: Any) -> Any:
    """`io.debezium.data.geometry.Point` -> point text."""
    if isinstance(value, Mapping) and "x" in value and "y" in value:
        return f"({value['x']!r},{value['y']!r})"
    return value


_EXACT = decimal.Context(prec=decimal.MAX_PREC)


def _variable_decimal(value: Any) -> Any:
    if isinstance(value, Mapping) and "scale" in value and "value" in value:
        unscaled = int.from_bytes(value["value"], "big", signed=True)
        # The default context rounds to 28 digits; an unconstrained numeric may hold far more.
        return Decimal(unscaled).scaleb(-int(value["scale"]), _EXACT)
    return value


def _connect_decimal(scale: int) -> ValueConverter:
    """Connect's `Decimal` (bytes, big-endian two's complement unscaled value, scale in the schema's parameters),
    for readers that left the bytes undecoded (no `logicalType` or no `scale` attribute on the Avro type)."""

    def convert(value: Any) -> Any:
        if isinstance(value, bytes):
            return Decimal(int.from_bytes(value, "big", signed=True)).scaleb(-scale, _EXACT)
        return value

    return convert


def _bits(length: int) -> ValueConverter:
    """Debezium's `Bits`: the bit string read as a binary number, little-endian bytes, leading zero bytes dropped
    (`BitSet.toByteArray`); `length` (the column's declared bit count) restores the leading zero bits."""

    def convert(value: Any) -> Any:
        if isinstance(value, bytes):
            return format(int.from_bytes(value, "little"), f"0{length}b")
        return value

    return convert


def _bit_of_boolean(value: Any) -> Any:
    return ("1" if value else "0") if isinstance(value, bool) else value


def _element_text(value: Any) -> str:
    """An array element as PostgreSQL parses it back, exactly (no exponent for decimals, full timestamps)."""
    if isinstance(value, str):
        return value
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    return str(value)


def _array(element: ValueConverter | None) -> ValueConverter:
    """Converts each element; an array whose elements then differ in Python type (a numeric array holding
    `Decimal`s and "NaN", a timestamp array holding datetimes and "infinity") is written as text elements,
    since psycopg dumps a list only when its elements share one type."""

    def convert(value: Any) -> Any:
        if not isinstance(value, list):
            return value
        items = value if element is None else [None if x is None else element(x) for x in value]
        kinds = {type(x) for x in items if x is not None}
        if len(kinds) < 2:
            return items
        return [None if x is None else _element_text(x) for x in items]

    return convert


def _quoted(item: Any) -> str:
    if item is None:
        return "NULL"
    text = _element_text(item)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _box_array(element: ValueConverter | None) -> ValueConverter:
    """`box[]` separates elements with `;` (a box's text holds commas); psycopg's list dumper uses `,` for
    anything not dumped as a box, so the literal is written here."""
    inner = _array(element)

    def convert(value: Any) -> Any:
        items = inner(value)
        if not isinstance(items, list):
            return items
        return "{" + ";".join(_quoted(item) for item in items) + "}"

    return convert


def _to_json(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), default=str)
    return value


_CONNECT_NAMES: dict[str, tuple[str, ValueConverter | None]] = {
    "io.debezium.time.Date": ("date", _days),
    "io.debezium.time.Timestamp": ("timestamp without time zone", _epoch(1_000, zone=False)),
    "io.debezium.time.MicroTimestamp": ("timestamp without time zone", _epoch(1_000_000, zone=False)),
    "io.debezium.time.NanoTimestamp": ("timestamp without time zone", _epoch(1_000_000_000, zone=False)),
    "io.debezium.time.Time": ("time without time zone", _clock(1_000)),
    "io.debezium.time.MicroTime": ("time without time zone", _clock(1_000_000)),
    "io.debezium.time.NanoTime": ("time without time zone", _clock(1_000_000_000)),
    "io.debezium.time.ZonedTimestamp": ("timestamp with time zone", _zoned_timestamp),
    "io.debezium.time.ZonedTime": ("time with time zone", None),
    "io.debezium.time.MicroDuration": ("interval", _micro_duration),
    "io.debezium.time.Interval": ("interval", None),
    "io.debezium.data.Json": ("jsonb", None),
    "io.debezium.data.Uuid": ("uuid", None),
    "io.debezium.data.Xml": ("xml", None),
    "io.debezium.data.Enum": ("text", None),
    "io.debezium.data.EnumSet": ("text", None),
    "io.debezium.data.VariableScaleDecimal": ("numeric", _variable_decimal),
    "io.debezium.data.Tsvector": ("tsvector", None),
    "io.debezium.data.geometry.Point": ("point", _point),
    # Kafka Connect's own logical types: Debezium's `time.precision.mode: connect` (millisecond precision).
    "org.apache.kafka.connect.data.Date": ("date", _days),
    "org.apache.kafka.connect.data.Time": ("time without time zone", _clock(1_000)),
    "org.apache.kafka.connect.data.Timestamp": ("timestamp without time zone", _epoch(1_000, zone=False)),
}

CONNECT_DECIMAL = "org.apache.kafka.connect.data.Decimal"
DEBEZIUM_BITS = "io.debezium.data.Bits"
SOURCE_COLUMN_TYPE = "__debezium.source.column.type"
SOURCE_COLUMN_LENGTH = "__debezium.source.column.length"
SOURCE_COLUMN_SCALE = "__debezium.source.column.scale"

# PostgreSQL's internal type names (what Debezium's PostgreSQL connector puts in `__debezium.source.column.type`)
# -> `format_type` spelling, and which modifiers the source column's length / scale give.
_SOURCE_TYPES: dict[str, tuple[str, str]] = {
    "int2": ("smallint", ""), "smallserial": ("smallint", ""), "int4": ("integer", ""), "serial": ("integer", ""),
    "int8": ("bigint", ""), "bigserial": ("bigint", ""), "oid": ("oid", ""),
    "float4": ("real", ""), "float8": ("double precision", ""), "numeric": ("numeric", "ls"),
    "decimal": ("numeric", "ls"), "money": ("money", ""), "bool": ("boolean", ""),
    "varchar": ("character varying", "l"), "bpchar": ("character", "l"), "text": ("text", ""), "name": ("name", ""),
    "char": ('"char"', ""), "bytea": ("bytea", ""),
    "date": ("date", ""), "time": ("time without time zone", ""), "timetz": ("time with time zone", ""),
    "timestamp": ("timestamp without time zone", ""), "timestamptz": ("timestamp with time zone", ""),
    "interval": ("interval", ""),
    "uuid": ("uuid", ""), "json": ("json", ""), "jsonb": ("jsonb", ""), "xml": ("xml", ""),
    "bit": ("bit", "l"), "varbit": ("bit varying", "l"),
    "inet": ("inet", ""), "cidr": ("cidr", ""), "macaddr": ("macaddr", ""), "macaddr8": ("macaddr8", ""),
    "point": ("point", ""), "line": ("line", ""), "lseg": ("lseg", ""), "box": ("box", ""), "path": ("path", ""),
    "polygon": ("polygon", ""), "circle": ("circle", ""), "tsvector": ("tsvector", ""), "tsquery": ("tsquery", ""),
    "int4range": ("int4range", ""), "int8range": ("int8range", ""), "numrange": ("numrange", ""),
    "tsrange": ("tsrange", ""), "tstzrange": ("tstzrange", ""), "daterange": ("daterange", ""),
    "pg_lsn": ("pg_lsn", ""),
}  # fmt: skip
# PostgreSQL's own limits on the modifiers; JDBC reports larger numbers for unconstrained columns
# (e.g. a length of 131089 for a numeric without precision, 2147483647 for a varchar without length).
_MAX_NUMERIC_PRECISION = 1000
_MAX_CHARACTER_LENGTH = 10_485_760

_LOGICAL: dict[str, tuple[str, ValueConverter | None]] = {
    "date": ("date", _days),
    "time-millis": ("time without time zone", _clock(1_000)),
    "time-micros": ("time without time zone", _clock(1_000_000)),
    "timestamp-millis": ("timestamp with time zone", _epoch(1_000, zone=True)),
    "timestamp-micros": ("timestamp with time zone", _epoch(1_000_000, zone=True)),
    "local-timestamp-millis": ("timestamp without time zone", _epoch(1_000, zone=False)),
    "local-timestamp-micros": ("timestamp without time zone", _epoch(1_000_000, zone=False)),
    "uuid": ("uuid", None),
}

_PRIMITIVE = {
    "boolean": "boolean",
    "int": "integer",
    "long": "bigint",
    "float": "real",
    "double": "double precision",
    "string": "text",
    "bytes": "bytea",
    "fixed": "bytea",
    "enum": "text",
    "map": "jsonb",
    "record": "jsonb",
}


def _members(avro: Any) -> tuple[list[Any], bool]:
    """The non-null members of a (possible) union, and whether null is one of them."""
    if isinstance(avro, list):
        members = [m for m in avro if m != "null"]
        return members, len(members) != len(avro)
    return [avro], False


def _chain(converters: list[ValueConverter]) -> ValueConverter | None:
    """Each converter acts only on the Python type it expects, so union members' converters compose."""
    if not converters:
        return None
    if len(converters) == 1:
        return converters[0]

    def convert(value: Any) -> Any:
        for item in converters:
            value = item(value)
        return value

    return convert


def _from_avro(avro: Any, where: str) -> tuple[DestinationType, ValueConverter | None]:
    members, _ = _members(avro)
    if not members:
        raise SchemaError(f"{where}: a field of type null cannot be a column")
    if len(members) > 1:
        # e.g. numeric as [decimal, "string"] (NaN, Infinity): the first member names the type.
        mapped = [_from_avro(m, where) for m in members]
        return mapped[0][0], _chain([c for _, c in mapped if c is not None])
    avro = members[0]
    if isinstance(avro, str):
        avro = {"type": avro}
    if not isinstance(avro, Mapping):
        raise SchemaError(f"{where}: unsupported Avro type {avro!r}", hint="set the field's `pg.type` property")
    kind = avro.get("type")
    if isinstance(kind, (Mapping, list)) and kind is not avro:
        return _from_avro(kind, where)
    connect_name = avro.get("connect.name")
    if isinstance(connect_name, str) and connect_name in _CONNECT_NAMES:
        base, convert = _CONNECT_NAMES[connect_name]
        return DestinationType(base), convert
    parameters = _parameters(avro)
    if connect_name == CONNECT_DECIMAL:
        declared_scale = avro.get("scale")
        scale = _int_parameter(parameters, "scale")
        if scale is None:
            scale = declared_scale if isinstance(declared_scale, int) else 0
        precision = _int_parameter(parameters, "connect.decimal.precision")
        mods = (precision, scale) if precision is not None and 0 < precision <= _MAX_NUMERIC_PRECISION else ()
        return DestinationType("numeric", mods), _connect_decimal(scale)
    if connect_name == DEBEZIUM_BITS:
        length = _int_parameter(parameters, "length")
        if length is None or length <= 0:
            raise SchemaError(f"{where}: io.debezium.data.Bits without a `length` parameter")
        # `bit varying` without a length: 2147483647, no width to restore (leading zero bits are lost).
        return DestinationType("bit varying"), _bits(length if length <= _MAX_CHARACTER_LENGTH else 1)
    logical = avro.get("logicalType")
    if logical == "decimal":
        precision, scale = avro.get("precision"), avro.get("scale", 0)
        mods = (int(precision), int(scale)) if isinstance(precision, int) else ()
        return DestinationType("numeric", mods), None
    if isinstance(logical, str) and logical in _LOGICAL:
        base, convert = _LOGICAL[logical]
        return DestinationType(base), convert
    if kind == "array":
        items = avro.get("items")
        item, convert = _from_avro(items, where)
        if item.arrays or item.base == "jsonb":
            return DestinationType("jsonb"), _to_json
        if convert is None and len(_members(items)[0]) < 2:
            return DestinationType(item.base, item.mods, 1), None
        return DestinationType(item.base, item.mods, 1), _array(convert)
    if isinstance(kind, str) and kind in _PRIMITIVE:
        base = _PRIMITIVE[kind]
        return DestinationType(base), _to_json if base == "jsonb" else None
    raise SchemaError(f"{where}: unsupported Avro type {kind!r}", hint="set the field's `pg.type` property")


def _parameters(avro: Mapping[str, Any]) -> Mapping[str, Any]:
    parameters = avro.get("connect.parameters")
    return parameters if isinstance(parameters, Mapping) else {}


def _int_parameter(parameters: Mapping[str, Any], name: str) -> int | None:
    """A Connect parameter (always a string on the wire) as an int, None when absent or not a number."""
    value = parameters.get(name)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def source_column_type(parameters: Mapping[str, Any]) -> DestinationType | None:
    """The source column's type from Debezium's `__debezium.source.column.*` parameters, when they name a
    built-in type (a user-defined enum or domain gives None: the type derived from the encoding is used)."""
    name = parameters.get(SOURCE_COLUMN_TYPE)
    if not isinstance(name, str):
        return None
    name = name.strip().lower()
    arrays = 0
    if name.startswith("_"):  # PostgreSQL names an array type after its element with a leading underscore
        name, arrays = name[1:], 1
    found = _SOURCE_TYPES.get(name)
    if found is None:
        return None
    base, modifiers = found
    length = _int_parameter(parameters, SOURCE_COLUMN_LENGTH)
    scale = _int_parameter(parameters, SOURCE_COLUMN_SCALE)
    mods: tuple[int, ...] = ()
    if arrays == 0 and modifiers == "ls" and length is not None and 0 < length <= _MAX_NUMERIC_PRECISION:
        mods = (length, scale or 0)
    elif arrays == 0 and modifiers == "l" and length is not None and 0 < length <= _MAX_CHARACTER_LENGTH:
        mods = (length,)
    return DestinationType(base, mods, arrays)


def _source_parameters(avro: Any) -> Mapping[str, Any]:
    """The Connect parameters of a field's (non-null) type, where Debezium puts the source column's type."""
    members, _ = _members(avro)
    if len(members) == 1 and isinstance(members[0], Mapping):
        return _parameters(members[0])
    return {}


def column_type(field: Mapping[str, Any], where: str) -> ColumnType:
    """The destination column of one Avro record field (`pg.type` wins when it is a built-in type, then
    Debezium's source column type parameters, then the type derived from the encoding)."""
    _, nullable = _members(field.get("type"))
    derived, convert = _from_avro(field.get("type"), where)
    declared = field.get("pg.type")
    if not isinstance(declared, str):
        source = source_column_type(_source_parameters(field.get("type")))
        if source is not None:
            if source.base in {"bit", "bit varying"} and derived.base == "boolean":
                convert = _bit_of_boolean  # Debezium sends a bit(1) as a Connect boolean
            declared = str(source)
    if isinstance(declared, str):
        parsed = DestinationType.parse(declared)
        if parsed is not None and parsed.base in {"bit", "bit varying"} and derived.base == "boolean":
            convert = _bit_of_boolean  # a bit(1) under `schema_style: debezium`
        if parsed is not None:
            if parsed.base in {"json", "jsonb"}:
                if not parsed.arrays and convert is None:
                    convert = _to_json
                elif parsed.arrays == 1 and derived == DestinationType("jsonb"):
                    # A json[] column: the elements are the documents' texts, not one document of the list.
                    convert = None
            if parsed.base == "box" and parsed.arrays == 1 and derived.arrays == 1:
                convert = _box_array(convert)
            return ColumnType(parsed, nullable, convert)
    return ColumnType(derived, nullable, convert)

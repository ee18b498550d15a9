"""Specialised Avro binary writers, generated per schema, byte-identical to fastavro's `schemaless_writer`.

fastavro resolves every union by validating the value against each branch (for `after`, that validates the
whole row before writing it) and converts decimals in Python; our envelopes are union-heavy, so that is
most of the encode cost. A writer compiled for one schema knows each field's type and picks union
branches with one `type(x) is ...` test. It only handles the Python types our codecs produce; anything
else raises `Fallback` and the caller writes the value with fastavro instead, so results never differ
(tests/unit/schemas/test_schemas_codegen.py compares bytes on generated values of every mapped type).

Schemas using Avro features we do not generate (maps, enums, fixed, ambiguous unions) are not compiled:
`compile_writer` returns None and fastavro writes them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any
from uuid import UUID

from fastavro.read import LOGICAL_READERS

from schemas.avro import PRIMITIVES, defined_name, lookup, namespace_of


class Fallback(Exception):
    """The value holds a Python type the generated writer does not handle; write it with fastavro."""


class _Unsupported(Exception):
    pass


_SMALL_RANGE = 1 << 13
_SMALL = [b""] * (2 * _SMALL_RANGE)


def _varint_slow(n: int) -> bytes:
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Unsigned varints of every 14-bit value, and the same 14 bits as two continued bytes: a large varint (LSNs,
# timestamps) is a few table lookups instead of a byte-by-byte loop.
_LOW14 = [_varint_slow(_n) for _n in range(1 << 14)]
_PAIR14 = [bytes(((_n & 0x7F) | 0x80, (_n >> 7) | 0x80)) for _n in range(1 << 14)]


def _varint(n: int) -> bytes:
    """The unsigned (already zig-zagged, non-negative) varint."""
    if n < 0x4000:
        return _LOW14[n]
    out = _PAIR14[n & 0x3FFF]
    n >>= 14
    while n >= 0x4000:
        out += _PAIR14[n & 0x3FFF]
        n >>= 14
    return out + _LOW14[n]


for _n in range(-_SMALL_RANGE, _SMALL_RANGE):
    _SMALL[_n + _SMALL_RANGE] = _varint((_n << 1) ^ (_n >> 63))


def zigzag(n: int) -> bytes:
    """Avro's zig-zag varint encoding of a long."""
    if -_SMALL_RANGE <= n < _SMALL_RANGE:
        return _SMALL[n + _SMALL_RANGE]
    n = (n << 1) ^ (n >> 63)  # _varint, inlined: this runs several times per event
    out = _PAIR14[n & 0x3FFF]
    n >>= 14
    while n >= 0x4000:
        out += _PAIR14[n & 0x3FFF]
        n >>= 14
    return out + _LOW14[n]


def decimal_bytes(value: Decimal, precision: int, scale: int) -> bytes:
    """fastavro's bytes-decimal encoding (same checks, same byte length)."""
    sign, digits, exp = value.as_tuple()
    if not isinstance(exp, int) or len(digits) > precision or exp + scale < 0:
        raise Fallback  # NaN/Infinity, or out of the schema's precision/scale: let fastavro raise its error
    unscaled = 0
    for digit in digits:
        unscaled = unscaled * 10 + digit
    unscaled *= 10 ** (exp + scale)
    size = (unscaled.bit_length() + 8) // 8
    return (-unscaled if sign else unscaled).to_bytes(size, "big", signed=True)


_PACK_FLOAT = struct.Struct("<f").pack
_PACK_DOUBLE = struct.Struct("<d").pack
_INT_LOGICAL = frozenset({"date", "time-millis"})
_LONG_LOGICAL = frozenset({"time-micros", "timestamp-millis", "timestamp-micros", "local-timestamp-millis",
                           "local-timestamp-micros"})  # fmt: skip


def _full_name(avro: Mapping[str, Any], namespace: str | None) -> tuple[str, str | None]:
    """(full name, the namespace it gives the types it defines) of a named type's definition."""
    full = defined_name(avro, namespace)
    return full, namespace_of(full)


class _CodeBuilder:
    """What the writer and reader generators share: named types seen, generated functions, constants, names."""

    _prefix = "x"
    _function_prefix = "f"

    def __init__(self, definition: Any) -> None:
        self.named: dict[str, Mapping[str, Any]] = {}
        self.functions: dict[str, str] = {}  # full name -> generated function name
        self.sources: list[str] = []
        self.constants: dict[str, Any] = {}
        self.counter = 0
        self.entry = self._function_for(definition, None)

    def _function_for(self, avro: Any, namespace: str | None) -> str:
        """Name of the generated function for `avro`: one per record (by full name, named before its body is
        generated so that a recursive record calls itself), and one for a root that is not a record."""
        if isinstance(avro, Mapping) and avro.get("type") == "record":
            full, ns = _full_name(avro, namespace)
            if full in self.functions:
                return self.functions[full]
            self.named[full] = avro
            fname = f"{self._function_prefix}{len(self.functions)}"
            self.functions[full] = fname
            self.sources.append("\n".join(self._record_lines(fname, avro, ns)))
            return fname
        fname = f"{self._function_prefix}{len(self.functions)}"
        self.functions[f"<root {fname}>"] = fname
        self.sources.append("\n".join(self._root_lines(fname, avro, namespace)))
        return fname

    def _record_lines(self, fname: str, avro: Mapping[str, Any], namespace: str | None) -> list[str]:
        raise NotImplementedError

    def _root_lines(self, fname: str, avro: Any, namespace: str | None) -> list[str]:
        raise NotImplementedError

    def _const(self, value: Any) -> str:
        name = f"_k{len(self.constants)}"
        self.constants[name] = value
        return name

    def _var(self) -> str:
        self.counter += 1
        return f"{self._prefix}{self.counter}"

    def _lookup(self, name: str, namespace: str | None) -> Mapping[str, Any]:
        found = lookup(name, namespace, self.named)
        if found is None:
            raise _Unsupported(f"unknown named type {name}")
        return found


class _Generator(_CodeBuilder):
    """Generates `(out, v)` functions writing a value's Avro binary form into `out`."""

    _function_prefix = "w"

    def _record_lines(self, fname: str, avro: Mapping[str, Any], namespace: str | None) -> list[str]:
        lines = [f"def {fname}(out, v):"]
        for field in avro["fields"]:
            var = self._var()
            lines.append(f"    {var} = v[{field['name']!r}]")
            self._emit(field["type"], var, lines, "    ", namespace)
        lines.append("    return out")
        return lines

    def _root_lines(self, fname: str, avro: Any, namespace: str | None) -> list[str]:
        lines = [f"def {fname}(out, v):"]
        self._emit(avro, "v", lines, "    ", namespace)
        lines.append("    return out")
        return lines

    def _test(self, avro: Any, namespace: str | None) -> str:
        """The Python type test that selects this union branch (the key must differ between branches)."""
        kind, logical = self._kind(avro, namespace)
        if kind == "null":
            return "None"
        if kind == "boolean":
            return "bool"
        if kind in ("int", "long"):
            return "int"
        if kind in ("float", "double"):
            return "float"
        if kind == "string":
            return "str"
        if kind == "bytes":
            return "Decimal" if logical == "decimal" else "bytes"
        if kind == "record":
            return "dict"
        if kind == "array":
            return "list"
        raise _Unsupported(kind)

    def _kind(self, avro: Any, namespace: str | None) -> tuple[str, str | None]:
        if isinstance(avro, str):
            if avro in PRIMITIVES:
                return avro, None
            return self._kind(self._lookup(avro, namespace), namespace)
        if isinstance(avro, list):
            return "union", None
        kind = avro.get("type")
        if isinstance(kind, (Mapping, list)):
            return self._kind(kind, namespace)
        return str(kind), avro.get("logicalType")

    def _emit(self, avro: Any, var: str, lines: list[str], ind: str, namespace: str | None) -> None:
        if isinstance(avro, str) and avro not in PRIMITIVES:
            avro = self._lookup(avro, namespace)
        kind, logical = self._kind(avro, namespace)
        if kind == "union":
            self._emit_union(avro, var, lines, ind, namespace)
        elif kind == "record":
            fname = self._function_for(avro, namespace)
            lines.append(f"{ind}if type({var}) is not dict: raise Fallback")
            lines.append(f"{ind}{fname}(out, {var})")
        elif kind == "null":
            lines.append(f"{ind}if {var} is not None: raise Fallback")
        elif kind == "boolean":
            lines.append(f"{ind}if {var} is True: out += b'\\x01'")
            lines.append(f"{ind}elif {var} is False: out += b'\\x00'")
            lines.append(f"{ind}else: raise Fallback")
        elif kind in ("int", "long"):
            if logical is not None and logical not in (_INT_LOGICAL if kind == "int" else _LONG_LOGICAL):
                raise _Unsupported(logical)
            lines.append(f"{ind}if type({var}) is not int: raise Fallback")
            lines.append(f"{ind}out += _SMALL[{var} + _R] if -_R <= {var} < _R else zigzag({var})")
        elif kind in ("float", "double"):
            pack = "_PACK_FLOAT" if kind == "float" else "_PACK_DOUBLE"
            lines.append(f"{ind}if type({var}) is not float: raise Fallback")
            lines.append(f"{ind}out += {pack}({var})")
        elif kind == "string":
            if logical not in (None, "uuid"):
                raise _Unsupported(logical)
            b = self._var()
            if logical == "uuid":
                lines.append(f"{ind}if type({var}) is UUID: {var} = str({var})")
            lines.append(f"{ind}if type({var}) is not str: raise Fallback")
            lines.append(f"{ind}{b} = {var}.encode()")
            lines.append(f"{ind}out += _SMALL[len({b}) + _R] if len({b}) < _R else zigzag(len({b}))")
            lines.append(f"{ind}out += {b}")
        elif kind == "bytes":
            b = self._var()
            if logical == "decimal":
                spec = avro if isinstance(avro, Mapping) else {}
                precision, scale = int(spec["precision"]), int(spec.get("scale", 0))
                lines.append(f"{ind}if type({var}) is Decimal: {b} = decimal_bytes({var}, {precision}, {scale})")
                lines.append(f"{ind}elif type({var}) is bytes: {b} = {var}")
                lines.append(f"{ind}else: raise Fallback")
            elif logical is None:
                lines.append(f"{ind}if type({var}) is not bytes: raise Fallback")
                lines.append(f"{ind}{b} = {var}")
            else:
                raise _Unsupported(logical)
            lines.append(f"{ind}out += _SMALL[len({b}) + _R] if len({b}) < _R else zigzag(len({b}))")
            lines.append(f"{ind}out += {b}")
        elif kind == "array":
            item = self._var()
            items = avro["items"]
            lines.append(f"{ind}if type({var}) is not list: raise Fallback")
            lines.append(f"{ind}if {var}:")
            lines.append(f"{ind}    out += zigzag(len({var}))")
            lines.append(f"{ind}    for {item} in {var}:")
            self._emit(items, item, lines, ind + "        ", namespace)
            lines.append(f"{ind}out += b'\\x00'")
        else:
            raise _Unsupported(kind)

    def _emit_union(self, branches: list[Any], var: str, lines: list[str], ind: str, namespace: str | None) -> None:
        tests = [self._test(b, namespace) for b in branches]
        if len(set(tests)) != len(tests):
            raise _Unsupported("ambiguous union")  # e.g. int and long: fastavro's choice rules apply
        keyword = "if"
        for index, (branch, test) in enumerate(zip(branches, tests, strict=True)):
            check = f"{var} is None" if test == "None" else f"type({var}) is {test}"
            if test == "Decimal":  # a decimal branch also takes raw bytes when no bytes branch exists
                check = f"type({var}) is Decimal" + ("" if "bytes" in tests else f" or type({var}) is bytes")
            if test == "str" and self._kind(branch, namespace)[1] == "uuid":
                check = f"type({var}) is str or type({var}) is UUID"
            lines.append(f"{ind}{keyword} {check}:")
            lines.append(f"{ind}    out += {self._const(zigzag(index))}")
            if test != "None":
                self._emit(branch, var, lines, ind + "    ", namespace)
            keyword = "elif"
        lines.append(f"{ind}else: raise Fallback")


_WRITER_HELPERS: dict[str, Any] = {
    "Fallback": Fallback,
    "zigzag": zigzag,
    "_SMALL": _SMALL,
    "_R": _SMALL_RANGE,
    "decimal_bytes": decimal_bytes,
    "Decimal": Decimal,
    "UUID": UUID,
    "_PACK_FLOAT": _PACK_FLOAT,
    "_PACK_DOUBLE": _PACK_DOUBLE,
}


def _compiled(generate: Callable[[Any], _CodeBuilder], definition: Any, helpers: dict[str, Any], label: str) -> Any:
    """The entry function generated for `definition`, or None where the generator does not support the schema."""
    try:
        generator = generate(definition)
    except _Unsupported:
        return None
    namespace: dict[str, Any] = {**helpers, **generator.constants}
    # The source is built from the schema's structure only: field names enter as repr() literals.
    exec(compile("\n\n".join(generator.sources), label, "exec"), namespace)  # noqa: S102
    return namespace[generator.entry]


def compile_writer(definition: Any) -> Callable[[bytearray, Any], bytearray] | None:
    """A function `(out, value) -> out` appending `value`'s Avro binary encoding, or None if not supported."""
    writer: Callable[[bytearray, Any], bytearray] | None = _compiled(
        _Generator, definition, _WRITER_HELPERS, "<avro-writer>"
    )
    return writer


# ---------------------------------------------------------------------------------------------------------
# Readers: the same idea for decoding. A generated reader returns exactly what fastavro's
# `schemaless_reader` returns for the same (logical-type-stripped) schema; on malformed input it raises
# IndexError/EOFError (truncated) or ValueError/UnicodeDecodeError/struct.error (corrupt).

_UNPACK_FLOAT = struct.Struct("<f").unpack_from
_UNPACK_DOUBLE = struct.Struct("<d").unpack_from


def _varint_tail(buf: bytes, pos: int, first: int) -> tuple[int, int]:
    n = first & 0x7F
    shift = 7
    b = first
    while b & 0x80:
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
    return n, pos


class _ReaderGenerator(_CodeBuilder):
    """Generates `(buf, pos) -> (value, pos)` functions reading a value's Avro binary form."""

    _prefix = "y"
    _function_prefix = "r"

    def _record_lines(self, fname: str, avro: Mapping[str, Any], namespace: str | None) -> list[str]:
        lines = [f"def {fname}(buf, pos):", "    end = len(buf)"]
        names = []
        for field in avro["fields"]:
            var = self._var()
            names.append((field["name"], var))
            self._emit(field["type"], var, lines, "    ", namespace)
        items = ", ".join(f"{name!r}: {var}" for name, var in names)
        lines.append(f"    return {{{items}}}, pos")
        return lines

    def _root_lines(self, fname: str, avro: Any, namespace: str | None) -> list[str]:
        lines = [f"def {fname}(buf, pos):", "    end = len(buf)"]
        self._emit(avro, "v", lines, "    ", namespace)
        lines.append("    return v, pos")
        return lines

    @staticmethod
    def _long(target: str, lines: list[str], ind: str) -> None:
        lines.append(f"{ind}_b = buf[pos]")
        lines.append(f"{ind}pos += 1")
        lines.append(f"{ind}if _b & 0x80: _n, pos = _varint_tail(buf, pos, _b)")
        lines.append(f"{ind}else: _n = _b")
        lines.append(f"{ind}{target} = (_n >> 1) ^ -(_n & 1)")

    def _sized(self, target: str, lines: list[str], ind: str, *, text: bool) -> None:
        size = self._var()
        self._long(size, lines, ind)
        lines.append(f"{ind}if {size} < 0 or pos + {size} > end: raise EOFError")
        lines.append(f"{ind}{target} = buf[pos:pos + {size}]" + (".decode()" if text else ""))
        lines.append(f"{ind}pos += {size}")

    def _may_be_empty(self, avro: Any, namespace: str | None, seen: frozenset[str]) -> bool:
        """Whether a value of this schema can take zero bytes (null, or a record of such fields only)."""
        if isinstance(avro, str) and avro not in PRIMITIVES:
            if avro in seen:
                return False
            seen, avro = seen | {avro}, self._lookup(avro, namespace)
        if isinstance(avro, list):
            return False  # a union writes its branch index
        spec: Mapping[str, Any] = avro if isinstance(avro, Mapping) else {"type": avro}
        kind = spec["type"]
        if isinstance(kind, (Mapping, list)):
            return self._may_be_empty(kind, namespace, seen)
        if kind == "record":
            return all(self._may_be_empty(field["type"], namespace, seen) for field in spec["fields"])
        return bool(kind == "null")

    def _emit(self, avro: Any, target: str, lines: list[str], ind: str, namespace: str | None) -> None:
        if isinstance(avro, str) and avro not in PRIMITIVES:
            avro = self._lookup(avro, namespace)
        if isinstance(avro, list):
            index = self._var()
            self._long(index, lines, ind)
            keyword = "if"
            for position, branch in enumerate(avro):
                lines.append(f"{ind}{keyword} {index} == {position}:")
                self._emit(branch, target, lines, ind + "    ", namespace)
                keyword = "elif"
            lines.append(f"{ind}else: raise ValueError('union index out of range')")
            return
        spec: Mapping[str, Any] = avro if isinstance(avro, Mapping) else {"type": avro}
        kind = spec["type"]
        if isinstance(kind, (Mapping, list)):
            self._emit(kind, target, lines, ind, namespace)
            return
        logical = spec.get("logicalType")
        if logical is not None and not (kind == "bytes" and logical == "decimal"):
            raise _Unsupported(f"logical type {logical}")  # the decoder strips the ones it reads raw
        if kind == "record":
            fname = self._function_for(spec, namespace)
            lines.append(f"{ind}{target}, pos = {fname}(buf, pos)")
        elif kind == "null":
            lines.append(f"{ind}{target} = None")
        elif kind == "boolean":
            lines.append(f"{ind}{target} = buf[pos] != 0")
            lines.append(f"{ind}pos += 1")
        elif kind in ("int", "long"):
            self._long(target, lines, ind)
        elif kind in ("float", "double"):
            unpack, size = ("_UNPACK_FLOAT", 4) if kind == "float" else ("_UNPACK_DOUBLE", 8)
            lines.append(f"{ind}{target} = {unpack}(buf, pos)[0]")
            lines.append(f"{ind}pos += {size}")
        elif kind == "string":
            self._sized(target, lines, ind, text=True)
        elif kind == "bytes":
            if logical == "decimal":
                raw = self._var()
                self._sized(raw, lines, ind, text=False)
                lines.append(f"{ind}{target} = _read_decimal({raw}, {self._const(dict(spec))})")
            else:
                self._sized(target, lines, ind, text=False)
        elif kind == "array":
            count, item = self._var(), self._var()
            lines.append(f"{ind}{target} = []")
            lines.append(f"{ind}while True:")
            self._long(count, lines, ind + "    ")
            lines.append(f"{ind}    if {count} == 0: break")
            lines.append(f"{ind}    if {count} < 0:")
            lines.append(f"{ind}        {count} = -{count}")
            self._long("_", lines, ind + "        ")  # block size in bytes: not needed
            if self._may_be_empty(spec["items"], namespace, frozenset()):
                # Items of zero bytes never run out of input: a corrupt count would fill memory in a tight loop.
                lines.append(f"{ind}    if {count} > _MAX_EMPTY_ITEMS: raise ValueError('array block too long')")
            lines.append(f"{ind}    for _i in range({count}):")
            self._emit(spec["items"], item, lines, ind + "        ", namespace)
            lines.append(f"{ind}        {target}.append({item})")
        else:
            raise _Unsupported(str(kind))


# More zero-byte items than this in one array block is taken for corruption (fastavro would loop on).
_MAX_EMPTY_ITEMS = 1 << 20

_READER_HELPERS: dict[str, Any] = {
    "_MAX_EMPTY_ITEMS": _MAX_EMPTY_ITEMS,
    "_varint_tail": _varint_tail,
    "_UNPACK_FLOAT": _UNPACK_FLOAT,
    "_UNPACK_DOUBLE": _UNPACK_DOUBLE,
    "_read_decimal": LOGICAL_READERS["bytes-decimal"],  # fastavro's own conversion: identical Decimals
}


def compile_reader(definition: Any) -> Callable[[bytes, int], tuple[Any, int]] | None:
    """A function `(buf, pos) -> (value, new pos)` decoding one value, or None if the schema is not supported."""
    reader: Callable[[bytes, int], tuple[Any, int]] | None = _compiled(
        _ReaderGenerator, definition, _READER_HELPERS, "<avro-reader>"
    )
    return reader

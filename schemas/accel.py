"""The optional compiled Avro reader (the `cdc_accel` package built from accel/), beside the pure one.

`compile_reader` returns a reader with the pure reader's signature and results: the compiled `cdc_accel.Reader`
when the package is installed, not disabled by `CDC_ACCEL=0`, and able to read the whole schema; otherwise
the generated pure-Python reader (schemas/codegen.py), which stays the reference. The compiled reader hands
any message it does not mirror exactly (malformed input, varints beyond 64 bits, `float` NaNs, decimals
fastavro would round) to the pure reader, so results and errors never differ
(tests/unit/schemas/test_schemas_accel.py compares both on random schemas and values).

Here the schema is lowered to the small tuple program the compiled reader takes, resolving names by the
pure generator's rules, so that both read the same schema the same way.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from fastavro.read import LOGICAL_READERS

from schemas.avro import PRIMITIVES, defined_name, lookup, namespace_of
from schemas.codegen import compile_reader as compile_pure_reader

try:
    import cdc_accel
except ImportError:  # no Rust toolchain where this was installed: the pure reader does the work
    cdc_accel = None

Reader = Callable[[bytes, int], tuple[Any, int]]

AVAILABLE = cdc_accel is not None
ENABLED = AVAILABLE and os.environ.get("CDC_ACCEL", "1") != "0"

_READ_DECIMAL = LOGICAL_READERS["bytes-decimal"]
_SIMPLE = frozenset({"null", "boolean", "float", "double", "string", "bytes"})


class _Unsupported(Exception):
    pass


class _Lowering:
    """The schema as `cdc_accel.Reader` takes it: `root` node and each record's `[(field, node), ...]`."""

    def __init__(self, definition: Any) -> None:
        self.named: dict[str, Mapping[str, Any]] = {}
        self.indexes: dict[str, int] = {}
        self.records: list[list[tuple[str, tuple[Any, ...]]]] = []
        self.root = self.node(definition, None)

    def node(self, avro: Any, namespace: str | None) -> tuple[Any, ...]:
        if isinstance(avro, str) and avro not in PRIMITIVES:
            found = lookup(avro, namespace, self.named)
            if found is None:
                raise _Unsupported(avro)
            avro = found
        if isinstance(avro, list):
            return ("union", [self.node(branch, namespace) for branch in avro])
        spec: Mapping[str, Any] = avro if isinstance(avro, Mapping) else {"type": avro}
        kind = spec["type"]
        if isinstance(kind, (Mapping, list)):
            return self.node(kind, namespace)
        logical = spec.get("logicalType")
        if logical is not None and not (kind == "bytes" and logical == "decimal"):
            raise _Unsupported(logical)
        if kind == "record":
            full = defined_name(spec, namespace)
            if full in self.indexes:  # first definition wins, as in the pure generator
                return ("record", self.indexes[full])
            self.named[full] = spec
            index = self.indexes[full] = len(self.records)
            self.records.append([])
            self.records[index] = [(f["name"], self.node(f["type"], namespace_of(full))) for f in spec["fields"]]
            return ("record", index)
        if kind in ("int", "long"):
            return ("long",)
        if kind == "bytes" and logical == "decimal":
            precision, scale = spec.get("precision"), spec.get("scale", 0)
            fast = type(precision) is int and precision >= 1 and type(scale) is int and 0 <= scale <= 10_000
            return ("decimal", precision if fast else None, scale if fast else None, dict(spec), _READ_DECIMAL)
        if kind == "array":
            return ("array", self.node(spec["items"], namespace))
        if kind in _SIMPLE:
            return (kind,)
        raise _Unsupported(str(kind))


def compile_reader(definition: Any, *, accelerated: bool = ENABLED) -> Reader | None:
    """`(buf, pos) -> (value, end)` for `definition`, compiled where possible; None if neither reader supports
    it (fastavro reads it then)."""
    pure = compile_pure_reader(definition)
    if pure is None or not accelerated or cdc_accel is None:
        return pure
    try:
        lowered = _Lowering(definition)
        reader: Reader = cdc_accel.Reader(lowered.root, lowered.records, pure)
    except (_Unsupported, cdc_accel.Unsupported):
        return pure
    return reader


ChangeReader = Callable[[bytes, int], "tuple[str, uuid.UUID, int, int, str, str, int | None, bytes] | None"]
"""`(buf, pos) -> (op, change_id, commit_lsn, lsn, schema, table, ts_ms, COPY line)`, or None for the pure path."""
Kinds = Callable[[list[tuple[str, tuple[Any, ...]]]], "list[tuple[Any, ...]] | None"]
"""The row record's lowered fields `[(name, node), ...]` -> one COPY kind per field, or None (not supported)."""


def compile_change_reader(definition: Any, kinds: Kinds, *, accelerated: bool = ENABLED) -> ChangeReader | None:
    """The compiled reader of an envelope straight to what the PostgreSQL sink applies (`cdc_accel.ChangeReader`),
    for `definition` as the decoder reads it (raw logical types removed); None where it is not installed, disabled,
    or the schema is not an envelope whose row columns all have a kind."""
    if not accelerated or cdc_accel is None:
        return None
    try:
        lowered = _Lowering(definition)
        root = lowered.root
        if root[0] != "record":
            return None
        after = dict(lowered.records[root[1]]).get("after")
        row = _record_index(after)
        if row is None:
            return None
        found = kinds(lowered.records[row])
        if found is None:
            return None
        reader: ChangeReader = cdc_accel.ChangeReader(root, lowered.records, found)
    except (_Unsupported, cdc_accel.Unsupported):
        return None
    return reader


def _record_index(node: tuple[Any, ...] | None) -> int | None:
    if node is None:
        return None
    if node[0] == "record":
        return int(node[1])
    if node[0] == "union":
        records = [b[1] for b in node[1] if b[0] == "record"]
        return int(records[0]) if len(records) == 1 else None
    return None

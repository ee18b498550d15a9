"""Envelopes read natively into changes that carry their row as a ready COPY line (no Python value per column).

The compiled `cdc_accel.ChangeReader` (schemas/accel.py) reads an envelope's identity, position and the image the
op applies (after, or before for a delete) and writes that row as one line of PostgreSQL's text COPY format,
exactly what the pure path's `Copy.write_row` writes for the same message: the Avro values after each column's
converter, as psycopg dumps them. The applier sends the line as it is when its table writes exactly the shape's
columns (`Applier._copy`). Kinds of column claimed (and proven byte for byte on random values by
tests/unit/sinks/test_sink_copylines.py): integers, booleans, strings, decimals of the fast decimal read (and
unions of these, such as a numeric's `[decimal, string]`), all without a converter, and integer timestamps
converted to `datetime` (`types._epoch`). A schema with any other column, a chain of
transforms, or a message the native reader leaves alone (no change id or LSN in the envelope, unsent TOAST
columns, a value outside what a kind mirrors, anything malformed) takes the pure path, which stays the reference.

The change's `row` is still there for the rare readers of it (collapsing TOAST values, key changes): decoded by
the pure path's reader the first time it is read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from core.records import AvroSchema
from schemas.accel import ENABLED, ChangeReader, compile_change_reader
from schemas.serde import without_raw_logical_types
from sinks.postgres.changes import Change, Shape
from sinks.postgres.types import epoch_of

_PLAIN = frozenset({"long", "boolean", "string"})


def column_kinds(shape: Shape, fields: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[Any, ...]] | None:
    """One COPY kind per field of the row record (lowered), or None when a column has no kind: `plain` for values
    written as read (ints, booleans, strings, fast-read decimals, and unions of them such as a numeric's
    `[decimal, string]`), `timestamp` for integer timestamps the column's converter turns into `datetime`."""
    if [name for name, _ in fields] != [c.field for c in shape.columns]:
        return None
    kinds: list[tuple[Any, ...]] = []
    for column, (_, node) in zip(shape.columns, fields, strict=True):
        members = [m for m in node[1] if m[0] != "null"] if node[0] == "union" else [node]
        convert = column.type.convert
        epoch = epoch_of(convert)
        if epoch is not None and [m[0] for m in members] == ["long"]:
            kinds.append(("timestamp", epoch[0], epoch[1]))
        elif convert is None and members and all(m[0] in _PLAIN or (m[0] == "decimal" and m[1]) for m in members):
            kinds.append(("plain",))
        else:
            return None
    return kinds


def change_reader(value_schema: AvroSchema, shape: Shape, *, accelerated: bool = ENABLED) -> ChangeReader | None:
    """The native reader of `value_schema`'s envelopes for `shape`, or None (the pure path reads them)."""
    if shape.flat or shape.key_only:
        return None
    definition = without_raw_logical_types(value_schema.definition)
    return compile_change_reader(definition, lambda fields: column_kinds(shape, fields), accelerated=accelerated)


class LazyRow(Mapping[str, Any]):
    """The row the pure path would have built, decoded on first read (`load`)."""

    __slots__ = ("_load", "_row")

    def __init__(self, load: Callable[[], Mapping[str, Any]]) -> None:
        self._load: Callable[[], Mapping[str, Any]] | None = load
        self._row: Mapping[str, Any] | None = None

    def _loaded(self) -> Mapping[str, Any]:
        if self._row is None:
            assert self._load is not None
            self._row, self._load = self._load(), None
        return self._row

    def __getitem__(self, name: str) -> Any:
        return self._loaded()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaded())

    def __len__(self) -> int:
        return len(self._loaded())


def native_change(
    read: ChangeReader,
    data: bytes,
    start: int,
    *,
    topic: str,
    partition: int,
    offset: int,
    shape: Shape,
    key: Any,
    load: Callable[[], Mapping[str, Any]],
) -> Change | None:
    """The change of an envelope read natively, or None: the pure path decides (and raises what it raises)."""
    got = read(data, start)
    if got is None:
        return None
    op, change_id, commit_lsn, lsn, schema, table, ts_ms, line = got
    if not shape.key:
        keyed = None
    elif type(key) is dict or isinstance(key, Mapping):
        keyed = shape.key_of(key)
    else:
        return None  # the key comes from the row then
    return Change(
        topic, partition, offset, op, change_id, commit_lsn, lsn, schema, table, shape, keyed, LazyRow(load),
        frozenset(), ts_ms, False, line,
    )  # fmt: skip


def line_tail(change: Change, op: str, toast: int) -> bytes:
    """The stage's bookkeeping columns after a native row line (`commit_lsn, lsn, change_id, op, toast, ts_ms`),
    as `write_row` writes them."""
    ts = b"\\N" if change.ts_ms is None else b"%d" % change.ts_ms
    cid = change.change_id.hex.encode()  # psycopg writes a UUID as its 32 hex digits
    return b"\t%d\t%d\t%s\t%s\t%d\t%s\n" % (change.commit_lsn, change.lsn, cid, op.encode(), toast, ts)

"""Change envelopes (streamed, and snapshot reads) written straight to Confluent wire-format bytes, without the dict.

`EnvelopeWriter` produces exactly the bytes `serde.Encoder` produces for `TableSchemas.envelope(...)`
values of one table: the schema-id header and the constant leading strings of the `source` block are
precomputed once, the per-transaction part (commit time, xid, commit LSN) once per transaction, and only
the rows (generated writer of the table's Value/Key records), the LSN, the change id and the wall-clock
`ts_ms` are written per event. A row the generated writer does not take raises `Fallback` (or one of the
errors `Encoder` falls back on) and the caller encodes the event's record with `serde.Encoder`.

tests/unit/sources/postgres/test_change_encoder.py compares the bytes with the general path on random rows of
every mapped type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from core import __version__
from schemas.codegen import _SMALL, _SMALL_RANGE, compile_writer, zigzag
from schemas.envelope import TableSchemas
from schemas.serde import HEADER, MAGIC
from schemas.types import SchemaStyle

FALLBACK_ERRORS = (LookupError, TypeError, AttributeError, ValueError, OverflowError)
"""Besides `codegen.Fallback`: the errors on which `serde.Encoder` lets fastavro write the value instead."""

_NULL = b"\x00"
_SOME = b"\x02"  # union branch 1 of ["null", X]
_UUID_LEN = zigzag(36)
_R = _SMALL_RANGE


def _string(text: str) -> bytes:
    data = text.encode()
    return zigzag(len(data)) + data


_OPS = {op: _string(op) for op in "cudr"}
_FALSE = _string("false")
_Tx = tuple[int, int | None, int, str | None, bytes, bytes, str, bytes, dict[str, bytes]]
"""(commit_lsn, xid, commit_ms, snapshot marker, source head, source middle, sequence prefix, source tail, source tail +
op by op)."""


class EnvelopeWriter:
    """Wire-format key and value bytes of one table's streamed events (`source.snapshot` = null) and snapshot
    reads (`op = r`, `source.snapshot` = their marker, no transaction id)."""

    __slots__ = (
        "_debezium", "_key_header", "_key_writer", "_prefix", "_row_writer", "_table_part", "_ts", "_tx",
        "_value_header",
    )

    def __init__(
        self,
        schemas: TableSchemas,
        *,
        connector_name: str,
        db: str,
        key_schema_id: int | None,
        value_schema_id: int,
        row_writer: Callable[[bytearray, Any], bytearray],
        key_writer: Callable[[bytearray, Any], bytearray] | None,
    ) -> None:
        self._row_writer = row_writer
        self._key_writer = key_writer
        self._value_header = HEADER.pack(MAGIC, value_schema_id)
        self._key_header = None if key_schema_id is None else HEADER.pack(MAGIC, key_schema_id)
        self._debezium = schemas.style == SchemaStyle.DEBEZIUM
        # source: version, connector, name | ts_ms, snapshot (null), db | sequence | schema, table, txId | ...
        self._prefix = _string(__version__) + _string("postgresql") + _string(connector_name)
        self._table_part = (_string(db), _string(schemas.table.schema) + _string(schemas.table.name))
        self._tx: _Tx | None = None
        self._ts: tuple[int, bytes] = (-1, b"")

    @classmethod
    def build(
        cls,
        schemas: TableSchemas,
        *,
        connector_name: str,
        db: str,
        key_schema_id: int | None,
        value_schema_id: int,
    ) -> EnvelopeWriter | None:
        """The writer, or None when the table's records are not supported by the generated writers."""
        before = schemas.value_schema.definition["fields"][0]["type"]
        row_writer = compile_writer(before[1])
        if row_writer is None:
            return None
        key_writer = None
        if schemas.key_schema is not None:
            key_writer = compile_writer(schemas.key_schema.definition)
            if key_writer is None or key_schema_id is None:
                return None
        return cls(
            schemas, connector_name=connector_name, db=db, key_schema_id=key_schema_id,
            value_schema_id=value_schema_id, row_writer=row_writer, key_writer=key_writer,
        )  # fmt: skip

    def _transaction(self, commit_lsn: int, xid: int | None, commit_ms: int, snapshot: str | None) -> _Tx:
        tx = self._tx
        if tx is None or tx[0] != commit_lsn or tx[1] != xid or tx[2] != commit_ms or tx[3] != snapshot:
            db, schema_table = self._table_part
            tx_id = _NULL if xid is None else _SOME + zigzag(xid)
            if self._debezium:
                # source: ..., snapshot (a string, branch 0; "false" when streamed), db | sequence | ts_us, ts_ns,
                # schema, table, txId | lsn | xmin, origin, origin_lsn null, commit_lsn; then the envelope's
                # transaction (null)
                marker = _FALSE if snapshot is None else _string(snapshot)
                head = self._prefix + zigzag(commit_ms) + _NULL + marker + db + _SOME
                times = _SOME + zigzag(commit_ms * 1000) + _SOME + zigzag(commit_ms * 1_000_000)
                middle = times + schema_table + tx_id + _SOME
                tail = _NULL * 3 + _SOME + zigzag(commit_lsn) + _NULL
            else:
                marker = _NULL if snapshot is None else _SOME + _string(snapshot)
                head = self._prefix + zigzag(commit_ms) + marker + db + _SOME
                middle = schema_table + tx_id + _SOME
                tail = _NULL + _SOME + zigzag(commit_lsn)  # xmin null, commit_lsn
            # The source's tail and the op that follows it, fused once per transaction for each op.
            tails = {op: tail + op_bytes for op, op_bytes in _OPS.items()}
            tx = (commit_lsn, xid, commit_ms, snapshot, head, middle, f'["{commit_lsn}","', tail, tails)
            self._tx = tx
        return tx

    def _clock(self, ts_ms: int) -> bytes:
        """The envelope's `ts_ms` (and, in debezium style, `ts_us`, `ts_ns`), written once per millisecond."""
        clock = self._ts
        if clock[0] == ts_ms:
            return clock[1]
        data = _SOME + zigzag(ts_ms)
        if self._debezium:
            data += _SOME + zigzag(ts_ms * 1000) + _SOME + zigzag(ts_ms * 1_000_000)
        self._ts = (ts_ms, data)
        return data

    def key(self, key: Mapping[str, Any] | None) -> bytes | None:
        if key is None or self._key_writer is None or self._key_header is None:
            return None
        return bytes(self._key_writer(bytearray(self._key_header), key))

    def value(
        self,
        op: str,
        *,
        before: Mapping[str, Any] | None,
        after: Mapping[str, Any] | None,
        lsn: int,
        commit_lsn: int,
        xid: int | None,
        commit_ms: int,
        ts_ms: int,
        change_id: str,
        unchanged: Sequence[str] = (),
        snapshot: str | None = None,
    ) -> bytes:
        """The envelope `{before, after, source, op, ts_ms, change_id, unchanged_toast}` of a streamed change, or
        of a snapshot read with its `snapshot` marker (`debezium` style: with `transaction`, `ts_us`, `ts_ns`)."""
        tx = self._tx
        if tx is None or tx[0] != commit_lsn or tx[1] != xid or tx[2] != commit_ms or tx[3] != snapshot:
            tx = self._transaction(commit_lsn, xid, commit_ms, snapshot)
        out = bytearray(self._value_header)
        if before is None:
            out += _NULL
        else:
            out += _SOME
            self._row_writer(out, before)
        if after is None:
            out += _NULL
        else:
            out += _SOME
            self._row_writer(out, after)
        sequence_bytes = f'{tx[6]}{lsn}"]'.encode()
        out += tx[4]
        out += _SMALL[len(sequence_bytes) + _R]  # two decimal longs: far below the small-number table's limit
        out += sequence_bytes
        out += tx[5]
        out += zigzag(lsn)
        tail = tx[8].get(op)
        out += tail if tail is not None else tx[7] + _string(op)
        clock = self._ts
        out += clock[1] if clock[0] == ts_ms else self._clock(ts_ms)
        cid = change_id.encode()
        out += _UUID_LEN if len(cid) == 36 else zigzag(len(cid))
        out += cid
        if unchanged:
            out += zigzag(len(unchanged))
            for column in unchanged:
                out += _string(column)
        out += _NULL
        return bytes(out)

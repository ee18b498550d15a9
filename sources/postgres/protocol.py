"""Decoding of the `pgoutput` logical replication protocol (proto_version 1) into immutable messages.

Two layers: the streaming-replication COPY BOTH frames (`XLogData` 'w', `PrimaryKeepalive` 'k') and the
pgoutput messages inside an XLogData payload. Column values stay in PostgreSQL's text output format
(`str`), `None` for SQL NULL, and `UNCHANGED_TOAST` (the schema layer's sentinel) for an unchanged TOASTed
value PostgreSQL did not send; converting text to Avro values is the schema layer's job.

Reference: PostgreSQL docs, "Logical Replication Message Formats" and "Streaming Replication Protocol".
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from core.errors import FatalError
from schemas.envelope import UNCHANGED_TOAST, _UnchangedToast

PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)
PG_EPOCH_UNIX_US: Final = 946_684_800_000_000


Value = str | None | _UnchangedToast
Tuple = tuple[Value, ...]


class ProtocolError(FatalError):
    """The server sent bytes this decoder does not understand."""


def pg_time_to_unix_us(pg_us: int) -> int:
    """Microseconds since 2000-01-01 (PostgreSQL's epoch) -> microseconds since 1970-01-01."""
    return pg_us + PG_EPOCH_UNIX_US


def pg_time_to_datetime(pg_us: int) -> datetime:
    return PG_EPOCH + timedelta(microseconds=pg_us)


def now_pg_us(unix_seconds: float) -> int:
    return int(unix_seconds * 1_000_000) - PG_EPOCH_UNIX_US


# --- pgoutput messages ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int
    """LSN of the transaction's commit record."""
    commit_time_us: int
    """Commit time, microseconds since the PostgreSQL epoch (2000-01-01)."""
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    """End of the commit record: the position to confirm once the transaction is acknowledged."""
    commit_time_us: int


@dataclass(frozen=True, slots=True)
class Origin:
    commit_lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class RelationColumn:
    name: str
    type_oid: int
    type_modifier: int
    is_key: bool


@dataclass(frozen=True, slots=True)
class Relation:
    relation_id: int
    namespace: str
    name: str
    replica_identity: str
    """'d' default (primary key), 'n' nothing, 'f' full, 'i' index."""
    columns: tuple[RelationColumn, ...]


@dataclass(frozen=True, slots=True)
class Type:
    type_oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    relation_id: int
    new: Tuple


@dataclass(frozen=True, slots=True)
class Update:
    relation_id: int
    new: Tuple
    old: Tuple | None
    """The old row: key columns ('K') or every column ('O', REPLICA IDENTITY FULL); None when unchanged key."""
    old_is_key_only: bool


@dataclass(frozen=True, slots=True)
class Delete:
    relation_id: int
    old: Tuple
    old_is_key_only: bool


@dataclass(frozen=True, slots=True)
class Truncate:
    relation_ids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """A message written with `pg_logical_emit_message` (the connector's heartbeats are such messages)."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Message = Begin | Commit | Origin | Relation | Type | Insert | Update | Delete | Truncate | LogicalMessage
"""Any pgoutput message: the streamer handles them with one `match`."""

# --- replication stream frames --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class XLogData:
    data_start: int
    """WAL position of the record this message was decoded from (for a change: the change's LSN)."""
    wal_end: int
    server_time_us: int
    payload: bytes | memoryview


@dataclass(frozen=True, slots=True)
class Keepalive:
    wal_end: int
    server_time_us: int
    reply_requested: bool


_U8 = struct.Struct("!B")
_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_XLOG = struct.Struct("!QQq")
_KEEPALIVE = struct.Struct("!QqB")
_BEGIN = struct.Struct("!QqI")
_COMMIT = struct.Struct("!BQQq")
_STATUS = struct.Struct("!cQQQqB")


def decode_frame(data: bytes | memoryview) -> XLogData | Keepalive:
    """Decode one COPY BOTH message from the server."""
    kind = data[0]
    if kind == 0x77:  # 'w'
        start, end, at = _XLOG.unpack_from(data, 1)
        return XLogData(start, end, at, memoryview(data)[25:])
    if kind == 0x6B:  # 'k'
        end, at, reply = _KEEPALIVE.unpack_from(data, 1)
        return Keepalive(end, at, bool(reply))
    raise ProtocolError(f"unexpected replication frame type {chr(kind)!r}")


def encode_status_update(write: int, flush: int, apply: int, now_us: int, *, reply: bool = False) -> bytes:
    """A standby status update ('r'): the client has written/flushed/applied WAL up to these LSNs."""
    return _STATUS.pack(b"r", write, flush, apply, now_us, 1 if reply else 0)


def _string(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(b"\0", pos)
    return data[pos:end].decode(), end + 1


def _tuple(data: bytes, pos: int) -> tuple[Tuple, int]:
    (count,) = _I16.unpack_from(data, pos)
    pos += 2
    values: list[Value] = []
    append = values.append
    unpack_len = _U32.unpack_from
    for _ in range(count):
        kind = data[pos]
        pos += 1
        if kind == 0x74:  # 't' text
            (length,) = unpack_len(data, pos)
            pos += 4
            append(data[pos : pos + length].decode())
            pos += length
        elif kind == 0x6E:  # 'n' null
            append(None)
        elif kind == 0x75:  # 'u' unchanged TOAST
            append(UNCHANGED_TOAST)
        elif kind == 0x62:  # 'b' binary: only sent when the binary option is on, which we never set
            raise ProtocolError("binary tuple data received; the connector requests text format")
        else:
            raise ProtocolError(f"unknown tuple data kind {chr(kind)!r}")
    return tuple(values), pos


def decode_message(payload: bytes | memoryview) -> Message:
    """Decode one pgoutput message (the payload of an XLogData frame)."""
    data = payload if isinstance(payload, bytes) else bytes(payload)
    kind = data[0]
    if kind == 0x49:  # 'I'
        (rel,) = _U32.unpack_from(data, 1)
        if data[5] != 0x4E:
            raise ProtocolError("insert without a new tuple")
        new, _ = _tuple(data, 6)
        return Insert(rel, new)
    if kind == 0x55:  # 'U'
        (rel,) = _U32.unpack_from(data, 1)
        pos = 5
        old: Tuple | None = None
        key_only = False
        if data[pos] in (0x4B, 0x4F):  # 'K' key / 'O' old full row
            key_only = data[pos] == 0x4B
            old, pos = _tuple(data, pos + 1)
        if data[pos] != 0x4E:
            raise ProtocolError("update without a new tuple")
        new, _ = _tuple(data, pos + 1)
        return Update(rel, new, old, key_only)
    if kind == 0x44:  # 'D'
        (rel,) = _U32.unpack_from(data, 1)
        marker = data[5]
        if marker not in (0x4B, 0x4F):
            raise ProtocolError("delete without an old tuple")
        old_row, _ = _tuple(data, 6)
        return Delete(rel, old_row, marker == 0x4B)
    if kind == 0x42:  # 'B'
        final_lsn, at, xid = _BEGIN.unpack_from(data, 1)
        return Begin(final_lsn, at, xid)
    if kind == 0x43:  # 'C'
        flags, commit_lsn, end_lsn, at = _COMMIT.unpack_from(data, 1)
        return Commit(flags, commit_lsn, end_lsn, at)
    if kind == 0x52:  # 'R'
        (rel,) = _U32.unpack_from(data, 1)
        namespace, pos = _string(data, 5)
        name, pos = _string(data, pos)
        identity = chr(data[pos])
        (ncols,) = _I16.unpack_from(data, pos + 1)
        pos += 3
        columns = []
        for _ in range(ncols):
            flags = data[pos]
            column, pos = _string(data, pos + 1)
            (type_oid,) = _U32.unpack_from(data, pos)
            (typmod,) = _I32.unpack_from(data, pos + 4)
            pos += 8
            columns.append(RelationColumn(column, type_oid, typmod, bool(flags & 1)))
        return Relation(rel, namespace, name, identity, tuple(columns))
    if kind == 0x54:  # 'T'
        (count,) = _U32.unpack_from(data, 1)
        options = data[5]
        ids = struct.unpack_from(f"!{count}I", data, 6)
        return Truncate(tuple(ids), bool(options & 1), bool(options & 2))
    if kind == 0x59:  # 'Y'
        (oid,) = _U32.unpack_from(data, 1)
        namespace, pos = _string(data, 5)
        name, _ = _string(data, pos)
        return Type(oid, namespace, name)
    if kind == 0x4F:  # 'O'
        (lsn,) = _U64.unpack_from(data, 1)
        name, _ = _string(data, 9)
        return Origin(lsn, name)
    if kind == 0x4D:  # 'M'
        flags = data[1]
        (lsn,) = _U64.unpack_from(data, 2)
        prefix, pos = _string(data, 10)
        (length,) = _U32.unpack_from(data, pos)
        return LogicalMessage(bool(flags & 1), lsn, prefix, data[pos + 4 : pos + 4 + length])
    raise ProtocolError(
        f"unknown pgoutput message type {chr(kind)!r}",
        hint="the connector speaks proto_version 1; check the server version and plugin",
    )

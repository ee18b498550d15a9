"""pgoutput decoding against byte strings built from the protocol documentation."""

from __future__ import annotations

import struct

import pytest

from sources.postgres.protocol import (
    UNCHANGED_TOAST,
    Begin,
    Commit,
    Delete,
    Insert,
    Keepalive,
    LogicalMessage,
    Origin,
    ProtocolError,
    Relation,
    Truncate,
    Type,
    Update,
    XLogData,
    decode_frame,
    decode_message,
    encode_status_update,
    pg_time_to_unix_us,
)

pytestmark = pytest.mark.unit


def cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def tuple_data(*values: object) -> bytes:
    out = struct.pack("!h", len(values))
    for value in values:
        if value is None:
            out += b"n"
        elif value is UNCHANGED_TOAST:
            out += b"u"
        else:
            raw = str(value).encode()
            out += b"t" + struct.pack("!I", len(raw)) + raw
    return out


def test_begin_and_commit() -> None:
    assert decode_message(b"B" + struct.pack("!QqI", 0x1_0000_0010, 123, 42)) == Begin(0x1_0000_0010, 123, 42)
    assert decode_message(b"C" + struct.pack("!BQQq", 0, 100, 150, 7)) == Commit(0, 100, 150, 7)


def test_relation_marks_key_columns_and_keeps_typmod() -> None:
    body = (
        b"R"
        + struct.pack("!I", 16390)
        + cstr("public")
        + cstr("orders")
        + b"d"
        + struct.pack("!h", 2)
        + b"\x01" + cstr("id") + struct.pack("!Ii", 23, -1)
        + b"\x00" + cstr("amount") + struct.pack("!Ii", 1700, (10 << 16 | 2) + 4)
    )
    relation = decode_message(body)
    assert isinstance(relation, Relation)
    assert (relation.relation_id, relation.namespace, relation.name, relation.replica_identity) == (
        16390, "public", "orders", "d",
    )
    assert [(c.name, c.type_oid, c.is_key) for c in relation.columns] == [("id", 23, True), ("amount", 1700, False)]
    assert relation.columns[1].type_modifier == (10 << 16 | 2) + 4


def test_insert_with_null_unicode_and_empty_string() -> None:
    message = decode_message(b"I" + struct.pack("!I", 7) + b"N" + tuple_data(1, None, "héllo ✓", ""))
    assert message == Insert(7, ("1", None, "héllo ✓", ""))


def test_update_with_old_key_and_unchanged_toast() -> None:
    body = b"U" + struct.pack("!I", 7) + b"K" + tuple_data(1, None) + b"N" + tuple_data(2, UNCHANGED_TOAST)
    message = decode_message(body)
    assert message == Update(7, ("2", UNCHANGED_TOAST), ("1", None), True)


def test_update_without_old_tuple_and_full_old_row() -> None:
    assert decode_message(b"U" + struct.pack("!I", 7) + b"N" + tuple_data(1)) == Update(7, ("1",), None, False)
    full = decode_message(b"U" + struct.pack("!I", 7) + b"O" + tuple_data(1, "a") + b"N" + tuple_data(1, "b"))
    assert full == Update(7, ("1", "b"), ("1", "a"), False)


def test_delete_key_and_full() -> None:
    assert decode_message(b"D" + struct.pack("!I", 9) + b"K" + tuple_data(5)) == Delete(9, ("5",), True)
    assert decode_message(b"D" + struct.pack("!I", 9) + b"O" + tuple_data(5, "x")) == Delete(9, ("5", "x"), False)


def test_truncate_options() -> None:
    message = decode_message(b"T" + struct.pack("!IBII", 2, 3, 10, 11))
    assert message == Truncate((10, 11), cascade=True, restart_identity=True)


def test_origin_type_message() -> None:
    assert decode_message(b"O" + struct.pack("!Q", 99) + cstr("node1")) == Origin(99, "node1")
    mood = decode_message(b"Y" + struct.pack("!I", 5000) + cstr("public") + cstr("mood"))
    assert mood == Type(5000, "public", "mood")
    body = b"M" + b"\x00" + struct.pack("!Q", 77) + cstr("cdc-heartbeat") + struct.pack("!I", 3) + b"abc"
    assert decode_message(body) == LogicalMessage(False, 77, "cdc-heartbeat", b"abc")


def test_unknown_message_and_binary_tuples_are_errors() -> None:
    with pytest.raises(ProtocolError):
        decode_message(b"Z")
    with pytest.raises(ProtocolError):
        decode_message(b"I" + struct.pack("!I", 7) + b"N" + struct.pack("!h", 1) + b"b" + struct.pack("!I", 0))


def test_frames() -> None:
    payload = b"B" + struct.pack("!QqI", 1, 2, 3)
    frame = decode_frame(b"w" + struct.pack("!QQq", 10, 20, 30) + payload)
    assert isinstance(frame, XLogData)
    assert (frame.data_start, frame.wal_end, frame.server_time_us) == (10, 20, 30)
    assert decode_message(frame.payload) == Begin(1, 2, 3)
    assert decode_frame(b"k" + struct.pack("!QqB", 55, 66, 1)) == Keepalive(55, 66, True)
    with pytest.raises(ProtocolError):
        decode_frame(b"x")


def test_status_update_layout() -> None:
    raw = encode_status_update(1, 2, 3, 4, reply=True)
    assert raw == b"r" + struct.pack("!QQQqB", 1, 2, 3, 4, 1)


def test_pg_epoch() -> None:
    assert pg_time_to_unix_us(0) == 946_684_800_000_000

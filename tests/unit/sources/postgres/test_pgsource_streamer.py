"""The streamer with small doubles of its connections and Kafka: what it produces, in which acknowledgement
slot, and what it confirms (only what Kafka acknowledged), plus the position value object's rules."""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from core.delivery import AckTracker, TxSlot
from core.errors import RetryBudget
from core.positions import Lsn
from core.records import Record
from sources.postgres.config import PostgresSourceConfig
from sources.postgres.output import RecordOutput
from sources.postgres.protocol import Keepalive, Relation, XLogData
from sources.postgres.status import SourceStatus
from sources.postgres.streamer import Streamer, StreamPosition

pytestmark = pytest.mark.unit


# --- position -------------------------------------------------------------------------------------------


def test_position_moves_forward_only() -> None:
    position = StreamPosition(Lsn(100)).received_up_to(300).server_at(500)
    assert position.received_up_to(200) is position and position.server_at(400) is position
    assert position == StreamPosition(Lsn(100), Lsn(300), Lsn(500))


def test_confirmable_is_the_acknowledged_prefix_unless_nothing_is_in_flight() -> None:
    position = StreamPosition(Lsn(100), Lsn(300), Lsn(500))
    assert position.confirmable(250, quiet=False) == Lsn(250)
    assert position.confirmable(250, quiet=True) == Lsn(500)
    assert position.confirmable(600, quiet=True) == Lsn(600)


def test_written_is_the_furthest_read_never_behind_confirmed() -> None:
    assert StreamPosition(Lsn(100), Lsn(300)).written() == Lsn(300)
    assert StreamPosition(Lsn(100), Lsn(300)).written(in_transaction=350) == Lsn(350)
    assert StreamPosition(Lsn(400), Lsn(300)).written() == Lsn(400)


# --- doubles --------------------------------------------------------------------------------------------


def cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def relation(rel: int) -> bytes:
    return b"R" + struct.pack("!I", rel) + cstr("public") + cstr("t") + b"d" + struct.pack("!h", 1) + (
        b"\x01" + cstr("id") + struct.pack("!Ii", 23, -1)
    )


def begin(final_lsn: int, xid: int) -> bytes:
    return b"B" + struct.pack("!QqI", final_lsn, 0, xid)


def insert(rel: int, value: str) -> bytes:
    return b"I" + struct.pack("!I", rel) + b"N" + struct.pack("!h", 1) + b"t" + struct.pack("!I", len(value)) + (
        value.encode()
    )


def commit(commit_lsn: int, end_lsn: int) -> bytes:
    return b"C" + struct.pack("!BQQq", 0, commit_lsn, end_lsn, 0)


def truncate(*rels: int) -> bytes:
    return b"T" + struct.pack(f"!IB{len(rels)}I", len(rels), 0, *rels)


@dataclass(frozen=True)
class FakeChange:
    op: str
    key: Any
    value: dict[str, Any]


class FakeEvents:
    """`TableEvents` as the streamer uses it with transforms configured: changes become records."""

    topic = "p.public.t"
    table_name = "public.t"

    def changes(self, message: Any, **coordinates: int) -> tuple[FakeChange, ...]:
        return (FakeChange("c", message.new[0], coordinates),)

    def truncate(self, **coordinates: int) -> FakeChange:
        return FakeChange("t", None, {"truncate": coordinates})

    def records(self, changes: Any) -> list[Record]:
        return [Record(self.topic, change.key, change.value, None, None) for change in changes]


class FakeFactory:
    def __init__(self) -> None:
        self.relations: list[int] = []

    def for_relation(self, message: Relation) -> FakeEvents:
        self.relations.append(message.relation_id)
        return FakeEvents()


@dataclass
class FakeDelivery:
    """Kafka as the streamer sees it; `acknowledged` decides whether a produced record is acknowledged."""

    acknowledged: Callable[[Record], bool] = lambda _record: True
    tracker: AckTracker = field(default_factory=AckTracker)
    produced: list[tuple[Record, TxSlot]] = field(default_factory=list)
    schema_ids: None = None

    def produce(self, record: Record, slot: TxSlot, *, partition: int | None = None) -> None:
        self.produced.append((record, slot))
        if not self.acknowledged(record):
            slot.pending += 1

    def poll(self, timeout: float = 0.0) -> None:
        pass

    def flush(self, timeout: float = 60.0) -> None:
        pass


class FakeReplication:
    """Hands out the given frames, then sets `stop`; records the status updates sent."""

    def __init__(self, frames: list[XLogData | Keepalive], stop: threading.Event) -> None:
        self._frames = list(frames)
        self._stop = stop
        self.started: tuple[str, list[str]] | None = None
        self.statuses: list[tuple[Lsn, Lsn | None, bool]] = []

    def start(self, slot: str, publications: list[str], *, timeout: float, messages: bool = False) -> None:
        self.started = (slot, publications)
        self.messages = messages

    def read_buffered(self) -> XLogData | Keepalive | None:
        if self._frames:
            return self._frames.pop(0)
        self._stop.set()
        return None

    def read(self, timeout: float) -> None:
        return None

    def send_status(self, flushed: Lsn, written: Lsn | None = None, *, reply: bool = False, timeout: float) -> None:
        self.statuses.append((flushed, written, reply))


class FakeConnection:
    """Answers `slot_info`'s query with a slot confirmed at 0/100."""

    def execute(self, query: Any, params: Any = None) -> FakeConnection:
        return self

    def fetchone(self) -> tuple[Any, ...]:
        return ("slot", "pgoutput", "db", True, 7, "0/100", "0/50", "reserved", 0)


class FakeLag:
    def read(self, timeout: float) -> int:
        return 1234


class IdentityChain:
    def __len__(self) -> int:
        return 0

    def apply(self, record: Record) -> list[Record]:
        return [record]


def config(**changes: Any) -> PostgresSourceConfig:
    return PostgresSourceConfig.model_validate(
        {"dsn": "dbname=x", "topic_prefix": "p", "slot": {"name": "slot"}, "publication": {"name": "pub"},
         "receive_timeout_s": 30.0, **changes}
    )  # fmt: skip


def xlog(lsn: int, payload: bytes) -> XLogData:
    return XLogData(lsn, lsn, 0, payload)


def run_stream(
    frames: list[XLogData | Keepalive], delivery: FakeDelivery, incremental: Any = None, **changes: Any
) -> tuple[Streamer, FakeReplication, SourceStatus]:
    stop = threading.Event()
    repl = FakeReplication(frames, stop)
    status = SourceStatus(RetryBudget(None))
    streamer = Streamer(
        config(**changes),
        conn=FakeConnection(),  # type: ignore[arg-type]
        repl=repl,  # type: ignore[arg-type]
        factory=FakeFactory(),  # type: ignore[arg-type]
        delivery=delivery,  # type: ignore[arg-type]
        output=RecordOutput(IdentityChain(), delivery),  # type: ignore[arg-type]
        status=status,
        lag=FakeLag(),  # type: ignore[arg-type]
        heartbeat=None,
        counts={},
        stop=stop,
        incremental=incremental,
    )
    streamer.stream()
    return streamer, repl, status


# --- streaming ------------------------------------------------------------------------------------------


def test_changes_are_produced_in_their_transaction_slot_with_ordinals_and_commit_coordinates() -> None:
    delivery = FakeDelivery()
    frames = [
        xlog(0x150, relation(5)),
        xlog(0x160, begin(0x1A0, 77)),
        xlog(0x170, insert(5, "1")),
        xlog(0x180, insert(5, "2")),
        xlog(0x1A0, commit(0x1A0, 0x1B0)),
    ]
    streamer, repl, status = run_stream(frames, delivery)
    assert repl.started == ("slot", ["pub"])
    assert [r.key for r, _ in delivery.produced] == ["1", "2"]
    first, second = (r.value for r, _ in delivery.produced)
    assert first == {"lsn": 0x170, "commit_lsn": 0x1A0, "ordinal": 0, "xid": 77, "commit_ms": first["commit_ms"]}
    assert second["ordinal"] == 1 and second["lsn"] == 0x180
    assert delivery.produced[0][1] is delivery.produced[1][1]
    # Everything acknowledged: the clean stop confirms the transaction's end.
    assert streamer.position == StreamPosition(Lsn(0x1B0), Lsn(0x1B0))
    assert repl.statuses[-1] == (Lsn(0x1B0), Lsn(0x1B0), False)
    stats = status.stats()
    assert stats["confirmed_flush_lsn"] == "0/1B0" and stats["lag_bytes"] == 1234
    assert not status.is_ready  # not ready once the stream ended


def test_nothing_unacknowledged_is_confirmed() -> None:
    delivery = FakeDelivery(acknowledged=lambda record: record.key != "2")
    frames = [
        xlog(0x150, relation(5)),
        xlog(0x160, begin(0x1A0, 1)), xlog(0x170, insert(5, "1")), xlog(0x1A0, commit(0x1A0, 0x1B0)),
        xlog(0x1C0, begin(0x1E0, 2)), xlog(0x1D0, insert(5, "2")), xlog(0x1E0, commit(0x1E0, 0x1F0)),
        xlog(0x200, begin(0x220, 3)), xlog(0x210, insert(5, "3")), xlog(0x220, commit(0x220, 0x230)),
        Keepalive(0x300, 0, False),
    ]  # fmt: skip
    streamer, repl, _ = run_stream(frames, delivery)
    # The second transaction is not acknowledged: neither it nor the third (acknowledged) may be confirmed,
    # and the server's keepalive position does not count while records are in flight.
    assert streamer.position.confirmed == Lsn(0x1B0)
    assert streamer.position.received == Lsn(0x230) and streamer.position.server_end == Lsn(0x300)
    assert all(flushed <= Lsn(0x1B0) for flushed, _, _ in repl.statuses)
    assert repl.statuses[-1] == (Lsn(0x1B0), Lsn(0x230), False)


def test_quiet_stream_confirms_up_to_the_servers_keepalive_position() -> None:
    delivery = FakeDelivery()
    frames = [
        xlog(0x150, relation(5)),
        xlog(0x160, begin(0x1A0, 1)), xlog(0x170, insert(5, "1")), xlog(0x1A0, commit(0x1A0, 0x1B0)),
        Keepalive(0x400, 0, True),
    ]  # fmt: skip
    streamer, repl, _ = run_stream(frames, delivery)
    # The keepalive asked for a reply: answered at once, confirming the server position (nothing in flight).
    assert (Lsn(0x400), Lsn(0x400), False) in repl.statuses
    assert streamer.position.confirmed == Lsn(0x400)


def test_truncate_takes_one_ordinal_per_table_and_is_produced_only_when_configured() -> None:
    frames = [
        xlog(0x150, relation(5)), xlog(0x151, relation(6)),
        xlog(0x160, begin(0x1A0, 1)), xlog(0x170, truncate(5, 6)), xlog(0x180, insert(5, "1")),
        xlog(0x1A0, commit(0x1A0, 0x1B0)),
    ]  # fmt: skip
    delivery = FakeDelivery()
    run_stream(frames, delivery)
    assert [r.value["truncate"]["ordinal"] for r, _ in delivery.produced[:2]] == [0, 1]
    assert delivery.produced[2][0].value["ordinal"] == 2
    quiet = FakeDelivery()
    run_stream(frames, quiet, emit_truncate=False)
    assert [r.key for r, _ in quiet.produced] == ["1"] and quiet.produced[0][0].value["ordinal"] == 2


class FakeIncremental:
    """`IncrementalSnapshots` as the streamer sees it: relation 9 is the signal table, `public.t` is watched."""

    watching = frozenset({"public.t"})

    def __init__(self) -> None:
        self.signal_relation: int | None = None
        self.calls: list[tuple[str, Any]] = []

    def take_relation(self, relation: Relation) -> bool:
        if relation.relation_id != 9:
            return False
        self.signal_relation = 9
        return True

    def signal(self, message: Any) -> None:
        self.calls.append(("signal", message.new))

    def changed(self, table_name: str, changes: Any) -> None:
        self.calls.append(("changed", (table_name, [c.key for c in changes])))

    def truncated(self, table_name: str) -> None:
        self.calls.append(("truncated", table_name))

    def committed(self, xid: int) -> None:
        self.calls.append(("committed", xid))

    def message(self, message: Any, lsn: int) -> None:
        self.calls.append(("message", (message.prefix, message.content)))

    def tick(self) -> bool:
        return False


def logical_message(lsn: int, prefix: str, content: bytes) -> bytes:
    return b"M" + struct.pack("!BQ", 0, lsn) + cstr(prefix) + struct.pack("!I", len(content)) + content


def test_signals_watched_changes_commits_and_watermarks_reach_the_incremental_snapshot() -> None:
    delivery = FakeDelivery()
    incremental = FakeIncremental()
    frames = [
        xlog(0x150, relation(5)), xlog(0x151, relation(9)),
        xlog(0x160, begin(0x1A0, 77)), xlog(0x170, insert(9, "s-1")), xlog(0x180, insert(5, "1")),
        xlog(0x190, truncate(5)), xlog(0x1A0, commit(0x1A0, 0x1B0)),
        xlog(0x1C0, logical_message(0x1C0, "cdc-incremental-snapshot", b"slot/w/low")),
    ]  # fmt: skip
    _, repl, _ = run_stream(frames, delivery, incremental)
    assert repl.messages  # logical messages are asked for
    assert incremental.calls == [
        ("signal", ("s-1",)), ("changed", ("public.t", ["1"])), ("truncated", "public.t"), ("committed", 77),
        ("message", ("cdc-incremental-snapshot", b"slot/w/low")),
    ]
    # The signal is no event, yet takes its ordinal like any change of the transaction.
    assert [(r.key, r.value.get("ordinal")) for r, _ in delivery.produced] == [("1", 1), (None, None)]

"""The source's own orchestration over small doubles of one run's parts: the order of a run's steps, what each
slot plan creates, drops and records, freeing a slot held by a lost connection or another process, and the
retry loop with its budget. The real `PostgresSource`, `decide`, `SourceStatus`, `RetryBudget` and
`slots.wait_until_free` run; the databases, Kafka, the snapshotter and the streamer are doubles."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
import pytest

from core.checks import Problem
from core.delivery import AckTracker, TxSlot
from core.errors import ConnectorError, FatalError, PrerequisiteError, RetriableError, RetryBudgetConfig
from core.kafka import KafkaConfig
from core.positions import Lsn
from core.records import Record
from schemas.registry import SchemaRegistryConfig
from sources.postgres.config import PostgresSourceConfig
from sources.postgres.replication import CreatedSlot, SystemInfo
from sources.postgres.selection import TableRef
from sources.postgres.slots import SlotInfo, SlotInUseError, SlotLostError, SlotState, wait_until_free
from sources.postgres.source import PostgresSource
from sources.postgres.status import SourceStatus

pytestmark = pytest.mark.unit

SLOT = "slot"
OURS = 4242
"""The backend pid of the double's replication connection."""


# --- doubles --------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeStop(threading.Event):
    """A stop event whose waits return at once (advancing the clock) and record how long they were asked to
    wait; `stop_after` sets it on that many waits. A run that keeps waiting fails the test instead of hanging."""

    def __init__(self, clock: FakeClock, *, stop_after: int | None = None) -> None:
        super().__init__()
        self.clock = clock
        self.waits: list[float] = []
        self._stop_after = stop_after

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None
        self.waits.append(timeout)
        assert len(self.waits) <= 50, "the run keeps waiting: it would never end"
        self.clock.now += timeout
        if self._stop_after is not None and len(self.waits) >= self._stop_after:
            self.set()
        return self.is_set()


def slot(*, holder: int | None = None, confirmed: int = 0x64) -> SlotInfo:
    return SlotInfo(
        name=SLOT, plugin="pgoutput", database="db", active=holder is not None, active_pid=holder,
        confirmed_flush=Lsn(confirmed), restart_lsn=Lsn(0x10), wal_status="reserved", lag_bytes=0,
    )  # fmt: skip


def recorded(snapshot_state: str) -> SlotState:
    return SlotState(SLOT, Lsn(0x50), snapshot_state, {})


class SlotRows:
    """The connection `slots.wait_until_free` reads the slot through: answers its `slot_info` query."""

    def __init__(self, db: FakeDatabase) -> None:
        self._db = db

    def execute(self, query: Any, params: Any = None) -> SlotRows:
        return self

    def fetchone(self) -> tuple[Any, ...] | None:
        info = self._db.slot()
        if info is None:
            return None
        return (info.name, info.plugin, info.database, info.active, info.active_pid, str(info.confirmed_flush),
                str(info.restart_lsn), info.wal_status, info.lag_bytes)  # fmt: skip


@dataclass
class FakeDatabase:
    """The source database: its slot, our record of it and the prerequisite checks' answers.

    `held_for` is how many more looks at the slot still see its holder (None: until the holder is ended).
    """

    calls: list[str]
    info: SlotInfo | None = None
    state: SlotState | None = None
    server_problems: list[Problem] = field(default_factory=list)
    table_problems: list[Problem] = field(default_factory=list)
    tables: list[TableRef] = field(default_factory=lambda: [TableRef("public", "t")])
    keyless: list[TableRef] = field(default_factory=list)
    held_for: int | None = None
    may_end_backends: bool = True
    walsender_lingers: bool = False
    """Closing our replication connection does not free the slot: the server keeps the lost walsender."""

    def check_server(self) -> list[Problem]:
        self.calls.append("check_server")
        return list(self.server_problems)

    def resolve_tables(self) -> list[TableRef]:
        self.calls.append("resolve_tables")
        return list(self.tables)

    def admit_tables(self, candidates: list[TableRef]) -> list[TableRef]:
        self.calls.append("admit_tables")
        return [t for t in candidates if t not in self.keyless]

    def sync_publication(self, tables: list[TableRef]) -> list[TableRef]:
        self.calls.append(f"sync_publication({', '.join(map(str, tables))})")
        return tables

    def check_tables(self, tables: list[TableRef]) -> list[Problem]:
        self.calls.append("check_tables")
        return list(self.table_problems)

    def ensure_state(self) -> None:
        self.calls.append("ensure_state")

    def recorded(self) -> SlotState | None:
        return self.state

    def record(self, consistent_point: Lsn, snapshot_state: str) -> None:
        self.calls.append(f"record({consistent_point}, {snapshot_state})")
        self.state = SlotState(SLOT, consistent_point, snapshot_state, {})

    def slot(self) -> SlotInfo | None:
        if self.info is not None and self.info.active and self.held_for is not None:
            if self.held_for == 0:
                self.release()
            else:
                self.held_for -= 1
        return self.info

    def release(self) -> None:
        assert self.info is not None
        self.info = replace(self.info, active=False, active_pid=None)

    def end_backend(self, pid: int) -> None:
        self.calls.append(f"end_backend({pid})")
        if not self.may_end_backends:
            raise psycopg.errors.InsufficientPrivilege("must be a superuser to terminate this process")
        if self.info is not None and self.info.active_pid == pid:
            self.release()

    def wait_until_free(self, *, on_conflict: str, stop: threading.Event, poll_s: float) -> bool:
        self.calls.append(f"wait_until_free({on_conflict}, {poll_s})")
        return wait_until_free(SlotRows(self), SLOT, on_conflict=on_conflict, stop=stop, poll_s=poll_s)  # type: ignore[arg-type]

    def drop_slot(self) -> None:
        assert self.info is not None, "dropping a slot that does not exist"
        assert not self.info.active or self.info.active_pid is None, "dropping a slot in use"
        self.calls.append("drop_slot")
        self.info = None

    def close(self) -> None:
        self.calls.append("close database")


@dataclass
class FakeReplication:
    calls: list[str]
    db: FakeDatabase
    backend_pid: int = OURS

    def identify_system(self) -> SystemInfo:
        self.calls.append("identify_system")
        return SystemInfo("7000", 1, Lsn(0x200), "db")

    def send_status(self, flushed: Lsn) -> None:
        self.calls.append(f"send_status({flushed})")

    def close(self) -> None:
        self.calls.append("close replication")
        info = self.db.info
        if info is not None and info.active_pid == self.backend_pid and not self.db.walsender_lingers:
            self.db.release()


@dataclass
class FakeDelivery:
    """Kafka: what was produced before `flush` is acknowledged by it."""

    calls: list[str]
    tracker: AckTracker = field(default_factory=AckTracker)
    in_flight: list[TxSlot] = field(default_factory=list)

    def produced(self, position: int) -> None:
        slot = self.tracker.open()
        slot.pending = 1
        self.tracker.close(slot, position)
        self.in_flight.append(slot)

    def ensure_topics(self, topics: Iterable[str]) -> None:
        self.calls.append(f"ensure_topics({', '.join(topics)})")

    def flush(self) -> None:
        self.calls.append("flush")
        for slot in self.in_flight:
            slot.pending = 0
        self.in_flight.clear()

    def close(self) -> None:
        self.calls.append("close delivery")


Step = Callable[["FakeParts"], None]
"""What a snapshot or a stream does in one run (raise, acknowledge, set stop, report progress...)."""


def streams_until_stopped(parts: FakeParts) -> None:
    parts.status.streaming()
    parts.stop.set()


@dataclass
class World:
    """Everything the runs of one source share: the database, the log of calls and what each run's stream does
    (one `Step` per run, consumed in order; the last one repeats)."""

    db: FakeDatabase
    calls: list[str]
    streams: list[Step] = field(default_factory=lambda: [streams_until_stopped])
    on_snapshot: Step | None = None
    produced: int = 0
    """The position up to which the run's records are in flight to Kafka when it starts (0: none)."""
    parts: list[FakeParts] = field(default_factory=list)
    problems_seen: list[ConnectorError | None] = field(default_factory=list)
    """`SourceStatus.budget.problem` (what `problem()` returns) as each stream found it when it started."""
    stop_after: int | None = None
    clock: FakeClock = field(default_factory=FakeClock)
    stop: FakeStop = field(init=False)

    def __post_init__(self) -> None:
        self.stop = FakeStop(self.clock, stop_after=self.stop_after)

    def build(self, status: SourceStatus) -> FakeParts:
        parts = FakeParts(self, status)
        self.parts.append(parts)
        return parts


class FakeParts:
    """`RunParts` over the doubles above; records each step in the world's log."""

    def __init__(self, world: World, status: SourceStatus) -> None:
        self.world = world
        self.status = status
        self.stop = world.stop
        self.calls = world.calls
        self.db = world.db

    def database(self) -> FakeDatabase:
        self.calls.append("open database")
        return self.db

    def replication(self) -> FakeReplication:
        self.calls.append("open replication")
        return FakeReplication(self.calls, self.db)

    def delivery(self, system: SystemInfo) -> FakeDelivery:
        self.calls.append("open delivery")
        delivery = FakeDelivery(self.calls)
        if self.world.produced:
            delivery.produced(self.world.produced)
        return delivery

    def eager_topics(self, tables: list[TableRef]) -> list[str]:
        return [f"p.{t}" for t in tables]

    def create_slot(self, *, snapshot: bool) -> CreatedSlot:
        self.calls.append(f"create_slot(snapshot={snapshot})")
        self.db.info = slot(holder=OURS, confirmed=0x300)
        return CreatedSlot(SLOT, Lsn(0x300), "00000003-1" if snapshot else None)

    def snapshot(self, created: CreatedSlot, tables: list[TableRef], stop: threading.Event) -> None:
        assert stop is self.stop
        self.calls.append(f"snapshot({created.snapshot_name}: {', '.join(map(str, tables))})")
        if self.world.on_snapshot is not None:
            self.world.on_snapshot(self)

    def stream(self, stop: threading.Event) -> None:
        assert stop is self.stop
        self.calls.append("stream")
        self.world.problems_seen.append(self.status.budget.problem)
        streams = self.world.streams
        step = streams.pop(0) if len(streams) > 1 else streams[0]
        step(self)


def config(**changes: Any) -> PostgresSourceConfig:
    return PostgresSourceConfig.model_validate(
        {"dsn": "dbname=x", "topic_prefix": "p", "slot": {"name": SLOT}, "publication": {"name": "pub"}, **changes}
    )


def source(world: World, *, give_up_after_s: float | None = 300.0, **changes: Any) -> PostgresSource:
    return PostgresSource(
        config(**changes),
        name="c",
        kafka=KafkaConfig(bootstrap_servers="kafka:9092"),
        registry=SchemaRegistryConfig(url="http://registry:8080"),
        retry=RetryBudgetConfig(give_up_after_s=give_up_after_s),
        chain=IdentityChain(),
        parts=world.build,
        clock=world.clock,
    )


class IdentityChain:
    def __len__(self) -> int:
        return 0

    def apply(self, record: Record) -> list[Record]:
        return [record]


def new_world(*, stop_after: int | None = None, **db: Any) -> World:
    calls: list[str] = []
    return World(FakeDatabase(calls, **db), calls, stop_after=stop_after)


def before(calls: list[str], *steps: str) -> bool:
    """The steps occur in `calls` in this order (each at its first occurrence after the previous one)."""
    position = -1
    for step in steps:
        try:
            position = calls.index(step, position + 1)
        except ValueError:
            return False
    return True


# --- one run, step by step ------------------------------------------------------------------------------


def test_first_start_checks_then_creates_the_slot_takes_the_snapshot_and_streams() -> None:
    world = new_world()
    source(world).run(world.stop)
    assert world.calls == [
        "open database",
        "check_server", "resolve_tables", "admit_tables", "sync_publication(public.t)", "check_tables",
        "ensure_state",
        "wait_until_free(fail, 2.0)",
        "open replication", "identify_system",
        "open delivery", "ensure_topics(p.public.t)",
        "create_slot(snapshot=True)",
        "snapshot(00000003-1: public.t)",
        "stream",
        "close replication", "close delivery", "close database",
    ]  # fmt: skip


@pytest.mark.parametrize("where", ["server", "table"])
def test_prerequisite_problems_stop_the_run_before_the_slot_is_touched(where: str) -> None:
    problem = Problem("source", "wal_level is replica", "set wal_level = logical")
    world = new_world(info=slot())
    setattr(world.db, f"{where}_problems", [problem])
    with pytest.raises(PrerequisiteError, match="wal_level is replica -> fix: set wal_level = logical"):
        source(world).run(world.stop)
    assert world.calls[-1] == "close database"
    assert not any(
        c.startswith(("ensure_state", "wait_until_free", "open replication", "drop", "create")) for c in world.calls
    )
    assert len(world.parts) == 1  # fatal: no second attempt


def test_tables_are_admitted_before_the_publication_is_touched() -> None:
    nopk = TableRef("public", "nopk")
    world = new_world(tables=[nopk, TableRef("public", "t")], keyless=[nopk])
    source(world).run(world.stop)
    assert before(world.calls, "resolve_tables", "admit_tables", "sync_publication(public.t)")


def test_existing_publication_is_synced_without_resolving_tables() -> None:
    world = new_world()
    source(world, publication={"name": "pub", "mode": "existing"}).run(world.stop)
    assert "resolve_tables" not in world.calls
    assert "sync_publication()" in world.calls


# --- the slot plan, carried out ------------------------------------------------------------------------


def test_the_slot_of_an_interrupted_snapshot_is_dropped_then_created_with_a_new_snapshot() -> None:
    world = new_world(info=slot(), state=recorded("running"))
    source(world).run(world.stop)
    assert before(
        world.calls,
        "open replication",
        "drop_slot",
        "create_slot(snapshot=True)",
        "snapshot(00000003-1: public.t)",
        "stream",
    )


def test_a_slot_never_recorded_is_adopted_at_its_confirmed_position_and_streamed_without_snapshot() -> None:
    world = new_world(info=slot(confirmed=0x1234))
    source(world).run(world.stop)
    assert before(world.calls, "open delivery", "record(0/1234, skipped)", "stream")
    assert not any(c.startswith(("create_slot", "snapshot", "drop_slot")) for c in world.calls)


@pytest.mark.parametrize("state", ["done", "skipped"])
def test_a_recorded_slot_is_resumed_streaming_only(state: str) -> None:
    world = new_world(info=slot(), state=recorded(state))
    source(world).run(world.stop)
    assert "stream" in world.calls
    assert not any(c.startswith(("create_slot", "snapshot", "drop_slot", "record")) for c in world.calls)


def test_a_missing_slot_is_recreated_with_a_new_snapshot_when_needed() -> None:
    world = new_world(state=recorded("done"))
    source(world, snapshot={"mode": "when_needed"}).run(world.stop)
    assert before(world.calls, "create_slot(snapshot=True)", "snapshot(00000003-1: public.t)", "stream")
    assert "drop_slot" not in world.calls


def test_a_missing_slot_is_fatal_without_when_needed_and_nothing_is_created() -> None:
    world = new_world(state=recorded("done"))
    with pytest.raises(SlotLostError):
        source(world).run(world.stop)
    assert not any(c.startswith(("create_slot", "snapshot", "stream")) for c in world.calls)
    assert before(world.calls, "close replication", "close delivery", "close database")


def test_never_creates_the_slot_without_a_snapshot_and_streams() -> None:
    world = new_world()
    source(world, snapshot={"mode": "never"}).run(world.stop)
    assert before(world.calls, "create_slot(snapshot=False)", "stream")
    assert not any(c.startswith("snapshot") for c in world.calls)


def test_initial_only_takes_the_snapshot_then_drops_the_slot_without_streaming() -> None:
    world = new_world()
    source(world, snapshot={"mode": "initial_only"}).run(world.stop)
    # Kafka holds the snapshot before the slot goes; the slot can only be dropped once its connection is closed.
    assert before(
        world.calls,
        "create_slot(snapshot=True)",
        "snapshot(00000003-1: public.t)",
        "flush",
        "close replication",
        "drop_slot",
    )
    assert "stream" not in world.calls
    assert world.db.info is None


def test_initial_only_after_its_snapshot_does_nothing() -> None:
    world = new_world(state=recorded("done"))
    source(world, snapshot={"mode": "initial_only"}).run(world.stop)
    assert "close replication" in world.calls
    assert not any(c.startswith(("create_slot", "snapshot", "stream", "drop_slot")) for c in world.calls)


def test_initial_only_drops_a_slot_left_behind_by_a_stop_after_its_snapshot() -> None:
    world = new_world(info=slot(), state=recorded("done"))
    source(world, snapshot={"mode": "initial_only"}).run(world.stop)
    assert before(world.calls, "close replication", "drop_slot")
    assert not any(c.startswith(("create_slot", "snapshot", "stream")) for c in world.calls)


@pytest.mark.parametrize("mode", ["initial", "initial_only"])
def test_a_stop_during_the_snapshot_waits_for_kafka_confirms_what_it_acknowledged_and_goes_no_further(
    mode: str,
) -> None:
    world = new_world()
    world.produced = 0x280
    world.on_snapshot = lambda parts: parts.stop.set()
    source(world, snapshot={"mode": mode}).run(world.stop)
    assert before(world.calls, "snapshot(00000003-1: public.t)", "flush", "send_status(0/280)", "close replication")
    assert "stream" not in world.calls and "drop_slot" not in world.calls


def test_a_stop_during_the_snapshot_with_nothing_acknowledged_confirms_nothing() -> None:
    world = new_world()
    world.on_snapshot = lambda parts: parts.stop.set()
    source(world).run(world.stop)
    assert "flush" in world.calls
    assert not any(c.startswith("send_status") for c in world.calls)


# --- freeing the slot -----------------------------------------------------------------------------------


def lose_the_stream(parts: FakeParts) -> None:
    """The stream breaks while the server still holds the slot for our walsender."""
    parts.db.info = slot(holder=OURS)
    parts.db.walsender_lingers = True
    raise RetriableError("replication connection lost")


def test_a_slot_still_held_by_our_lost_connection_is_freed_by_ending_it_then_waiting() -> None:
    world = new_world()
    world.streams = [lose_the_stream, streams_until_stopped]
    source(world).run(world.stop)
    second_run = world.calls[world.calls.index("stream") + 1 :]
    assert before(
        second_run,
        "ensure_state",
        f"end_backend({OURS})",
        "wait_until_free(wait, 0.2)",
        "wait_until_free(fail, 2.0)",
        "open replication",
        "stream",
    )
    assert world.stop.waits == [1.0]  # ending it freed the slot at once
    assert world.calls.count("end_backend(4242)") == 1


def test_without_the_privilege_to_end_our_lost_connection_the_run_waits_for_the_server_to_let_go() -> None:
    world = new_world(may_end_backends=False)

    def lose_and_linger(parts: FakeParts) -> None:
        parts.db.held_for = 3
        lose_the_stream(parts)

    world.streams = [lose_and_linger, streams_until_stopped]
    source(world).run(world.stop)
    assert world.stop.waits == [1.0, 0.2, 0.2]  # the retry's backoff, then the polls until the server let go
    calls = world.calls
    assert before(calls, "stream", f"end_backend({OURS})", "wait_until_free(wait, 0.2)", "open replication", "stream")


def test_a_slot_held_by_another_process_fails_at_once_with_on_conflict_fail() -> None:
    world = new_world(info=slot(holder=999), held_for=None)
    with pytest.raises(SlotInUseError, match="pid 999"):
        source(world).run(world.stop)
    assert "end_backend(999)" not in world.calls
    assert "open replication" not in world.calls


def test_a_slot_held_by_another_process_is_waited_for_as_a_standby_with_on_conflict_wait() -> None:
    world = new_world(info=slot(holder=999), state=recorded("done"), held_for=2)
    source(world, slot={"name": SLOT, "on_conflict": "wait"}).run(world.stop)
    assert world.stop.waits == [2.0, 2.0]
    assert "end_backend(999)" not in world.calls
    assert before(world.calls, "wait_until_free(wait, 2.0)", "open replication", "stream")


def test_a_stop_while_waiting_as_a_standby_ends_the_run_before_replication() -> None:
    world = new_world(stop_after=1, info=slot(holder=999), held_for=None)
    src = source(world, slot={"name": SLOT, "on_conflict": "wait"})
    src.run(world.stop)
    assert "open replication" not in world.calls
    assert world.calls[-1] == "close database"
    assert src.status()["state"] == "stopped"


# --- the retry loop -------------------------------------------------------------------------------------


def fails(error: Exception) -> Step:
    def step(parts: FakeParts) -> None:
        raise error

    return step


def test_retriable_failures_are_retried_with_backoff_reported_then_cleared_by_progress() -> None:
    world = new_world(info=slot(), state=recorded("done"))
    lost = ConnectionResetError("connection reset by peer")
    world.streams = [fails(lost), fails(RetriableError("Kafka: broker transport failure")), streams_until_stopped]
    src = source(world)
    src.run(world.stop)
    assert len(world.parts) == 3 and world.stop.waits == [1.0, 2.0]
    first, second, third = world.problems_seen
    assert first is None
    assert isinstance(second, ConnectorError) and second.retriable and second.__cause__ is lost  # classified
    assert str(third) == "Kafka: broker transport failure"
    assert src.problem() is None  # streaming is progress


def test_a_retriable_failure_stays_reported_while_retrying() -> None:
    world = new_world(stop_after=1, info=slot(), state=recorded("done"))
    world.streams = [fails(RetriableError("replication connection lost"))]
    src = source(world)
    src.run(world.stop)  # the stop during the retry's wait ends the run cleanly
    assert len(world.parts) == 1
    assert str(src.problem()) == "replication connection lost"
    assert not src.ready() and src.status()["state"] == "stopped"


def test_a_fatal_error_stops_at_once() -> None:
    world = new_world(info=slot(), state=recorded("done"))
    world.streams = [fails(FatalError("schema of public.t is incompatible")), streams_until_stopped]
    with pytest.raises(FatalError, match="incompatible"):
        source(world).run(world.stop)
    assert len(world.parts) == 1 and world.stop.waits == []


def test_a_foreign_fatal_error_is_raised_classified() -> None:
    world = new_world(info=slot(), state=recorded("done"))
    bug = ValueError("no such column")
    world.streams = [fails(bug)]
    with pytest.raises(FatalError, match="unexpected ValueError: no such column") as caught:
        source(world).run(world.stop)
    assert caught.value.__cause__ is bug
    assert len(world.parts) == 1


def test_the_budget_running_out_stops_with_the_classified_error() -> None:
    world = new_world(info=slot(), state=recorded("done"))
    world.streams = [fails(RetriableError("replication connection lost"))]
    with pytest.raises(FatalError) as caught:
        source(world, give_up_after_s=5).run(world.stop)
    # Failures at 0, 1, 3 and 7 seconds: the fourth is past the budget of 5.
    assert world.stop.waits == [1.0, 2.0, 4.0] and len(world.parts) == 4
    assert str(caught.value).startswith("gave up after 7s of retrying: replication connection lost")
    assert "retry.give_up_after_s: 5" in str(caught.value)
    assert isinstance(caught.value.__cause__, RetriableError)


def test_the_backoff_doubles_up_to_thirty_seconds_and_restarts_after_a_long_run() -> None:
    world = new_world(info=slot(), state=recorded("done"))

    def long_run_then_lost(parts: FakeParts) -> None:
        world.clock.now += 61
        raise RetriableError("replication connection lost")

    lost = fails(RetriableError("replication connection lost"))
    world.streams = [lost] * 6 + [long_run_then_lost, lost, streams_until_stopped]
    source(world, give_up_after_s=None).run(world.stop)
    assert world.stop.waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 1.0, 2.0]

"""The sink's batch loop over small doubles: a consumer with confluent-kafka's interface, a destination, a
dead-letter topic and a registry decoder. The real `ChangeConsumer`, `ChangeDecoder`, `RetryPolicy` and
`BatchLoop` run: batching, rebalances, retry vs poison vs fatal routing, the commit order and its fault point."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from core.errors import Endpoints, PoisonMessageError, RetryBudget
from core.kafka import KafkaConfig
from core.records import AvroSchema
from sinks.postgres.apply import ApplyResult
from sinks.postgres.changes import Change
from sinks.postgres.config import PostgresSinkConfig
from sinks.postgres.consumer import ChangeConsumer, PartitionProgress
from sinks.postgres.dead_letter import DeadLetter
from sinks.postgres.decoding import ChangeDecoder
from sinks.postgres.loop import BatchLoop
from sinks.postgres.retry import RetryPolicy
from tests.support.running import RunThread
from transforms.base import TransformChain

pytestmark = pytest.mark.unit

TOPIC = "p.s.t"
ROW = {"type": "record", "name": "Value", "namespace": TOPIC,
       "fields": [{"name": "id", "type": "int", "pg.type": "integer"}]}
ENVELOPE = AvroSchema.of({
    "type": "record", "name": "Envelope", "namespace": TOPIC,
    "fields": [
        {"name": "before", "type": ["null", ROW]},
        {"name": "after", "type": ["null", f"{TOPIC}.Value"]},
        {"name": "source", "type": {"type": "record", "name": "Source", "fields": []}},
        {"name": "op", "type": "string"},
        {"name": "change_id", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "unchanged_toast", "type": {"type": "array", "items": "string"}},
    ],
})
KEY = AvroSchema.of({"type": "record", "name": "Key", "namespace": TOPIC,
                     "fields": [{"name": "id", "type": "int", "pg.type": "integer"}]})


# -- doubles --------------------------------------------------------------------------------------------------


class FakeMessage:
    """A consumed message, as confluent-kafka's `Message` answers."""

    def __init__(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None) -> None:
        self._at = (topic, partition, offset)
        self._key, self._value = key, value

    def topic(self) -> str:
        return self._at[0]

    def partition(self) -> int:
        return self._at[1]

    def offset(self) -> int:
        return self._at[2]

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, bytes]] | None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (0, -1)

    def error(self) -> None:
        return None


def message(partition: int, offset: int, *, value: bytes | None = None) -> FakeMessage:
    """The upsert of row `offset` at partition `partition` (LSN grows with the offset), or a given raw value."""
    if value is None:
        lsn = 1000 * (partition + 1) + offset
        envelope = {"before": None, "after": {"id": offset}, "op": "c", "change_id": str(uuid.uuid4()),
                    "source": {"schema": "s", "table": "t", "lsn": lsn, "commit_lsn": lsn + 1},
                    "unchanged_toast": []}
        value = json.dumps(envelope).encode()
    return FakeMessage(TOPIC, partition, offset, json.dumps({"id": offset}).encode(), value)


class FakeDecoder:
    """`schemas.serde.Decoder`'s interface over JSON: envelopes and keys, anything else is unreadable."""

    def decode(self, data: bytes | None) -> tuple[Any, AvroSchema, int]:
        try:
            value = json.loads(data or b"")
        except ValueError:
            raise PoisonMessageError("unknown magic byte") from None
        return (value, ENVELOPE, 2) if "op" in value else (value, KEY, 1)


class Rebalance:
    def __init__(self, kind: str, partitions: Sequence[int]) -> None:
        self.kind = kind
        self.partitions = [TopicPartition(TOPIC, p) for p in partitions]


class FakeKafka:
    """confluent-kafka's `Consumer` methods the sink uses. `script` is what successive `consume` calls deliver:
    a list of messages, or a `Rebalance` (whose callback runs inside that call, as librdkafka serves them)."""

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.script: list[list[FakeMessage] | Rebalance] = []
        self.settings: dict[str, Any] = {}
        self.assigned: dict[tuple[str, int], int] = {}
        self.committed: list[dict[tuple[str, int], int]] = []
        self.callbacks: dict[str, Callable[..., None]] = {}
        self.closed = False
        self.lock = threading.Lock()

    def subscribe(self, topics: list[str], *, on_assign: Callable[..., None], on_revoke: Callable[..., None],
                  on_lost: Callable[..., None]) -> None:
        self.topics = topics
        self.callbacks = {"assign": on_assign, "revoke": on_revoke}

    def assign(self, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            self.assigned[(p.topic, p.partition)] = p.offset

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        with self.lock:
            item = self.script.pop(0) if self.script else None
        if item is None:
            time.sleep(min(timeout, 0.01))
            return []
        if isinstance(item, Rebalance):
            self.callbacks[item.kind](self, item.partitions)
            if item.kind == "revoke":
                for p in item.partitions:
                    self.assigned.pop((p.topic, p.partition), None)
            done = {"assign": "assigned", "revoke": "revoked"}[item.kind]
            self.events.append(f"{done} {sorted(p.partition for p in item.partitions)}")
            return []
        if len(item) > num_messages:
            with self.lock:
                self.script.insert(0, item[num_messages:])
            item = item[:num_messages]
        return item

    def deliver(self, *items: list[FakeMessage] | Rebalance) -> None:
        with self.lock:
            self.script.extend(items)

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> None:
        done = {(p.topic, p.partition): p.offset for p in offsets}
        self.committed.append(done)
        self.events.append(f"kafka commit {done}")

    def get_watermark_offsets(self, partition: TopicPartition, cached: bool = False) -> tuple[int, int]:
        return (0, 100)

    def list_topics(self, timeout: float = -1) -> None:
        return None

    def close(self) -> None:
        self.closed = True


class FakeDestination:
    """The destination: a transaction stores rows and offsets together; `failures` are raised by the next
    applies (one each); a change whose row id is in `refused` fails the transaction with a unique violation."""

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.rows: dict[int, int] = {}  # row id -> partition
        self.offsets: dict[tuple[str, int], int] = {}
        self.failures: list[Exception] = []
        self.refused: set[int] = set()
        self.attempts = 0
        self.gate = threading.Event()
        self.gate.set()

    def read_offsets(self, partitions: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int]:
        return {p: self.offsets[p] for p in partitions if p in self.offsets}

    def apply(self, changes: Sequence[Change], offsets: Mapping[tuple[str, int], int]) -> ApplyResult:
        self.attempts += 1
        self.gate.wait(10)
        if self.failures:
            raise self.failures.pop(0)
        if any(self._refuses(c) for c in changes):
            raise psycopg.errors.UniqueViolation("duplicate key")
        for change in changes:
            assert change.row is not None
            self.rows[change.row["id"]] = change.partition
        for where, offset in offsets.items():
            self.offsets[where] = max(self.offsets.get(where, 0), offset)
        self.events.append(f"db commit {dict(offsets)}")
        return ApplyResult()

    def isolate(self, changes: Sequence[Change]) -> list[tuple[Change, Exception]]:
        return [(c, psycopg.errors.UniqueViolation("duplicate key")) for c in changes if self._refuses(c)]

    def _refuses(self, change: Change) -> bool:
        return change.row is not None and change.row["id"] in self.refused


class FakeDeadLetters:
    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.published: list[DeadLetter] = []

    def publish(self, dead: Sequence[DeadLetter]) -> None:
        self.published.extend(dead)
        self.events.append(f"dead-lettered {[d.message.offset() for d in dead]}")


class Harness:
    """One `BatchLoop` over the doubles, run on a thread like the sink runs it."""

    def __init__(self, *, max_records: int = 100, max_wait_ms: int = 50, tolerance: str = "all") -> None:
        errors: dict[str, Any] = {"tolerance": tolerance}
        if tolerance == "all":
            errors["dead_letter_topic"] = "dlq"
        self.config = PostgresSinkConfig.model_validate({
            "dsn": "postgresql://x", "topics": [TOPIC], "errors": errors,
            "batch": {"max_records": max_records, "max_wait_ms": max_wait_ms},
            "retry": {"initial_backoff_ms": 1, "max_backoff_ms": 2},
        })
        self.events: list[str] = []
        self.kafka = FakeKafka(self.events)
        self.destination = FakeDestination(self.events)
        self.dead_letters = FakeDeadLetters(self.events)
        self.progress = PartitionProgress()
        self.budget = RetryBudget(None)
        self.stop = threading.Event()
        self.hook_calls: list[dict[tuple[str, int], int]] = []
        endpoints = Endpoints()
        retry = RetryPolicy(self.config.retry, self.budget, endpoints, self.stop)
        consumer = ChangeConsumer(
            self.config, KafkaConfig(bootstrap_servers="kafka:9092"), "group", progress=self.progress,
            budget=RetryBudget(None), endpoints=endpoints, client=self._client,
        )
        decoder = ChangeDecoder(FakeDecoder(), None, TransformChain(), self.config.errors, retry)
        self.loop = BatchLoop(consumer, decoder, self.destination, self.dead_letters, retry=retry,
                              errors=self.config.errors, progress=self.progress, after_db_commit=self._hook)
        self.runner = RunThread(self.loop.run, self.stop)

    def _client(self, settings: dict[str, Any]) -> FakeKafka:
        self.kafka.settings = settings
        return self.kafka

    def _hook(self) -> None:
        # What Kafka has been told when the destination has already committed.
        self.hook_calls.append(dict(self.destination.offsets))
        self.events.append("after_db_commit")

    @property
    def error(self) -> BaseException | None:
        return self.runner.error

    def start(self, *partitions: int) -> Harness:
        self.kafka.deliver(Rebalance("assign", partitions))
        self.runner.start()
        return self

    def wait(self, predicate: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 10
        while not predicate():
            assert self.error is None, self.error
            assert time.monotonic() < deadline, f"timed out waiting for {what}; events: {self.events}"
            time.sleep(0.005)

    def finish(self) -> None:
        self.stop.set()
        self.runner.thread.join(10)
        assert not self.runner.alive()


# -- tests ----------------------------------------------------------------------------------------------------


def test_batches_are_applied_in_order_with_their_offsets_then_committed_to_kafka() -> None:
    sink = Harness(max_records=3).start(0)
    sink.wait(sink.progress.ready.is_set, "the assignment")
    assert sink.kafka.assigned == {(TOPIC, 0): OFFSET_BEGINNING}  # nothing stored: `auto_offset_reset` earliest
    assert sink.kafka.settings["enable.auto.commit"] is False and sink.kafka.settings["group.id"] == "group"
    sink.kafka.deliver([message(0, i) for i in range(7)])
    sink.wait(lambda: sink.destination.offsets.get((TOPIC, 0)) == 7, "all seven applied")
    sink.wait(lambda: len(sink.kafka.committed) == 3, "the third Kafka commit")
    sink.finish()
    assert sink.error is None
    assert sorted(sink.destination.rows) == list(range(7))
    commits = [e for e in sink.events if e.startswith("db commit")]
    assert commits == [f"db commit {{('{TOPIC}', 0): {n}}}" for n in (3, 6, 7)]
    assert sink.kafka.committed == [{(TOPIC, 0): n} for n in (3, 6, 7)]
    assert sink.progress.positions == {(TOPIC, 0): 7}


def test_the_fault_point_runs_after_each_destination_commit_and_before_its_kafka_commit() -> None:
    sink = Harness(max_records=2).start(0)
    sink.kafka.deliver([message(0, i) for i in range(4)])
    sink.wait(lambda: len(sink.kafka.committed) == 2, "two Kafka commits")
    sink.finish()
    steps = [e.split(" {")[0] for e in sink.events if not e.startswith("assigned")]
    assert steps == ["db commit", "after_db_commit", "kafka commit"] * 2
    # The destination already holds each batch's offsets when the hook runs.
    assert sink.hook_calls == [{(TOPIC, 0): 2}, {(TOPIC, 0): 4}]


def test_assignment_resumes_from_the_offsets_stored_in_the_destination() -> None:
    sink = Harness()
    sink.destination.offsets[(TOPIC, 1)] = 42
    sink.start(0, 1)
    sink.wait(sink.progress.ready.is_set, "the assignment")
    sink.finish()
    assert sink.kafka.assigned == {(TOPIC, 0): OFFSET_BEGINNING, (TOPIC, 1): 42}
    assert sink.progress.positions == {(TOPIC, 1): 42}
    assert sink.progress.assigned == {(TOPIC, 0), (TOPIC, 1)}


def test_revoke_finishes_the_batch_in_flight_and_drops_buffered_messages_of_revoked_partitions() -> None:
    sink = Harness(max_wait_ms=300).start(0, 1)
    sink.wait(sink.progress.ready.is_set, "the assignment")
    # A first batch, held in the destination until the revocation has started.
    sink.destination.gate.clear()
    sink.kafka.deliver([message(0, 0), message(1, 0)])
    sink.wait(lambda: sink.destination.attempts == 1, "the first batch in flight")
    # The next batch buffers p0@1 and p1@1, then p1 is revoked before the batch closes.
    sink.kafka.deliver([message(0, 1), message(1, 1)], Rebalance("revoke", [1]))
    threading.Timer(0.05, sink.destination.gate.set).start()
    sink.wait(lambda: sink.destination.offsets.get((TOPIC, 0)) == 2, "the second batch")
    sink.finish()
    assert sink.error is None
    revoked = sink.events.index("revoked [1]")
    # The batch in flight committed (in the destination and to Kafka) before the partition went.
    assert sink.events.index(f"db commit {{('{TOPIC}', 0): 1, ('{TOPIC}', 1): 1}}") < revoked
    assert sink.events.index(f"kafka commit {{('{TOPIC}', 0): 1, ('{TOPIC}', 1): 1}}") < revoked
    # p1@1 was buffered but never applied: the next owner starts at the stored offset 1.
    assert sink.destination.offsets == {(TOPIC, 0): 2, (TOPIC, 1): 1}
    assert sink.destination.rows == {0: 1, 1: 0}  # row 1 is p0@1's (p1@1's never written)
    assert sink.progress.assigned == {(TOPIC, 0)}
    assert (TOPIC, 1) not in sink.progress.positions
    assert sink.kafka.committed[-1] == {(TOPIC, 0): 2}


def test_retriable_destination_errors_retry_the_whole_batch() -> None:
    sink = Harness().start(0)
    lost = psycopg.OperationalError("server closed the connection unexpectedly")
    sink.destination.failures = [lost, psycopg.errors.SerializationFailure("could not serialize")]
    sink.kafka.deliver([message(0, 0), message(0, 1)])
    sink.wait(lambda: sink.destination.offsets.get((TOPIC, 0)) == 2, "the batch")
    sink.finish()
    assert sink.error is None
    assert sink.destination.attempts == 3
    assert sink.dead_letters.published == []
    assert sink.budget.problem is None  # recovered: /healthz green again


def test_a_change_the_destination_refuses_is_dead_lettered_and_the_rest_applied() -> None:
    sink = Harness().start(0)
    sink.destination.refused = {1}
    sink.kafka.deliver([message(0, 0), message(0, 1), message(0, 2)])
    sink.wait(lambda: sink.destination.offsets.get((TOPIC, 0)) == 3, "the batch")
    sink.finish()
    assert sink.error is None
    [dead] = sink.dead_letters.published
    assert dead.message.offset() == 1
    assert dead.error == "UniqueViolation (SQLSTATE 23505)"
    assert sorted(sink.destination.rows) == [0, 2]
    assert sink.events.index("dead-lettered [1]") < sink.events.index(f"db commit {{('{TOPIC}', 0): 3}}")


def test_a_refused_change_stops_the_sink_with_tolerance_none() -> None:
    sink = Harness(tolerance="none").start(0)
    sink.destination.refused = {1}
    sink.kafka.deliver([message(0, 0), message(0, 1)])
    sink.wait(lambda: not sink.runner.alive(), "the sink to stop")
    assert isinstance(sink.error, PoisonMessageError)
    assert sink.error.message == f"cannot apply message {TOPIC}[0]@1: UniqueViolation (SQLSTATE 23505)"
    assert sink.destination.offsets == {}
    assert sink.kafka.committed == []


def test_an_unreadable_message_is_dead_lettered_before_its_batch_commits() -> None:
    sink = Harness().start(0)
    sink.kafka.deliver([message(0, 0), message(0, 1, value=b"\x07garbage"), message(0, 2)])
    sink.wait(lambda: sink.destination.offsets.get((TOPIC, 0)) == 3, "the batch")
    sink.finish()
    [dead] = sink.dead_letters.published
    assert dead.error == "its value: unknown magic byte"
    assert sink.events.index("dead-lettered [1]") < sink.events.index(f"db commit {{('{TOPIC}', 0): 3}}")
    assert sorted(sink.destination.rows) == [0, 2]


def test_a_fatal_destination_error_is_not_retried_and_stores_nothing() -> None:
    sink = Harness().start(0)
    sink.destination.failures = [psycopg.errors.InsufficientPrivilege("permission denied for table t")]
    sink.kafka.deliver([message(0, 0)])
    sink.wait(lambda: not sink.runner.alive(), "the sink to stop")
    assert isinstance(sink.error, psycopg.errors.InsufficientPrivilege)
    assert sink.destination.attempts == 1
    assert sink.destination.offsets == {} and sink.kafka.committed == [] and sink.hook_calls == []


def test_stopping_while_retrying_commits_nothing_and_returns() -> None:
    sink = Harness().start(0)
    sink.destination.failures = [psycopg.OperationalError("connection refused")] * 10_000
    sink.kafka.deliver([message(0, 0)])
    sink.wait(lambda: sink.destination.attempts > 2, "retries")
    assert sink.budget.problem is not None and sink.budget.problem.retriable  # /healthz red while retrying
    sink.finish()
    assert sink.error is None
    assert sink.destination.offsets == {} and sink.kafka.committed == [] and sink.hook_calls == []

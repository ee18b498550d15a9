"""The PostgreSQL sink: consume change topics, apply them idempotently, checkpoint offsets in the target.

Commit order of one batch (the only place it is written down):

1. Bad messages of the batch (`errors.tolerance: all`) are produced to the dead-letter topic and flushed
   (acknowledged by Kafka) first, so advancing past them can never lose them.
2. One destination transaction begins. Every change id of the batch goes into `cdc.applied_changes` with the
   destination table it is for; only the (change, table) pairs that were not there yet are applied (a
   redelivery, a replay, or the same change from another consumer group or cluster into the same table changes
   nothing; another pipeline into another table applies it there).
3. Row changes are applied per table in Kafka order per key: upsert for c/u/r, delete (hard or soft) for d,
   a guarded delete for t. A row is only written when the change's `(commit_lsn, lsn)` is greater than the one
   stored in the row.
4. `cdc.sink_offsets` advances to the last offset + 1 of every partition in the batch.
5. COMMIT. The batch is now applied exactly once, together with its position.
6. Then, for lag monitoring only, the offsets are committed to Kafka (asynchronously; losing this is harmless).

Resume: on partition assignment the consumer seeks to `cdc.sink_offsets` (else `auto_offset_reset`); Kafka's own
committed offsets are never read. A retriable destination error retries the whole batch from step 2 (the ledger
makes a retry after an unacknowledged commit harmless).

Batches are applied one at a time, in order, on an applier thread while the next batch is consumed and decoded.
On a rebalance the batch in flight is finished (its transaction commits whole or not at all) and buffered messages
of revoked partitions are dropped unapplied (the new owner starts from the stored offset): no batch is ever
half-applied.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import SchemaRegistryClient
from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_after_delay, stop_any, stop_when_event_set
from tenacity.wait import wait_random_exponential

from connector.config import ConnectorConfig
from core import metrics
from core.checks import Problem
from core.delivery import create_missing_topics
from core.errors import (
    ConfigError,
    ConnectorError,
    DeliveryError,
    Endpoints,
    FatalError,
    PoisonMessageError,
    RetryBudget,
    SchemaError,
    classify,
    is_retriable,
)
from core.records import NEW_KEY_HEADER, Record
from core.timeouts import libpq_options
from schemas.registry import SchemaRegistry
from schemas.serde import Decoder
from schemas.subjects import SubjectCheck
from sinks.base import Sink
from sinks.postgres.apply import Applier, ApplyResult, is_data_error
from sinks.postgres.changes import Change, to_changes
from sinks.postgres.config import PostgresSinkConfig
from sinks.postgres.state import LedgerPruner, all_offsets, ensure_state, read_offsets
from sinks.postgres.tables import TableManager

log = logging.getLogger(__name__)

CRASH_AFTER_DB_COMMIT_ENV = "CDC_SINK_TEST_CRASH_AFTER_DB_COMMIT"
"""Tests only: SIGKILL the process right after the N-th batch's DB commit, before the Kafka commit."""

ERROR_HEADER = "cdc.error"
SOURCE_TOPIC_HEADER = "cdc.source.topic"
SOURCE_PARTITION_HEADER = "cdc.source.partition"
SOURCE_OFFSET_HEADER = "cdc.source.offset"
_ADMIN_PREFIXES = ("bootstrap.", "security.", "sasl.", "ssl.", "client.id")



@dataclass(frozen=True, slots=True)
class _InFlight:
    future: Future[ApplyResult | None]
    offsets: dict[tuple[str, int], int]
    started: float


@dataclass(frozen=True, slots=True)
class _Dead:
    message: Message
    error: str


class PostgresSink(Sink):
    """Kafka change topics -> destination PostgreSQL, exactly once in effect.

    Holds no position: every run starts from `cdc.sink_offsets`. `run` may be killed at any moment (see the
    commit order above); `stop` finishes the batch in flight, if it can, and returns.
    """

    def __init__(self, config: ConnectorConfig, chain: Any) -> None:
        if config.sink is None:
            raise ConfigError("the config has no `sink` section")
        self._config = config
        self._sink: PostgresSinkConfig = config.sink
        self._chain = chain
        self._group_id = config.group_id
        self._dsn = self._sink.dsn.get_secret_value()
        self._tables = TableManager(self._sink)
        self._applier = Applier(self._sink, self._group_id, self._tables)
        self._conn: psycopg.Connection[Any] | None = None
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._decoder: Decoder | None = None
        self._subjects: SubjectCheck | None = None
        self._registry_client: SchemaRegistryClient | None = None
        self._pending: list[Message] = []
        self._carry: list[Message] = []  # held back from the last batch (see `_key_change_tails`)
        self._held: set[tuple[str, int, int]] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._in_flight: _InFlight | None = None
        self._producer_lock = threading.Lock()
        self._assigned: set[tuple[str, int]] = set()
        self._positions: dict[tuple[str, int], int] = {}
        self._log_end: dict[tuple[str, int], int] = {}
        self._log_end_at = 0.0
        self._ready = threading.Event()
        self._stop: threading.Event = threading.Event()
        self._commits = 0
        self._budget = RetryBudget(config.retry.give_up_after_s)
        # Kafka has its own: the consuming thread checks it while the applier thread may be retrying the database.
        self._kafka_budget = RetryBudget(config.retry.give_up_after_s)
        self._kafka_suspect = False
        self._next_kafka_check = 0.0
        self._endpoints = Endpoints(
            database="the destination database",
            dsn_setting="sink.dsn",
            kafka=f"Kafka at {config.kafka.bootstrap_servers}",
        )
        crash = os.environ.get(CRASH_AFTER_DB_COMMIT_ENV)
        self._crash_after = int(crash) if crash else None

    # -- contract -----------------------------------------------------------------------------------------

    def validate(self, *, kafka: bool = True) -> list[Problem]:
        problems: list[Problem] = []
        try:
            with psycopg.connect(self._dsn, autocommit=True, **libpq_options(self._sink.connect_timeout_s)) as conn:
                row = conn.execute(
                    """SELECT has_database_privilege(current_database(), 'CREATE'),
                              to_regnamespace('cdc') IS NOT NULL,
                              to_regnamespace(%s) IS NOT NULL""",
                    (self._sink.target_schema,),
                ).fetchone()
                assert row is not None
                can_create, has_cdc, has_target = row
                if not has_cdc and not can_create:
                    problems.append(
                        Problem(
                            "sink",
                            "schema `cdc` does not exist and the sink's role may not create it",
                            "GRANT CREATE ON DATABASE ... TO the sink's role, or create schema cdc for it",
                        )
                    )
                if not has_target and not (self._sink.auto_create and can_create):
                    problems.append(
                        Problem(
                            "sink",
                            f"target schema {self._sink.target_schema!r} does not exist",
                            "create it, or let the sink create it (`auto_create: true` and CREATE on the database)",
                        )
                    )
        except psycopg.Error as exc:
            error = classify(exc, self._endpoints)
            problems.append(Problem("sink", error.message, error.hint or "check `sink.dsn`"))
        if not kafka:
            return problems  # Kafka is unreachable and reported already: its checks here would only repeat that
        try:
            metadata = Consumer(self._consumer_settings(), logger=log).list_topics(
                timeout=self._config.kafka.request_timeout_s
            )
        except Exception as exc:
            error = classify(exc, self._endpoints)
            problems.append(Problem("sink", error.message, error.hint or "check `kafka.bootstrap_servers`"))
        else:
            # A missing dead-letter topic is no problem: `run` creates it at start.
            for topic in self._sink.topics:
                if topic not in metadata.topics:
                    problems.append(
                        Problem(
                            "sink",
                            f"topic {topic!r} does not exist (yet)",
                            "start the source first, create the topic, or fix `sink.topics`",
                        )
                    )
        return problems

    def ready(self) -> bool:
        return self._ready.is_set()

    def problem(self) -> ConnectorError | None:
        return self._budget.problem or self._kafka_budget.problem

    def status(self) -> dict[str, Any]:
        """What the loop last published: stored offsets vs the log end seen in fetches. No I/O, any thread."""
        # Plain reads of structures only the loop thread writes (the log ends are replaced whole, never
        # mutated): the consumer itself is never touched here, librdkafka consumers are not shared.
        positions, log_end = dict(self._positions), self._log_end
        return {
            "group_id": self._group_id,
            "assigned": len(self._assigned),
            "partitions": [
                partition_lag(topic, partition, next_offset, log_end.get((topic, partition)))
                for (topic, partition), next_offset in sorted(positions.items())
            ],
        }

    def inspect(self) -> dict[str, Any]:
        """The offsets stored in the destination, read now (`cdc status` from outside the running process)."""
        with psycopg.connect(self._dsn, autocommit=True, **libpq_options(self._sink.connect_timeout_s)) as conn:
            stored = all_offsets(conn, self._group_id)
        return {
            "group_id": self._group_id,
            "partitions": [{"topic": t, "partition": p, "next_offset": o} for (t, p), o in sorted(stored.items())],
        }

    def run(self, stop: threading.Event) -> None:
        self._stop = stop
        pruner = LedgerPruner(
            self._dsn,
            self._sink.dedupe.retention_delta,
            self._sink.dedupe.prune_interval_seconds,
            self._sink.dedupe.prune_batch,
            stop,
            connect_timeout_s=self._sink.connect_timeout_s,
        )
        try:
            self._with_retries(lambda: ensure_state(self._connection()), "setting up schema cdc")
            self._ensure_dead_letter_topic()
            self._registry_client = self._registry_client_for(self._config)
            registry = SchemaRegistry(self._config.schema_registry, client=self._registry_client)
            self._decoder = Decoder(registry)
            self._subjects = SubjectCheck(registry) if self._sink.errors.check_schema_subjects else None
            pruner.start()
            self._consumer = Consumer({**self._consumer_settings(), "error_cb": self._on_kafka_error}, logger=log)
            subscription = list(self._sink.topics)
            if self._sink.topics_regex:
                regex = self._sink.topics_regex
                subscription.append(regex if regex.startswith("^") else f"^{regex}")
            self._consumer.subscribe(
                subscription, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
            )
            log.info("sink consuming %s as group %s", ", ".join(subscription), self._group_id)
            # Decoding (CPU in this process) overlaps the previous batch's apply (waiting on the database).
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cdc-sink-apply")
            while not stop.is_set():
                messages = self._collect(stop)
                if messages:
                    self._process(messages)
            self._finish_in_flight()
        except _Stopped:
            log.info("stopped while retrying; nothing of the batch in flight was committed")
        except Exception as exc:
            error = classify(exc, self._endpoints)
            if error is exc:
                raise
            raise error from exc
        finally:
            self._ready.clear()
            self._abandon_in_flight()
            self._close()

    def _ensure_dead_letter_topic(self) -> None:
        """Create the dead-letter topic at start (as `cdc validate` promises), not on the first bad message."""
        topic = self._sink.errors.dead_letter_topic
        if self._sink.errors.tolerance != "all" or topic is None:
            return
        kafka = self._config.kafka
        settings = {k: v for k, v in self._consumer_settings().items() if k.startswith(_ADMIN_PREFIXES)}
        admin = AdminClient(settings, logger=log)
        self._with_retries(
            lambda: create_missing_topics(
                admin,
                [topic],
                partitions=kafka.topic_partitions,
                replication=kafka.topic_replication_factor,
                timeout_s=kafka.request_timeout_s,
            ),
            f"creating the dead-letter topic {topic}",
        )

    @staticmethod
    def _registry_client_for(config: ConnectorConfig) -> SchemaRegistryClient:
        # Our own client (rather than SchemaRegistry's default) so the sink can close its HTTP session.
        return SchemaRegistryClient(config.schema_registry.client_settings())

    # -- consuming ----------------------------------------------------------------------------------------

    def _consumer_settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "bootstrap.servers": self._config.kafka.bootstrap_servers,
            # New topics matching a regex subscription are found on metadata refresh; librdkafka's default is 5 min.
            "topic.metadata.refresh.interval.ms": 10_000,
            "max.poll.interval.ms": 600_000,
        }
        settings.update(self._config.kafka.properties)
        settings.update(self._sink.consumer_properties)
        settings.update(
            {
                "group.id": self._group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": self._sink.auto_offset_reset,
            }
        )
        return settings

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._finish_in_flight()  # its offsets must be stored before they are read, and it holds the connection
        wanted = [(p.topic, p.partition) for p in partitions]
        stored = self._with_retries(lambda: read_offsets(self._connection(), self._group_id, wanted), "reading offsets")
        default = OFFSET_BEGINNING if self._sink.auto_offset_reset == "earliest" else OFFSET_END
        for p in partitions:
            p.offset = stored.get((p.topic, p.partition), default)
            if (p.topic, p.partition) in stored:
                self._positions[(p.topic, p.partition)] = stored[(p.topic, p.partition)]
        consumer.assign(partitions)
        self._assigned.update(wanted)
        self._ready.set()
        log.info("assigned %s", ", ".join(f"{p.topic}[{p.partition}]@{p.offset}" for p in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Finish the batch being applied (its transaction commits whole or not at all) ...
        self._finish_in_flight()
        revoked = {(p.topic, p.partition) for p in partitions}
        # ... and abandon buffered messages of revoked partitions: nothing of them is applied, so the next owner
        # starting at the stored offset sees a clean state.
        self._pending = [m for m in self._pending if (m.topic(), m.partition()) not in revoked]
        self._carry = [m for m in self._carry if (m.topic(), m.partition()) not in revoked]
        self._assigned -= revoked
        for key in revoked:
            self._positions.pop(key, None)
        log.info("revoked %d partitions", len(revoked))

    def _collect(self, stop: threading.Event) -> list[Message]:
        assert self._consumer is not None
        max_wait = self._sink.batch.max_wait_ms / 1000
        deadline: float | None = None
        self._pending, self._carry = self._carry, []
        limit = self._sink.batch.max_records + len(self._pending)  # held messages do not crowd out what follows
        while not stop.is_set() and len(self._pending) < limit:
            self._finish_in_flight(wait=False)
            # librdkafka's batch consume waits its whole timeout unless `num_messages` arrive: wait for the first
            # message alone, so a batch opens as soon as data is there and closes `max_wait_ms` later.
            if deadline is None:
                wanted, timeout = 1, 0.5
            else:
                wanted, timeout = limit - len(self._pending), max(0.0, deadline - time.monotonic())
            for message in self._consumer.consume(num_messages=wanted, timeout=timeout):
                error = message.error()
                if error is None:
                    self._pending.append(message)
                elif error.fatal():
                    raise FatalError(f"Kafka consumer failed: {error.str()}")
                elif error.code() not in (KafkaError._PARTITION_EOF,):
                    log.warning("Kafka consumer: %s", error.str())
            self._publish_log_end()
            if self._kafka_suspect and time.monotonic() >= self._next_kafka_check:
                self._check_kafka()
            if self._pending and deadline is None:
                deadline = time.monotonic() + max_wait
            if deadline is not None and time.monotonic() >= deadline:
                break
        messages, self._pending = self._pending, []
        return messages

    def _publish_log_end(self) -> None:
        """Note each assigned partition's log end from the consumer's cache (updated by every fetch) for `status`."""
        assert self._consumer is not None
        now = time.monotonic()
        if now - self._log_end_at < 1.0:
            return
        self._log_end_at = now
        ends: dict[tuple[str, int], int] = {}
        for topic, partition in list(self._assigned):
            try:
                watermarks = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            except Exception as exc:  # informational: a partition without a cached log end shows none
                log.debug("no cached log end of %s[%d]: %s", topic, partition, exc)
                continue
            if watermarks is not None and watermarks[1] >= 0:
                ends[(topic, partition)] = watermarks[1]
        self._log_end = ends

    def _on_kafka_error(self, error: KafkaError) -> None:
        """librdkafka's client-level errors (called from `consume`, on the consuming thread). The consumer
        reconnects by itself; whether Kafka is really gone is for `_check_kafka` to find out."""
        if error.code() in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE):
            self._kafka_suspect = True

    def _check_kafka(self) -> None:
        """Ask the cluster for metadata: red /healthz and, past the retry budget, a fatal error while it cannot
        answer; back to healthy once it does (an idle connection the broker closed reconnects at once)."""
        assert self._consumer is not None
        self._next_kafka_check = time.monotonic() + 5
        try:
            self._consumer.list_topics(timeout=self._config.kafka.request_timeout_s)
        except KafkaException as exc:
            error = classify(exc, self._endpoints)
            if self._kafka_budget.failed(error):
                raise self._kafka_budget.exhausted(error) from exc
            log.warning("sink: %s; the consumer keeps reconnecting", error)
            return
        self._kafka_suspect = False
        self._kafka_budget.progress()

    # -- one batch ----------------------------------------------------------------------------------------

    def _process(self, messages: Sequence[Message]) -> None:
        """Decode this batch (while the previous one is being applied), then hand it to the applier thread."""
        started = time.monotonic()
        changes, dead, offsets, messages = self._decode_all(messages)
        if dead:
            self._dead_letter(dead)
        # One transaction at a time, in batch order: the previous batch commits before this one starts.
        self._finish_in_flight()
        assert self._executor is not None
        future = self._executor.submit(self._apply, changes, offsets, messages)
        self._in_flight = _InFlight(future, offsets, started)

    def _finish_in_flight(self, *, wait: bool = True) -> None:
        """Wait for the batch being applied (raising its error), then commit its offsets to Kafka (step 6)."""
        in_flight = self._in_flight
        if in_flight is None or (not wait and not in_flight.future.done()):
            return
        self._in_flight = None
        result = in_flight.future.result()
        if result is None:
            return  # stopped while retrying: nothing committed, the stored offsets stand
        offsets, started = in_flight.offsets, in_flight.started
        self._commits += 1
        if self._crash_after is not None and self._commits >= self._crash_after:
            os.kill(os.getpid(), signal.SIGKILL)
        self._positions.update(offsets)
        self._commit_kafka(offsets)
        for (table, op), count in result.applied.items():
            metrics.SINK_APPLIED.labels(table=table, op=op).inc(count)
        if result.duplicates:
            metrics.SINK_DUPLICATES.inc(result.duplicates)
        if result.stale:
            metrics.SINK_STALE.inc(result.stale)
        metrics.SINK_BATCH_SECONDS.observe(time.monotonic() - started)

    def _decode_all(
        self, messages: Sequence[Message], *, hold: bool = True
    ) -> tuple[list[Change], list[_Dead], dict[tuple[str, int], int], Sequence[Message]]:
        """The batch's changes, its bad messages, the next offset per partition and the messages they are of
        (a partition's trailing half of a key change is held back for the next batch, see `_key_change_tails`)."""
        changes: list[Change] = []
        dead: list[_Dead] = []
        offsets: dict[tuple[str, int], int] = {}
        last: dict[tuple[str, int], int] = {}
        for index, message in enumerate(messages):
            topic, partition, offset = _coordinates(message)
            where = (topic, partition)
            if offsets.get(where, 0) <= offset:
                offsets[where] = offset + 1
                last[where] = index
            try:
                changes.extend(self._decode(message, topic, partition, offset))
            except (PoisonMessageError, SchemaError) as exc:
                dead.append(self._poison(message, exc))
        if hold:
            held = self._key_change_tails(messages, last)
            if held:
                self._carry = [messages[i] for i in sorted(held)]
                return self._decode_all([m for i, m in enumerate(messages) if i not in held], hold=False)
        return changes, dead, offsets, messages

    def _key_change_tails(self, messages: Sequence[Message], last: dict[tuple[str, int], int]) -> set[int]:
        """Indexes of messages that end a partition's part of the batch with the delete (and its tombstone) of
        an update that changed the key, whose create follows in the log: held back once, so the pair is applied
        in one transaction and the create can take the unchanged TOASTed values from the old row."""
        held: set[int] = set()
        for where, index in last.items():
            tail = _key_change_tail(messages, where, index)
            coordinates = [_coordinates(messages[i]) for i in tail]
            if not tail or any(c in self._held for c in coordinates):
                continue  # nothing to hold, or held once already: its create is not coming to this partition
            if len(self._held) > 10_000:
                self._held.clear()
            self._held.update(coordinates)
            held.update(tail)
        return held

    def _decode(self, message: Message, topic: str, partition: int, offset: int) -> list[Change]:
        assert self._decoder is not None
        decoder = self._decoder
        raw_key, raw_value = message.key(), message.value()
        size = len(raw_key or b"") + len(raw_value or b"")
        if size > self._sink.errors.max_record_bytes:
            raise PoisonMessageError(
                f"record of {size} bytes exceeds errors.max_record_bytes ({self._sink.errors.max_record_bytes})"
            )
        key = key_schema = value = value_schema = None
        if raw_key is not None:
            key, key_schema = self._decode_one(decoder, raw_key, topic, True)
        if raw_value is not None:
            value, value_schema = self._decode_one(decoder, raw_value, topic, False)
        _, timestamp = message.timestamp()
        record = Record(
            topic=topic,
            key=key,
            value=value,
            key_schema=key_schema,
            value_schema=value_schema,
            headers=tuple(_headers(message)),
            partition=partition,
            offset=offset,
            timestamp_ms=timestamp if timestamp >= 0 else None,
        )
        if not len(self._chain):
            return to_changes(record)
        out: list[Change] = []
        for item in self._chain.apply(record):
            out.extend(to_changes(item))
        return out

    def _decode_one(self, decoder: Decoder, data: bytes, topic: str, is_key: bool) -> tuple[Any, Any]:
        part = "key" if is_key else "value"
        try:
            try:
                return self._read(decoder, data, topic, is_key)
            except ConnectorError as exc:
                if not exc.retriable:
                    raise
                # The registry is unreachable (only happens on a cache miss): retry with backoff.
                return self._with_retries(lambda: self._read(decoder, data, topic, is_key), f"decoding a {part}")
        except PoisonMessageError as exc:
            raise PoisonMessageError(f"its {part}: {exc.message}", hint=exc.hint) from exc
        except SchemaError as exc:
            raise SchemaError(f"its {part}: {exc.message}", hint=exc.hint) from exc

    def _read(self, decoder: Decoder, data: bytes, topic: str, is_key: bool) -> tuple[Any, Any]:
        value, schema, schema_id = decoder.decode(data)
        if self._subjects is not None:
            self._subjects.check(topic, schema_id, schema, is_key)
        return value, schema

    def _where(self, message: Message) -> str:
        topic, partition, offset = _coordinates(message)
        return f"{topic}[{partition}]@{offset}"

    def _poison(self, message: Message, exc: ConnectorError) -> _Dead:
        """Stop (tolerance none) or note the message for the dead-letter topic (tolerance all)."""
        where = self._where(message)
        if self._sink.errors.log_payloads:
            log.error("poison message %s: %s; key=%r value=%r", where, exc, message.key(), message.value())
        if self._sink.errors.tolerance == "none":
            raise PoisonMessageError(
                f"cannot apply message {where}: {exc.message}",
                hint="fix the producer or the destination, or set `sink.errors.tolerance: all` with a "
                "dead_letter_topic to skip such messages; the stored offsets were not advanced",
            ) from exc
        log.warning("message %s goes to the dead-letter topic: %s", where, exc.message)
        return _Dead(message, exc.message)

    def _dead_letter(self, dead: Sequence[_Dead]) -> None:
        topic = self._sink.errors.dead_letter_topic
        assert topic is not None
        with self._producer_lock:  # the decoding and the applying thread may both dead-letter
            if self._producer is None:
                settings: dict[str, Any] = {"bootstrap.servers": self._config.kafka.bootstrap_servers}
                settings.update(self._config.kafka.properties)
                settings.update({"enable.idempotence": True, "acks": "all"})
                self._producer = Producer(settings, logger=log)
            producer = self._producer
        failures: list[str] = []

        def delivered(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                failures.append(error.str())

        for item in dead:
            message = item.message
            source_topic, partition, offset = _coordinates(message)
            headers: list[Any] = [
                *_headers(message),
                (ERROR_HEADER, item.error.encode()),
                (SOURCE_TOPIC_HEADER, source_topic.encode()),
                (SOURCE_PARTITION_HEADER, str(partition).encode()),
                (SOURCE_OFFSET_HEADER, str(offset).encode()),
            ]
            producer.produce(topic, value=message.value(), key=message.key(), headers=headers, on_delivery=delivered)
            producer.poll(0)
            metrics.SINK_DEAD_LETTERS.labels(topic=source_topic).inc()
        remaining = producer.flush(60)
        if remaining or failures:
            raise DeliveryError(
                f"dead-letter topic {topic} did not acknowledge {remaining or len(failures)} messages"
                + (f": {failures[0]}" if failures else ""),
                hint="check the topic exists and accepts messages of that size; the stored offsets were not advanced",
            )

    # -- applying -----------------------------------------------------------------------------------------

    def _apply(
        self, changes: list[Change], offsets: dict[tuple[str, int], int], messages: Sequence[Message]
    ) -> ApplyResult | None:
        while True:
            try:
                return self._with_retries(
                    lambda todo=changes: self._applier.apply(self._connection(), todo, offsets), "applying"
                )
            except _Stopped:
                return None
            except psycopg.Error as exc:
                if not is_data_error(exc):
                    raise
                failures = self._with_retries(
                    lambda todo=changes: self._applier.isolate(self._connection(), todo), "isolating"
                )
                if not failures:
                    raise
                by_position = {_coordinates(m): m for m in messages}
                dead = []
                for change, error in failures:
                    message = by_position[(change.topic, change.partition, change.offset)]
                    problem = _describe_db_error(error)
                    dead.append(self._poison(message, PoisonMessageError(problem)))
                self._dead_letter(dead)
                bad = {id(change) for change, _ in failures}
                changes = [c for c in changes if id(c) not in bad]

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
            self._applier.reset()
            self._conn = psycopg.connect(
                self._dsn,
                autocommit=True,
                application_name=f"cdc-sink-{self._group_id}"[:63],
                **libpq_options(self._sink.connect_timeout_s),
            )
        return self._conn

    def _with_retries(self, body: Any, what: str) -> Any:
        """`body()`, retrying retriable errors with backoff until it succeeds, the sink stops, or the retry budget
        (`retry.give_up_after_s`, or `sink.retry.max_attempts`) is spent; then a fatal error. Others raise as is."""
        budget = self._budget
        stop_rule: Any = stop_when_event_set(self._stop)
        if self._sink.retry.max_attempts is not None:
            stop_rule = stop_any(stop_rule, stop_after_attempt(self._sink.retry.max_attempts))
        if budget.give_up_after_s is not None:
            stop_rule = stop_any(stop_rule, stop_after_delay(budget.give_up_after_s))

        def before_sleep(state: Any) -> None:
            exc = state.outcome.exception()  # only failed attempts are retried
            error = classify(exc, self._endpoints)
            budget.failed(error)
            log.warning("%s failed (attempt %d), retrying: %s", what, state.attempt_number, error)
            if self._conn is not None and self._conn.broken:
                self._conn.close()

        retrying = Retrying(
            retry=retry_if_exception(is_retriable),
            # "Full jitter": a random wait up to the exponential bound, so restarted sinks do not retry in step.
            wait=wait_random_exponential(
                multiplier=self._sink.retry.initial_backoff_ms / 1000, max=self._sink.retry.max_backoff_ms / 1000
            ),
            stop=stop_rule,
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            result = retrying(body)
        except Exception as exc:
            if is_retriable(exc):
                if self._stop.is_set():
                    raise _Stopped from exc
                error = classify(exc, self._endpoints)
                attempts = retrying.statistics.get("attempt_number", 1)
                raise FatalError(
                    f"{what} kept failing, gave up after {attempts} attempts: {error.message}",
                    hint=(f"{error.hint}; " if error.hint else "")
                    + "the budget is `retry.give_up_after_s` (and `sink.retry.max_attempts`)",
                ) from exc
            raise
        budget.progress()
        return result

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _commit_kafka(self, offsets: dict[tuple[str, int], int]) -> None:
        assert self._consumer is not None
        mine = [TopicPartition(t, p, o) for (t, p), o in offsets.items() if (t, p) in self._assigned]
        if not mine:
            return
        try:
            self._consumer.commit(offsets=mine, asynchronous=True)
        except Exception as exc:  # informational only
            log.debug("Kafka offset commit failed: %s", exc)

    def _abandon_in_flight(self) -> None:
        """On the way out after an error: let the batch in flight end (commit or not) without raising again."""
        if self._in_flight is not None:
            try:
                self._finish_in_flight()
            except Exception as exc:
                log.debug("batch in flight ended with %s", type(exc).__name__)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close()
            except Exception as exc:
                log.debug("closing the consumer: %s", exc)
            self._consumer = None
        if self._producer is not None:
            self._producer.flush(10)
            self._producer = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._registry_client is not None:
            self._registry_client.close()
            self._registry_client = None


def partition_lag(topic: str, partition: int, next_offset: int, log_end: int | None) -> dict[str, Any]:
    """One partition of the sink's status: its stored position, the log end when known, and the lag between."""
    return {
        "topic": topic,
        "partition": partition,
        "next_offset": next_offset,
        "log_end": log_end,
        "lag": None if log_end is None else max(log_end - next_offset, 0),
    }


def _coordinates(message: Message) -> tuple[str, int, int]:
    """(topic, partition, offset) of a consumed message (always set on messages without error)."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    assert topic is not None and partition is not None and offset is not None
    return topic, partition, offset


def _key_change_tail(messages: Sequence[Message], where: tuple[str, int], index: int) -> list[int]:
    """The indexes of partition `where`'s last messages (its last at `index`) when they are the delete of a key
    change and its tombstone; empty when the partition ends otherwise."""
    tail: list[int] = []
    for i in range(index, -1, -1):
        message = messages[i]
        if (message.topic(), message.partition()) != where:
            continue
        if _is_key_change_delete(message):
            tail.append(i)
            if message.value() is not None:
                return tail  # the delete itself
        elif i == index and message.value() is None:
            tail.append(i)  # a tombstone that did not copy the delete's headers
        else:
            return []
    return []


def _is_key_change_delete(message: Message) -> bool:
    headers = message.headers()
    if not headers:
        return False
    if isinstance(headers, dict):
        return NEW_KEY_HEADER in headers
    return any(item[0] == NEW_KEY_HEADER for item in headers)


def _headers(message: Message) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    raw: Any = message.headers() or ()
    for name, value in raw:
        out.append((name, value.encode() if isinstance(value, str) else (value or b"")))
    return out


class _Stopped(Exception):
    """The stop event was set while a retriable error was being retried."""


def _describe_db_error(exc: BaseException) -> str:
    # The primary message names the constraint or the type, never the value (that goes in DETAIL).
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) or type(exc).__name__
    return f"{primary} (SQLSTATE {getattr(exc, 'sqlstate', None)})"

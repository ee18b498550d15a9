"""The PostgreSQL sink: consume change topics, apply them idempotently, checkpoint offsets in the target.

`PostgresSink` implements the `Sink` contract and assembles the parts of a run from its config sections; the
commit order of a batch and how the parts work together are in `sinks.postgres.loop`. The parts:

- `consumer.ChangeConsumer`: subscription, rebalances, batches of messages, the informational Kafka commit;
- `decoding.ChangeDecoder`: messages -> changes (wire format, subject check, the sink's transforms);
- `destination.PostgresDestination` with `apply.Applier`: the destination session and the batch transaction;
- `dead_letter.DeadLetterPublisher`: the dead-letter topic;
- `retry.RetryPolicy`: retries of what `core.errors` calls retriable, within the retry budget.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import psycopg
from confluent_kafka import Consumer

from core.checks import Problem
from core.errors import ConnectorError, Endpoints, RetryBudget, RetryBudgetConfig, classify
from core.kafka import KafkaConfig
from core.records import RecordChain
from core.timeouts import libpq_options
from schemas.registry import SchemaRegistry, SchemaRegistryConfig, registry_client
from schemas.serde import Decoder
from schemas.subjects import SubjectCheck
from sinks.base import Sink
from sinks.postgres.config import PostgresSinkConfig
from sinks.postgres.consumer import ChangeConsumer, PartitionProgress, consumer_settings
from sinks.postgres.dead_letter import DeadLetterPublisher, create_dead_letter_topic
from sinks.postgres.decoding import ChangeDecoder
from sinks.postgres.destination import PostgresDestination
from sinks.postgres.loop import BatchLoop
from sinks.postgres.retry import RetryPolicy, Stopped
from sinks.postgres.state import LedgerPruner, all_offsets

log = logging.getLogger(__name__)

_ADMIN_PREFIXES = ("bootstrap.", "security.", "sasl.", "ssl.", "client.id")


class PostgresSink(Sink):
    """Kafka change topics -> destination PostgreSQL, exactly once in effect.

    Holds no position: every run starts from `cdc.sink_offsets`. `run` may be killed at any moment (see the
    commit order in `sinks.postgres.loop`); `stop` finishes the batch in flight, if it can, and returns.
    `after_db_commit` is a fault point for tests: called right after each batch's destination commit, before its
    Kafka commit.
    """

    def __init__(
        self,
        config: PostgresSinkConfig,
        *,
        kafka: KafkaConfig,
        registry: SchemaRegistryConfig,
        retry: RetryBudgetConfig,
        chain: RecordChain,
        group_id: str,
        after_db_commit: Callable[[], None] | None = None,
    ) -> None:
        self._config = config
        self._kafka = kafka
        self._registry = registry
        self._chain = chain
        self._group_id = group_id
        self._after_db_commit = after_db_commit
        self._dsn = config.dsn.get_secret_value()
        self._progress = PartitionProgress()
        self._budget = RetryBudget(retry.give_up_after_s)
        # Kafka has its own: the consuming thread checks it while the applier thread may be retrying the database.
        self._kafka_budget = RetryBudget(retry.give_up_after_s)
        self._endpoints = Endpoints(
            database="the destination database",
            dsn_setting="sink.dsn",
            kafka=f"Kafka at {kafka.bootstrap_servers}",
        )

    # -- contract -----------------------------------------------------------------------------------------

    def validate(self, *, kafka: bool = True) -> list[Problem]:
        problems: list[Problem] = []
        try:
            with psycopg.connect(self._dsn, autocommit=True, **libpq_options(self._config.connect_timeout_s)) as conn:
                row = conn.execute(
                    """SELECT has_database_privilege(current_database(), 'CREATE'),
                              to_regnamespace('cdc') IS NOT NULL,
                              to_regnamespace(%s) IS NOT NULL""",
                    (self._config.target_schema,),
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
                if not has_target and not (self._config.auto_create and can_create):
                    problems.append(
                        Problem(
                            "sink",
                            f"target schema {self._config.target_schema!r} does not exist",
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
                timeout=self._kafka.request_timeout_s
            )
        except Exception as exc:
            error = classify(exc, self._endpoints)
            problems.append(Problem("sink", error.message, error.hint or "check `kafka.bootstrap_servers`"))
        else:
            # A missing dead-letter topic is no problem: `run` creates it at start.
            for topic in self._config.topics:
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
        return self._progress.ready.is_set()

    def problem(self) -> ConnectorError | None:
        return self._budget.problem or self._kafka_budget.problem

    def status(self) -> dict[str, Any]:
        """What the loop last published: stored offsets vs the log end seen in fetches. No I/O, any thread."""
        # Plain reads of structures only the loop thread writes (the log ends are replaced whole, never
        # mutated): the consumer itself is never touched here, librdkafka consumers are not shared.
        progress = self._progress
        positions, log_end = dict(progress.positions), progress.log_end
        return {
            "group_id": self._group_id,
            "assigned": len(progress.assigned),
            "partitions": [
                partition_lag(topic, partition, next_offset, log_end.get((topic, partition)))
                for (topic, partition), next_offset in sorted(positions.items())
            ],
        }

    def inspect(self) -> dict[str, Any]:
        """The offsets stored in the destination, read now (`cdc status` from outside the running process)."""
        with psycopg.connect(self._dsn, autocommit=True, **libpq_options(self._config.connect_timeout_s)) as conn:
            stored = all_offsets(conn, self._group_id)
        return {
            "group_id": self._group_id,
            "partitions": [{"topic": t, "partition": p, "next_offset": o} for (t, p), o in sorted(stored.items())],
        }

    def run(self, stop: threading.Event) -> None:
        config = self._config
        destination = PostgresDestination(config, self._group_id)
        retry = RetryPolicy(config.retry, self._budget, self._endpoints, stop, before_retry=destination.drop_broken)
        dead_letters = DeadLetterPublisher(config.errors, self._kafka)
        consumer = ChangeConsumer(
            config,
            self._kafka,
            self._group_id,
            progress=self._progress,
            budget=self._kafka_budget,
            endpoints=self._endpoints,
        )
        pruner = LedgerPruner(
            self._dsn,
            config.dedupe.retention_delta,
            config.dedupe.prune_interval_seconds,
            config.dedupe.prune_batch,
            stop,
            connect_timeout_s=config.connect_timeout_s,
        )
        client = None
        try:
            retry.call(destination.setup, "setting up schema cdc")
            admin = {k: v for k, v in self._consumer_settings().items() if k.startswith(_ADMIN_PREFIXES)}
            create_dead_letter_topic(config.errors, self._kafka, admin, retry)
            # Our own client (rather than SchemaRegistry's default) so the sink can close its HTTP session.
            client = registry_client(self._registry)
            registry = SchemaRegistry(self._registry, client=client)
            subjects = SubjectCheck(registry) if config.errors.check_schema_subjects else None
            decoder = ChangeDecoder(Decoder(registry), subjects, self._chain, config.errors, retry)
            pruner.start()
            loop = BatchLoop(
                consumer,
                decoder,
                destination,
                dead_letters,
                retry=retry,
                errors=config.errors,
                progress=self._progress,
                after_db_commit=self._after_db_commit,
            )
            loop.run(stop)
        except Stopped:
            log.info("stopped while retrying; nothing of the batch in flight was committed")
        except Exception as exc:
            error = classify(exc, self._endpoints)
            if error is exc:
                raise
            raise error from exc
        finally:
            self._progress.ready.clear()
            consumer.close()
            dead_letters.close()
            destination.close()
            if client is not None:
                client.close()

    def _consumer_settings(self) -> dict[str, Any]:
        return consumer_settings(self._config, self._kafka, self._group_id)


def partition_lag(topic: str, partition: int, next_offset: int, log_end: int | None) -> dict[str, Any]:
    """One partition of the sink's status: its stored position, the log end when known, and the lag between."""
    return {
        "topic": topic,
        "partition": partition,
        "next_offset": next_offset,
        "log_end": log_end,
        "lag": None if log_end is None else max(log_end - next_offset, 0),
    }

"""What a run reads back from Kafka and PostgreSQL to follow a side, and what it creates and removes there."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator, Sequence

import psycopg
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from psycopg import sql
from psycopg.conninfo import make_conninfo

from bench.harness.procs import BenchError
from devstack.connect import drop_slot_and_publication


class EndOffsets:
    """A topic's end offsets summed over its partitions: records below the high watermark are acknowledged."""

    def __init__(self, bootstrap: str) -> None:
        self._bootstrap = bootstrap
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}"})

    def __call__(self, topic: str) -> int:
        try:
            metadata = self._consumer.list_topics(topic, timeout=10).topics.get(topic)
        except Exception:  # the topic's first record creates it
            return 0
        if metadata is None or metadata.error is not None:
            return 0
        return sum(
            self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in metadata.partitions
        )

    def delete_topics(self, prefix: str) -> None:
        """Remove what a run left on the shared broker (its topics all start with the run's id)."""
        admin = AdminClient({"bootstrap.servers": self._bootstrap})
        topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
        for future in admin.delete_topics(topics, operation_timeout=30).values() if topics else ():
            with contextlib.suppress(Exception):
                future.result()

    def close(self) -> None:
        self._consumer.close()


def wait_for(
    predicate: Callable[[], bool], what: str, timeout: float = 300, check: Callable[[], str | None] = lambda: None
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        problem = check()
        if problem:
            raise BenchError(f"{what}: {problem}")
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        time.sleep(0.2)


def slot_exists(dsn: str, slot: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone() is not None


@contextlib.contextmanager
def max_id_progress(dsn: str, table: str, inserts: int, updates: int = 0) -> Iterator[Callable[[], int]]:
    """Events applied so far, read cheaply: inserts by `max(id)` (primary key), then whether the last update shows.

    Inserts are ids 1..`inserts` applied in order (one partition); updates rename the first `updates` rows to
    'updated <id>', the last of them last.
    """
    ident = sql.Identifier(table)

    def progress() -> int:
        try:
            row = conn.execute(sql.SQL("SELECT max(id) FROM {}").format(ident)).fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
        high = int(row[0]) if row and row[0] is not None else 0
        if high < inserts:
            return max(high, 0)
        if updates == 0:
            return inserts
        last = conn.execute(sql.SQL("SELECT name FROM {} WHERE id = %s").format(ident), (updates,)).fetchone()
        return inserts + updates if last and last[0].startswith("updated") else inserts

    with psycopg.connect(dsn, autocommit=True) as conn:
        yield progress


def has_row(dsn: str, table: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            query = sql.SQL("SELECT 1 FROM {} LIMIT 1").format(sql.Identifier(table))
            return conn.execute(query).fetchone() is not None
        except psycopg.errors.UndefinedTable:
            return False


def destination_counts(dsn: str, table: str) -> dict[str, int]:
    """Rows, and rows renamed by an update ('updated <id>'), of a destination table."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*), count(*) FILTER (WHERE name LIKE 'updated %%') FROM {}").format(
                sql.Identifier(table)
            )
        ).fetchone()
    assert row is not None
    return {"rows": int(row[0]), "updated": int(row[1])}


@contextlib.contextmanager
def scratch_database(dsn: str, name: str) -> Iterator[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(dsn, dbname=name)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def drop_slot(dsn: str, slot: str, publication: str) -> None:
    drop_slot_and_publication(dsn, slot, publication)
    with psycopg.connect(dsn, autocommit=True) as conn, contextlib.suppress(psycopg.errors.UndefinedTable):
        conn.execute("DELETE FROM cdc.source_state WHERE slot_name = %s", (slot,))


def execute(dsn: str, statements: Sequence[sql.Composed]) -> float:
    """Run `statements`, each in its own transaction; the seconds they took."""
    started = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)
    return time.monotonic() - started


def drop_table(dsn: str, table: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))

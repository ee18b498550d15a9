"""Helpers for the PostgreSQL source's integration tests: one isolated environment per test.

Each `SourceEnv` has its own slot, publication, tables and topic prefix; `close()` drops the slot (slots pin
WAL), the publication, the tables and the slot's bookkeeping row.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka.schema_registry import SchemaRegistryClient

from connector.config import ConnectorConfig, SchemaRegistryConfig
from connector.pipeline import build_source
from schemas.registry import SchemaRegistry
from schemas.serde import Decoder
from sources.postgres.source import PostgresSource
from tests.support.examples import REPO_ROOT
from tests.support.helpers import consume_all, pg_connect, wait_for
from tests.support.running import RunThread
from tests.support.stack import Stack


def without_markers(events: list[Event]) -> list[Event]:
    """`events` without snapshot-complete markers (one per partition after each table's snapshot)."""
    return [e for e in events if "cdc.snapshot.complete" not in e.headers]


@dataclass(frozen=True, slots=True)
class Event:
    topic: str
    partition: int
    offset: int
    key: Any
    value: Any
    headers: dict[str, str]

    @property
    def change_id(self) -> str:
        return self.headers["change_id"]


@dataclass
class SourceEnv:
    stack: Stack
    name: str
    slot: str
    publication: str
    prefix: str
    tables: list[str] = field(default_factory=list)
    source_options: dict[str, Any] = field(default_factory=dict)
    kafka_properties: dict[str, Any] = field(default_factory=dict)
    cleanup: list[str] = field(default_factory=list)
    """Statements run at `close()` after the tables are dropped (types, domains, roles)."""

    def __post_init__(self) -> None:
        self.conn = pg_connect(self.stack.source_dsn)
        self._registry_client = SchemaRegistryClient({"url": self.stack.registry_url})
        registry = SchemaRegistry(SchemaRegistryConfig(url=self.stack.registry_url), client=self._registry_client)
        self._decoder = Decoder(registry)

    # --- source database ------------------------------------------------------------------------------

    def sql(self, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        cur = self.conn.execute(statement, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []

    def table(self, suffix: str, ddl: str) -> str:
        """Create table `{name}_{suffix}` from `ddl` (`{t}` stands for the table name); returns its name."""
        name = f"{self.name}_{suffix}"
        self.sql(ddl.format(t=name))
        self.tables.append(name)
        return name

    def topic(self, table: str, schema: str = "public") -> str:
        return f"{self.prefix}.{schema}.{table}"

    def slot_row(self) -> tuple[Any, ...] | None:
        rows = self.sql(
            "SELECT active, active_pid, confirmed_flush_lsn::text, wal_status FROM pg_replication_slots "
            "WHERE slot_name = %s",
            (self.slot,),
        )
        return rows[0] if rows else None

    # --- config ---------------------------------------------------------------------------------------

    def config_data(self, **source: Any) -> dict[str, Any]:
        merged = {
            "dsn": self.stack.source_dsn,
            "topic_prefix": self.prefix,
            "slot": {"name": self.slot},
            "publication": {"name": self.publication},
            "tables": {"include": [f"public.{self.name}_*"]},
            "status_interval_s": 1.0,
            "heartbeat": {"interval_s": 1.0},
            **self.source_options,
            **source,
        }
        return {
            "name": self.name,
            "source": merged,
            "kafka": {"bootstrap_servers": self.stack.kafka_bootstrap, "properties": self.kafka_properties},
            "schema_registry": {"url": self.stack.registry_url},
            "server": {"enabled": False},
        }

    def config(self, **source: Any) -> ConnectorConfig:
        return ConnectorConfig.model_validate(self.config_data(**source))

    def source(self, **source: Any) -> PostgresSource:
        return build_source(self.config(**source))

    def write_config(self, path: Path, **source: Any) -> Path:
        path.write_text(json.dumps(self.config_data(**source)))  # JSON is YAML
        return path

    # --- running the source ---------------------------------------------------------------------------

    @contextmanager
    def running(self, **source: Any) -> Iterator[RunningSource]:
        runner = RunningSource(self.source(**source))
        runner.start()
        try:
            yield runner
        finally:
            runner.stop()

    def subprocess(self, config_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
        """`cdc run CONFIG --only source` in its own process (the config's `server` section is disabled)."""
        command = [sys.executable, "-m", "connector.cli", "run", str(config_path), "--only", "source"]
        with log_path.open("ab") as log:
            return subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=log)

    # --- Kafka ----------------------------------------------------------------------------------------

    def read(self, topic: str, *, min_count: int = 1, timeout: float = 60.0, idle: float = 1.0) -> list[Event]:
        """Every message of `topic` from the start, decoded; waits for `min_count`, then for `idle` quiet."""
        decode = self._decoder.decode
        return [
            Event(
                msg.topic(),
                msg.partition(),
                msg.offset(),
                decode(msg.key())[0] if msg.key() else None,
                decode(msg.value())[0] if msg.value() else None,
                {k: v.decode() for k, v in (msg.headers() or [])},
            )
            for msg in consume_all(
                self.stack.kafka_bootstrap, topic, min_count=min_count, timeout=timeout, idle=idle, partition=0
            )
        ]

    # --- cleanup --------------------------------------------------------------------------------------

    def drop_slot(self) -> None:
        for _ in range(50):
            row = self.slot_row()
            if row is None:
                return
            if row[0] and row[1]:
                self.sql("SELECT pg_terminate_backend(%s)", (row[1],))
                time.sleep(0.2)
                continue
            try:
                self.sql("SELECT pg_drop_replication_slot(%s)", (self.slot,))
                return
            except psycopg.errors.ObjectInUse:
                time.sleep(0.2)

    def close(self) -> None:
        try:
            self.drop_slot()
            self.sql(f'DROP PUBLICATION IF EXISTS "{self.publication}"')
            for table in self.tables:
                self.sql(f'DROP TABLE IF EXISTS "{table}" CASCADE')
            for statement in self.cleanup:
                self.sql(statement)
            if self.sql("SELECT to_regclass('cdc.source_state') IS NOT NULL")[0][0]:
                self.sql("DELETE FROM cdc.source_state WHERE slot_name = %s", (self.slot,))
        finally:
            self.conn.close()
            self._registry_client.close()


class RunningSource(RunThread):
    """A source on a thread; `stop()` sets its stop event and re-raises what `run` raised."""

    def __init__(self, source: PostgresSource) -> None:
        self.source = source
        super().__init__(source.run)

    def wait_ready(self, timeout: float = 120.0) -> None:
        def ready() -> bool:
            if self.error is not None:
                raise self.error
            return self.source.ready()

        wait_for(ready, timeout, what="the source to stream")

    def stop(self, timeout: float = 60.0) -> None:
        self.stop_event.set()
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise AssertionError("the source did not stop")
        if self.error is not None:
            raise self.error

    def join_error(self, timeout: float = 60.0) -> BaseException | None:
        self.thread.join(timeout)
        return self.error


def make_env(stack: Stack, unique_name: Callable[[str], str]) -> SourceEnv:
    name = unique_name("pgs")
    return SourceEnv(stack, name, slot=f"{name}_slot", publication=f"{name}_pub", prefix=f"{name}")

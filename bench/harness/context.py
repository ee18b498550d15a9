"""What every workload of a run shares: the stack's endpoints, the Connect install, a work directory, cleanup on
leaving, and how each side is configured (ours and Debezium's), so that a workload only says what it runs."""

from __future__ import annotations

import argparse
import contextlib
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.harness.probes import (
    EndOffsets,
    drop_slot,
    drop_table,
    execute,
    has_row,
    scratch_database,
    slot_exists,
    wait_for,
)
from bench.harness.procs import BenchError, ConnectSide, Figure, OurProcess, Side, log
from devstack.connect import ConnectWorker, ensure_install, jdbc_sink_settings, postgres_source_settings

TUNED_JDBC = {
    "dialect.postgres.unnest.insert.enabled": "true",
    "batch.size": "5000",
    "consumer.override.max.poll.records": "5000",
    # Unnest upserts fail when a batch holds one key twice ("ON CONFLICT DO UPDATE command cannot affect row a
    # second time"); the reduction buffer keeps each key's last change per batch.
    "use.reduction.buffer": "true",
}
SIDES = ("ours", "debezium")
PRIME_TRIES = 6
PRIME_WAIT_S = 20


@dataclass(frozen=True)
class Pipeline:
    side: Side
    dsn: str
    """The destination database."""
    slot: str


class Bench:
    """One workload's run: names under a fresh id, everything it creates removed by `stack` on leaving."""

    def __init__(
        self, args: argparse.Namespace, env: dict[str, str], workdir: Path, stack: contextlib.ExitStack, index: int
    ) -> None:
        self.args = args
        self.env = env
        self.index = index
        self.stack = stack
        self.id = f"vsd_{uuid.uuid4().hex[:8]}"
        self.workdir = workdir / self.id
        self.workdir.mkdir(parents=True)
        self.source_dsn = env["CDC_SOURCE_DSN"]
        self.offsets = EndOffsets(env["CDC_KAFKA_BOOTSTRAP"])
        stack.callback(self.offsets.close)
        stack.callback(self.offsets.delete_topics, self.id)
        self.install = ensure_install(args.home)

    def say(self, message: str) -> None:
        log(f"repeat {self.index + 1}: {message}")

    # --- source tables, slots, destinations -----------------------------------------------------------------

    def create_table(self, name: str, columns: str, fill: Sequence[sql.Composed] = ()) -> None:
        """A source table of this run (dropped on leaving), optionally filled before any slot exists."""
        with psycopg.connect(self.source_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL(f"CREATE TABLE {{}} ({columns})").format(sql.Identifier(name)))
            self.stack.callback(drop_table, self.source_dsn, name)
            for statement in fill:
                conn.execute(statement)

    def destination(self, name: str) -> str:
        """A fresh database of the destination server (dropped on leaving); its DSN."""
        return self.stack.enter_context(scratch_database(self.env["CDC_TARGET_DSN"], name))

    def slot(self, name: str) -> None:
        """A slot and publication called `name` may be made by a side: dropped on leaving."""
        self.stack.callback(drop_slot, self.source_dsn, name, name)

    # --- the sides ------------------------------------------------------------------------------------------

    def our_source(self, prefix: str, tables: list[str], snapshot: str = "never") -> dict[str, Any]:
        self.slot(prefix)
        return {
            "dsn": "${CDC_SOURCE_DSN}",
            "topic_prefix": prefix,
            "slot": {"name": prefix},
            "publication": {"name": prefix},
            "tables": {"include": [f"public.{t}" for t in tables]},
            "snapshot": {"mode": snapshot},
            "status_interval_s": 1,
            "decimal_handling": self.args.decimal_handling,
        }

    def ours(
        self,
        name: str,
        *,
        source: dict[str, Any] | None = None,
        sink_dsn: str | None = None,
        topics: list[str] | None = None,
        batch: dict[str, Any] | None = None,
    ) -> OurProcess:
        """`cdc run` with a source section, a sink section (`topics` into `sink_dsn`), or both."""
        config: dict[str, Any] = {
            "name": name,
            "kafka": {"bootstrap_servers": "${CDC_KAFKA_BOOTSTRAP}"},
            "schema_registry": {"url": "${CDC_SCHEMA_REGISTRY_URL}"},
            "server": {"enabled": False},
        }
        if source is not None:
            config["source"] = source
        if sink_dsn is not None:
            sink = {"dsn": sink_dsn, "topics": topics, "target_schema": "public", "table_name_format": "{table}"}
            config["sink"] = {**sink, **({"batch": batch} if batch else {})}
            config["transforms"] = {"source": [], "sink": []}
        process = OurProcess(self.workdir, name, config, self.env)
        self.stack.callback(process.stop)
        return process

    def debezium_source(
        self, prefix: str, tables: list[str], snapshot: str = "no_data", **extra: str
    ) -> dict[str, str]:
        self.slot(prefix)
        return postgres_source_settings(
            self.source_dsn,
            self.env["CDC_SCHEMA_REGISTRY_URL"],
            topic_prefix=prefix,
            tables=[f"public.{t}" for t in tables],
            slot=prefix,
            publication=prefix,
            **{"snapshot.mode": snapshot, "decimal.handling.mode": self.args.decimal_handling, **extra},
        )

    def jdbc_sink(self, dsn: str, topics: list[str], *, tuned: bool = True) -> dict[str, str]:
        return jdbc_sink_settings(
            dsn, self.env["CDC_SCHEMA_REGISTRY_URL"], topics=topics, **(TUNED_JDBC if tuned else {})
        )

    def connect(self, name: str, connectors: dict[str, dict[str, str]]) -> ConnectSide:
        """A Kafka Connect standalone worker running `connectors` (not started)."""
        side = ConnectSide(
            ConnectWorker(
                self.install,
                self.workdir / name,
                bootstrap=self.env["CDC_KAFKA_BOOTSTRAP"],
                registry_url=self.env["CDC_SCHEMA_REGISTRY_URL"],
                connectors=connectors,
            )
        )
        self.stack.callback(side.stop)
        return side

    def pipeline(
        self,
        name: str,
        table: str,
        *,
        batch: dict[str, Any] | None = None,
        debezium_source: dict[str, str] | None = None,
    ) -> Pipeline:
        """One side end to end on `table`, source and sink in one process, into a database of its own: ours is
        `cdc run`, Debezium's is its PostgreSQL connector and the tuned JDBC sink in one Connect worker."""
        prefix = f"{table}_{'ours' if name == 'ours' else 'dbz'}"
        dsn = self.destination(prefix)
        topics = [f"{prefix}.public.{table}"]
        side: Side
        if name == "ours":
            side = self.ours(prefix, source=self.our_source(prefix, [table]), sink_dsn=dsn, topics=topics, batch=batch)
        else:
            source = self.debezium_source(prefix, [table], **(debezium_source or {}))
            side = self.connect(prefix, {f"{prefix}_source": source, f"{prefix}_sink": self.jdbc_sink(dsn, topics)})
        return Pipeline(side, dsn, prefix)

    def prime(
        self,
        sides: dict[str, Side],
        slots: dict[str, str],
        table: str,
        write: Callable[[], object],
        arrived: dict[str, Callable[[], bool]],
    ) -> None:
        """Start every side, wait for its slot, `write` one change (row id 0 of `table`), wait until each side
        shows it (`arrived`).

        A slot is listed while it is still being created; a change committed before it is consistent is not
        decoded, so the primed row is touched again (an update that changes nothing still is a change) until it
        arrived.
        """
        for side in sides.values():
            side.start()
        for name, side in sides.items():
            if isinstance(side, ConnectSide):
                side.wait_started()
            wait_for(partial(slot_exists, self.source_dsn, slots[name]), f"slot {slots[name]}", check=side.failure)
        write()
        touch = sql.SQL("UPDATE {} SET id = id WHERE id = 0").format(sql.Identifier(table))
        for name, side in sides.items():
            for _ in range(PRIME_TRIES - 1):
                with contextlib.suppress(BenchError):
                    wait_for(arrived[name], f"{name}: the primed change", PRIME_WAIT_S, side.failure)
                    break
                if side.failure():
                    break
                execute(self.source_dsn, [touch])
            wait_for(arrived[name], f"{name}: the primed change", PRIME_WAIT_S, side.failure)
        time.sleep(2.5)  # status updates confirm the primed change on every slot

    def rotated(self, names: list[str]) -> list[str]:
        """The sides' order for this repeat: it rotates from repeat to repeat."""
        shift = self.index % len(names)
        return names[shift:] + names[:shift]


def row_arrived(dsn: str, table: str) -> Callable[[], bool]:
    return lambda: has_row(dsn, table)


def stage(bench: Bench, what: str, sides: list[str], one: Callable[[str], Figure]) -> dict[str, Any]:
    """Run `one` for every side, in this repeat's rotated order."""
    out: dict[str, Any] = {}
    for name in bench.rotated(sides):
        bench.say(f"{what}: {name} ...")
        figure = one(name)
        out[name] = figure.as_dict()
        bench.say(
            f"{what}: {name}: {figure.rate:,.0f}/s, {figure.cpu_s:.1f} CPU-s, peak RSS {figure.peak_rss_mib:.0f} MiB"
        )
    return {name: out[name] for name in sides}

"""A two-region pipeline on the stack of `cdc dev up --regions 2`: a source, one sink per region, a write load.

Region A's source produces to cluster A; MirrorMaker copies `<prefix>.public.<table>` to cluster B as
`A.<prefix>.public.<table>`. Region A's sink consumes cluster A (`<prefix>.*` and `B.<prefix>.*`, what a standby
source in B would write), region B's sink cluster B (`<prefix>.*` and `A.<prefix>.*`); both apply into the one
target database, where the ledger (`cdc.applied_changes`) lets each change take effect once.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer, TopicPartition
from psycopg import sql

from devstack.env_file import Endpoints
from devstack.mirror import REGION_A, REGION_B, remote_topic
from tests.integration.pipeline_support import drop_replication_state, table_digest

COLUMNS = ["id", "v", "note"]


@dataclass(frozen=True, slots=True)
class TwoRegions:
    """A running two-region stack; `home` is where `cdc dev up` recorded it (to stop and restart its services)."""

    home: Path
    endpoints: Endpoints

    def bootstrap(self, region: str) -> str:
        value = self.endpoints.kafka_bootstrap if region == REGION_A else self.endpoints.kafka_bootstrap_b
        assert value is not None
        return value

    def registry(self, region: str) -> str:
        value = self.endpoints.registry_url if region == REGION_A else self.endpoints.registry_url_b
        assert value is not None
        return value


def other(region: str) -> str:
    return REGION_B if region == REGION_A else REGION_A


def source_config(stack: TwoRegions, name: str, table: str, region: str) -> dict[str, Any]:
    """A source producing to `region`'s cluster; every instance (active or standby) shares the one slot."""
    return {
        "name": f"{name}-source-{region.lower()}",
        "kafka": {"bootstrap_servers": stack.bootstrap(region)},
        "schema_registry": {"url": stack.registry(region)},
        "source": {
            "dsn": stack.endpoints.source_dsn,
            "topic_prefix": name,
            "slot": {"name": name, "on_conflict": "wait"},
            "publication": {"name": name},
            "tables": {"include": [f"public.{table}"]},
            "snapshot": {"mode": "initial"},
            "heartbeat": {"interval_s": 1},
            "status_interval_s": 1,
        },
        "server": {"port": 0},
    }


def sink_config(stack: TwoRegions, name: str, region: str) -> dict[str, Any]:
    """Region `region`'s sink: its own group on its own cluster, the local topics and those mirrored from the other.

    Subjects are not checked: the mirrored topics (`A.<topic>`) have no subjects of their own; the ids resolve
    because both regions' registries share one storage.
    """
    return {
        "name": f"{name}-sink-{region.lower()}",
        "kafka": {"bootstrap_servers": stack.bootstrap(region)},
        "schema_registry": {"url": stack.registry(region)},
        "sink": {
            "dsn": stack.endpoints.target_dsn,
            "group_id": f"{name}-{region.lower()}",
            "topics_regex": f"^({other(region)}\\.)?{name}\\.public\\..*",
            "auto_offset_reset": "earliest",
            "target_schema": "public",
            "table_name_format": "{table}",
            "errors": {"check_schema_subjects": False},
            "batch": {"max_records": 500, "max_wait_ms": 100},
        },
        "server": {"port": 0},
    }


@dataclass
class Process:
    """One `cdc run` in its own process."""

    label: str
    config: dict[str, Any]
    workdir: Path
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.label}-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        path = self.workdir / f"{self.label}.json"
        path.write_text(json.dumps(self.config), encoding="utf-8")
        with self.log.open("wb") as log:  # the child keeps its own descriptor
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "connector.cli", "--env-file", os.devnull, "run", str(path)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        """kill -9: no flush, no commit, no goodbye."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def require_running(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            tail = self.log.read_text(errors="replace").splitlines()[-15:] if self.log.exists() else []
            raise AssertionError(f"{self.label} is not running; last lines of its log:\n" + "\n".join(tail))


@dataclass
class Writer:
    """A steady write load on the source table: inserts, updates and deletes, one transaction each."""

    dsn: str
    table: str
    rate: float = 40.0
    stop_event: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    transactions: int = 0
    error: BaseException | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="writer", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(30)
        if self.error is not None:
            raise AssertionError(f"the writer failed: {self.error!r}")

    def _run(self) -> None:
        rnd = random.Random(14)
        ident = sql.Identifier("public", self.table)
        pick = sql.SQL("(SELECT id FROM {} ORDER BY random() LIMIT 1)").format(ident)
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self.stop_event.is_set():
                    roll = rnd.random()
                    if roll < 0.5:
                        conn.execute(
                            sql.SQL("INSERT INTO {} (v, note) VALUES (%s, %s)").format(ident),
                            (rnd.randint(0, 10**6), uuid.uuid4().hex),
                        )
                    elif roll < 0.9:
                        conn.execute(
                            sql.SQL("UPDATE {t} SET v = v + 1, note = %s WHERE id = ").format(t=ident) + pick,
                            (uuid.uuid4().hex,),
                        )
                    else:
                        conn.execute(sql.SQL("DELETE FROM {t} WHERE id = ").format(t=ident) + pick)
                    self.transactions += 1
                    time.sleep(1 / self.rate)
        except BaseException as exc:  # reported by stop()
            self.error = exc


def create_source_table(dsn: str, table: str, rows: int = 200) -> None:
    ident = sql.Identifier("public", table)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id serial PRIMARY KEY, v integer NOT NULL, note text)").format(ident))
        conn.execute(
            sql.SQL("INSERT INTO {} (v, note) SELECT g, md5(g::text) FROM generate_series(1, %s) g").format(ident),
            (rows,),
        )


def drop_everything(stack: TwoRegions, name: str, table: str) -> None:
    drop_replication_state(stack.endpoints.source_dsn, name, name)
    with psycopg.connect(stack.endpoints.source_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("public", table)))
    with psycopg.connect(stack.endpoints.target_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("public", table)))


def converged(stack: TwoRegions, table: str) -> bool:
    """Whether the destination holds exactly the source's rows."""
    try:
        target = table_digest(stack.endpoints.target_dsn, "public", table, COLUMNS)
    except psycopg.errors.UndefinedTable:
        return False
    return table_digest(stack.endpoints.source_dsn, "public", table, COLUMNS) == target


def wait_converged(stack: TwoRegions, table: str, timeout: float, *watched: Process) -> float:
    """Seconds until the destination equals the source; fails after `timeout` or when a watched process dies."""
    started = time.monotonic()
    while not converged(stack, table):
        for process in watched:
            process.require_running()
        if time.monotonic() - started > timeout:
            source = table_digest(stack.endpoints.source_dsn, "public", table, COLUMNS)
            raise AssertionError(f"destination did not converge within {timeout:.0f}s (source {source})")
        time.sleep(0.5)
    return time.monotonic() - started


def ledger(stack: TwoRegions, table: str) -> dict[str, set[uuid.UUID]]:
    """The ledger's change ids of the destination table, by the topic their sink read: `local` (a topic a source
    wrote in the sink's own cluster) or mirrored from region `A` or `B` (`A.<topic>` is read in region B).

    With one source, in region A, `local` is what region A's sink applied and `A` what region B's sink applied.
    Fails when a change id appears twice for the table (the ledger's key forbids it; checked all the same).
    """
    with psycopg.connect(stack.endpoints.target_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT change_id, topic FROM cdc.applied_changes WHERE destination = to_regclass(%s)::oid",
            (f"public.{table}",),
        ).fetchall()
    ids = [row[0] for row in rows]
    assert len(ids) == len(set(ids)), "a change id appears twice in the ledger for one destination"
    by_origin: dict[str, set[uuid.UUID]] = {"local": set(), REGION_A: set(), REGION_B: set()}
    for change_id, topic in rows:
        origin = topic.partition(".")[0]
        by_origin[origin if origin in (REGION_A, REGION_B) else "local"].add(change_id)
    return by_origin


def applied_by_region(stack: TwoRegions, name: str, table: str, sources: tuple[str, ...]) -> dict[str, int]:
    """The ledger's change ids of the destination table by the region whose sink applied them; `sources`: the
    regions a source of the pipeline wrote in.

    A `B.` topic is read only by region A's sink and an `A.` topic only by region B's. The local topic's name is
    read in both regions once a source ran in each: the ledger row's (partition, offset) then names the cluster,
    the one whose record at that position carries the row's change id.
    """
    with psycopg.connect(stack.endpoints.target_dsn, autocommit=True) as conn:
        rows = conn.execute(
            'SELECT change_id, topic, partition, "offset" FROM cdc.applied_changes '
            "WHERE destination = to_regclass(%s)::oid",
            (f"public.{table}",),
        ).fetchall()
    topic = topic_of(name, table)
    positions = {region: positions_in(stack.bootstrap(region), topic) for region in sources}
    counts = {REGION_A: 0, REGION_B: 0}
    for change_id, read_from, partition, offset in rows:
        origin = read_from.partition(".")[0]
        if origin in (REGION_A, REGION_B):
            counts[other(origin)] += 1
            continue
        regions = [r for r in sources if positions[r].get((partition, offset)) == change_id]
        assert len(regions) == 1, f"change {change_id} of {read_from} at {partition}/{offset} found in {regions}"
        counts[regions[0]] += 1
    return counts


def change_ids_in(bootstrap: str, topic: str, timeout: float = 30.0) -> list[uuid.UUID]:
    """The `change_id` header of every committed record of `topic`, in order, read up to its end."""
    return [change_id for _, _, change_id in records_in(bootstrap, topic, timeout)]


def positions_in(bootstrap: str, topic: str, timeout: float = 30.0) -> dict[tuple[int, int], uuid.UUID]:
    """The change id of the record at each (partition, offset) of `topic`."""
    return {(partition, offset): change_id for partition, offset, change_id in records_in(bootstrap, topic, timeout)}


def records_in(bootstrap: str, topic: str, timeout: float = 30.0) -> list[tuple[int, int, uuid.UUID]]:
    """(partition, offset, `change_id` header) of every committed record of `topic`, in order, read to its end."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-regions-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "log_level": 0,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=timeout).topics[topic]
        partitions = [TopicPartition(topic, p, 0) for p in metadata.partitions]
        ends = {p.partition: consumer.get_watermark_offsets(p, timeout=timeout)[1] for p in partitions}
        consumer.assign(partitions)
        found: list[tuple[int, int, uuid.UUID]] = []
        done = {p for p, end in ends.items() if end == 0}
        deadline = time.monotonic() + timeout
        while len(done) < len(ends):
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end within {timeout:.0f}s")
            message = consumer.poll(1.0)
            if message is None:
                # Transaction markers occupy the last offsets: a position at the end means read.
                for tp in consumer.position(partitions):
                    if tp.offset >= ends[tp.partition]:
                        done.add(tp.partition)
                continue
            if message.error() is not None:
                continue
            headers = dict(message.headers() or [])
            raw = headers.get("change_id")
            partition, offset = message.partition(), message.offset()
            if partition is None or offset is None:
                continue
            if raw is not None:
                found.append((partition, offset, uuid.UUID(raw.decode() if isinstance(raw, bytes) else str(raw))))
            if offset + 1 >= ends[partition]:
                done.add(partition)
        return found
    finally:
        consumer.close()


def topic_of(name: str, table: str) -> str:
    return f"{name}.public.{table}"


def mirrored(name: str, table: str, origin: str = REGION_A) -> str:
    return remote_topic(origin, topic_of(name, table))

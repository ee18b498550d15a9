"""Active-active across two regions joined by MirrorMaker 2: a sink in each region, one shared destination.

Every test runs its own table, slot and topics. The figures (convergence and catch-up times) are printed as
`active-active:` lines (`pytest -s` shows them); they are reported, never asserted.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition
from psycopg import sql

from devstack import control, kafka, processes
from devstack.mirror import REGION_A, REGION_B
from devstack.ports import Ports
from tests.integration.regions.regions_support import (
    Process,
    TwoRegions,
    Writer,
    applied_by_region,
    change_ids_in,
    create_source_table,
    drop_everything,
    ledger,
    mirrored,
    sink_config,
    source_config,
    topic_of,
    wait_converged,
)
from tests.support.helpers import wait_for

pytestmark = pytest.mark.integration

CONVERGE_S = 180.0


def report(what: str, **figures: object) -> None:
    print(f"active-active: {what}: " + ", ".join(f"{key}={value}" for key, value in figures.items()))


@dataclass
class Pipeline:
    stack: TwoRegions
    name: str
    table: str
    source_a: Process
    sink_a: Process
    sink_b: Process
    writer: Writer

    @property
    def processes(self) -> list[Process]:
        return [self.source_a, self.sink_a, self.sink_b]

    def check_exactly_once(self, *also: str) -> dict[str, int]:
        """Destination == source was waited for; here: the ledger holds each change id in Kafka exactly once.

        The change topic of region A's source, and that of a source in each region of `also`.
        """
        in_kafka: set[uuid.UUID] = set()
        for region in (REGION_A, *also):
            in_kafka |= set(change_ids_in(self.stack.bootstrap(region), topic_of(self.name, self.table)))
        applied = ledger(self.stack, self.table)
        every = applied["local"] | applied[REGION_A] | applied[REGION_B]
        assert every == in_kafka, (
            f"{len(in_kafka - every)} change(s) never applied, {len(every - in_kafka)} applied but not in Kafka"
        )
        by_region = applied_by_region(self.stack, self.name, self.table, (REGION_A, *also))
        assert sum(by_region.values()) == len(every)
        return {
            "changes": len(in_kafka),
            "applied_by_region_a": by_region[REGION_A],
            "applied_by_region_b": by_region[REGION_B],
        }


@pytest.fixture
def pipeline(regions: TwoRegions, unique_name: Callable[[str], str], tmp_path: Path) -> Iterator[Pipeline]:
    """Source in A, a sink in A and one in B, all running, the initial snapshot applied; a writer not yet started."""
    name = unique_name("aa")
    table = name
    create_source_table(regions.endpoints.source_dsn, table)
    built = Pipeline(
        regions,
        name,
        table,
        Process("source-a", source_config(regions, name, table, REGION_A), tmp_path),
        Process("sink-a", sink_config(regions, name, REGION_A), tmp_path),
        Process("sink-b", sink_config(regions, name, REGION_B), tmp_path),
        Writer(regions.endpoints.source_dsn, table),
    )
    try:
        for process in built.processes:
            process.start()
        wait_converged(regions, table, CONVERGE_S, *built.processes)
        yield built
    finally:
        built.writer.stop_event.set()
        for process in built.processes:
            process.stop()
        drop_everything(regions, name, table)


def load(pipeline: Pipeline, seconds: float, during: Callable[[], None] | None = None) -> None:
    """Write for `seconds`; `during` runs half way through."""
    pipeline.writer.start()
    time.sleep(seconds / 2)
    if during is not None:
        during()
    time.sleep(seconds / 2)
    pipeline.writer.stop()


def paused(process: Process, until: Callable[[], object], timeout: float) -> None:
    """SIGSTOP until `until()` holds (at most `timeout` s), then SIGCONT: the process keeps its connections and its
    place in its group and does nothing meanwhile (a long GC pause, a stalled link to the destination)."""
    assert process.popen is not None
    process.popen.send_signal(signal.SIGSTOP)
    try:
        wait_for(until, timeout, interval=0.5, what=f"the other region to apply changes while {process.label} stalls")
    finally:
        process.popen.send_signal(signal.SIGCONT)


def test_both_regions_apply_into_one_destination_exactly_once(pipeline: Pipeline) -> None:
    # With both sinks healthy, region B's sink applies a change only when it gets the mirrored copy in before region
    # A's sink applies the local one, a race A mostly wins (in some runs every time). Region A's sink stalling
    # mid-load makes region B carry the load meanwhile; A, resumed, must skip what B applied.
    def stall_a() -> None:
        paused(pipeline.sink_a, lambda: ledger(pipeline.stack, pipeline.table)[REGION_A], CONVERGE_S)

    load(pipeline, 12, during=stall_a)
    seconds = wait_converged(pipeline.stack, pipeline.table, CONVERGE_S, *pipeline.processes)
    figures = pipeline.check_exactly_once()
    report("two active regions", transactions=pipeline.writer.transactions, converged_s=f"{seconds:.1f}", **figures)
    # Both regions did real work: region A's sink reads the local topic, region B's the mirrored `A.` one.
    assert figures["applied_by_region_a"] > 0
    assert figures["applied_by_region_b"] > 0


@pytest.mark.slow
def test_region_a_sink_killed_mid_load_region_b_carries_on(pipeline: Pipeline) -> None:
    killed_at: list[float] = []

    def kill_sink_a() -> None:
        pipeline.sink_a.kill()
        killed_at.append(time.monotonic())

    load(pipeline, 12, kill_sink_a)
    seconds = wait_converged(pipeline.stack, pipeline.table, CONVERGE_S, pipeline.source_a, pipeline.sink_b)
    alone = pipeline.check_exactly_once()
    # Region A's sink comes back: it finds every change it missed already applied by B, and doubles nothing.
    pipeline.sink_a.start()
    pipeline.writer = Writer(pipeline.stack.endpoints.source_dsn, pipeline.table)
    load(pipeline, 4)
    again = wait_converged(pipeline.stack, pipeline.table, CONVERGE_S, *pipeline.processes)
    figures = pipeline.check_exactly_once()
    report(
        "region A's sink killed (-9) mid-load",
        converged_after_load_s=f"{seconds:.1f}",
        applied_by_region_b_while_a_down=alone["applied_by_region_b"],
        after_restart_converged_s=f"{again:.1f}",
        **figures,
    )
    assert alone["applied_by_region_b"] > 0


def _group_lag(stack: TwoRegions, group: str, topic: str, bootstrap: str) -> int:
    """Messages of `topic` (on `bootstrap`) past the offsets `group` stored in the destination."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "cdc-test-lag", "log_level": 0})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
    finally:
        consumer.close()
    with psycopg.connect(stack.endpoints.target_dsn, autocommit=True) as conn:
        stored: dict[int, int] = dict(
            conn.execute(
                "SELECT partition, next_offset FROM cdc.sink_offsets WHERE group_id = %s AND topic = %s", (group, topic)
            ).fetchall()
        )
    # Transaction markers sit at the ends: a stored offset one short of the end has nothing left to read.
    return sum(max(0, end - stored.get(p, 0) - 1) for p, end in ends.items())


@pytest.mark.slow
def test_mirrormaker_stopped_and_restarted_region_b_catches_up(pipeline: Pipeline) -> None:
    stack = pipeline.stack

    def stop_mirror() -> None:
        record = processes.load_records(stack.home)["mirrormaker"]
        assert processes.stop(record)

    load(pipeline, 12, stop_mirror)
    # Region A alone keeps the destination whole while the link is down.
    while_down = wait_converged(stack, pipeline.table, CONVERGE_S, *pipeline.processes)
    in_a = set(change_ids_in(stack.bootstrap(REGION_A), topic_of(pipeline.name, pipeline.table)))
    in_b = set(change_ids_in(stack.bootstrap(REGION_B), mirrored(pipeline.name, pipeline.table)))
    assert in_b < in_a, "the changes written while MirrorMaker was down reached region B anyway"

    restarted = time.monotonic()
    control.up(stack.home, Ports(), regions=2)
    mirror_up = time.monotonic() - restarted
    wait_for(
        lambda: in_a <= set(change_ids_in(stack.bootstrap(REGION_B), mirrored(pipeline.name, pipeline.table))),
        CONVERGE_S,
        interval=1.0,
        what="region B's mirrored topic to hold every change of region A",
    )
    mirrored_s = time.monotonic() - restarted
    group_b, topic_b = f"{pipeline.name}-b", mirrored(pipeline.name, pipeline.table)
    wait_for(
        lambda: _group_lag(stack, group_b, topic_b, stack.bootstrap(REGION_B)) == 0,
        CONVERGE_S,
        interval=1.0,
        what="region B's sink to read the mirrored topic to its end",
    )
    caught_up_s = time.monotonic() - restarted
    for process in pipeline.processes:
        process.require_running()
    figures = pipeline.check_exactly_once()
    report(
        "MirrorMaker stopped and restarted mid-load",
        converged_while_down_s=f"{while_down:.1f}",
        missing_in_b_while_down=len(in_a - in_b),
        mirrormaker_healthy_s=f"{mirror_up:.1f}",
        region_b_topic_complete_s=f"{mirrored_s:.1f}",
        region_b_sink_caught_up_s=f"{caught_up_s:.1f}",
        **figures,
    )


@pytest.mark.slow
def test_region_a_kafka_killed_for_30s_converges(pipeline: Pipeline) -> None:
    stack = pipeline.stack
    outage: list[float] = []

    def kill_kafka_a() -> None:
        record = processes.load_records(stack.home)["kafka"]
        assert processes.stop(record, sig=signal.SIGKILL)
        started = time.monotonic()
        time.sleep(30)
        control.up(stack.home, Ports(), regions=2)
        outage.append(time.monotonic() - started)

    load(pipeline, 12, kill_kafka_a)
    seconds = wait_converged(stack, pipeline.table, CONVERGE_S, *pipeline.processes)
    kafka.probe(int(stack.bootstrap(REGION_A).rpartition(":")[2]))
    figures = pipeline.check_exactly_once()
    report(
        "region A's Kafka killed (-9) for 30 s mid-load",
        outage_s=f"{outage[0]:.1f}",
        converged_after_load_s=f"{seconds:.1f}",
        **figures,
    )


@pytest.mark.slow
def test_source_fails_over_to_region_b_standby(pipeline: Pipeline) -> None:
    stack = pipeline.stack
    config = source_config(stack, pipeline.name, pipeline.table, REGION_B)
    standby = Process("source-b", config, pipeline.source_a.workdir)
    standby.start()
    killed_at: list[float] = []
    try:

        def kill_source_a() -> None:
            pipeline.source_a.kill()
            killed_at.append(time.monotonic())

        load(pipeline, 16, kill_source_a)
        wait_for(
            lambda: bool(change_ids_in(stack.bootstrap(REGION_B), topic_of(pipeline.name, pipeline.table))),
            CONVERGE_S,
            interval=1.0,
            what="region B's standby source to take over the slot and produce",
        )
        took_over_s = time.monotonic() - killed_at[0]
        seconds = wait_converged(stack, pipeline.table, CONVERGE_S, standby, pipeline.sink_a, pipeline.sink_b)
        figures = pipeline.check_exactly_once(REGION_B)
        topic = topic_of(pipeline.name, pipeline.table)
        only_standby = set(change_ids_in(stack.bootstrap(REGION_B), topic)) - set(
            change_ids_in(stack.bootstrap(REGION_A), topic)
        )
        report(
            "source failed over from region A to region B's standby",
            first_record_in_b_after_kill_s=f"{took_over_s:.1f}",
            converged_after_load_s=f"{seconds:.1f}",
            changes_only_the_standby_sent=len(only_standby),
            **figures,
        )
        # The writes after the kill reached the destination through the standby alone.
        assert only_standby
    finally:
        standby.stop()


def _burst(pipeline: Pipeline, transactions: int, rows: int) -> int:
    """Insert `transactions` x `rows` rows as fast as the source database takes them; the number of changes."""
    ident = sql.Identifier("public", pipeline.table)
    with psycopg.connect(pipeline.stack.endpoints.source_dsn, autocommit=True) as conn:
        for _ in range(transactions):
            conn.execute(
                sql.SQL("INSERT INTO {} (v, note) SELECT g, md5(g::text) FROM generate_series(1, %s) g").format(ident),
                (rows,),
            )
    return transactions * rows


@pytest.mark.slow
def test_cost_of_the_second_region(pipeline: Pipeline) -> None:
    """The same burst applied with both regions' sinks active, then with region A's alone (B stopped)."""
    figures: dict[str, str] = {}
    for label in ("two_regions", "one_region"):
        if label == "one_region":
            pipeline.sink_b.stop()
        started = time.monotonic()
        changes = _burst(pipeline, 20, 1000)
        watched = [pipeline.source_a, pipeline.sink_a] + ([pipeline.sink_b] if label == "two_regions" else [])
        wait_converged(pipeline.stack, pipeline.table, CONVERGE_S, *watched)
        seconds = time.monotonic() - started
        figures[f"{label}_s"] = f"{seconds:.1f}"
        figures[f"{label}_changes_per_s"] = f"{changes / seconds:.0f}"
    applied = pipeline.check_exactly_once()
    report("20 000 inserts in 20 transactions, until the destination equals the source", **figures, **applied)

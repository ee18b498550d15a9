"""Incremental snapshots without services: the watermark window, positions and ids, progress only after Kafka
acknowledged a chunk, the race check, and the signals."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from core.delivery import AckTracker, TxSlot
from core.errors import RetryBudget
from core.positions import Lsn
from core.records import SNAPSHOT_COMPLETE_HEADER, Record
from schemas.catalog import ColumnInfo, PgType, TableInfo
from schemas.envelope import build_table_schemas
from sources.postgres.change_id import ChangeIds, namespace_for
from sources.postgres.config import PostgresSourceConfig
from sources.postgres.events import ChangeEvent, TableEvents
from sources.postgres.incremental import (
    WATERMARK_PREFIX,
    Chunk,
    IncrementalSnapshots,
    Signal,
    follow,
    parse_signal,
    queue_initial,
    requested_tables,
    running_xids,
    snapshot_signal_data,
)
from sources.postgres.protocol import Delete, Insert, LogicalMessage, Relation, RelationColumn, Update
from sources.postgres.selection import TableRef
from sources.postgres.snapshot import ProgressReporter
from sources.postgres.status import SourceStatus

pytestmark = pytest.mark.unit

INT4 = PgType(23, "integer", "int4", "pg_catalog", "b", "N")
TEXT = PgType(25, "text", "text", "pg_catalog", "b", "S")
IDS = ChangeIds(namespace_for("1", "db"))


def table_events(name: str = "t") -> TableEvents:
    table = TableInfo(
        "public", name, 1, "d",
        (ColumnInfo("id", 1, 23, "integer", True, 1, "b", INT4),
         ColumnInfo("v", 2, 25, "text", False, None, "b", TEXT)),
        True,
    )  # fmt: skip
    schemas = build_table_schemas(table, topic=f"p.public.{name}", topic_prefix="p")
    return TableEvents(schemas, connector_name="c", db="db", ids=IDS, tombstones=True)


class Store:
    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.state = state or {}
        self.saves = 0

    def incremental(self, slot: str) -> dict[str, Any]:
        return self.state

    def set_incremental(self, slot: str, state: dict[str, Any]) -> None:
        self.state = state
        self.saves += 1


class Factory:
    ids = IDS

    def for_table(self, table: TableRef) -> TableEvents:
        assert table.table in ("t", "u")
        return table_events(table.table)


class Output:
    """Records land here and stay unacknowledged until `ack()`."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.slots: list[TxSlot] = []

    def produce_all(self, records: list[Record], slot: TxSlot) -> None:
        self.records += records
        slot.pending += len(records)
        self.slots.append(slot)

    def produce_events(self, table: TableEvents, events: Sequence[ChangeEvent], slot: TxSlot) -> None:
        self.produce_all(table.records(events), slot)

    def produce_everywhere(self, record: Record, slot: TxSlot) -> None:
        self.produce_all([record], slot)

    def ack(self) -> None:
        for slot in self.slots:
            slot.pending = 0


class Reader:
    """A table of `rows` (id -> v); records watermarks and reads."""

    def __init__(self, rows: dict[int, str]) -> None:
        self.rows = rows
        self.watermarks: list[str] = []
        self.reads: list[Sequence[str | None] | None] = []
        self.ranges: list[tuple[str, Sequence[str | None] | None, Sequence[str | None] | None]] = []
        """(table, after, upto) of each read."""
        self.invisible: frozenset[int] = frozenset()

    def watermark(self, content: str, *, transactional: bool = False) -> None:
        # The high watermark is transactional (its commit flushes the WAL), the low one is not.
        assert transactional == content.endswith("/high")
        self.watermarks.append(content)

    def estimate(self, table: TableRef) -> int | None:
        return len(self.rows)

    def read(self, table: TableRef, columns: Sequence[str], key_columns: Sequence[str], *,
             after: Sequence[str | None] | None, filters: Sequence[str], limit: int,
             upto: Sequence[str | None] | None = None) -> Chunk:  # fmt: skip
        self.reads.append(after)
        self.ranges.append((str(table), after, upto))
        start = int(after[0] or 0) if after else 0
        end = int(upto[0] or 0) if upto else None
        keys = sorted(k for k in self.rows if k > start and (end is None or k <= end))[:limit]
        return Chunk([(str(k), self.rows[k]) for k in keys], self.invisible)

    def split_points(self, table: TableRef, key_columns: Sequence[str], *, rows: int,
                     parts: int) -> list[list[str | None]]:  # fmt: skip
        keys = sorted(self.rows)
        return [[str(keys[rows * part // parts])] for part in range(1, parts)]

    def close(self) -> None:
        pass


def config(**source: Any) -> PostgresSourceConfig:
    return PostgresSourceConfig.model_validate({
        "dsn": "postgresql://x@localhost/db", "topic_prefix": "p", "slot": {"name": "s"}, "publication": {"name": "s"},
        "signal": {"table": "cdc.signals"}, "incremental_snapshot": {"chunk_size": 3}, **source,
    })  # fmt: skip


class Harness:
    def __init__(
        self, rows: dict[int, str], store: Store | None = None, poll: Callable[[float], None] | None = None,
        **source: Any,
    ) -> None:  # fmt: skip
        self.reader = Reader(rows)
        self.output = Output()
        self.store = store or Store()
        self.tracker = AckTracker()
        self.snapshots = IncrementalSnapshots(
            config(**source), conn=None, store=self.store, factory=Factory(), output=self.output,  # type: ignore[arg-type]
            tracker=self.tracker, status=SourceStatus(RetryBudget(None)),
            readers=lambda: self.reader,  # type: ignore[arg-type,return-value]
            published=lambda: [TableRef("public", "t"), TableRef("public", "u")], poll=poll,
        )  # fmt: skip

    def request(self, **data: Any) -> None:
        self.snapshots.apply(Signal("s-1", "execute-snapshot", {"data-collections": ["public.t"], **data}))

    def mark(self, which: str, lsn: int) -> None:
        """The stream meets the newest window's watermark `which` at `lsn`."""
        content = next(w for w in reversed(self.reader.watermarks) if w.endswith("/" + which))
        self.snapshots.message(LogicalMessage(False, lsn, WATERMARK_PREFIX, content.encode()), lsn)

    def produced(self) -> list[tuple[str, int, int, str | None]]:
        """(op, id, position, snapshot marker) of each row record produced."""
        return [(r.value["op"], r.value["after"]["id"], r.value["source"]["lsn"], r.value["source"]["snapshot"])
                for r in self.output.records if r.value is not None]  # fmt: skip


def stream_change(snapshots: IncrementalSnapshots, message: Insert | Update | Delete, table: str = "t") -> None:
    changes = table_events(table).changes(message, lsn=1500, commit_lsn=1600, ordinal=0, xid=9, commit_ms=0)
    snapshots.changed(f"public.{table}", changes)


def test_rows_changed_between_the_watermarks_are_dropped_and_the_rest_go_out_at_the_low_watermark() -> None:
    h = Harness({1: "a", 2: "b", 3: "c", 4: "d"})
    h.request()
    assert h.snapshots.tick()
    assert [w.rsplit("/", 1)[1] for w in h.reader.watermarks] == ["low", "high"]
    assert h.snapshots.watching == frozenset()  # before the low watermark the stream's changes are older than the chunk
    h.mark("low", 1000)
    assert h.snapshots.watching == {"public.t"}
    stream_change(h.snapshots, Update(1, ("2", "b2"), None, False))
    stream_change(h.snapshots, Delete(1, ("3", None), True))
    stream_change(h.snapshots, Insert(1, ("9", "z")))  # outside the chunk: nothing to drop
    assert h.output.records == []
    h.mark("high", 2000)
    assert h.produced() == [("r", 1, 1000, "incremental")]
    (record,) = h.output.records
    assert record.value is not None and record.value["change_id"] == IDS.snapshot(1000, "public", "t", ["1"])
    assert dict(record.headers)["source_lsn"] == b"1000:1000"


def test_progress_is_saved_only_once_kafka_acknowledged_the_chunk_and_the_next_chunk_waits_for_it() -> None:
    h = Harness({1: "a", 2: "b", 3: "c", 4: "d", 5: "e"})
    h.request()
    h.snapshots.tick()
    h.mark("low", 1000)
    h.mark("high", 2000)
    assert len(h.output.records) == 3
    assert not h.snapshots.tick()  # unacknowledged: no progress, no next chunk
    assert h.store.state["tables"][0]["last_key"] is None and h.reader.reads == [None]
    h.output.ack()
    assert h.snapshots.tick()
    table = h.store.state["tables"][0]
    assert (table["last_key"], table["rows"], table["chunks"], table["done"]) == (["3"], 3, 1, False)
    assert h.reader.reads == [None, ["3"]]
    h.mark("low", 3000)
    h.mark("high", 4000)
    h.output.ack()
    assert not h.snapshots.tick()
    table = h.store.state["tables"][0]
    assert (table["rows"], table["done"]) == (5, True)
    # The last chunk ends with the snapshot-complete marker, positioned at the first chunk's low watermark.
    marker = h.output.records[-1]
    assert marker.value is None and dict(marker.headers)[SNAPSHOT_COMPLETE_HEADER] == b'{"schema":"public","table":"t"}'
    assert dict(marker.headers)["source_lsn"] == b"1000:1000"


def test_a_restart_goes_on_from_the_persisted_last_key() -> None:
    store = Store({"paused": False, "tables": [{"table": "public.t", "last_key": ["3"], "rows": 3, "chunks": 1}]})
    h = Harness({1: "a", 2: "b", 3: "c", 4: "d"}, store)
    assert h.snapshots.tick()
    assert h.reader.reads == [["3"]]


def test_a_transaction_streamed_before_the_low_watermark_but_unseen_by_the_read_makes_the_chunk_read_again() -> None:
    h = Harness({1: "a", 2: "b"})
    h.request()
    h.reader.invisible = frozenset({77})
    h.snapshots.tick()
    h.snapshots.committed(77)  # committed before the low watermark, yet running for the chunk's snapshot
    h.mark("low", 1000)
    assert h.snapshots.watching == frozenset()
    h.mark("high", 2000)
    assert h.output.records == []
    h.reader.invisible = frozenset()
    assert h.snapshots.tick()
    assert h.reader.reads == [None, None]
    h.snapshots.committed(78)
    h.mark("low", 3000)
    h.mark("high", 4000)
    assert [p[1:3] for p in h.produced()] == [(1, 3000), (2, 3000)]


def test_watermarks_of_another_window_are_ignored() -> None:
    h = Harness({1: "a"})
    h.request()
    h.snapshots.tick()
    for content in ("s/other-1/low", "other-slot/x/high"):
        h.snapshots.message(LogicalMessage(False, 5, WATERMARK_PREFIX, content.encode()), 5)
    h.snapshots.message(LogicalMessage(False, 5, "cdc-heartbeat", b"s/x/low"), 5)
    assert h.snapshots.watching == frozenset() and h.output.records == []


def test_a_truncate_in_the_window_empties_the_chunk() -> None:
    h = Harness({1: "a", 2: "b"})
    h.request()
    h.snapshots.tick()
    h.mark("low", 1000)
    h.snapshots.truncated("public.t")
    h.mark("high", 2000)
    assert h.produced() == []


def test_a_filtered_snapshot_reads_with_the_filter_and_sends_no_complete_marker() -> None:
    h = Harness({1: "a"})
    h.request(**{"additional-conditions": [{"data-collection": "public.t", "filter": "id > 0"}]})
    h.snapshots.tick()
    h.mark("low", 1000)
    h.mark("high", 2000)
    assert [r.value is not None for r in h.output.records] == [True]
    assert h.store.state["tables"][0]["where"] == "id > 0"


def test_stop_pause_and_resume_signals() -> None:
    h = Harness({1: "a"})
    h.snapshots.apply(Signal("p", "pause-snapshot", {}))
    h.request()
    assert not h.snapshots.tick() and h.store.state["paused"] is True
    h.snapshots.apply(Signal("r", "resume-snapshot", {}))
    assert h.snapshots.tick()
    h.snapshots.apply(Signal("x", "stop-snapshot", {"data-collections": ["public.t"], "type": "incremental"}))
    assert h.store.state["tables"] == []
    h.mark("low", 1000)  # the stopped window's marks change nothing
    h.mark("high", 2000)
    assert h.output.records == [] and not h.snapshots.tick()


def test_tables_not_in_the_publication_are_refused() -> None:
    h = Harness({1: "a"})
    h.snapshots.apply(Signal("s", "execute-snapshot", {"data-collections": ["public.other"]}))
    assert h.store.state["tables"] == []


def test_signal_rows_arrive_from_the_signal_table_relation() -> None:
    h = Harness({1: "a"})
    columns = tuple(RelationColumn(n, 25, -1, n == "id") for n in ("id", "type", "data"))
    assert not h.snapshots.take_relation(Relation(5, "public", "t", "d", columns))
    assert h.snapshots.take_relation(Relation(6, "cdc", "signals", "d", columns))
    assert h.snapshots.signal_relation == 6
    h.snapshots.signal(Insert(6, ("a", "execute-snapshot", '{"data-collections": ["public.t"]}')))
    assert [t["table"] for t in h.store.state["tables"]] == ["public.t"]
    h.snapshots.signal(Insert(6, ("b", "execute-snapshot", "not json")))  # logged and ignored
    assert len(h.store.state["tables"]) == 1


def test_signal_parsing() -> None:
    signal = parse_signal({"id": "1", "type": "execute-snapshot", "data": '{"data-collections": ["a.b", "c"]}'})
    assert requested_tables(signal) == [("a.b", None), ("public.c", None)]
    data = snapshot_signal_data(["public.t"], "id > 5")
    assert requested_tables(Signal("2", "execute-snapshot", data)) == [("public.t", "id > 5")]
    old_style = Signal("3", "execute-snapshot", {"data-collections": ["public.t"], "additional-condition": "x = 1"})
    assert requested_tables(old_style) == [("public.t", "x = 1")]
    assert parse_signal({"id": "4", "type": "pause-snapshot", "data": None}).data == {}
    with pytest.raises(ValueError, match="not a JSON object"):
        parse_signal({"id": "5", "type": "x", "data": "[1]"})


def test_running_xids_are_32_bit() -> None:
    assert running_xids("10:20:") == frozenset()
    assert running_xids("10:20:12,15") == {12, 15}
    assert running_xids(f"{(1 << 32) + 5}:{(1 << 32) + 9}:{(1 << 32) + 7}") == {7}


def test_a_new_table_is_queued_without_a_signal() -> None:
    h = Harness({1: "a"})
    h.snapshots.request_table(TableRef("public", "t"))
    assert [t["table"] for t in h.store.state["tables"]] == ["public.t"]
    assert h.snapshots.tick() and h.reader.reads == [None]


def test_the_race_check_covers_transactions_streamed_inside_the_previous_window() -> None:
    h = Harness({1: "a", 2: "b", 3: "c", 4: "d"})
    h.request()
    h.snapshots.tick()
    h.mark("low", 1000)
    h.snapshots.committed(55)  # between the first chunk's watermarks
    h.mark("high", 2000)
    h.output.ack()
    h.reader.invisible = frozenset({55})  # ... and still running for the second chunk's read
    assert h.snapshots.tick()
    h.mark("low", 3000)
    assert h.snapshots.watching == frozenset()  # the second chunk is read again


def test_with_kafka_polled_the_next_chunk_follows_at_once() -> None:
    outputs: list[Output] = []
    h = Harness({1: "a", 2: "b", 3: "c", 4: "d"}, poll=lambda timeout: outputs[0].ack())
    outputs.append(h.output)
    h.request()
    h.snapshots.tick()
    h.mark("low", 1000)
    h.mark("high", 2000)
    assert h.reader.reads == [None, ["3"]] and h.store.state["tables"][0]["rows"] == 3


def test_progress_is_reported_against_the_estimate(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness({1: "a", 2: "b"})
    h.request()
    h.snapshots.tick()
    h.mark("low", 1000)
    h.mark("high", 2000)
    h.output.ack()
    with caplog.at_level("INFO"):
        h.snapshots.tick()
    assert "snapshot public.t (incremental): 2 of ~2 rows (100%)" in caplog.text
    h.snapshots.close()


def test_a_large_table_is_split_into_key_ranges_read_between_the_same_watermarks() -> None:
    rows = {k: chr(96 + k) for k in range(1, 11)}
    h = Harness(rows, incremental_snapshot={"chunk_size": 3, "parallelism": 2})
    h.request()
    assert h.snapshots.tick()
    # One low and one high watermark around both chunks: 1-3 of the first range, 7-9 of the second (split at 6).
    assert [w.rsplit("/", 1)[1] for w in h.reader.watermarks] == ["low", "high"]
    assert sorted(h.reader.ranges, key=str) == [("public.t", None, ["6"]), ("public.t", ["6"], None)]
    h.mark("low", 1000)
    stream_change(h.snapshots, Update(1, ("2", "b2"), None, False))  # in the first chunk
    stream_change(h.snapshots, Delete(1, ("8", None), True))  # in the second
    h.mark("high", 2000)
    assert sorted(r[1] for r in h.produced()) == [1, 3, 7, 9]
    assert {r[2] for r in h.produced()} == {1000}
    h.output.ack()
    assert h.snapshots.tick()
    (table,) = h.store.state["tables"]
    assert [(r["upper"], r["last_key"], r["done"]) for r in table["ranges"]] == [(["6"], ["3"], False),
                                                                                (None, ["9"], False)]  # fmt: skip
    assert (table["rows"], table["chunks"], table["done"]) == (4, 2, False)
    h.mark("low", 3000)
    h.mark("high", 4000)
    h.output.ack()
    assert h.snapshots.tick()  # 4-6 of the first range (a full chunk: maybe more), 10 ends the second
    assert h.reader.ranges[-1] == ("public.t", ["6"], ["6"])  # only the first range is left
    h.mark("low", 5000)
    h.mark("high", 6000)
    h.output.ack()
    assert not h.snapshots.tick()
    (table,) = h.store.state["tables"]
    assert table["done"] and all(r["done"] for r in table["ranges"])
    assert sorted(r[1] for r in h.produced()) == [1, 3, 4, 5, 6, 7, 9, 10]
    markers = [r for r in h.output.records if r.value is None and SNAPSHOT_COMPLETE_HEADER in dict(r.headers)]
    assert len(markers) == 1 and h.output.records[-1] is markers[0]
    assert dict(markers[0].headers)["source_lsn"] == b"1000:1000"


def test_several_tables_are_read_in_one_window_and_changes_leave_only_their_own_table() -> None:
    h = Harness({1: "a", 2: "b"}, incremental_snapshot={"chunk_size": 3, "parallelism": 2})
    h.snapshots.apply(Signal("s-1", "execute-snapshot", {"data-collections": ["public.t", "public.u"]}))
    assert h.snapshots.tick()
    assert sorted(t for t, _, _ in h.reader.ranges) == ["public.t", "public.u"]
    h.mark("low", 1000)
    assert h.snapshots.watching == {"public.t", "public.u"}
    stream_change(h.snapshots, Update(1, ("1", "a2"), None, False), table="u")
    h.mark("high", 2000)
    topics = sorted((r.topic, r.value["after"]["id"]) for r in h.output.records if r.value is not None)
    assert topics == [("p.public.t", 1), ("p.public.t", 2), ("p.public.u", 2)]
    h.output.ack()
    h.snapshots.tick()
    assert [(t["table"], t["rows"], t["done"]) for t in h.store.state["tables"]] == [("public.t", 2, True),
                                                                                     ("public.u", 1, True)]  # fmt: skip


def test_a_restart_goes_on_with_the_persisted_key_ranges() -> None:
    ranges = [{"upper": ["6"], "last_key": ["3"], "done": False}, {"upper": None, "last_key": ["9"], "done": False}]
    store = Store({"paused": False, "tables": [{"table": "public.t", "rows": 6, "chunks": 2, "split": True,
                                                 "ranges": ranges}]})  # fmt: skip
    h = Harness({k: "x" for k in range(1, 11)}, store, incremental_snapshot={"chunk_size": 3, "parallelism": 2})
    assert h.snapshots.tick()
    assert sorted(h.reader.ranges, key=str) == [("public.t", ["3"], ["6"]), ("public.t", ["9"], None)]


def test_follow_shows_the_tables_of_its_signal_until_they_are_done(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sources.postgres.snapshot")
    states = [
        {"tables": [{"table": "public.t", "rows": 10, "done": True, "signal": "older"}]},  # an earlier snapshot
        {"tables": [{"table": "public.t", "rows": 0, "estimated_rows": 20, "signal": "s-9"}]},
        {"tables": [{"table": "public.t", "rows": 20, "estimated_rows": 20, "done": True, "signal": "s-9"}]},
    ]
    reads = iter(states)
    sleeps: list[float] = []
    reporter = ProgressReporter(stream=io.StringIO())
    assert follow(lambda: next(reads), "s-9", ["public.t"], reporter=reporter, sleep=sleeps.append)
    assert len(sleeps) == 2  # polled until the third state
    assert caplog.records[-1].getMessage().startswith("snapshot public.t (incremental): 20 of ~20 rows (100%)")
    assert not follow(lambda: states[1], "s-9", ["public.t"], reporter=reporter, until=lambda: True)


def test_the_signal_id_is_kept_with_the_requested_table() -> None:
    h = Harness({1: "a"})
    h.snapshots.apply(Signal("s-7", "execute-snapshot", {"data-collections": ["public.t"]}))
    assert h.store.state["tables"][0]["signal"] == "s-7"


class PutStore(Store):
    def __init__(self) -> None:
        super().__init__()
        self.puts: list[tuple[str, Any, str, dict[str, Any] | None]] = []

    def put(self, slot: str, consistent_point: Any, state: str, progress: dict[str, Any] | None = None) -> None:
        self.puts.append((slot, consistent_point, state, progress))
        self.state = (progress or {}).get("incremental", {})


def test_an_initial_snapshot_in_chunks_queues_every_table_and_marks_the_slot_done_at_once() -> None:
    store = PutStore()
    queue_initial(store, "s", Lsn(1234), [TableRef("public", "t"), TableRef("public", "u")])  # type: ignore[arg-type]
    ((slot, point, state, progress),) = store.puts  # one statement: the queue and `done` together
    assert (slot, point, state) == ("s", Lsn(1234), "done")
    assert progress is not None
    assert [(t["table"], t["signal"], t["done"]) for t in progress["incremental"]["tables"]] == [
        ("public.t", "initial", False), ("public.u", "initial", False)]  # fmt: skip
    # The running source takes them up from the persisted state.
    h = Harness({1: "a", 2: "b"}, store, incremental_snapshot={"chunk_size": 3, "parallelism": 2})
    assert h.snapshots.active and h.snapshots.tick()
    assert sorted(t for t, _, _ in h.reader.ranges) == ["public.t", "public.u"]

"""Snapshot progress: the row estimate of never-analysed tables, bars on a terminal, log lines elsewhere."""

from __future__ import annotations

import io
import logging

import pytest

from sources.postgres.snapshot import ProgressReporter, SnapshotProgress, TableProgress, estimate_rows

pytestmark = pytest.mark.unit

BLOCK = 8192


@pytest.mark.parametrize(
    ("reltuples", "relpages", "size", "expected"),
    [
        (-1, 0, 10 * BLOCK, None),  # never vacuumed or analysed (PostgreSQL 14+)
        (0, 0, 10 * BLOCK, None),  # never analysed before PostgreSQL 14
        (-1, 0, 0, 0),  # empty
        (1000, 10, 10 * BLOCK, 1000),
        (1000, 10, 20 * BLOCK, 2000),  # grown since the last analyse: scaled like the planner does
    ],
)
def test_estimate_is_unknown_rather_than_zero_for_a_never_analysed_table(
    reltuples: float, relpages: int, size: int, expected: int | None
) -> None:
    assert estimate_rows(reltuples, relpages, size, BLOCK) == expected


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _snapshot(reporter: ProgressReporter, table: TableProgress) -> None:
    SnapshotProgress("0/1", {table.table: table})
    for _ in range(3):
        table.rows += 500
        reporter.tick(table)
    table.done = True
    reporter.tick(table, force=True)
    reporter.close()


def test_a_terminal_gets_a_bar_per_table_and_no_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sources.postgres.snapshot")
    terminal = _Terminal()
    reporter = ProgressReporter(stream=terminal)
    _snapshot(reporter, TableProgress("public.customers", None))
    _snapshot(ProgressReporter(stream=terminal), TableProgress("public.orders", 1000))
    out = terminal.getvalue()
    assert "snapshot public.customers" in out and "snapshot public.orders" in out
    assert "1500/1500" in out  # a finished table's bar is full, whatever the estimate said
    assert "rows/s" in out and "━" in out
    assert not caplog.records


def test_elsewhere_log_lines_say_unknown_instead_of_zero_and_no_bar_is_drawn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sources.postgres.snapshot")
    pipe = io.StringIO()
    _snapshot(ProgressReporter(stream=pipe), TableProgress("public.customers", None))
    _snapshot(ProgressReporter(stream=pipe), TableProgress("public.orders", 1000))
    assert pipe.getvalue() == ""
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("snapshot public.customers: 1500 rows (total unknown: the table was never analysed)")
               for m in messages)  # fmt: skip
    assert any(m.startswith("snapshot public.orders: 1500 of ~1000 rows (100%)") for m in messages)
    assert not any("~0" in m or "(?)" in m for m in messages)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_log_lines_carry_the_rate_and_the_time_left_and_an_empty_estimate_is_unknown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sources.postgres.snapshot")
    clock = Clock()
    reporter = ProgressReporter(stream=io.StringIO(), clock=clock)
    orders = TableProgress("public.orders", 10_000)
    reporter.tick(orders)
    clock.now += 10
    orders.rows = 2_000
    reporter.tick(orders, force=True)
    assert caplog.records[-1].getMessage() == "snapshot public.orders: 2000 of ~10000 rows (20%), 200 rows/s, ETA 40s"
    # reltuples 0 (or -1) on a table that holds rows: never "1004 of ~0 rows"
    empty = TableProgress("public.fresh", 0, rows=1004)
    reporter.tick(empty, force=True)
    assert caplog.records[-1].getMessage() == (
        "snapshot public.fresh: 1004 rows (total unknown: the statistics said empty)"
    )
    clock.now += 2
    empty.rows = 1504
    reporter.tick(empty, force=True)
    assert caplog.records[-1].getMessage().endswith("1504 rows (total unknown: the statistics said empty), 250 rows/s")

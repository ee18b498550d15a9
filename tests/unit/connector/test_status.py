"""Rendering of `cdc status`: tables of each part, unreadable parts named, no Python reprs."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from connector.status import render

pytestmark = pytest.mark.unit


def _report(**parts: Any) -> dict[str, Any]:
    report: dict[str, Any] = {
        "name": "orders",
        "ok": True,
        "unreadable": [],
        "kafka": {
            "error": None,
            "topics": [
                {"topic": "app.public.orders", "partitions": [{"partition": 0, "log_start": 0, "log_end": 1200}]}
            ],
        },
        "source": {
            "error": None,
            "slot": "cdc_orders",
            "slot_state": "inactive",
            "active_pid": None,
            "confirmed_flush_lsn": "0/1A2B3C4",
            "lag_bytes": 3 * 1024 * 1024,
            "wal_status": "reserved",
            "snapshot": {
                "state": "done",
                "rows": 1200,
                "estimated_rows": None,
                "tables": [{"table": "public.orders", "rows": 1200, "estimated_rows": None, "done": True}],
            },
        },
        "sink": {
            "error": None,
            "group_id": "cdc-orders",
            "partitions": [
                {"topic": "app.public.orders", "partition": 0, "next_offset": 1150, "log_end": 1200, "lag": 50}
            ],
            "lag": 50,
        },
        "schema_registry": {
            "error": None,
            "subjects": ["app.public.orders-key", "app.public.orders-value"],
            "subjects_in_registry": 7,
        },
    }
    report.update(parts)
    return report


def _render(report: dict[str, Any]) -> str:
    out = io.StringIO()
    render(report, Console(file=out, width=120, force_terminal=False, color_system=None))
    return out.getvalue()


def test_every_part_is_a_table_row_without_python_reprs() -> None:
    text = _render(_report())
    assert "None" not in text and "{" not in text
    lines = text.splitlines()
    assert any("cdc_orders" in line and "inactive" in line and "3.0 MB" in line for line in lines)
    assert any("public.orders" in line and "1,200" in line and "yes" in line for line in lines)
    assert any("app.public.orders" in line and "1,150" in line and "1,200" in line and "50" in line for line in lines)
    assert "total lag 50" in text
    assert "app.public.orders-value" in text and "2 of 7" in text
    assert "could not read" not in text


def test_an_active_slot_shows_its_pid() -> None:
    report = _report()
    report["source"] = {**report["source"], "slot_state": "active", "active_pid": 4242, "lag_bytes": 0}
    text = _render(report)
    assert "active (pid 4242)" in text
    assert "every write on the server" not in text  # the note on WAL only comes with WAL to explain


def test_unreadable_parts_are_named_and_the_rest_still_shows() -> None:
    error = "Local: Broker transport failure"
    report = _report(
        ok=False,
        unreadable=[{"part": "kafka", "error": error}],
        kafka={"error": error, "topics": None},
        sink={
            "error": None,
            "group_id": "cdc-orders",
            "partitions": [
                {"topic": "app.public.orders", "partition": 0, "next_offset": 1150, "log_end": None, "lag": None}
            ],
            "lag": None,
        },
    )
    text = _render(report)
    assert f"Kafka: cannot read: {error}" in text
    assert "could not read: kafka" in text
    assert any("app.public.orders" in line and "1,150" in line and "?" in line for line in text.splitlines())
    assert "None" not in text


def test_incremental_snapshots_show_per_table_progress() -> None:
    report = _report()
    snapshot = report["source"]["snapshot"]
    report["source"]["snapshot"] = {**snapshot, "incremental": {"paused": True, "tables": [
        {"table": "public.orders", "where": "id > 5", "rows": 2048, "estimated_rows": 10000, "chunks": 2,
         "last_key": ["2053"], "done": False, "rows_per_s": 4096.4, "eta_s": 1.95},
        {"table": "public.big", "where": None, "rows": 5000, "estimated_rows": None, "chunks": 5, "last_key": None,
         "done": False, "ranges": [{"upper": ["9"], "last_key": ["9"], "done": True},
                                   {"upper": None, "last_key": ["12"], "done": False}]},
    ]}}  # fmt: skip
    text = _render(report)
    assert "Incremental snapshots (paused)" in text
    assert any("public.orders where id > 5" in line and "2,048" in line and "10,000" in line and "2053" in line
               and "4,096" in line and "2s" in line and "no" in line for line in text.splitlines())  # fmt: skip
    assert any("public.big" in line and "unknown" in line and "1/2 key ranges done" in line
               for line in text.splitlines())  # fmt: skip
    assert "None" not in text

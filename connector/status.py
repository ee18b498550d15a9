"""`cdc status`: one report of a connector read from the services (slot, snapshot, topics, sink, registry).

The report has the same keys whatever could be read: a part that could not be read has its `error` set,
its values null, and is named in `unreadable`, so scripts read `--json` without guessing and the command
exits non-zero. On a terminal the report is a set of tables.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from connector.config import ConnectorConfig
from core.kafka import kafka_settings
from core.logs import scrub
from schemas.registry import registry_client
from sinks.base import Sink
from sources.base import Source

DEFAULT_TIMEOUT_S = 10.0


def ours(config: ConnectorConfig, topic: str) -> bool:
    """Whether a topic is one this connector writes (`{topic_prefix}.…`) or reads (`sink.topics`, `topics_regex`)."""
    if config.source is not None and topic.startswith(f"{config.source.topic_prefix}."):
        return True
    if config.sink is not None:
        if topic in config.sink.topics:
            return True
        if config.sink.topics_regex and re.search(config.sink.topics_regex, topic):
            return True
    return False


def _described(exc: BaseException) -> str:
    if isinstance(exc, KafkaException) and exc.args and hasattr(exc.args[0], "str"):
        return str(exc.args[0].str())
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return scrub(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def read_topics(config: ConnectorConfig, timeout_s: float) -> list[dict[str, Any]]:
    """Each of the connector's topics with the first and next offset of each partition."""
    admin = AdminClient({**kafka_settings(config.kafka), "log_level": 0})
    metadata = admin.list_topics(timeout=timeout_s)
    partitions = [
        TopicPartition(name, number)
        for name, topic in sorted(metadata.topics.items())
        if ours(config, name)
        for number in sorted(topic.partitions)
    ]
    ends: dict[tuple[str, int], dict[str, int]] = {(p.topic, p.partition): {} for p in partitions}
    for field, spec in (("log_start", OffsetSpec.earliest()), ("log_end", OffsetSpec.latest())):
        if not partitions:
            break
        futures = admin.list_offsets({p: spec for p in partitions}, request_timeout=timeout_s)
        for partition, future in futures.items():
            ends[(partition.topic, partition.partition)][field] = future.result().offset
    topics: dict[str, list[dict[str, Any]]] = {}
    for (name, number), offsets in ends.items():
        topics.setdefault(name, []).append(
            {"partition": number, "log_start": offsets.get("log_start"), "log_end": offsets.get("log_end")}
        )
    return [{"topic": name, "partitions": parts} for name, parts in topics.items()]


def read_subjects(config: ConnectorConfig, timeout_s: float) -> list[str]:
    client = registry_client(config.schema_registry, timeout_s)
    try:
        return list(client.get_subjects())
    finally:
        client.close()


def _read(part: str, body: Callable[[], Any], unreadable: list[dict[str, str]]) -> tuple[Any, str | None]:
    try:
        return body(), None
    except Exception as exc:  # every part is reported, whatever went wrong reading it
        error = _described(exc)
        unreadable.append({"part": part, "error": error})
        return None, error


def gather(
    config: ConnectorConfig,
    source: Source | None,
    sink: Sink | None,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> dict[str, Any]:
    """The whole report (see the module docstring) of the configured `source` and/or `sink`."""
    unreadable: list[dict[str, str]] = []
    report: dict[str, Any] = {"name": config.name, "ok": True, "unreadable": unreadable}

    topics, kafka_error = _read("kafka", lambda: read_topics(config, timeout_s), unreadable)
    report["kafka"] = {"error": kafka_error, "topics": topics}

    report["source"] = None
    if source is not None:
        found, error = _read("source", source.inspect, unreadable)
        report["source"] = _source_section(found, error, config)

    report["sink"] = None
    if sink is not None:
        found, error = _read("sink", sink.inspect, unreadable)
        report["sink"] = _sink_section(found, error, config, topics)

    subjects, registry_error = _read("schema_registry", lambda: read_subjects(config, timeout_s), unreadable)
    report["schema_registry"] = {
        "error": registry_error,
        "subjects": None if subjects is None else sorted(s for s in subjects if ours(config, s.rsplit("-", 1)[0])),
        "subjects_in_registry": None if subjects is None else len(subjects),
    }
    report["ok"] = not unreadable
    return report


def _source_section(found: dict[str, Any] | None, error: str | None, config: ConnectorConfig) -> dict[str, Any]:
    found = found or {}
    assert config.source is not None
    snapshot = found.get("snapshot")
    return {
        "error": error,
        "slot": config.source.slot.name,
        "slot_state": found.get("slot_state"),
        "active_pid": found.get("active_pid"),
        "confirmed_flush_lsn": found.get("confirmed_flush_lsn"),
        "lag_bytes": found.get("lag_bytes"),
        "wal_status": found.get("wal_status"),
        "snapshot": None
        if snapshot is None
        else {
            "state": snapshot.get("state"),
            "rows": snapshot.get("rows"),
            "estimated_rows": snapshot.get("estimated_rows"),
            "tables": [
                {
                    "table": name,
                    "rows": table.get("rows"),
                    "estimated_rows": table.get("estimated_rows"),
                    "done": bool(table.get("done")),
                }
                for name, table in sorted((snapshot.get("tables") or {}).items())
            ],
            "incremental": _incremental(snapshot),
        },
    }


def _incremental(snapshot: dict[str, Any] | None) -> dict[str, Any] | None:
    """The source's incremental snapshots (requested tables and how far each got), if any was ever requested."""
    state = (snapshot or {}).get("incremental")
    if not state:
        return None
    return {
        "paused": bool(state.get("paused")),
        "tables": [
            {
                "table": t.get("table"),
                "where": t.get("where"),
                "rows": t.get("rows"),
                "estimated_rows": t.get("estimated_rows"),
                "chunks": t.get("chunks"),
                "last_key": t.get("last_key"),
                "ranges": t.get("ranges") or [],
                "rows_per_s": t.get("rows_per_s"),
                "eta_s": t.get("eta_s"),
                "done": bool(t.get("done")),
            }
            for t in state.get("tables") or []
        ],
    }


def _sink_section(
    found: dict[str, Any] | None, error: str | None, config: ConnectorConfig, topics: list[dict[str, Any]] | None
) -> dict[str, Any]:
    ends = {
        (topic["topic"], part["partition"]): part["log_end"] for topic in topics or () for part in topic["partitions"]
    }
    partitions = []
    for stored in (found or {}).get("partitions", ()):
        log_end = ends.get((stored["topic"], stored["partition"]))
        partitions.append(
            {
                "topic": stored["topic"],
                "partition": stored["partition"],
                "next_offset": stored["next_offset"],
                "log_end": log_end,
                "lag": None if log_end is None else max(log_end - stored["next_offset"], 0),
            }
        )
    lags = [p["lag"] for p in partitions]
    return {
        "error": error,
        "group_id": config.group_id,
        "partitions": None if found is None else partitions,
        "lag": None if found is None or topics is None or None in lags else sum(lags),
    }


# -- rendering ---------------------------------------------------------------------------------------------


def _bytes(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _position(table: dict[str, Any]) -> str:
    """The last key read, or how many of a split table's key ranges are done."""
    ranges = table.get("ranges") or []
    if len(ranges) > 1:
        return f"{sum(1 for r in ranges if r.get('done'))}/{len(ranges)} key ranges done"
    return ", ".join(str(k) for k in table["last_key"] or []) or "-"


def _eta(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole}s" if whole < 60 else f"{whole // 60}m{whole % 60:02d}s" if whole < 3600 else \
        f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _n(value: Any) -> str:
    return "?" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


class _Section:
    """A heading line and its table (a table's own title wraps at the table's width)."""

    def __init__(self, title: str, columns: Iterable[str], rows: Iterable[Iterable[str]], right: int = 0) -> None:
        self.title = title
        self.table = Table(box=box.SIMPLE_HEAD, show_edge=False)
        for index, column in enumerate(columns):
            self.table.add_column(column, justify="right" if index >= right > 0 else "left")
        for row in rows:
            self.table.add_row(*row)

    def __rich__(self) -> Group:
        return Group(Text(""), Text(self.title, style="bold"), self.table)


def render(report: dict[str, Any], console: Console) -> None:
    """The report as tables; unreadable parts in red with the reason."""
    console.print(f"[bold]{report['name']}[/bold]")
    source = report["source"]
    if source is not None:
        if source["error"]:
            console.print(f"[red]source database: cannot read: {source['error']}[/red]")
        else:
            state = source["slot_state"] or "?"
            if state == "active" and source["active_pid"] is not None:
                state = f"active (pid {source['active_pid']})"
            console.print(
                _Section(
                    "Replication slot",
                    ("slot", "state", "confirmed", "WAL after it", "wal_status"),
                    [
                        (
                            source["slot"],
                            state,
                            source["confirmed_flush_lsn"] or "-",
                            _bytes(source["lag_bytes"]) if source["slot_state"] not in ("missing", None) else "-",
                            source["wal_status"] or "-",
                        )
                    ],
                )
            )
            if source["lag_bytes"]:
                console.print(
                    "WAL after it: every write on the server since (other tables and databases too), "
                    "not only changes still to send",
                    style="dim",
                )
            snapshot = source["snapshot"]
            if snapshot is not None:
                console.print(
                    _Section(
                        f"Snapshot ({snapshot['state']})",
                        ("table", "rows", "estimated", "done"),
                        [
                            (
                                t["table"],
                                _n(t["rows"]),
                                "unknown" if t["estimated_rows"] is None else _n(t["estimated_rows"]),
                                "yes" if t["done"] else "no",
                            )
                            for t in snapshot["tables"]
                        ],
                        right=1,
                    )
                )
            incremental = None if snapshot is None else snapshot.get("incremental")
            if incremental is not None and incremental["tables"]:
                console.print(
                    _Section(
                        "Incremental snapshots" + (" (paused)" if incremental["paused"] else ""),
                        ("table", "rows", "estimated", "chunks", "rows/s", "ETA", "last key", "done"),
                        [
                            (
                                t["table"] + (f" where {t['where']}" if t["where"] else ""),
                                _n(t["rows"]),
                                "unknown" if t["estimated_rows"] is None else _n(t["estimated_rows"]),
                                _n(t["chunks"]),
                                "-" if t["done"] or not t.get("rows_per_s") else _n(round(t["rows_per_s"])),
                                "-" if t["done"] or t.get("eta_s") is None else _eta(t["eta_s"]),
                                _position(t),
                                "yes" if t["done"] else "no",
                            )
                            for t in incremental["tables"]
                        ],
                        right=1,
                    )
                )
    kafka = report["kafka"]
    if kafka["error"]:
        console.print(f"[red]Kafka: cannot read: {kafka['error']}[/red]")
    else:
        topic_rows = [
            (t["topic"], str(p["partition"]), _n(p["log_start"]), _n(p["log_end"]))
            for t in kafka["topics"]
            for p in t["partitions"]
        ]
        if topic_rows:
            console.print(_Section("Topics", ("topic", "partition", "first offset", "log end"), topic_rows, right=1))
        else:
            console.print("Topics: none of this connector's topics exist yet")
    sink = report["sink"]
    if sink is not None:
        if sink["error"]:
            console.print(f"[red]destination database: cannot read: {sink['error']}[/red]")
        elif not sink["partitions"]:
            console.print(f"Sink (group {sink['group_id']}): no offsets stored yet")
        else:
            rows = [
                (p["topic"], str(p["partition"]), _n(p["next_offset"]), _n(p["log_end"]), _n(p["lag"]))
                for p in sink["partitions"]
            ]
            console.print(
                _Section(
                    f"Sink (group {sink['group_id']}, total lag {_n(sink['lag'])})",
                    ("topic", "partition", "next offset", "log end", "lag"),
                    rows,
                    right=1,
                )
            )
    registry = report["schema_registry"]
    if registry["error"]:
        console.print(f"[red]schema registry: cannot read: {registry['error']}[/red]")
    else:
        subjects = registry["subjects"]
        console.print(
            _Section(
                f"Registry subjects ({len(subjects)} of {registry['subjects_in_registry']})",
                ("subject",),
                [(s,) for s in subjects],
            )
            if subjects
            else f"Registry subjects: none of this connector's ({registry['subjects_in_registry']} in the registry)"
        )
    if report["unreadable"]:
        names = ", ".join(u["part"] for u in report["unreadable"])
        console.print(f"[red]could not read: {names}[/red]")

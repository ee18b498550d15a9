"""Prometheus metrics of the runtime. One registry per process; names are `cdc_*`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

SOURCE_EVENTS = Counter(
    "cdc_source_events", "Change events produced and acknowledged by Kafka.", ["table", "op"], registry=REGISTRY
)
SOURCE_CONFIRMED_LSN = Gauge("cdc_source_confirmed_lsn", "Slot confirmed flush LSN (as an integer).", registry=REGISTRY)
SOURCE_SLOT_LAG_BYTES = Gauge(
    "cdc_source_slot_lag_bytes", "WAL bytes between the server's position and the slot.", registry=REGISTRY
)
SNAPSHOT_ROWS = Counter(
    "cdc_snapshot_rows",
    "Rows read by the snapshot (initial or incremental), acknowledged by Kafka.",
    ["table"],
    registry=REGISTRY,
)
SNAPSHOT_ESTIMATED_ROWS = Gauge(
    "cdc_snapshot_estimated_rows",
    "The planner's row estimate of a table being snapshotted (pg_class.reltuples scaled to its size); absent when "
    "the server cannot tell.",
    ["table"],
    registry=REGISTRY,
)
SINK_APPLIED = Counter("cdc_sink_applied", "Changes applied to the destination.", ["table", "op"], registry=REGISTRY)
SINK_DUPLICATES = Counter(
    "cdc_sink_duplicates", "Changes skipped because their change id was already applied.", registry=REGISTRY
)
SINK_STALE = Counter("cdc_sink_stale", "Changes skipped because the row holds a newer LSN.", registry=REGISTRY)
SINK_DEAD_LETTERS = Counter(
    "cdc_sink_dead_letters", "Messages sent to the dead-letter topic.", ["topic"], registry=REGISTRY
)
SINK_BATCH_SECONDS = Histogram("cdc_sink_batch_seconds", "Time to apply and commit one batch.", registry=REGISTRY)
SOURCE_UNREPRESENTABLE_VALUES = Counter(
    "cdc_source_unrepresentable_values",
    "Values the configured schema_style cannot carry, written as null (numeric NaN/Infinity under `debezium`).",
    ["table", "column"],
    registry=REGISTRY,
)

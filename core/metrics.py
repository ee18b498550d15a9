"""Prometheus metrics of the runtime. One registry per process; names are `cdc_*`.

With the sink in a child process (`connector/split.py`), the parent serves its registry `Merged` with the child's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

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


class Merged:
    """A collector (for `generate_latest`) of `registry` with the samples of `others` (families of the same
    metrics read from another process's registry) added: each sample is written by one process only, the other
    holds its zero, so the sum is the value and the names and labels stay those of one process."""

    def __init__(self, registry: CollectorRegistry, others: Callable[[], Iterable[Metric]]) -> None:
        self._registry = registry
        self._others = others

    def collect(self) -> Iterator[Metric]:
        theirs = {family.name: family for family in self._others()}
        for family in self._registry.collect():
            other = theirs.pop(family.name, None)
            yield family if other is None else _sum(family, other)
        yield from theirs.values()


def _sum(ours: Metric, theirs: Metric) -> Metric:
    total = Metric(ours.name, ours.documentation, ours.type, ours.unit)
    values: dict[tuple[str, tuple[tuple[str, str], ...]], Sample] = {}
    for sample in [*ours.samples, *theirs.samples]:
        key = (sample.name, tuple(sorted(sample.labels.items())))
        seen = values.get(key)
        if seen is None:
            values[key] = sample
        elif sample.name.endswith("_created"):  # a timestamp: the earlier creation
            values[key] = seen._replace(value=min(seen.value, sample.value))
        else:
            values[key] = seen._replace(value=seen.value + sample.value)
    total.samples = list(values.values())
    return total

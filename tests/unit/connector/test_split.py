"""The sink in a child process: when `cdc run` splits, the pipe's reports, the merged /metrics, a dying child.

The child here is a real spawned process running the real sink against addresses nothing listens on, so it
retries; the end-to-end behaviour on the stack is in tests/integration/test_split_run.py.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from typer.testing import CliRunner

from connector import split
from connector.cli import app
from connector.config import ConnectorConfig
from connector.split import SinkProcess, SinkProcessError, wants_split
from core.metrics import REGISTRY, Merged
from tests.support.helpers import wait_for

pytestmark = pytest.mark.unit


def _config(**extra: Any) -> ConnectorConfig:
    data: dict[str, Any] = {
        "name": "t",
        "kafka": {"bootstrap_servers": "127.0.0.1:1"},
        "schema_registry": {"url": "http://127.0.0.1:1/apis/ccompat/v7"},
        "source": {
            "dsn": "postgresql://u:pw@127.0.0.1:1/db",
            "topic_prefix": "t",
            "slot": {"name": "t"},
            "publication": {"name": "t"},
        },
        "sink": {"dsn": "postgresql://u:pw@127.0.0.1:1/db", "topics": ["t.public.x"]},
        "transforms": {"source": [], "sink": []},
        "shutdown_grace_s": 20,
    }
    data.update(extra)
    return ConnectorConfig.model_validate(data)


def test_processes_defaults_to_auto_and_2_needs_both_sides() -> None:
    assert _config().processes == "auto"
    assert _config(processes=1).processes == 1
    with pytest.raises(ValidationError, match="needs both sections"):
        _config(processes=2, source=None)
    with pytest.raises(ValidationError):
        _config(processes=3)


def test_auto_splits_on_two_own_cpus_or_four_shared_and_the_flag_or_only_decide_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(split, "memory_limit", lambda: None)
    monkeypatch.setattr(split, "usable_cpus", lambda: split.Cpus(1.0, limited=True))
    assert not wants_split(_config(), None, None)
    assert wants_split(_config(), None, "2")
    monkeypatch.setattr(split, "usable_cpus", lambda: split.Cpus(2.0, limited=False))
    assert not wants_split(_config(), None, None)  # a bare 2-core machine: likely shared with the database
    monkeypatch.setattr(split, "usable_cpus", lambda: split.Cpus(4.0, limited=False))
    assert wants_split(_config(), None, None)
    monkeypatch.setattr(split, "usable_cpus", lambda: split.Cpus(2.0, limited=True))
    assert wants_split(_config(), None, None)
    monkeypatch.setattr(split, "memory_limit", lambda: 256 * 1024 * 1024)
    assert not wants_split(_config(), None, None)  # two interpreters would not fit a 256 MiB container
    assert wants_split(_config(), None, "2")
    monkeypatch.setattr(split, "memory_limit", lambda: 1024**3)
    assert wants_split(_config(), None, None)
    assert not wants_split(_config(), None, "1")
    assert not wants_split(_config(processes=1), None, None)
    assert wants_split(_config(processes=1), None, "auto")
    assert not wants_split(_config(), "sink", None)
    assert not wants_split(_config(source=None), None, None)


def _registry() -> tuple[CollectorRegistry, Counter, Gauge, Histogram]:
    registry = CollectorRegistry()
    counter = Counter("t_applied", "applied", ["table"], registry=registry)
    gauge = Gauge("t_lsn", "lsn", registry=registry)
    histogram = Histogram("t_batch_seconds", "batch", registry=registry, buckets=(0.1, 1.0))
    return registry, counter, gauge, histogram


def _values(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_metrics_merge_into_what_one_process_would_serve() -> None:
    parent, _, lsn, _ = _registry()
    child, applied, _, batch = _registry()
    one, one_applied, one_lsn, one_batch = _registry()
    for gauge in (lsn, one_lsn):  # the source's side
        gauge.set(4242)
    for counter, histogram in ((applied, batch), (one_applied, one_batch)):  # the sink's side
        counter.labels("orders").inc(7)
        histogram.observe(0.5)
    families = pickle.loads(pickle.dumps(list(child.collect())))  # they cross the pipe pickled
    merged = generate_latest(Merged(parent, lambda: families))
    assert _values(merged) == _values(generate_latest(one))
    assert _values(merged)[("t_applied_total", (("table", "orders"),))] == 7
    assert _values(merged)[("t_lsn", ())] == 4242
    names = {f.name for f in text_string_to_metric_families(merged.decode())}
    assert names == {f.name for f in text_string_to_metric_families(generate_latest(one).decode())}
    # Without a child, the registry alone.
    assert generate_latest(Merged(parent, list)) == generate_latest(parent)


def _running_sink_process() -> tuple[SinkProcess, threading.Event, threading.Thread, list[BaseException | None]]:
    """A `SinkProcess` running on a thread (as the pipeline runs components); `outcome` gets None or its error."""
    sink = SinkProcess(_config(), log_level="WARNING")
    stop = threading.Event()
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            sink.run(stop)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return sink, stop, thread, outcome


def test_the_parent_mirrors_the_child_and_stops_it() -> None:
    sink, stop, thread, outcome = _running_sink_process()
    try:
        # Nothing listens on the sink's addresses: the child retries, and says so.
        wait_for(lambda: sink.problem() is not None, 60, what="the child's problem")
        problem = sink.problem()
        assert problem is not None and problem.retriable
        assert not sink.ready()
        assert sink.pid is not None and sink.pid != os.getpid()
        assert {f.name for f in sink.metric_families()} == {f.name for f in REGISTRY.collect()}
        assert "group_id" in sink.status()
    finally:
        stop.set()
        thread.join(60)
    assert outcome == [None]
    assert sink.pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(sink.pid, 0)


def test_a_child_killed_is_a_failed_component_naming_it() -> None:
    sink, stop, thread, outcome = _running_sink_process()
    try:
        wait_for(sink.status, 60, what="the child's first report")
        assert sink.pid is not None
        os.kill(sink.pid, signal.SIGKILL)
        thread.join(30)
    finally:
        stop.set()
        thread.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], SinkProcessError)
    assert "killed by SIGKILL" in str(outcome[0])
    assert not outcome[0].retriable


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--processes", "3"], "--processes takes `auto`, `1` or `2`"),
        (["--processes", "2", "--only", "source"], "--processes 2 runs the sink beside the source"),
    ],
)
def test_cdc_run_rejects_a_processes_flag_it_cannot_honour(tmp_path: Path, args: list[str], message: str) -> None:
    path = tmp_path / "connector.json"
    path.write_text(_config().model_dump_json())
    result = CliRunner().invoke(app, ["--env-file", os.devnull, "run", str(path), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output

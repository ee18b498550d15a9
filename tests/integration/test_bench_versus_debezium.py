"""`make bench` on a tiny workload, so the harness cannot rot: every side ran and delivered every change.

Counts only (topic records, destination rows and updates, latency rows applied); timings are never asserted.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.connect import connect_home
from tests.support.examples import REPO_ROOT
from tests.support.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INSERTS, UPDATES = 2_000, 200


def _harness() -> ModuleType:
    path = REPO_ROOT / "bench" / "versus_debezium.py"
    spec = importlib.util.spec_from_file_location("bench_versus_debezium", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def test_bench_runs_every_side_and_each_delivers_every_change(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in (
        ("CDC_SOURCE_DSN", stack.source_dsn),
        ("CDC_TARGET_DSN", stack.target_dsn),
        ("CDC_KAFKA_BOOTSTRAP", stack.kafka_bootstrap),
        ("CDC_SCHEMA_REGISTRY_URL", stack.registry_url),
    ):
        monkeypatch.setenv(key, value)
    argv = [
        f"--inserts={INSERTS}", f"--updates={UPDATES}", "--tx-size=500", "--rate=400", "--e2e-seconds=2",
        "--e2e-tx-rows=4", "--no-jdbc-default", f"--home={connect_home()}", f"--env-file={tmp_path / 'none'}",
        f"--out={tmp_path}", "--timeout=180",
    ]  # fmt: skip
    report = _harness().main(argv)

    (written,) = tmp_path.glob("versus-debezium-*.json")
    assert json.loads(written.read_text())["medians"] == report["medians"]
    (run,) = report["repeats"]
    events = INSERTS + UPDATES
    # The topics hold every change (a restarted side may send its primed row again, never less).
    assert {side: run["source"][side]["delivered"]["records"] >= events for side in ("ours", "debezium")} == {
        "ours": True,
        "debezium": True,
    }
    # The primed row, every insert and every update, in each sink's own database and through `cdc run`.
    applied = {"rows": INSERTS + 1, "updated": UPDATES}
    assert {side: run["sink"][side]["delivered"] for side in ("ours", "jdbc_tuned")} == {
        "ours": applied,
        "jdbc_tuned": applied,
    }
    assert run["e2e"]["ours"]["delivered"] == applied
    latency = run["latency"]
    assert latency["rows"] == 800
    assert latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert {"cores", "ram_gib"} <= set(report["machine"])

"""`bench/regions_bench.py` on a tiny workload, so the harness cannot rot: both configurations ran, every change
reached the destination once, and each running sink read every change. Counts only; timings are never asserted."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.integration.regions.regions_support import TwoRegions
from tests.support.examples import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _harness() -> ModuleType:
    path = REPO_ROOT / "bench" / "regions_bench.py"
    spec = importlib.util.spec_from_file_location("bench_regions", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def test_regions_bench_delivers_every_change_in_both_configurations(regions: TwoRegions, tmp_path: Path) -> None:
    burst, rate, seconds, tx_rows = 600, 40, 3, 4
    report = _harness().main(
        [
            "--env-file", str(regions.home / "dev.env"),
            "--burst", str(burst), "--tx-size", "100",
            "--rate", str(rate), "--seconds", str(seconds), "--tx-rows", str(tx_rows),
            "--timeout", "180",
            "--out", str(tmp_path),
        ]
    )  # fmt: skip
    sent = int(seconds / (tx_rows / rate)) * tx_rows
    for label, regions_running in (("one", ["A"]), ("two", ["A", "B"])):
        result = report["results"][label]
        for phase, changes in (("burst", burst), ("rate", sent)):
            figures = result[phase]
            assert figures["changes"] == changes
            # The ledger holds each change once, whichever region applied it.
            assert sum(figures["applied_by_region"].values()) == changes, (label, phase, figures)
            assert sorted(figures["sinks"]) == regions_running
            for region, counts in figures["sinks"].items():
                assert counts["applied"] + counts["duplicates"] + counts["stale"] >= changes, (label, region, counts)
        if label == "one":
            assert result["burst"]["applied_by_region"]["B"] == 0
    assert list(tmp_path.glob("regions-*.json")) and list(tmp_path.glob("regions-*.md"))

"""Rendering the Helm chart offline: the real `helm` (built once from its Go module by deploy/tools/helm)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "deploy" / "helm" / "cdc-connector"
HELM = REPO_ROOT / "deploy" / "tools" / "helm"

Render = Callable[..., list[dict[str, Any]]]


def run_helm(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HELM), *map(str, args)], capture_output=True, text=True, timeout=900, check=False)


@pytest.fixture(scope="session")
def helm() -> Path:
    """The helm wrapper, after it has built helm (minutes the first time on a machine, then cached)."""
    done = run_helm("version", "--short")
    if done.returncode != 0:
        pytest.fail(f"helm is not available: {done.stderr.strip()}", pytrace=False)
    assert done.stdout.startswith("v3."), done.stdout
    return HELM


@pytest.fixture(scope="session")
def render(helm: Path) -> Render:
    """`render("sidecar-values.yaml", "--set", "a=b")`: the chart's objects (values files from the chart's ci/)."""
    cache: dict[tuple[str, ...], list[dict[str, Any]]] = {}

    def go(*values: str, sets: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        key = (*values, *sets)
        if key not in cache:
            args: list[str | Path] = ["template", "cdc", CHART]
            for name in values:
                args += ["--values", CHART / "ci" / name]
            for assignment in sets:
                args += ["--set", assignment]
            done = run_helm(*args)
            assert done.returncode == 0, done.stderr
            cache[key] = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
        return cache[key]

    return go

"""pyproject.toml uses the metadata forms current build backends accept without deprecation warnings."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PYPROJECT = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text(encoding="utf-8"))


def test_license_is_an_spdx_expression_with_a_backend_that_reads_it() -> None:
    # The table form (`{ text = ... }`) makes setuptools warn on every build; the string form needs setuptools 77.
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    setuptools = next(r for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools"))
    minimum = re.fullmatch(r"setuptools>=(\d+)", setuptools)
    assert minimum is not None and int(minimum.group(1)) >= 77


def test_readers_of_lz4_topics_are_in_the_test_extra() -> None:
    test_extra = PYPROJECT["project"]["optional-dependencies"]["test"]
    assert any(r.startswith("kafka-python") for r in test_extra)
    assert any(re.match(r"lz4\b", r) for r in test_extra)

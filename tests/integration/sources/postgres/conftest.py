"""Fixtures of the PostgreSQL source's integration tests."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# The helper module sits beside this file; test directories are not packages (see pyproject's testpaths).
sys.path.insert(0, str(Path(__file__).parent))

from pgsource_support import SourceEnv, make_env

from tests.support.stack import Stack


@pytest.fixture
def source_env(stack: Stack, unique_name: Callable[[str], str]) -> Iterator[SourceEnv]:
    env = make_env(stack, unique_name)
    try:
        yield env
    finally:
        env.close()

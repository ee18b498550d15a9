"""Fixtures shared by every test: the real services (`stack`) and collision-free names (`unique_name`)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.support.stack import Stack, StackUnavailable, resolve

_PREFIX = re.compile(r"^[a-z][a-z0-9_]{0,40}$")
_used: list[Stack] = []


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """PostgreSQL (source and target databases), Kafka and the Schema Registry for this test session.

    Taken from CDC_TEST_* variables, else a live `.cdc/dev.env` stack, else started here on free
    ports. When none works the tests that need it fail with the reason (never a silent skip).
    """
    try:
        with resolve() as found:
            _used.append(found)
            yield found
    except StackUnavailable as exc:
        pytest.fail(f"no stack for integration tests: {exc}", pytrace=False)


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """`unique_name("t")` -> `t_1a2b3c4d`: lowercase, valid as a PostgreSQL identifier, topic, slot or group."""

    def make(prefix: str = "t") -> str:
        if not _PREFIX.match(prefix):
            raise ValueError(f"prefix {prefix!r} must be lowercase letters, digits or _ and start with a letter")
        return f"{prefix}_{uuid.uuid4().hex[:8]}"

    return make


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say which services the integration tests ran against (a live stack, variables, or their own)."""
    for found in _used:
        terminalreporter.write_line(f"integration stack: {found.origin}")

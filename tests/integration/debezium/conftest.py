"""Kafka Connect with Debezium's connectors, started per test against the test stack."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from devstack.connect import ConnectInstall, ConnectWorker, ensure_install
from tests.integration.sinks.conftest import env  # noqa: F401  (the sink tests' fixture: a sink on the stack)
from tests.support.connect import connect_home
from tests.support.stack import Stack

StartWorker = Callable[[Mapping[str, Mapping[str, str]]], ConnectWorker]


@pytest.fixture(scope="session")
def connect_install() -> ConnectInstall:
    """The Connect runtime and plugins, fetched with Maven on first use and cached afterwards."""
    return ensure_install(connect_home())


@pytest.fixture
def connect_worker(stack: Stack, connect_install: ConnectInstall, tmp_path: Path) -> Iterator[StartWorker]:
    """`connect_worker({name: settings, ...})` starts a worker running those connectors and returns it once each
    connector and its tasks are RUNNING; every worker started so is stopped when the test ends."""
    started: list[ConnectWorker] = []

    def start(connectors: Mapping[str, Mapping[str, str]]) -> ConnectWorker:
        worker = ConnectWorker(
            connect_install,
            tmp_path / f"connect-{len(started)}",
            bootstrap=stack.kafka_bootstrap,
            registry_url=stack.registry_url,
            connectors=connectors,
        )
        started.append(worker)
        worker.start()
        return worker

    yield start
    for worker in started:
        worker.stop()

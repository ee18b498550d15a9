"""The runner: probes, clean stop, failure propagation. Components are in-package doubles."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from connector.config import ConnectorConfig
from connector.ops import OpsServer
from connector.pipeline import Pipeline
from core.checks import Problem
from core.errors import ConfigError, ConnectorError, DeliveryError, UnreachableError
from sources.base import Source
from tests.support.helpers import http_get, wait_for

pytestmark = pytest.mark.unit


class _Component(Source):
    def __init__(self, fail_after_ready: BaseException | None = None) -> None:
        self.started = threading.Event()
        self.finished_cleanly = False
        self._fail = fail_after_ready

    def validate(self, *, kafka: bool = True) -> list[Problem]:
        return [Problem("double", "not reachable", "start it")]

    def run(self, stop: threading.Event) -> None:
        self.started.set()
        if self._fail is not None:
            raise self._fail
        stop.wait()
        self.finished_cleanly = True

    def ready(self) -> bool:
        return self.started.is_set()

    def status(self) -> dict[str, Any]:
        return {"lag_bytes": 0}


def _config() -> ConnectorConfig:
    return ConnectorConfig.model_validate(
        {
            "name": "t",
            "kafka": {"bootstrap_servers": "127.0.0.1:1"},
            "schema_registry": {"url": "http://127.0.0.1:1"},
            "sink": {"dsn": "postgresql://u:pw@h/db", "topics": ["x"]},
            "server": {"port": 0},
        }
    )


def _pipeline(component: _Component) -> Pipeline:
    return Pipeline(_config(), components={"source": component})


def test_probes_follow_the_component_and_stop_is_clean() -> None:
    component = _Component()
    pipeline = _pipeline(component)
    ports: list[int] = []
    result: list[int] = []

    def on_ready(ops: OpsServer | None) -> None:
        assert ops is not None
        ports.append(ops.port)

    runner = threading.Thread(target=lambda: result.append(pipeline.run(install_signals=False, on_ready=on_ready)))
    runner.start()
    assert component.started.wait(5)
    port = ports[0]
    assert http_get(port, "/healthz", timeout=5)[0] == 200
    assert http_get(port, "/readyz", timeout=5)[0] == 200
    code, body = http_get(port, "/metrics", timeout=5)
    assert code == 200
    assert b"cdc_sink_applied" in body
    assert http_get(port, "/status", timeout=5) == (200, b'{"source": {"lag_bytes": 0}}')
    assert http_get(port, "/nope", timeout=5)[0] == 404
    pipeline.stop.set()
    runner.join(10)
    assert result == [0]
    assert component.finished_cleanly


def test_a_failing_component_fails_the_run_with_its_error() -> None:
    pipeline = _pipeline(_Component(fail_after_ready=DeliveryError("broker said no", hint="check the broker")))
    with pytest.raises(DeliveryError, match="broker said no"):
        pipeline.run(install_signals=False)
    assert not pipeline.alive()


def test_validate_collects_problems() -> None:
    problems = _pipeline(_Component()).validate()
    assert [str(p) for p in problems] == ["[double] not reachable -> fix: start it"]


class _Retrying(_Component):
    """A component that cannot make progress: it retries a failure until stopped."""

    def problem(self) -> ConnectorError | None:
        return UnreachableError("cannot reach the source database: refused", hint="check `source.dsn`")


def test_healthz_is_red_while_a_component_retries_and_stopping_then_is_a_failure() -> None:
    pipeline = _pipeline(_Retrying())
    ports: list[int] = []
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            pipeline.run(install_signals=False, on_ready=lambda ops: ports.append(ops.port if ops else 0))
        except ConnectorError as exc:
            outcome.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    try:
        wait_for(lambda: ports, 5, what="the ops server")
        assert http_get(ports[0], "/healthz", timeout=5) == (
            503,
            b"source: cannot reach the source database: refused (check `source.dsn`)\n",
        )
    finally:
        pipeline.stop.set()
        runner.join(10)
    assert [str(e) for e in outcome] == [
        "stopped while the source could not make progress: cannot reach the source database: refused "
        "(check `source.dsn`)"
    ]


def test_a_failure_that_is_not_ours_is_one_line_without_traceback(caplog: pytest.LogCaptureFixture) -> None:
    pipeline = _pipeline(_Component(fail_after_ready=ValueError("bad\nthing")))
    with pytest.raises(ConnectorError) as caught:
        pipeline.run(install_signals=False)
    assert str(caught.value) == "unexpected ValueError: bad thing (rerun with --debug for the traceback)"
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and r.exc_info]


def test_a_side_the_config_lacks_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="--only source, but the config has no `source` section"):
        Pipeline(_config(), "source")

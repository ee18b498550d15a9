"""librdkafka lines that say a broker asked to retry are held back while the retry is expected to succeed."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from core.logs import KAFKA_LOGGER, TransientKafkaFilter, configure

pytestmark = pytest.mark.unit

PID_RETRY = (
    "GETPID [{client}] [thrd:main]: Failed to acquire idempotence PID from broker 127.0.0.1:19092/1: "
    "Broker: Coordinator load in progress: retrying"
)


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("librdkafka", logging.WARNING, __file__, 1, message, None, None)


def test_a_producer_id_retry_passes_only_when_it_lasts_past_the_grace_period() -> None:
    now = [1000.0]
    gate = TransientKafkaFilter(grace_s=10, clock=lambda: now[0])
    assert not gate.filter(record(PID_RETRY.format(client="rdkafka#producer-1")))
    now[0] += 0.5
    assert not gate.filter(record(PID_RETRY.format(client="rdkafka#producer-1")))
    # Another client has a grace period of its own.
    assert not gate.filter(record(PID_RETRY.format(client="rdkafka#producer-2")))
    now[0] += 10
    assert gate.filter(record(PID_RETRY.format(client="rdkafka#producer-1")))


def test_a_clock_near_zero_is_no_special_case() -> None:
    gate = TransientKafkaFilter(grace_s=10, clock=lambda: 0.0)
    assert not gate.filter(record(PID_RETRY.format(client="rdkafka#producer-1")))


def test_other_librdkafka_warnings_pass() -> None:
    gate = TransientKafkaFilter(grace_s=10, clock=lambda: 0.0)
    assert gate.filter(record("FAIL [rdkafka#producer-1] [thrd:x]: 127.0.0.1:19092/1: Connect failed: refused"))
    assert gate.filter(record("Failed to acquire idempotence PID from broker b/1: Broker: Cluster auth failed"))


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


def test_the_configured_log_leaves_out_a_first_producer_id_retry(
    root_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure("INFO")
    kafka = logging.getLogger(KAFKA_LOGGER)
    kafka.warning(PID_RETRY.format(client="rdkafka#producer-7"))
    kafka.warning("FAIL [rdkafka#producer-7] [thrd:x]: 127.0.0.1:19092/1: Connect failed: refused")
    err = capsys.readouterr().err
    assert "idempotence PID" not in err
    assert "Connect failed" in err

"""A plaintext Kafka client that finds no broker probes its bootstrap servers for TLS once, and only then."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from confluent_kafka import KafkaError

from core.errors import FatalError, certificate_error, is_retriable
from core.kafka_listener import PlaintextToTlsCheck
from core.tls_probe import CertificateProblem

ALL_DOWN = KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down")


class Probe:
    def __init__(self, tls: set[tuple[str, int]]) -> None:
        self.tls = tls
        self.asked: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> bool:
        self.asked.append((host, port))
        return (host, port) in self.tls


def test_a_tls_listener_behind_a_plaintext_client_is_fatal_naming_the_setting() -> None:
    probe = Probe({("b2", 9094)})
    check = PlaintextToTlsCheck({"bootstrap.servers": "b1:9094, b2:9094"}, probe=probe)
    error = check(ALL_DOWN)
    assert isinstance(error, FatalError)
    assert not is_retriable(error)
    assert "b2:9094 is a TLS listener" in error.message
    assert error.hint is not None and "kafka.security_protocol: SSL` or `SASL_SSL" in error.hint
    assert probe.asked == [("b1", 9094), ("b2", 9094)]


def test_sasl_plaintext_is_told_sasl_ssl() -> None:
    check = PlaintextToTlsCheck(
        {"bootstrap.servers": "[::1]:9094", "security.protocol": "sasl_plaintext"}, probe=Probe({("::1", 9094)})
    )
    error = check(ALL_DOWN)
    assert error is not None and error.hint is not None
    assert "kafka.security_protocol: SASL_SSL`" in error.hint


def test_brokers_that_are_down_stay_retriable_and_are_probed_once() -> None:
    probe = Probe(set())
    check = PlaintextToTlsCheck({"bootstrap.servers": "b1:9092"}, probe=probe)
    refused = KafkaError(KafkaError._TRANSPORT, "b1:9092/bootstrap: Connect to ipv4#10.0.0.1:9092 failed")
    assert check(refused) is None
    assert check(ALL_DOWN) is None
    assert probe.asked == [("b1", 9092)]


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
def test_a_tls_client_never_probes(protocol: str) -> None:
    probe = Probe({("b1", 9093)})
    check = PlaintextToTlsCheck({"bootstrap.servers": "b1:9093", "security.protocol": protocol}, probe=probe)
    assert check(ALL_DOWN) is None
    assert probe.asked == []


def test_other_errors_do_not_probe() -> None:
    probe = Probe({("b1", 9093)})
    check = PlaintextToTlsCheck({"bootstrap.servers": "b1:9093"}, probe=probe)
    assert check(KafkaError(KafkaError._MSG_TIMED_OUT, "timed out")) is None
    assert probe.asked == []
    assert check(ALL_DOWN) is not None


def test_a_certificate_problem_names_expiry_or_the_ca_setting() -> None:
    expired = certificate_error(
        "Kafka", CertificateProblem("certificate has expired", datetime(2020, 2, 1, tzinfo=UTC)), "x", "ca_key"
    )
    assert "expired on 2020-02-01 00:00 UTC (certificate has expired)" in expired.message
    assert expired.hint is not None and "`ca_key` is not at fault" in expired.hint
    untrusted = certificate_error(
        "Kafka", CertificateProblem("self-signed certificate", datetime(2999, 1, 1, tzinfo=UTC)), "x", "ca_key"
    )
    assert "self-signed certificate" in untrusted.message
    assert untrusted.hint is not None and "set `ca_key`" in untrusted.hint

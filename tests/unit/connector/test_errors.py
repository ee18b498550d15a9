"""Errors are classified retriable or fatal in one place."""

from __future__ import annotations

import errno

import psycopg
import pytest
from confluent_kafka import KafkaError, KafkaException

from connector.errors import ConfigError, ConnectorError, DeliveryError, RetriableError, is_retriable

pytestmark = pytest.mark.unit


class _SqlError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("sqlstate", "retriable"),
    [("40001", True), ("40P01", True), ("08006", True), ("55P03", True), ("57P01", True),
     ("28P01", False), ("42501", False), ("42P01", False), ("23505", False)],
)
def test_sqlstate_classification(sqlstate: str, retriable: bool) -> None:
    assert is_retriable(_SqlError(sqlstate)) is retriable


def test_own_errors_carry_their_class() -> None:
    assert is_retriable(RetriableError("x"))
    assert not is_retriable(ConfigError("x"))
    assert not is_retriable(DeliveryError("x"))


def test_connection_failures_are_retriable() -> None:
    assert is_retriable(psycopg.OperationalError("connection refused"))
    assert is_retriable(ConnectionResetError(errno.ECONNRESET, "reset"))
    assert not is_retriable(ValueError("bad"))


def test_kafka_errors_follow_librdkafka() -> None:
    assert is_retriable(KafkaException(KafkaError(KafkaError._TRANSPORT, retriable=True)))
    assert not is_retriable(KafkaException(KafkaError(KafkaError._TRANSPORT, retriable=True, fatal=True)))
    assert not is_retriable(KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)))


def test_hint_is_part_of_the_message() -> None:
    error = ConnectorError("slot is gone", hint="re-snapshot with snapshot.mode when_needed")
    assert str(error) == "slot is gone (re-snapshot with snapshot.mode when_needed)"

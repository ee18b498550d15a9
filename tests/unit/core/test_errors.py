"""Errors are classified retriable, poison (a change's own data) or fatal in one place."""

from __future__ import annotations

import errno

import psycopg
import pytest
from confluent_kafka import KafkaError, KafkaException

from core.errors import (
    ConfigError,
    ConnectorError,
    DeliveryError,
    Endpoints,
    FatalError,
    RetriableError,
    RetryBudget,
    UnreachableError,
    classify,
    data_error_message,
    is_data_error,
    is_retriable,
)

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


def _refused(reason: str) -> psycopg.OperationalError:
    return psycopg.OperationalError(
        f'connection failed: connection to server at "127.0.0.1", port 5432 failed: FATAL:  {reason}'
    )


@pytest.mark.parametrize(
    ("reason", "fix"),
    [
        ('database "nope" does not exist', "fix the database name in `source.dsn`"),
        ('role "nope" does not exist', "fix the user in `source.dsn`"),
        ('password authentication failed for user "u"', "check the user and password in `source.dsn`"),
        ('no pg_hba.conf entry for host "10.0.0.1"', "check the user and password in `source.dsn`"),
    ],
)
def test_a_server_refusing_a_connection_is_permanent_and_names_the_fix(reason: str, fix: str) -> None:
    exc = _refused(reason)
    assert not is_retriable(exc)
    error = classify(exc, Endpoints(database="the source database", dsn_setting="source.dsn"))
    assert isinstance(error, FatalError)
    assert error.message == (
        f'the source database refused the connection: connection to server at "127.0.0.1", port 5432 failed: '
        f"FATAL: {reason}"
    )
    assert error.hint is not None and fix in error.hint


@pytest.mark.parametrize("reason", ["the database system is starting up", "sorry, too many clients already"])
def test_a_server_that_is_starting_or_full_is_retried(reason: str) -> None:
    assert is_retriable(_refused(reason))


def test_an_unreachable_server_is_one_line_and_retriable() -> None:
    exc = psycopg.OperationalError(
        'connection failed: connection to server at "127.0.0.1", port 1 failed: Connection refused\n'
        "\tIs the server running on that host and accepting TCP/IP connections?"
    )
    error = classify(exc, Endpoints(database="the destination database", dsn_setting="sink.dsn"))
    assert isinstance(error, UnreachableError)
    assert str(error) == (
        'cannot reach the destination database: connection to server at "127.0.0.1", port 1 failed: '
        "Connection refused (check `sink.dsn` and that the server runs and accepts connections)"
    )


def test_a_lost_connection_without_details_says_what_happened() -> None:
    error = classify(psycopg.OperationalError("no error details available"), Endpoints(database="the source database"))
    assert error.retriable
    assert "no error details" not in str(error)
    assert "server closed the connection" in str(error)


def test_an_unreachable_broker_is_retried_and_names_the_setting() -> None:
    exc = KafkaException(KafkaError(KafkaError._TRANSPORT, "Failed to get metadata: Local: Broker transport failure"))
    assert is_retriable(exc)
    error = classify(exc, Endpoints(kafka="Kafka at 127.0.0.1:1"))
    assert error.message == "cannot reach Kafka at 127.0.0.1:1: Failed to get metadata: Local: Broker transport failure"
    assert error.hint is not None and "kafka.bootstrap_servers" in error.hint
    assert error.__cause__ is exc


def test_privilege_errors_are_permanent() -> None:
    exc = psycopg.errors.InsufficientPrivilege("permission denied for table t")
    error = classify(exc)
    assert isinstance(error, FatalError)
    assert "42501" in error.message


def test_the_retry_budget_runs_from_the_first_failure_since_the_last_progress() -> None:
    now = [0.0]
    budget = RetryBudget(10, clock=lambda: now[0])
    failure = UnreachableError("cannot reach it")
    assert not budget.failed(failure)
    assert budget.problem is failure
    now[0] = 9
    assert not budget.failed(failure)
    budget.progress()
    assert budget.problem is None
    now[0] = 15
    assert not budget.failed(failure)  # the clock restarted at the progress
    now[0] = 25
    assert budget.failed(failure)
    exhausted = budget.exhausted(failure)
    assert isinstance(exhausted, FatalError)
    assert str(exhausted) == (
        "gave up after 10s of retrying: cannot reach it (the budget is `retry.give_up_after_s: 10`)"
    )


def test_an_unlimited_budget_never_runs_out() -> None:
    now = [0.0]
    budget = RetryBudget(None, clock=lambda: now[0])
    budget.failed(UnreachableError("x"))
    now[0] = 1e9
    assert not budget.failed(UnreachableError("x"))


def test_client_side_conversion_errors_and_server_data_errors_are_data_errors() -> None:
    # psycopg raises DataError without a SQLSTATE when it cannot dump a value for COPY.
    assert is_data_error(psycopg.DataError("cannot dump lists of mixed types"))
    assert is_data_error(psycopg.errors.NumericValueOutOfRange())  # 22003
    assert is_data_error(psycopg.errors.UniqueViolation())  # 23505
    assert is_data_error(psycopg.errors.CheckViolation())  # 23514
    assert not is_retriable(psycopg.errors.NumericValueOutOfRange())


def test_connection_and_server_state_errors_are_not_data_errors() -> None:
    assert not is_data_error(psycopg.OperationalError("connection lost"))
    assert not is_data_error(psycopg.errors.SerializationFailure())
    assert not is_data_error(psycopg.errors.UndefinedTable())
    assert not is_data_error(_SqlError("23505"))  # a SQLSTATE alone, not from the database driver
    assert not is_data_error(ValueError("22"))


def test_a_data_error_is_described_without_its_value() -> None:
    assert data_error_message(psycopg.errors.UniqueViolation()) == "UniqueViolation (SQLSTATE 23505)"
    assert data_error_message(psycopg.DataError("cannot dump")) == "DataError (SQLSTATE None)"

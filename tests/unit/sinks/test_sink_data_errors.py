"""Which destination errors are a change's own fault (poison: isolated, dead-lettered or reported)."""

from __future__ import annotations

import psycopg
import pytest

from sinks.postgres.apply import is_data_error

pytestmark = pytest.mark.unit


def test_client_side_conversion_errors_are_data_errors() -> None:
    # psycopg raises DataError without a SQLSTATE when it cannot dump a value for COPY.
    assert is_data_error(psycopg.DataError("cannot dump lists of mixed types"))
    assert is_data_error(psycopg.errors.NumericValueOutOfRange())
    assert is_data_error(psycopg.errors.UniqueViolation())


def test_connection_and_server_state_errors_are_not() -> None:
    assert not is_data_error(psycopg.OperationalError("connection lost"))
    assert not is_data_error(psycopg.errors.SerializationFailure())
    assert not is_data_error(psycopg.errors.UndefinedTable())

"""The project's error hierarchy and the one place where foreign errors are classified.

Everything the project raises on purpose derives from `ConnectorError`. Each error says whether
retrying the operation can help (`retriable`); `classify` maps errors from psycopg, librdkafka
and the registry client onto that decision so no other module has to guess.
"""

from __future__ import annotations

import errno
import socket

import psycopg
from confluent_kafka import KafkaError, KafkaException


class ConnectorError(Exception):
    """Root of every error the project raises on purpose.

    `hint` is the fix a user can apply; the CLI prints `message` and `hint` on one line.
    """

    retriable: bool = False

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class FatalError(ConnectorError):
    """Retrying cannot help: bad config, missing privilege, lost slot, incompatible schema."""


class RetriableError(ConnectorError):
    """A transient condition: connection loss, serialization failure, broker transport error."""

    retriable = True


class ConfigError(FatalError):
    """The config file is malformed or names something that does not exist."""


class PrerequisiteError(FatalError):
    """A service is reachable but not set up the way the connector needs (wal_level, privileges...)."""


class SchemaError(FatalError):
    """A type cannot be mapped, or a schema is incompatible with what the registry holds."""


class DeliveryError(FatalError):
    """Kafka did not acknowledge a record; the source must stop without advancing its position."""


class PoisonMessageError(FatalError):
    """A consumed message cannot be decoded or applied."""


class StackError(FatalError):
    """The local development stack could not be started, stopped or inspected."""


# SQLSTATE classes: 08 connection, 40 transaction rollback (serialization, deadlock),
# 53 insufficient resources, 55P03 lock not available, 57P01..03 admin shutdown / crash / cannot connect now.
_RETRIABLE_SQLSTATE_PREFIXES = ("08", "40", "53", "57P")
_RETRIABLE_SQLSTATES = {"55P03", "55006"}


def is_retriable(exc: BaseException) -> bool:
    """Decide once whether an error from any library we use is worth retrying."""
    if isinstance(exc, ConnectorError):
        return exc.retriable
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate:
        return sqlstate in _RETRIABLE_SQLSTATES or sqlstate.startswith(_RETRIABLE_SQLSTATE_PREFIXES)
    if isinstance(exc, psycopg.OperationalError):
        # No SQLSTATE: the connection itself failed (refused, reset, server gone).
        return True
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        err: KafkaError = exc.args[0]
        return bool(err.retriable()) and not err.fatal()
    if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout)):
        return True
    return isinstance(exc, OSError) and exc.errno in {errno.ECONNREFUSED, errno.ECONNRESET, errno.EPIPE}

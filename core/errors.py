"""The project's error hierarchy and the one place where foreign errors are classified.

Everything the project raises on purpose derives from `ConnectorError`. Each error says whether
retrying the operation can help (`retriable`); `is_retriable` maps errors from psycopg, librdkafka
and the registry client onto that decision, `is_data_error` picks out the database errors caused by one
change's data (poison: skipped or dead-lettered, never retried), and `classify` turns errors into one-line
`ConnectorError`s that name the cause and the fix, so no other module has to guess or word them.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from confluent_kafka import KafkaError, KafkaException
from pydantic import Field

from core.settings import Section
from core.tls_probe import CertificateProblem, certificate_problem


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


class UnreachableError(RetriableError):
    """A service cannot be reached (refused, timed out, unknown host); retried within the retry budget."""


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
# Everything else (28 authorisation, 3D000 unknown database, 42 syntax or privilege, ...) is fatal.
_RETRIABLE_SQLSTATE_PREFIXES = ("08", "40", "53", "57P")
_RETRIABLE_SQLSTATES = {"55P03", "55006"}

# libpq reports a server's refusal at connect time as text without a SQLSTATE ("FATAL:  role ... does not exist").
# A FATAL during the startup is permanent, except for these states of a server that is starting, stopping or full.
_TRANSIENT_STARTUP_FATALS = (
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "too many clients already",
    "remaining connection slots are reserved",
)

# libpq's own TLS failures at connect time (no SQLSTATE, no FATAL from a server): a wrong or missing CA file,
# a server without TLS, a certificate for another host. Retrying cannot fix the client's settings.
_POSTGRES_TLS_FAILURES = (
    "root certificate file",
    "certificate verify failed",
    "server does not support SSL",
    "does not match host name",
    "certificate present, but not private key",
    "private key file",
    "could not load private key",
    "could not read certificate",
    "invalid sslmode value",
)

# librdkafka errors that mean "no broker answered": retried within the retry budget.
_KAFKA_UNREACHABLE = {
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._TIMED_OUT,
    KafkaError._RESOLVE,
    KafkaError._MSG_TIMED_OUT,
}


def _tls_failure(exc: BaseException) -> bool:
    """Whether `exc` is libpq failing TLS with the server because of the client's TLS settings."""
    if not isinstance(exc, psycopg.OperationalError) or getattr(exc, "sqlstate", None):
        return False
    text = str(exc)
    return any(failure in text for failure in _POSTGRES_TLS_FAILURES)


def _startup_refusal(exc: BaseException) -> bool:
    """Whether `exc` is a PostgreSQL server refusing a new connection for good (auth, role, database)."""
    if not isinstance(exc, psycopg.OperationalError) or getattr(exc, "sqlstate", None):
        return False
    text = str(exc)
    return "FATAL:" in text and not any(transient in text for transient in _TRANSIENT_STARTUP_FATALS)


def _kafka_error(exc: BaseException) -> KafkaError | None:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def kafka_security_error(err: KafkaError, settings: Mapping[str, Any] | None = None) -> FatalError | None:
    """A librdkafka error caused by the client's security settings (credentials, CA, protocol), as the fatal error
    naming the setting to fix; None for any other error. Retrying such an error only repeats it.

    With the client's `settings`, a rejected broker certificate is looked at once more (core/tls_probe.py), so an
    expired one is named as such rather than blamed on the CA setting."""
    text = one_line(err.str())
    code = err.code()
    if code == KafkaError._AUTHENTICATION:
        return FatalError(
            f"Kafka refused the client's credentials: {text}",
            hint="check `kafka.sasl_username`, `kafka.sasl_password` and `kafka.sasl_mechanism`",
        )
    if code == KafkaError._INVALID_ARG and "ssl." in text:
        return ConfigError(
            f"Kafka client settings are invalid: {text}",
            hint="check that the files named by `kafka.ssl_ca_location` (and `ssl_certificate_location`, "
            "`ssl_key_location`) exist and hold PEM",
        )
    # An expired broker certificate comes as a bare "_TRANSPORT: ...certificate verify failed", without the words
    # "SSL handshake failed" of a wrong CA.
    if code == KafkaError._SSL or "SSL handshake failed" in text or "certificate verify failed" in text:
        if "PLAINTEXT broker listener" in text:
            hint = (
                "that port is a plaintext listener: use the brokers' TLS port, or set "
                "`kafka.security_protocol: PLAINTEXT`"
            )
        elif "certificate verify failed" in text:
            problem = _kafka_certificate_problem(text, settings) if settings is not None else None
            if problem is not None:
                return certificate_error("Kafka", problem, "the brokers' certificates", "kafka.ssl_ca_location")
            hint = "set `kafka.ssl_ca_location` to the PEM file of the CA that signed the brokers' certificates"
        else:
            hint = "check `kafka.security_protocol` and the `kafka.ssl_*` settings against the brokers' listener"
        return FatalError(f"TLS with Kafka failed: {text}", hint=hint)
    return None


_KAFKA_BROKER = re.compile(r"\bssl://(?P<host>\[[^\]]+\]|[^:/\s]+):(?P<port>\d+)/")


def _kafka_certificate_problem(text: str, settings: Mapping[str, Any]) -> CertificateProblem | None:
    found = _KAFKA_BROKER.search(text)  # "ssl://host:port/bootstrap: ..." or "sasl_ssl://host:port/1: ..."
    if found is None:
        return None
    host = found["host"].strip("[]")
    cafile = settings.get("ssl.ca.location")
    return certificate_problem(host, int(found["port"]), None if cafile in (None, "probe") else str(cafile))


def certificate_error(service: str, problem: CertificateProblem, certificates: str, ca_setting: str) -> FatalError:
    """A server certificate that failed verification, with OpenSSL's reason: an expired one names its expiry
    and the server as what to fix; any other names the CA setting."""
    valid_until = f"{problem.not_after:%Y-%m-%d %H:%M} UTC" if problem.not_after is not None else "unknown"
    if problem.expired:
        return FatalError(
            f"TLS with {service} failed: the server's certificate expired on {valid_until} ({problem.reason})",
            hint=f"renew {certificates} on the server side; the client's `{ca_setting}` is not at fault",
        )
    if "not yet valid" in problem.reason:
        return FatalError(
            f"TLS with {service} failed: the server's certificate is not valid yet ({problem.reason})",
            hint="check the clocks of this host and of the server, or reissue the certificate",
        )
    return FatalError(
        f"TLS with {service} failed: certificate verify failed: {problem.reason}",
        hint=f"set `{ca_setting}` to the PEM file of the CA that signed {certificates}",
    )


def kafka_plaintext_to_tls_error(server: str, protocol: str) -> FatalError:
    """A client speaking `protocol` (PLAINTEXT or SASL_PLAINTEXT) to `server`, which answered a TLS handshake: the
    brokers dropped every connection, and they will drop every retry (see core/kafka_listener.py)."""
    secured = "SASL_SSL" if protocol == "SASL_PLAINTEXT" else "SSL` or `SASL_SSL"
    return FatalError(
        f"Kafka dropped every connection: {server} is a TLS listener and the client speaks {protocol}",
        hint=f"set `kafka.security_protocol: {secured}` (with `kafka.ssl_ca_location`), or use the brokers' "
        "plaintext port in `kafka.bootstrap_servers`",
    )


def is_retriable(exc: BaseException) -> bool:
    """Decide once whether an error from any library we use is worth retrying."""
    if isinstance(exc, ConnectorError):
        return exc.retriable
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate:
        return sqlstate in _RETRIABLE_SQLSTATES or sqlstate.startswith(_RETRIABLE_SQLSTATE_PREFIXES)
    if isinstance(exc, psycopg.OperationalError):
        # No SQLSTATE: the connection itself failed (refused, reset, server gone), unless the server refused us
        # or our TLS settings cannot work.
        return not (_startup_refusal(exc) or _tls_failure(exc))
    err = _kafka_error(exc)
    if err is not None:
        if kafka_security_error(err) is not None:
            return False
        return not err.fatal() and (bool(err.retriable()) or err.code() in _KAFKA_UNREACHABLE)
    if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout)):
        return True
    return isinstance(exc, OSError) and exc.errno in {errno.ECONNREFUSED, errno.ECONNRESET, errno.EPIPE}


def is_data_error(exc: BaseException) -> bool:
    """A statement the database refuses for the data it was given (poison), not for the state of the connection:
    neither retriable nor the whole batch's fault.

    Data exceptions (SQLSTATE class 22) and integrity violations (23) from the server, and psycopg's own data
    errors raised while converting a value for COPY (those carry no SQLSTATE).
    """
    if isinstance(exc, (psycopg.DataError, psycopg.IntegrityError)):
        return True
    sqlstate = getattr(exc, "sqlstate", None) if isinstance(exc, psycopg.Error) else None
    return (sqlstate or "").startswith(("22", "23"))


def data_error_message(exc: BaseException) -> str:
    """A data error in one line that names the constraint or the type, never the value (that is in DETAIL)."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) or type(exc).__name__
    return f"{primary} (SQLSTATE {getattr(exc, 'sqlstate', None)})"


@dataclass(frozen=True, slots=True)
class Endpoints:
    """How to name the services a component talks to, and the settings that point at them (for hints)."""

    database: str = "the database"
    dsn_setting: str = "dsn"
    kafka: str = "Kafka"


def one_line(text: str) -> str:
    """A library's message on one line: libpq's tab-indented second line ("Is the server running...?") and
    repeated blanks dropped."""
    lines = [line.strip() for line in text.strip().splitlines()]
    kept = [line for line in lines if line and not line.startswith("Is the server running")]
    return " ".join(" ".join(kept).split())


def _postgres_certificate_problem(exc: psycopg.Error) -> CertificateProblem | None:
    """Why libpq rejected the server's certificate: one handshake of our own with the host, port and CA file libpq
    used (read from the failed connection's options; the password among them is not touched)."""
    pgconn = getattr(exc, "pgconn", None)
    if pgconn is None:
        return None
    options = {o.keyword.decode(): o.val.decode() for o in pgconn.info if o.val is not None and o.keyword in _PROBED}
    host, port = options.get("hostaddr") or options.get("host"), options.get("port") or "5432"
    if not host or host.startswith("/") or "," in host or not port.isdigit():
        return None  # a Unix socket, or several hosts: which one failed is not known
    rootcert = options.get("sslrootcert") or os.path.expanduser("~/.postgresql/root.crt")
    return certificate_problem(host, int(port), None if rootcert == "system" else rootcert, postgres=True)


_PROBED = {b"host", b"hostaddr", b"port", b"sslrootcert"}


def _postgres(exc: psycopg.Error, where: Endpoints) -> ConnectorError:
    text = one_line(str(exc)).removeprefix("connection failed: ")
    sqlstate = getattr(exc, "sqlstate", None)
    if not text or text == "no error details available":
        text = "the server closed the connection (restart, shutdown or network failure)"
    if sqlstate:
        text = f"{text} (SQLSTATE {sqlstate})"
    setting = where.dsn_setting
    if _tls_failure(exc) and "certificate verify failed" in text:
        problem = _postgres_certificate_problem(exc)
        if problem is not None and (problem.expired or "not yet valid" in problem.reason):
            return certificate_error(where.database, problem, "the server's certificate", f"sslrootcert in {setting}")
    if _tls_failure(exc):
        return FatalError(
            f"TLS with {where.database} failed: {text}",
            hint=f"check sslmode, sslrootcert (the CA that signed the server's certificate), sslcert and sslkey in "
            f"`{setting}` (see docs/security.md)",
        )
    if _startup_refusal(exc) or (sqlstate or "").startswith(("28", "3D")):
        if "password" in text or "authentication" in text or "pg_hba" in text:
            hint = f"check the user and password in `{setting}` (and the server's pg_hba.conf)"
        elif "role" in text:
            hint = f"create the role on the server or fix the user in `{setting}`"
        elif "database" in text:
            hint = f"create the database or fix the database name in `{setting}`"
        else:
            hint = f"check `{setting}`"
        return FatalError(f"{where.database} refused the connection: {text}", hint=hint)
    if is_retriable(exc):
        if isinstance(exc, psycopg.OperationalError) and not sqlstate:
            return UnreachableError(
                f"cannot reach {where.database}: {text}",
                hint=f"check `{setting}` and that the server runs and accepts connections",
            )
        return RetriableError(f"{where.database}: {text}")
    if (sqlstate or "").startswith("42"):
        return FatalError(
            f"{where.database} refused a statement: {text}",
            hint="grant the connector's role the privileges docs/source.md and docs/sink.md list",
        )
    return FatalError(f"{where.database}: {text}")


def classify(exc: BaseException, where: Endpoints | None = None) -> ConnectorError:
    """`exc` as a `ConnectorError`: retriable or not (as `is_retriable` says), one line naming the cause and,
    where there is one, the fix. The original error stays the `__cause__` (for `--debug`)."""
    if isinstance(exc, ConnectorError):
        return exc
    where = where or Endpoints()
    error: ConnectorError
    if isinstance(exc, psycopg.Error):
        error = _postgres(exc, where)
    elif (kafka_error := _kafka_error(exc)) is not None:
        text = one_line(kafka_error.str())
        if (security := kafka_security_error(kafka_error)) is not None:
            error = security
        elif kafka_error.code() in _KAFKA_UNREACHABLE and not kafka_error.fatal():
            error = UnreachableError(
                f"cannot reach {where.kafka}: {text}",
                hint="check `kafka.bootstrap_servers` and that the brokers run (`cdc dev status` for the local stack)",
            )
        elif is_retriable(exc):
            error = RetriableError(f"Kafka: {text}")
        else:
            error = FatalError(
                f"Kafka refused: {text} ({kafka_error.name()})",
                hint="check the credentials and ACLs in `kafka.properties`",
            )
    elif is_retriable(exc):
        error = UnreachableError(f"connection failed: {type(exc).__name__}: {one_line(str(exc))}")
    else:
        error = FatalError(
            f"unexpected {type(exc).__name__}: {one_line(str(exc))}", hint="rerun with --debug for the traceback"
        )
    error.__cause__ = exc
    return error


class RetryBudgetConfig(Section):
    give_up_after_s: float | None = Field(
        300.0,
        ge=0,
        description="How long a component keeps retrying a service it cannot reach (PostgreSQL, Kafka, the "
        "registry) or that keeps failing with retriable errors, counted from the first failure since the last "
        "success, before the connector stops with exit code 1; null retries until stopped. Refused credentials, "
        "unknown roles or databases and missing privileges stop it at once. See docs/operations.md.",
    )


class RetryBudget:
    """How long retriable failures may go on without progress before they count as permanent.

    `failed` records a failure and says whether the budget is spent (measured from the first failure since the
    last `progress`); `problem` is the failure in progress (None while things work), which drives /healthz.
    A budget of None never runs out.
    """

    def __init__(self, give_up_after_s: float | None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.give_up_after_s = give_up_after_s
        self._clock = clock
        self._failing_since: float | None = None
        self.problem: ConnectorError | None = None

    def progress(self) -> None:
        self._failing_since = None
        self.problem = None

    def failed(self, error: ConnectorError) -> bool:
        now = self._clock()
        if self._failing_since is None:
            self._failing_since = now
        self.problem = error
        return self.give_up_after_s is not None and now - self._failing_since >= self.give_up_after_s

    def exhausted(self, error: ConnectorError) -> FatalError:
        """The error that ends the component once `failed` said the budget is spent."""
        spent = self._clock() - (self._failing_since or self._clock())
        fatal = FatalError(
            f"gave up after {spent:.0f}s of retrying: {error.message}",
            hint=(error.hint + "; " if error.hint else "")
            + f"the budget is `retry.give_up_after_s: {self.give_up_after_s:g}`",
        )
        fatal.__cause__ = error
        return fatal

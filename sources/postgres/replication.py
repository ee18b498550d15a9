"""The streaming replication connection: IDENTIFY_SYSTEM, slot creation, START_REPLICATION and COPY BOTH I/O.

One `ReplicationConnection` wraps a psycopg 3 connection opened with `replication=database`. While a slot
created with an exported snapshot is needed by the snapshot reader, the connection must stay open and idle:
`create_slot(export_snapshot=True)` returns the snapshot name and the caller runs no other command on this
connection until the snapshot transaction has imported it.
"""

from __future__ import annotations

import select
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import pq, sql

from core.errors import Endpoints, RetriableError, classify
from core.positions import Lsn
from core.timeouts import libpq_options
from schemas.types import SESSION_SETTINGS
from sources.postgres.protocol import Keepalive, XLogData, decode_frame, encode_status_update, now_pg_us


@dataclass(frozen=True, slots=True)
class SystemInfo:
    system_id: str
    timeline: int
    xlogpos: Lsn
    dbname: str


@dataclass(frozen=True, slots=True)
class CreatedSlot:
    name: str
    consistent_point: Lsn
    snapshot_name: str | None


_REPLICATION = Endpoints(database="the source database (replication connection)", dsn_setting="source.dsn")


def session_options() -> str:
    """libpq `options` applying the settings under which the schema layer's text converters are exact.

    The walsender formats pgoutput's text values with its own session settings, so they must be set at connect.
    """
    return " ".join(f"-c {name}={value.replace(' ', chr(92) + ' ')}" for name, value in SESSION_SETTINGS.items())


class ReplicationConnection:
    """A `replication=database` connection; after `start()` it is in COPY BOTH mode."""

    def __init__(self, dsn: str, *, application_name: str = "cdc-connector", connect_timeout_s: int = 10) -> None:
        try:
            self._conn = psycopg.connect(
                dsn,
                replication="database",
                autocommit=True,
                application_name=application_name,
                options=session_options(),
                **libpq_options(connect_timeout_s),
            )
        except psycopg.OperationalError as exc:
            # A role without the REPLICATION attribute is refused for good; a server that is down is not.
            raise classify(exc, _REPLICATION) from exc
        self._pgconn = self._conn.pgconn
        self._streaming = False

    @property
    def backend_pid(self) -> int:
        return self._pgconn.backend_pid

    def identify_system(self) -> SystemInfo:
        row = self._conn.execute("IDENTIFY_SYSTEM").fetchone()
        assert row is not None
        return SystemInfo(str(row[0]), int(row[1]), Lsn.parse(row[2]), str(row[3]))

    def create_slot(self, name: str, *, export_snapshot: bool, temporary: bool = False) -> CreatedSlot:
        """Create a pgoutput slot; a `temporary` one is dropped by the server when this connection ends."""
        snapshot = sql.SQL("EXPORT_SNAPSHOT" if export_snapshot else "NOEXPORT_SNAPSHOT")
        query = sql.SQL("CREATE_REPLICATION_SLOT {} {}LOGICAL pgoutput {}").format(
            sql.Identifier(name), sql.SQL("TEMPORARY " if temporary else ""), snapshot
        )
        row = self._conn.execute(query).fetchone()
        assert row is not None
        return CreatedSlot(str(row[0]), Lsn.parse(row[1]), row[2] if export_snapshot else None)

    def start(
        self,
        slot: str,
        publications: Sequence[str],
        start_lsn: Lsn = Lsn.INVALID,
        *,
        timeout: float = 60.0,
        messages: bool = False,
    ) -> None:
        """START_REPLICATION from the slot's confirmed position (`start_lsn` 0/0) with pgoutput proto_version 1.

        `messages`: also send `pg_logical_emit_message` messages (PostgreSQL 14+; the incremental snapshot's
        watermarks). A server that does not answer within `timeout` seconds means the connection is lost
        (RetriableError).
        """
        names = ",".join(publications)
        query = sql.SQL("START_REPLICATION SLOT {} LOGICAL {} (proto_version '1', publication_names {}{})").format(
            sql.Identifier(slot), sql.SQL(str(start_lsn)), sql.Literal(names),
            sql.SQL(", messages 'true'" if messages else ""),
        )  # fmt: skip
        pgconn = self._pgconn
        pgconn.send_query(query.as_bytes(self._conn))
        _await_result(pgconn, time.monotonic() + timeout, timeout)
        result = pgconn.get_result()
        if result is None or result.status != pq.ExecStatus.COPY_BOTH:
            raise _error_from(result, pgconn)
        self._streaming = True

    def fileno(self) -> int:
        return self._pgconn.socket

    def read(self, timeout: float) -> XLogData | Keepalive | None:
        """The next frame, waiting up to `timeout` seconds; None when none arrived in time."""
        pgconn = self._pgconn
        nbytes, data = pgconn.get_copy_data(1)
        if nbytes == 0:
            ready, _, _ = select.select([pgconn.socket], [], [], timeout)
            if not ready:
                return None
            pgconn.consume_input()
            nbytes, data = pgconn.get_copy_data(1)
            if nbytes == 0:
                return None
        if nbytes > 0:
            return decode_frame(bytes(data))
        # -1: the server ended COPY (an error follows, e.g. the slot was dropped); -2: connection error.
        self._streaming = False
        raise _error_from(pgconn.get_result(), pgconn)

    def read_buffered(self) -> XLogData | Keepalive | None:
        """The next frame already received, without waiting (the hot path)."""
        nbytes, data = self._pgconn.get_copy_data(1)
        if nbytes > 0:
            return decode_frame(bytes(data))
        if nbytes == 0:
            return None
        self._streaming = False
        raise _error_from(self._pgconn.get_result(), self._pgconn)

    def send_status(
        self, flushed: Lsn, written: Lsn | None = None, *, reply: bool = False, timeout: float = 60.0
    ) -> None:
        """Standby status update: everything up to `flushed` may be released by the server.

        `reply` asks the server to answer at once with a keepalive (a ping); a send that cannot complete within
        `timeout` seconds means the connection is lost.
        """
        write = int(written if written is not None else flushed)
        flush = int(flushed)
        message = encode_status_update(write, flush, flush, now_pg_us(time.time()), reply=reply)
        pgconn = self._pgconn
        if pgconn.put_copy_data(message) != 1:
            raise RetriableError(f"cannot send a status update: {pgconn.get_error_message()}")
        _flush_within(pgconn, time.monotonic() + timeout)

    def close(self) -> None:
        try:
            if self._streaming and not self._conn.closed:
                self._pgconn.put_copy_end()
                self._pgconn.flush()
        except psycopg.Error:
            pass
        finally:
            self._conn.close()

    @property
    def connection(self) -> psycopg.Connection:
        return self._conn


def first_value_within(conn: psycopg.Connection, query: sql.Composable, timeout: float) -> str | None:
    """The first column of `query`'s first row as text, waiting at most `timeout` seconds for the server.

    psycopg waits for a result without a bound; a side query of the streaming loop on a path that stopped
    delivering must not stall it. After a timeout the connection's state is unknown, so it is closed.
    """
    pgconn = conn.pgconn
    deadline = time.monotonic() + timeout
    try:
        pgconn.send_query(query.as_bytes(conn))
        _await_result(pgconn, deadline, timeout)
    except (RetriableError, psycopg.Error):
        conn.close()
        raise
    first = pgconn.get_result()
    while pgconn.get_result() is not None:
        pass
    if first is None or first.status != pq.ExecStatus.TUPLES_OK:
        raise _error_from(first, pgconn)
    value = first.get_value(0, 0) if first.ntuples else None
    return None if value is None else bytes(value).decode()


def _await_result(pgconn: pq.abc.PGconn, deadline: float, timeout: float) -> None:
    """Send what is queued and wait, by `deadline`, until a result can be read without blocking.

    libpq's own blocking wait (`get_result` on a busy connection) holds the interpreter lock: a server that stops
    answering would freeze every thread of the process (the health endpoints among them), with no bound.
    """
    _flush_within(pgconn, deadline)
    pgconn.consume_input()
    while pgconn.is_busy():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RetriableError(f"the source database did not answer within {timeout:g}s")
        select.select([pgconn.socket], [], [], remaining)
        pgconn.consume_input()


def _flush_within(pgconn: pq.abc.PGconn, deadline: float) -> None:
    while pgconn.flush() == 1:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RetriableError("cannot send to the source database: the connection stopped taking data")
        select.select([], [pgconn.socket], [], min(remaining, 1.0))


def _error_from(result: pq.abc.PGresult | None, pgconn: pq.abc.PGconn) -> Exception:
    if result is not None and result.status == pq.ExecStatus.FATAL_ERROR:
        return psycopg.errors.error_from_result(result, encoding="utf-8")
    message = pgconn.get_error_message() or "replication stream ended"
    return psycopg.OperationalError(message)

"""Logging setup: plain text or JSON lines, with secrets scrubbed from every message.

Secrets are `SecretStr` in the config and never formatted into messages on purpose; the filter here is the
safety net for text that passes through from libraries (a libpq error quoting a connection string, say).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable
from typing import Any, Literal

KAFKA_LOGGER = "librdkafka"
"""librdkafka's own log lines go through Python logging under this name (scrubbed, rate-limited)."""

_SECRET_PATTERNS = (
    # URL credentials: scheme://user:password@host
    (re.compile(r"(?P<pre>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]+:)[^@\s]+(?P<post>@)"), r"\g<pre>**********\g<post>"),
    # key=value credentials in libpq strings and librdkafka properties
    (
        re.compile(
            r"(?P<pre>\b(?:password|sslpassword|sasl[._]password|ssl[._]key[._]password|basic[._]auth[._]user[._]info|"
            r"bearer[._]auth[._]token)\s*[=:]\s*)(?:'[^']*'|\"[^\"]*\"|\S+)",
            re.IGNORECASE,
        ),
        r"\g<pre>**********",
    ),
    # HTTP authorization headers
    (re.compile(r"(?P<pre>\b(?:Bearer|Basic)\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\g<pre>**********"),
)


def scrub(text: str) -> str:
    """Mask credentials that may appear in free text."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class ScrubbingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = scrub(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            # Render the traceback now, scrubbed, so handlers never format the raw exception text.
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


_DIGITS = re.compile(r"\d+")


class RepeatFilter(logging.Filter):
    """Lets one of a run of alike messages through per `window_s`, then says how many were held back.

    A broker or database that stays down makes client libraries log the same failure many times a second;
    an operator needs the first line and a count, not a flood. Messages that differ only in numbers
    (timestamps, retry counts, ports) count as alike.
    """

    def __init__(self, window_s: float = 30.0) -> None:
        super().__init__()
        self._window_s = window_s
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, _DIGITS.sub("#", record.getMessage()))
        now = time.monotonic()
        seen = self._seen.get(key)
        held = 0
        if seen is not None:
            # Never seen means let through: the monotonic clock starts near 0 at boot, so no default time will do.
            first, held = seen
            if now - first < self._window_s:
                self._seen[key] = (first, held + 1)
                return False
        if len(self._seen) > 1000:
            self._seen.clear()
        self._seen[key] = (now, 0)
        if held:
            record.msg, record.args = f"{record.getMessage()} ({held} alike messages held back)", None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


_PID_RETRY = re.compile(r"Failed to acquire idempotence PID from broker .*: Coordinator load in progress: retrying")
_CLIENT = re.compile(r"\[(rdkafka#\w+-\d+)\]")


class TransientKafkaFilter(logging.Filter):
    """Holds back librdkafka's "Failed to acquire idempotence PID ... Coordinator load in progress: retrying"
    for a client's first `grace_s` seconds; later ones pass as they are.

    A broker that has just started (or used up its block of producer ids) fetches a new block from the controller
    and meanwhile tells producers to retry; librdkafka does, and gets an id a moment later. Only a producer that
    still retries after the grace period has a problem worth a warning.
    """

    def __init__(self, grace_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._grace_s = grace_s
        self._clock = clock
        self._first: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not _PID_RETRY.search(message):
            return True
        client = _CLIENT.search(message)
        key = client.group(1) if client else record.name
        now = self._clock()
        first = self._first.setdefault(key, now)
        if len(self._first) > 1000:
            self._first = {key: first}
        return now - first >= self._grace_s


class StderrHandler(logging.StreamHandler):
    """Writes to `sys.stderr` as it is when a record is emitted, not as it was when logging was configured: a
    stream swapped out and closed since (a CLI runner, a test harness) must not turn every later record into a
    "Logging error" traceback."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass  # always the current sys.stderr


def configure(level: str = "INFO", fmt: Literal["text", "json"] = "text") -> None:
    handler = StderrHandler()
    handler.addFilter(ScrubbingFilter())
    handler.addFilter(TransientKafkaFilter())
    handler.addFilter(RepeatFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # librdkafka's and psycopg's debug chatter is rarely what an operator wants at DEBUG.
    logging.getLogger(KAFKA_LOGGER).setLevel(max(logging.INFO, logging.getLogger().level))
    for noisy in ("urllib3", "httpx", "httpx2", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))

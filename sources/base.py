"""The contract every source implements."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Any

from core.checks import Problem
from core.errors import ConnectorError


class Source(ABC):
    """Reads changes from a database and produces them to Kafka.

    Resume contract: a source holds no position in its constructor; on `run` it resumes from the
    position it last confirmed (for PostgreSQL, the slot's confirmed flush LSN), which means
    "every change before it was acknowledged by Kafka". `run` may be killed at any moment;
    nothing acknowledged is lost and re-sent changes carry the same change ids.
    """

    @abstractmethod
    def validate(self) -> list[Problem]:
        """Check connections and prerequisites; empty when ready to run."""

    @abstractmethod
    def run(self, stop: threading.Event) -> None:
        """Stream until `stop` is set, then flush, confirm the final position and return."""

    def ready(self) -> bool:
        """True once the connector is streaming (snapshot done or skipped); drives /readyz."""
        return False

    def problem(self) -> ConnectorError | None:
        """Why it cannot make progress right now (a failure it is retrying), None while it can; drives /healthz."""
        return None

    @abstractmethod
    def status(self) -> dict[str, Any]:
        """Slot state, lag, snapshot progress, as the running component last published it (/status).

        Answers at once from any thread: no I/O, nothing shared with the loops but what they publish.
        """

    def inspect(self) -> dict[str, Any]:
        """The same, read from the services now: what `cdc status` shows of a process it is not part of."""
        return self.status()

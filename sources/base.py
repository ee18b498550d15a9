"""The contract every source implements."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Any

from connector.checks import Problem


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

    def healthy(self) -> bool:
        """False while a failure keeps this component from making progress (it may be retrying); drives /healthz."""
        return True

    @abstractmethod
    def status(self) -> dict[str, Any]:
        """Slot state, lag, snapshot progress: what `cdc status` prints."""

"""The contract every source implements."""

from __future__ import annotations

import threading
from abc import abstractmethod
from typing import Any

from core.component import Component


class Source(Component):
    """Reads changes from a database and produces them to Kafka.

    Resume contract: a source holds no position in its constructor; on `run` it resumes from the
    position it last confirmed (for PostgreSQL, the slot's confirmed flush LSN), which means
    "every change before it was acknowledged by Kafka". `run` may be killed at any moment;
    nothing acknowledged is lost and re-sent changes carry the same change ids.
    """

    @abstractmethod
    def run(self, stop: threading.Event) -> None:
        """Stream until `stop` is set, then flush, confirm the final position and return."""

    @abstractmethod
    def status(self) -> dict[str, Any]:
        """Slot state, lag, snapshot progress (see `Component.status`)."""

"""The contract every sink implements."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Any

from core.checks import Problem
from core.errors import ConnectorError


class Sink(ABC):
    """Consumes change topics and applies them to a destination.

    Resume contract: the position of each partition is stored in the destination in the same
    transaction as the rows it accounts for ("the next offset to apply"); Kafka's committed
    offsets are informational. `run` may be killed at any moment without loss or duplication.
    """

    @abstractmethod
    def validate(self, *, kafka: bool = True) -> list[Problem]:
        """Check connections and prerequisites; empty when ready to run. `kafka=False`: Kafka is known to be
        unreachable (and reported), so skip the checks that need it."""

    @abstractmethod
    def run(self, stop: threading.Event) -> None:
        """Consume and apply until `stop` is set, finishing the batch in flight."""

    def ready(self) -> bool:
        """True once the connector is consuming with partitions assigned; drives /readyz."""
        return False

    def problem(self) -> ConnectorError | None:
        """Why it cannot make progress right now (a failure it is retrying), None while it can; drives /healthz."""
        return None

    @abstractmethod
    def status(self) -> dict[str, Any]:
        """Stored offsets vs log end per partition, as the running component last published it (/status).

        Answers at once from any thread: no I/O, nothing shared with the loops but what they publish.
        """

    def inspect(self) -> dict[str, Any]:
        """The same, read from the services now: what `cdc status` shows of a process it is not part of."""
        return self.status()

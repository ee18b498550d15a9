"""The contract every sink implements."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Any

from connector.checks import Problem


class Sink(ABC):
    """Consumes change topics and applies them to a destination.

    Resume contract: the position of each partition is stored in the destination in the same
    transaction as the rows it accounts for ("the next offset to apply"); Kafka's committed
    offsets are informational. `run` may be killed at any moment without loss or duplication.
    """

    @abstractmethod
    def validate(self) -> list[Problem]:
        """Check connections and prerequisites; empty when ready to run."""

    @abstractmethod
    def run(self, stop: threading.Event) -> None:
        """Consume and apply until `stop` is set, finishing the batch in flight."""

    def ready(self) -> bool:
        """True once the connector is consuming with partitions assigned; drives /readyz."""
        return False

    def healthy(self) -> bool:
        """False while a failure keeps this component from making progress (it may be retrying); drives /healthz."""
        return True

    @abstractmethod
    def status(self) -> dict[str, Any]:
        """Stored offsets vs log end per partition: what `cdc status` prints."""

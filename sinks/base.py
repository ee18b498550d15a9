"""The contract every sink implements."""

from __future__ import annotations

import threading
from abc import abstractmethod
from typing import Any

from core.component import Component


class Sink(Component):
    """Consumes change topics and applies them to a destination.

    Resume contract: the position of each partition is stored in the destination in the same
    transaction as the rows it accounts for ("the next offset to apply"); Kafka's committed
    offsets are informational. `run` may be killed at any moment without loss or duplication.
    """

    @abstractmethod
    def run(self, stop: threading.Event) -> None:
        """Consume and apply until `stop` is set, finishing the batch in flight."""

    @abstractmethod
    def status(self) -> dict[str, Any]:
        """Stored offsets vs log end per partition (see `Component.status`)."""

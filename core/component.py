"""What the application runs and probes: a source or a sink, through one interface.

`run` owns a thread until `stop` is set; `ready` and `problem` drive /readyz and /healthz; `status` answers at once
from any thread (what the running component last published), `inspect` reads the services now (`cdc status`).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Any

from prometheus_client.metrics_core import Metric

from core.checks import Problem
from core.errors import ConnectorError


class Component(ABC):
    @abstractmethod
    def validate(self, *, kafka: bool = True) -> list[Problem]:
        """Check connections and prerequisites; empty when ready to run. `kafka=False`: Kafka is known to be
        unreachable (and reported), so skip the checks that need it."""

    @abstractmethod
    def run(self, stop: threading.Event) -> None:
        """Work until `stop` is set, finish what is in flight, return."""

    def ready(self) -> bool:
        """True once the component does its work (streaming, or consuming with partitions assigned): /readyz."""
        return False

    def problem(self) -> ConnectorError | None:
        """Why it cannot make progress right now (a failure it is retrying), None while it can; drives /healthz."""
        return None

    @abstractmethod
    def status(self) -> dict[str, Any]:
        """Its state as the running component last published it (/status).

        Answers at once from any thread: no I/O, nothing shared with the loops but what they publish.
        """

    def metric_families(self) -> list[Metric]:
        """Metrics it holds outside this process's registry (a component run in a child process), as last
        reported; /metrics adds them to the registry's. Empty for a component running in this process."""
        return []

    def inspect(self) -> dict[str, Any]:
        """The same, read from the services now: what `cdc status` shows of a process it is not part of."""
        return self.status()

"""What a running source publishes for the probes and `/status`: written by the run, read from any thread."""

from __future__ import annotations

import threading
from typing import Any

from core.errors import RetryBudget


class SourceStatus:
    """Readiness, the retry budget's progress and the published stats of one source.

    The run's parts (snapshotter, streamer) report here; the HTTP threads read `stats()` and `is_ready`.
    """

    def __init__(self, budget: RetryBudget) -> None:
        self.budget = budget
        self._ready = threading.Event()
        self._stats: dict[str, Any] = {"state": "stopped"}
        self._lock = threading.Lock()

    @property
    def is_ready(self) -> bool:
        return self._ready.is_set()

    def streaming(self, **values: Any) -> None:
        """Streaming started: ready, and progress for the retry budget."""
        self._ready.set()
        self.budget.progress()
        self.publish(state="streaming", **values)

    def not_ready(self) -> None:
        self._ready.clear()

    def publish(self, **values: Any) -> None:
        with self._lock:
            self._stats.update(values)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._stats)

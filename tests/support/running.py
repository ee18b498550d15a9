"""A component's `run(stop)` on a thread of the test process, with what it raised kept for the test."""

from __future__ import annotations

import threading
from collections.abc import Callable


class RunThread:
    """`run(stop_event)` on a daemon thread (started by `start()`); `error` is what `run` raised, if anything."""

    def __init__(self, run: Callable[[threading.Event], object], stop_event: threading.Event | None = None) -> None:
        self.stop_event = threading.Event() if stop_event is None else stop_event
        self.error: BaseException | None = None
        self._target = run
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self._target(self.stop_event)
        except BaseException as exc:
            self.error = exc

    def start(self) -> None:
        self.thread.start()

    def alive(self) -> bool:
        return self.thread.is_alive()

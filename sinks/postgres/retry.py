"""The sink's retry policy: what the core classification calls retriable is retried with backoff, within a budget.

Which errors are worth retrying is decided in `core.errors` (`is_retriable`, `classify`), never here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_after_delay, stop_any, stop_when_event_set
from tenacity.wait import wait_random_exponential

from core.errors import Endpoints, FatalError, RetryBudget, classify, is_retriable
from sinks.postgres.config import RetryConfig

log = logging.getLogger(__name__)

T = TypeVar("T")


class Stopped(Exception):
    """The stop event was set while a retriable error was being retried."""


class RetryPolicy:
    """`call(body, what)`: `body()`, retrying retriable errors with backoff until it succeeds, `stop` is set, or the
    retry budget (`retry.give_up_after_s`, or `sink.retry.max_attempts`) is spent; then a fatal error.

    Thread-safe: the consuming thread (registry lookups, offsets) and the applying thread (the destination) share
    one policy and one budget, which drives /healthz.
    """

    def __init__(
        self,
        config: RetryConfig,
        budget: RetryBudget,
        endpoints: Endpoints,
        stop: threading.Event,
        *,
        before_retry: Callable[[], None] = lambda: None,
    ) -> None:
        self._config = config
        self._budget = budget
        self._endpoints = endpoints
        self._stop = stop
        self._before_retry = before_retry

    def call(self, body: Callable[[], T], what: str) -> T:
        """`body()` under the policy; raises `Stopped` when stopped while retrying, errors that are not retriable
        as they are, and a `FatalError` once the budget is spent."""
        budget = self._budget
        stop_rule: Any = stop_when_event_set(self._stop)
        if self._config.max_attempts is not None:
            stop_rule = stop_any(stop_rule, stop_after_attempt(self._config.max_attempts))
        if budget.give_up_after_s is not None:
            stop_rule = stop_any(stop_rule, stop_after_delay(budget.give_up_after_s))

        def before_sleep(state: Any) -> None:
            exc = state.outcome.exception()  # only failed attempts are retried
            error = classify(exc, self._endpoints)
            budget.failed(error)
            log.warning("%s failed (attempt %d), retrying: %s", what, state.attempt_number, error)
            self._before_retry()

        retrying = Retrying(
            retry=retry_if_exception(is_retriable),
            # "Full jitter": a random wait up to the exponential bound, so restarted sinks do not retry in step.
            wait=wait_random_exponential(
                multiplier=self._config.initial_backoff_ms / 1000, max=self._config.max_backoff_ms / 1000
            ),
            stop=stop_rule,
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            result: T = retrying(body)
        except Exception as exc:
            if is_retriable(exc):
                if self._stop.is_set():
                    raise Stopped from exc
                error = classify(exc, self._endpoints)
                attempts = retrying.statistics.get("attempt_number", 1)
                raise FatalError(
                    f"{what} kept failing, gave up after {attempts} attempts: {error.message}",
                    hint=(f"{error.hint}; " if error.hint else "")
                    + "the budget is `retry.give_up_after_s` (and `sink.retry.max_attempts`)",
                ) from exc
            raise
        budget.progress()
        return result

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

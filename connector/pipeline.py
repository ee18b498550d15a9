"""Running a connector: build its source and/or sink, serve the probes, stop cleanly on SIGTERM.

Shutdown contract: SIGTERM or SIGINT sets one stop event. Each component then finishes what it has in
flight (the source flushes Kafka and confirms the acknowledged LSN; the sink commits or abandons its batch)
and returns; the process exits 0, or 1 when a component was still retrying a failure (it had not recovered, and
an orchestrator must see that). A component that fails (a fatal error, or a retriable one that outlived the retry
budget) stops the others and the process exits 1 with the error on one line. A second signal while stopping exits
at once (everything is safe to kill). Exit codes and probes: docs/operations.md.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Literal

from prometheus_client import generate_latest

from connector.config import ConnectorConfig
from connector.ops import OpsServer
from core.checks import Problem
from core.errors import ConfigError, FatalError, classify
from core.metrics import REGISTRY, Merged
from sinks.base import Sink
from sinks.postgres import PostgresSink
from sources.base import Source
from sources.postgres.source import PostgresSource
from transforms import build_chain

log = logging.getLogger(__name__)

Side = Literal["source", "sink"]


def build_source(config: ConnectorConfig) -> PostgresSource:
    """The source of `config`, given only its own sections."""
    if config.source is None:
        raise ConfigError("the config has no `source` section")
    return PostgresSource(
        config.source,
        name=config.name,
        kafka=config.kafka,
        registry=config.schema_registry,
        retry=config.retry,
        chain=build_chain(config.transforms_for("source"), side="source"),
    )


def build_sink(config: ConnectorConfig, *, after_db_commit: Callable[[], None] | None = None) -> PostgresSink:
    """The sink of `config`, given only its own sections (`after_db_commit`: the sink's test fault point)."""
    if config.sink is None:
        raise ConfigError("the config has no `sink` section")
    return PostgresSink(
        config.sink,
        kafka=config.kafka,
        registry=config.schema_registry,
        retry=config.retry,
        chain=build_chain(config.transforms_for("sink"), side="sink"),
        group_id=config.group_id,
        after_db_commit=after_db_commit,
    )


def build_components(config: ConnectorConfig, only: Side | None = None) -> dict[Side, Source | Sink]:
    """Instantiate the configured source and sink (no connections are opened here)."""
    components: dict[Side, Source | Sink] = {}
    if only == "source" and config.source is None:
        raise ConfigError("--only source, but the config has no `source` section")
    if only == "sink" and config.sink is None:
        raise ConfigError("--only sink, but the config has no `sink` section")
    if config.source is not None and only in (None, "source"):
        components["source"] = build_source(config)
    if config.sink is not None and only in (None, "sink"):
        components["sink"] = build_sink(config)
    return components


@dataclass
class _Worker:
    side: Side
    component: Source | Sink
    thread: threading.Thread | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class Pipeline:
    """One connector process: its components on threads, one stop event, the ops server.

    The components are built from `config` (`only` picks one side) unless `components` hands them in ready-made;
    `config` then supplies the ops server and the shutdown grace.
    """

    def __init__(
        self,
        config: ConnectorConfig,
        only: Side | None = None,
        *,
        components: Mapping[Side, Source | Sink] | None = None,
    ) -> None:
        self.config = config
        self.stop = threading.Event()
        if components is None:
            components = build_components(config, only)
        self._workers = [_Worker(side, c) for side, c in components.items()]
        self._ops: OpsServer | None = None
        self._signals = 0

    def validate(self, *, kafka: bool = True) -> list[Problem]:
        """Each component's problems; `kafka=False` when Kafka is unreachable (reported once, by the caller)."""
        problems: list[Problem] = []
        for worker in self._workers:
            component = worker.component
            problems.extend(component.validate(kafka=kafka))
        return problems

    def alive(self) -> bool:
        """False once a component failed, and while one cannot make progress (it is retrying a failure)."""
        return not self.problems()

    def problems(self) -> list[str]:
        """Why each component that cannot make progress cannot, one line each (the /healthz body when red)."""
        found = []
        for worker in self._workers:
            problem = worker.error if worker.error is not None else worker.component.problem()
            if problem is not None:
                found.append(f"{worker.side}: {classify(problem)}")
        return found

    def ready(self) -> bool:
        return bool(self._workers) and all(w.component.ready() and not w.done.is_set() for w in self._workers)

    def status(self) -> dict[str, Any]:
        return {w.side: w.component.status() for w in self._workers}

    def metrics(self) -> bytes:
        """/metrics: this process's registry plus what a component in a child process last reported."""
        return generate_latest(
            Merged(REGISTRY, lambda: [f for w in self._workers for f in w.component.metric_families()])
        )

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second %s while stopping: exiting now", signal.Signals(signum).name)
            _exit_now(128 + signum)
        log.info("%s received: finishing in-flight work and stopping", signal.Signals(signum).name)
        self.stop.set()

    def _join_within(self, grace_s: float, *, exit_process: bool) -> None:
        """Wait up to `grace_s` for every component to stop; a component stuck past it ends the process."""
        deadline = time.monotonic() + grace_s
        for worker in self._workers:
            if worker.thread is not None:
                worker.thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [w.side for w in self._workers if w.thread is not None and w.thread.is_alive()]
        if not stuck:
            return
        message = f"{' and '.join(stuck)} did not stop within {grace_s:g}s (shutdown_grace_s)"
        if exit_process:
            # Safe: nothing is confirmed to the slot or committed to the destination before it is durable.
            log.error("%s: exiting now", message)
            _exit_now(1)
        raise FatalError(message)

    def _run_worker(self, worker: _Worker) -> None:
        try:
            worker.component.run(self.stop)
        except BaseException as exc:
            worker.error = exc
            self.stop.set()
        finally:
            worker.done.set()
            if not self.stop.is_set() and worker.error is None:
                # A component that returns on its own (e.g. snapshot.mode initial_only) ends the others too.
                log.info("%s finished", worker.side)
                if all(w.done.is_set() for w in self._workers):
                    self.stop.set()

    def run(self, *, install_signals: bool = True, on_ready: Callable[[OpsServer | None], None] | None = None) -> int:
        """Run until stopped. Returns the process exit code."""
        if install_signals:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        server = self.config.server
        if server.enabled:
            self._ops = OpsServer(
                server.host,
                server.port,
                problems=self.problems,
                ready=self.ready,
                status=self.status,
                metrics=self.metrics,
            )
            self._ops.start()
            log.info("serving /healthz /readyz /metrics /status on http://%s:%d", server.host, self._ops.port)
        if on_ready is not None:
            on_ready(self._ops)
        for worker in self._workers:
            worker.thread = threading.Thread(target=self._run_worker, args=(worker,), name=worker.side, daemon=True)
            worker.thread.start()
        try:
            while not all(w.done.is_set() for w in self._workers):
                self.stop.wait(0.5)
                if self.stop.is_set():
                    self._join_within(self.config.shutdown_grace_s, exit_process=install_signals)
                    break
        finally:
            if self._ops is not None:
                self._ops.stop()
        failures = [(w.side, w.error) for w in self._workers if w.error is not None]
        for side, error in failures:
            # The cause goes on one line (the CLI prints the first); the traceback only with --debug.
            log.debug("%s failed", side, exc_info=error)
        for side, error in failures[1:]:
            log.error("%s stopped too: %s", side, classify(error))
        if failures:
            raise classify(failures[0][1])
        stuck = [(w.side, w.component.problem()) for w in self._workers if w.component.problem() is not None]
        if stuck:
            side, problem = stuck[0]
            raise FatalError(f"stopped while the {side} could not make progress: {problem}")
        log.info("stopped cleanly")
        return 0


def _exit_now(code: int) -> None:
    """End the process at once (stuck threads are not waited for), with what was logged written out."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

"""Running the sink in a child process of `cdc run`, so the source and the sink each have a core.

In one process the source and the sink share one interpreter lock: the Python work of both, per change, adds up on
one core. With `processes: 2` (or `auto` on two or more CPUs) the parent keeps the source, the ops server and the
signals; `SinkProcess`, the sink's `Component` in the parent, spawns a child that runs the sink and carries its
state over one pipe:

- child -> parent, every `REPORT_EVERY_S`: `("state", ready, problem, status, metric families)`, and once at the
  end `("done", error)`; the probes of the parent answer from the last state, so they stay I/O-free.
- parent -> child: `("stop",)` when the parent's stop event is set (SIGTERM/SIGINT, or the source failed).

The child is spawned, never forked (the parent runs librdkafka's threads). It ignores SIGINT/SIGTERM, so a Ctrl-C
sent to the whole process group stops it only through the parent, which relays the stop and waits for it within
`shutdown_grace_s` like for a thread. It dies with the parent: PR_SET_PDEATHSIG (Linux) kills it when the parent
does, even by kill -9, and where that is missing the pipe's EOF stops it. A child that dies (kill -9, out of memory)
is a failed component: `cdc run` stops and exits 1 naming it, so the orchestrator restarts the whole; it is not
restarted inside, which would hide a crash loop from everyone but the log. Every guarantee is the same as in one
process: nothing is acknowledged before it is durable, so killing either process at any moment loses nothing.

Errors cross the pipe already classified (retriable or not, message, fix), so exit codes and `/healthz` bodies
are the same words as in one process. Metrics: the child sends its registry's families and the parent's
`/metrics` sums them into its own (`core.metrics.Merged`); each sample is written by one side only (the other holds
its zero), so the sum is the value, with the names and labels of the one-process mode.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Literal, NamedTuple

from prometheus_client.metrics_core import Metric

from connector.config import ConnectorConfig
from connector.pipeline import build_sink
from core import logs
from core.checks import Problem
from core.errors import ConnectorError, FatalError, RetriableError, classify
from core.metrics import REGISTRY
from sinks.base import Sink

log = logging.getLogger(__name__)

REPORT_EVERY_S = 0.5
"""How often the child sends its state (probes and /metrics of the parent are at most this old)."""

Wired = tuple[bool, str, str | None]
"""A classified error on the pipe: (retriable, message, hint)."""

_PR_SET_PDEATHSIG = 1


class SinkProcessError(FatalError):
    """The sink's child process died without reporting how it ended."""


class Cpus(NamedTuple):
    available: float
    limited: bool
    """True when a cgroup CPU limit (a container's `cpu` limit) sets `available`: those CPUs are the process's own."""


def usable_cpus() -> Cpus:
    """CPUs this process may run on: its affinity, capped by a cgroup v2 CPU limit (a container's `cpu` limit)."""
    try:
        cpus: float = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return Cpus(cpus, limited=False)
    if quota == "max":
        return Cpus(cpus, limited=False)
    return Cpus(min(cpus, int(quota) / int(period)), limited=True)


def memory_limit() -> int | None:
    """Bytes of a cgroup v2 memory limit (a container's `memory` limit, which counts every process in it), if any."""
    try:
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


# Without a CPU limit the machine's cores are shared with whatever else runs there (often the database and the
# broker): on 2 cores shared so, one process drained a backlog faster than two (docs/operations.md).
SPLIT_MIN_CPUS_LIMITED = 2
SPLIT_MIN_CPUS_SHARED = 4
# A second interpreter doubles the peak RSS (about 135 MiB in one process, 270-290 MiB in two, narrow rows):
# under a memory limit below this, `auto` keeps one process rather than risk the OOM killer.
SPLIT_MIN_MEMORY = 512 * 1024 * 1024


def wants_split(config: ConnectorConfig, only: Literal["source", "sink"] | None, override: str | None) -> bool:
    """Whether `cdc run` puts the sink in a child process: `override` (`--processes`) or `processes` decides."""
    if only is not None or config.source is None or config.sink is None:
        return False
    choice = override if override is not None else str(config.processes)
    if choice == "auto":
        cpus, memory = usable_cpus(), memory_limit()
        if memory is not None and memory < SPLIT_MIN_MEMORY:
            return False
        return cpus.available >= (SPLIT_MIN_CPUS_LIMITED if cpus.limited else SPLIT_MIN_CPUS_SHARED)
    return choice == "2"


def _wire(exc: BaseException) -> Wired:
    error = classify(exc)
    return error.retriable, error.message, error.hint


def _unwire(wired: Wired) -> ConnectorError:
    retriable, message, hint = wired
    return (RetriableError if retriable else FatalError)(message, hint=hint)


class SinkProcess(Sink):
    """The sink of `config` run in a child process; in the parent, what the child last reported."""

    def __init__(self, config: ConnectorConfig, *, log_level: str) -> None:
        self._config = config
        self._log_level = log_level
        self._ready = False
        self._problem: ConnectorError | None = None
        self._status: dict[str, Any] = {}
        self._families: list[Metric] = []
        self.pid: int | None = None

    def validate(self, *, kafka: bool = True) -> list[Problem]:
        return build_sink(self._config).validate(kafka=kafka)

    def inspect(self) -> dict[str, Any]:
        return build_sink(self._config).inspect()

    def ready(self) -> bool:
        return self._ready

    def problem(self) -> ConnectorError | None:
        return self._problem

    def status(self) -> dict[str, Any]:
        return self._status

    def metric_families(self) -> list[Metric]:
        """The child's registry, as last reported (summed into the parent's /metrics)."""
        return self._families

    def run(self, stop: threading.Event) -> None:
        context = multiprocessing.get_context("spawn")  # never fork a process that runs librdkafka threads
        ours, theirs = context.Pipe(duplex=True)
        # Not daemonic: multiprocessing would SIGTERM a daemonic child at exit, which the child ignores.
        process = context.Process(
            target=_child_main,
            args=(theirs, self._config, self._log_level, os.getpid()),
            name="cdc-sink",
        )
        process.start()
        theirs.close()
        self.pid = process.pid
        log.info("sink runs in process %d", process.pid)
        try:
            error = self._follow(ours, stop)
        except BaseException:
            process.kill()  # the parent stops following: the child must not outlive that
            raise
        finally:
            self._ready = False
            ours.close()
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join(5)
        if error is None:
            return
        raise error if error is not _DIED else self._died(process.exitcode)

    def _follow(self, conn: multiprocessing.connection.Connection, stop: threading.Event) -> ConnectorError | None:
        """Take the child's reports until it is done; relay the stop. The child's error, or `_DIED`."""
        stop_sent = False
        while True:
            if stop.is_set() and not stop_sent:
                with contextlib.suppress(OSError):  # a child already gone is noticed by recv
                    conn.send(("stop",))
                stop_sent = True
            try:
                if not conn.poll(0.2):
                    continue
                message = conn.recv()
            except (EOFError, OSError):
                return _DIED
            if message[0] == "state":
                _, self._ready, problem, self._status, self._families = message
                self._problem = None if problem is None else _unwire(problem)
            else:  # ("done", error)
                return None if message[1] is None else _unwire(message[1])

    def _died(self, exitcode: int | None) -> SinkProcessError:
        if exitcode is not None and exitcode < 0:
            how = f"killed by {signal.Signals(-exitcode).name}"
        else:
            how = f"exited with code {exitcode}"
        error = SinkProcessError(
            f"the sink process ({self.pid}) died: {how}",
            hint="its last log lines are above; `cdc run` stops so that it is restarted whole "
            "(nothing acknowledged is lost)",
        )
        self._problem = error
        return error


_DIED = SinkProcessError("the sink process died")
"""Marker: the pipe closed before the child said it was done."""


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux); the pipe's EOF covers the rest."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the line above
        os._exit(1)


def _state(sink: Sink) -> tuple[Any, ...]:
    problem = sink.problem()
    return (
        "state",
        sink.ready(),
        None if problem is None else _wire(problem),
        sink.status(),
        list(REGISTRY.collect()),
    )


def _child_main(
    conn: multiprocessing.connection.Connection, config: ConnectorConfig, log_level: str, parent_pid: int
) -> None:
    """The child: run the sink, report every `REPORT_EVERY_S`, stop when told or when the parent is gone."""
    _die_with_parent(parent_pid)
    # The parent relays SIGTERM/SIGINT (a terminal's Ctrl-C reaches the whole process group).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logs.configure(log_level, config.logging.format)

    stop = threading.Event()
    failure: list[BaseException] = []
    try:
        sink = build_sink(config)
    except BaseException as exc:
        log.debug("the sink could not be built", exc_info=exc)
        with contextlib.suppress(OSError):
            conn.send(("done", _wire(exc)))
        return

    def work() -> None:
        try:
            sink.run(stop)
        except BaseException as exc:
            log.debug("sink failed", exc_info=exc)
            failure.append(exc)

    thread = threading.Thread(target=work, name="sink", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            if conn.poll(REPORT_EVERY_S):
                conn.recv()  # the only message the parent sends: stop
                stop.set()
            conn.send(_state(sink))
        conn.send(_state(sink))
        conn.send(("done", _wire(failure[0]) if failure else None))
    except (EOFError, OSError):
        # The parent is gone without PR_SET_PDEATHSIG (not Linux): stop as after SIGTERM, within the grace.
        stop.set()
        thread.join(config.shutdown_grace_s)
        _exit_now(0 if not thread.is_alive() else 1)


def _exit_now(code: int) -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(code)

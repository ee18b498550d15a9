"""The sides as processes: our `cdc run` and a Kafka Connect worker, their CPU time and peak RSS (/proc), and
`drain`, which times one side from its first delivered event to its last."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from devstack.connect import ConnectWorker

ROOT = Path(__file__).resolve().parents[2]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TIMELINE_POINTS = 400


class BenchError(Exception):
    """A side failed or did not finish: the run stops with this message."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def process_tree(pid: int) -> list[int]:
    out, i = [pid], 0
    while i < len(out):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{out[i]}/task").iterdir():
                out.extend(int(child) for child in (task / "children").read_text().split())
        i += 1
    return out


def cpu_seconds(pid: int) -> float:
    total = 0
    for each in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return total / CLOCK_TICKS


def peak_rss_mib(pid: int) -> float:
    total = 0
    for each in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
    return total / 1024


class Side(Protocol):
    """What a stage runs: our process or a Connect worker."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def failure(self) -> str | None: ...
    @property
    def pid(self) -> int | None: ...


@dataclass
class Figure:
    events: int
    seconds: float
    cpu_s: float
    peak_rss_mib: float
    timeline: list[tuple[float, int]] = field(default_factory=list)
    """(seconds since the side started, events delivered) at every sample: the throughput plot."""
    delivered: dict[str, int] = field(default_factory=dict)
    """What the side delivered, counted after it finished: records on its topic, or destination rows."""

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        step = max(1, len(self.timeline) // TIMELINE_POINTS)
        return {
            "rate": round(self.rate),
            "events": self.events,
            "seconds": round(self.seconds, 2),
            "cpu_s": round(self.cpu_s, 2),
            "peak_rss_mib": round(self.peak_rss_mib),
            "delivered": self.delivered,
            "timeline": [[round(t, 2), n] for t, n in self.timeline[::step] + self.timeline[-1:]],
        }


def measure(
    side: Side,
    progress: Callable[[], int],
    total: int,
    *,
    timeout: float,
    interval: float,
    what: str,
    from_start: bool = False,
) -> Figure:
    """Poll `progress` (events delivered so far) until `total`; rate and CPU between the first and last sample seen,
    or (`from_start`) from the call to the last sample.

    Called right after the side was started (or, for a side already running, right after the workload's commit).
    """
    started = time.monotonic()
    first: tuple[float, int, float] | None = None
    deadline = started + timeout
    timeline: list[tuple[float, int]] = []
    if from_start:
        first = (started, 0, cpu_seconds(side.pid) if side.pid else 0.0)
    while True:
        done = progress()
        now = time.monotonic()
        timeline.append((now - started, done))
        current = side.pid
        cpu = cpu_seconds(current) if current else 0.0
        if first is None and done > 0:
            # A side that delivered everything before the first look (tiny workloads) is timed from its start.
            first = (now, done, cpu) if done < total else (started, 0, 0.0)
        if first is not None and done >= total:
            # The events seen in the first sample were delivered before the clock started.
            events = max(total - first[1], 1)
            rss = peak_rss_mib(current) if current else 0.0
            return Figure(events, now - first[0], cpu - first[2], rss, timeline)
        problem = side.failure()
        if problem:
            raise BenchError(f"{what}: {problem}")
        if now > deadline:
            raise BenchError(f"{what}: {done} of {total} events within {timeout:.0f}s")
        time.sleep(interval)


def drain(side: Side, progress: Callable[[], int], total: int, *, timeout: float, interval: float, what: str) -> Figure:
    """Start `side`, measure it until it delivered `total` events, stop it (also when it failed)."""
    side.start()
    try:
        return measure(side, progress, total, timeout=timeout, interval=interval, what=what)
    finally:
        side.stop()


class OurProcess:
    """`cdc run` on a config written to `workdir`, as its own process (SIGTERM to stop)."""

    def __init__(self, workdir: Path, name: str, config: dict[str, Any], env: dict[str, str]) -> None:
        self.config_path = workdir / f"{name}.json"
        self.log = workdir / f"{name}.log"
        self.config_path.write_text(json.dumps(config))  # JSON is YAML
        self._env = env
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log_file:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "connector.cli", "--env-file", os.devnull, "run", str(self.config_path)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=self._env,
                cwd=ROOT,
            )

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def failure(self) -> str | None:
        if self._process is not None and self._process.poll() is not None:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])
            return f"cdc run exited with {self._process.returncode}; see {self.log}\n{tail}"
        return None

    def stop(self) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(60)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
        self._process = None


class ConnectSide:
    """A Connect worker started in the background, so that measuring can begin before its REST API says RUNNING."""

    def __init__(self, worker: ConnectWorker) -> None:
        self.worker = worker
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        def run() -> None:
            try:
                self.worker.start(timeout=600)
            except BaseException as exc:
                self._error = exc

        self._error = None
        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def wait_started(self) -> None:
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise BenchError(str(self._error))

    @property
    def pid(self) -> int | None:
        return self.worker.pid

    def failure(self) -> str | None:
        if self._error is not None:
            return str(self._error)
        if self._thread is not None and self._thread.is_alive():
            return None
        return self.worker.failure() if self.worker.pid is not None else None

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.join()
        self.worker.stop()

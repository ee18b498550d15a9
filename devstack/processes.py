"""Starting, recognising and stopping the stack's own processes.

Each started process is recorded in `<home>/pids.json` with its kernel start time, so a pid that
the system reused for another program is never mistaken for ours and never signalled.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.errors import StackError

PIDS_FILE_NAME = "pids.json"

# Popen objects of processes this interpreter started: kept so they are reaped (no zombies) and
# never garbage-collected while running (which would warn).
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    """A service process the stack started."""

    name: str
    pid: int
    start_time: int
    log: str
    ports: dict[str, int] = field(default_factory=dict)
    info: dict[str, str] = field(default_factory=dict)


def start_time_of(pid: int) -> int | None:
    """The kernel's start time of `pid` (clock ticks since boot), or None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses; fields after it are plain.
    rest = stat[stat.rfind(")") + 2 :].split()
    if rest[0] in {"Z", "X"}:
        return None
    return int(rest[19])


def is_running(record: ProcessRecord) -> bool:
    return start_time_of(record.pid) == record.start_time


def start(
    name: str,
    argv: Sequence[str],
    *,
    log: Path,
    cwd: Path,
    output: Path | None = None,
    env: Mapping[str, str] | None = None,
    user: int | None = None,
    group: int | None = None,
    ports: Mapping[str, int] | None = None,
    info: Mapping[str, str] | None = None,
) -> ProcessRecord:
    """Start a process in its own session (it outlives the caller); stdout/stderr go to `output` or `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(output or log, "ab") as out:
        try:
            proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=dict(env) if env is not None else None,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=user,
                group=group,
                extra_groups=[] if user is not None else None,
            )
        except OSError as exc:
            raise StackError(f"cannot start {name} ({argv[0]}): {exc.strerror}") from None
    _children[proc.pid] = proc
    started = start_time_of(proc.pid)
    if started is None:
        code = proc.wait()
        lines = tail(output or log, 10)
        raise StackError(
            f"{name} exited at once with code {code}",
            hint=f"last lines of {output or log}: " + (" | ".join(lines) if lines else "(empty)"),
        )
    return ProcessRecord(name, proc.pid, started, str(log), dict(ports or {}), dict(info or {}))


def exit_code(record: ProcessRecord) -> int | None:
    """The exit code of a child of this interpreter that has ended, if known."""
    proc = _children.get(record.pid)
    return proc.poll() if proc is not None else None


def stop(record: ProcessRecord, *, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> bool:
    """Stop exactly this process: `sig`, wait up to `timeout`, then SIGKILL. False if it was not running."""
    if not is_running(record):
        _reap(record.pid)
        return False
    os.kill(record.pid, sig)
    if _wait_gone(record, timeout):
        return True
    if is_running(record):
        os.kill(record.pid, signal.SIGKILL)
        _wait_gone(record, 10.0)
    return True


def _wait_gone(record: ProcessRecord, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(record.pid)
        if not is_running(record):
            return True
        time.sleep(0.2)
    return False


def _reap(pid: int) -> None:
    proc = _children.get(pid)
    if proc is not None and proc.poll() is not None:
        del _children[pid]


def tail(path: Path | str, lines: int = 10) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 16_384))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return [line for line in data.splitlines() if line.strip()][-lines:]


def load_records(home: Path) -> dict[str, ProcessRecord]:
    path = home / PIDS_FILE_NAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise StackError(f"cannot read {path}: {exc}", hint="stop the processes by hand and delete the file") from None
    return {name: ProcessRecord(**entry) for name, entry in raw.get("processes", {}).items()}


def save_records(home: Path, records: Mapping[str, ProcessRecord]) -> None:
    path = home / PIDS_FILE_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps({"processes": {name: asdict(r) for name, r in records.items()}}, indent=2) + "\n",
        encoding="utf-8",
    )
    tmp.replace(path)

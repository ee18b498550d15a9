"""A peer that accepts and never answers: connects and requests are bounded, SIGTERM ends the process within the
grace period, a second signal at once."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.pipeline_support import wait_until

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[2]


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never sends a byte."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._held.append(conn)

    def close(self) -> None:
        self._listener.close()
        for conn in self._held:
            conn.close()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def _config(tmp_path: Path, stack: Any, name: str, port: int, **extra: Any) -> Path:
    data = {
        "name": name,
        "source": {
            "dsn": f"postgresql://cdc@127.0.0.1:{port}/cdc",
            "topic_prefix": name,
            "slot": {"name": name},
            "publication": {"name": name},
            **extra.pop("source", {}),
        },
        "kafka": {"bootstrap_servers": stack.kafka_bootstrap},
        "schema_registry": {"url": stack.registry_url, **extra.pop("schema_registry", {})},
        "server": {"port": 0},
        **extra,
    }
    path = tmp_path / "config.json"
    path.write_text(__import__("json").dumps(data))  # JSON is YAML
    return path


def _cdc(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "connector.cli", *args], cwd=REPO_ROOT, stdout=out, stderr=out)


def test_validate_ends_against_a_database_and_registry_that_never_answer(
    stack: Any, unique_name: Any, silent: SilentServer, tmp_path: Path
) -> None:
    config = _config(
        tmp_path,
        stack,
        unique_name("hang"),
        silent.port,
        source={"connect_timeout_s": 2},
        schema_registry={"url": f"http://127.0.0.1:{silent.port}/apis/ccompat/v7", "request_timeout_s": 1},
    )
    done = subprocess.run(
        [sys.executable, "-m", "connector.cli", "validate", str(config)],
        cwd=REPO_ROOT, capture_output=True, timeout=90, check=False,
    )  # fmt: skip
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert re.search(r"\[schema_registry\] schema registry at \S+ is unreachable", err), err
    assert re.search(r"\[source\] .*source database: connection timeout expired", err), err


def _wait_for_log(log: Path, text: str, process: subprocess.Popen[bytes]) -> None:
    wait_until(lambda: text in log.read_text(), 30, f"{text!r} in the log", process)


def test_sigterm_ends_run_within_the_grace_period_while_connect_hangs(
    stack: Any, unique_name: Any, silent: SilentServer, tmp_path: Path
) -> None:
    # The connect outlasts the grace period: only the grace period can end the process.
    config = _config(
        tmp_path, stack, unique_name("hang"), silent.port, source={"connect_timeout_s": 120}, shutdown_grace_s=2
    )
    log = tmp_path / "run.log"
    process = _cdc("run", str(config), log=log)
    try:
        _wait_for_log(log, "serving /healthz", process)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    finally:
        process.kill()
    text = log.read_text()
    assert "SIGTERM received" in text
    assert "source did not stop within 2s (shutdown_grace_s)" in text
    assert code == 1


def test_a_second_signal_exits_at_once(stack: Any, unique_name: Any, silent: SilentServer, tmp_path: Path) -> None:
    config = _config(
        tmp_path, stack, unique_name("hang"), silent.port, source={"connect_timeout_s": 120}, shutdown_grace_s=600
    )
    log = tmp_path / "run.log"
    process = _cdc("run", str(config), log=log)
    try:
        _wait_for_log(log, "serving /healthz", process)
        process.send_signal(signal.SIGTERM)
        _wait_for_log(log, "SIGTERM received", process)
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=10)
    finally:
        process.kill()
    assert "second SIGINT while stopping: exiting now" in log.read_text()
    assert code == 128 + signal.SIGINT

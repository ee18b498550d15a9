"""`cdc dev up | status | down` as a user runs them: separate processes, a private home, free ports.

One stack is started (it is the slow part); `up` again must keep it, `down` must stop exactly its pids.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from connector.config_loader import read_env_file
from devstack import processes

pytestmark = pytest.mark.integration


def cdc_dev(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "connector.cli", "dev", *args, "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


@pytest.fixture
def home() -> Iterator[Path]:
    # Not pytest's tmp_path: its parents are private (0700) and PostgreSQL runs as another OS user under root.
    path = Path(tempfile.mkdtemp(prefix="cdc-dev-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        # Whatever happened above, leave no process behind.
        subprocess.run([sys.executable, "-m", "connector.cli", "dev", "down", "--home", str(path)], check=False,
                       capture_output=True, timeout=300)
        shutil.rmtree(path, ignore_errors=True)


def test_up_status_up_again_down(home: Path) -> None:
    first = cdc_dev("up", "--free-ports", home=home)
    assert first.returncode == 0, first.stderr
    assert "stack is up" in first.stdout
    assert "in memory" not in first.stdout  # the registry stores its schemas in the stack's PostgreSQL
    env = read_env_file(home / "dev.env")
    assert set(env) == {"CDC_SOURCE_DSN", "CDC_TARGET_DSN", "CDC_KAFKA_BOOTSTRAP", "CDC_SCHEMA_REGISTRY_URL"}
    assert env["CDC_SCHEMA_REGISTRY_URL"].endswith("/apis/ccompat/v7")
    records = processes.load_records(home)
    assert set(records) == {"postgres", "kafka", "registry"}
    # The command has exited; its services must still run.
    assert all(processes.is_running(r) for r in records.values())

    status = cdc_dev("status", home=home)
    assert status.returncode == 0, status.stdout + status.stderr
    lines = status.stdout.splitlines()
    assert len(lines) == 3
    for record in records.values():
        line = next(line for line in lines if f"pid {record.pid}" in line)
        assert "healthy" in line
        for port in record.ports.values():
            assert f"={port}" in line

    again = cdc_dev("up", home=home)  # default ports requested: running services keep theirs
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already running") == 3
    assert processes.load_records(home) == records
    assert read_env_file(home / "dev.env") == env

    # A dev.env that `up` did not write, whose services answer, is used as it is: nothing starts or changes.
    other = home / "other"
    other.mkdir()
    shutil.copy(home / "dev.env", other / "dev.env")
    reuse = cdc_dev("up", home=other)
    assert reuse.returncode == 0, reuse.stderr
    assert "did not start" in reuse.stdout
    assert not (other / "pids.json").exists()
    assert read_env_file(other / "dev.env") == env
    assert cdc_dev("down", home=other).returncode == 0
    assert all(processes.is_running(r) for r in records.values())

    down = cdc_dev("down", home=home)
    assert down.returncode == 0, down.stderr
    assert "stopped 3 service(s)" in down.stdout
    assert not any(processes.is_running(r) for r in records.values())
    assert not (home / "pids.json").exists()
    assert not (home / "dev.env").exists()

    after = cdc_dev("status", home=home)
    assert after.returncode == 1
    assert after.stdout.count("stopped") == 3


def test_port_taken_is_one_line_naming_port_and_flag(home: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cdc_dev("up", "--pg-port", str(port), home=home)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert f"port {port}" in lines[0]
    assert "--pg-port" in lines[0]
    assert processes.load_records(home) == {}

"""A service of the local stack that died or was restarted behind `cdc dev up`'s back, on a private stack.

`up` again starts a dead service on its recorded ports (so `dev.env` and whatever reads it stay valid), and
`cdc dev status` asks each service whether it answers instead of trusting a recorded pid.
"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer

from devstack import control, kafka, postgres, processes
from devstack.ports import Ports

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    # Not pytest's tmp_path: its parents are private (0700) and PostgreSQL runs as another OS user under root.
    path = Path(tempfile.mkdtemp(prefix="cdc-stack-restart-"))
    path.chmod(0o755)
    try:
        control.up(path, Ports.free())
        yield path
    finally:
        control.down(path)
        shutil.rmtree(path, ignore_errors=True)


def test_up_starts_a_killed_service_again_on_its_recorded_ports(home: Path) -> None:
    before = processes.load_records(home)
    env_file = home / "dev.env"
    env_text, env_mtime = env_file.read_text(), env_file.stat().st_mtime_ns
    # Killed and gone before `up` looks: a JVM takes a moment to die, and one still dying counts as running.
    assert processes.stop(before["kafka"], sig=signal.SIGKILL)

    control.up(home, Ports())  # what a plain `cdc dev up` asks for: the default ports

    after = processes.load_records(home)
    assert after["kafka"].pid != before["kafka"].pid
    assert after["kafka"].ports == before["kafka"].ports
    kafka.probe(before["kafka"].ports["kafka"])
    assert (after["postgres"], after["registry"]) == (before["postgres"], before["registry"])
    assert env_file.read_text() == env_text
    assert env_file.stat().st_mtime_ns == env_mtime
    # The broker hands out producer ids at once: the first producer of a fresh broker does not have to retry.
    assert producer_id_retries(kafka.bootstrap(after["kafka"].ports["kafka"])) == []


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def producer_id_retries(bootstrap: str) -> list[str]:
    """librdkafka's lines about retrying to get a producer id, while an idempotent producer delivers one record."""
    logger = logging.getLogger("tests.stack.idempotent-producer")
    lines = Lines()
    logger.addHandler(lines)
    try:
        producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True}, logger=logger)
        producer.produce("stack-restart-first-producer", b"x")
        assert producer.flush(30) == 0
    finally:
        logger.removeHandler(lines)
    return [line for line in lines.lines if "idempotence PID" in line]


def test_status_asks_postgres_itself_after_pg_ctl_restart(home: Path) -> None:
    record = processes.load_records(home)["postgres"]
    data = Path(record.info["data"])
    pg_ctl_restart(data)
    assert not processes.is_running(record)

    status = subprocess.run(
        [sys.executable, "-m", "connector.cli", "dev", "status", "--home", str(home)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    line = next(line for line in status.stdout.splitlines() if line.startswith("PostgreSQL"))
    assert "healthy" in line and f"pid {record.pid}" not in line, status.stdout

    # `up` keeps the restarted server (its port is taken by it) and records its new pid, so `down` stops it; it
    # also waits for the registry, whose connections to PostgreSQL the restart broke.
    control.up(home, Ports())
    current = processes.load_records(home)["postgres"]
    assert current.pid != record.pid and processes.is_running(current)
    postgres.probe(record.ports["postgres"])

    # `down` stops a server restarted behind its back too (this is the module's last test).
    pg_ctl_restart(data)
    assert "postgres" in control.down(home)
    assert postgres.postmaster_pid(data, record.ports["postgres"]) is None


def pg_ctl_restart(data: Path) -> None:
    user = postgres.server_user()
    subprocess.run(
        [str(postgres.require_bindir(install=False) / "pg_ctl"), "restart", "-D", str(data), "-m", "fast", "-w",
         "-l", str(data.parent / "pg_ctl.log")],
        check=True, capture_output=True, timeout=60,
        user=None if user is None else user.uid, group=None if user is None else user.gid,
    )  # fmt: skip

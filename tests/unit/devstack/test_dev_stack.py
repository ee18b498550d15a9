"""Pure parts of `cdc dev`: pid identity (never signal a reused pid), ports, dev.env, generated configs."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from connector.config_loader import read_env_file
from core.errors import StackError
from devstack import control, kafka, postgres, processes
from devstack.env_file import Endpoints, write_env_file
from devstack.ports import Ports, free_ports, is_free, require_free

pytestmark = pytest.mark.unit


def test_a_reused_pid_is_not_ours_and_is_never_signalled() -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = processes.start_time_of(sleeper.pid)
        assert started is not None
        ours = processes.ProcessRecord("x", sleeper.pid, started, "log")
        stranger = dataclasses.replace(ours, start_time=started - 1)  # same pid, another process's start time
        assert processes.is_running(ours)
        assert not processes.is_running(stranger)
        assert processes.stop(stranger, timeout=1) is False
        assert sleeper.poll() is None
        assert processes.stop(ours, timeout=10) is True
        assert sleeper.wait(10) is not None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_records_round_trip_through_pids_json(tmp_path: Path) -> None:
    record = processes.ProcessRecord("kafka", 42, 7, "k.log", {"kafka": 1, "kafka_controller": 2}, {"version": "v"})
    processes.save_records(tmp_path, {"kafka": record})
    assert processes.load_records(tmp_path) == {"kafka": record}


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5
    assert all(is_free(p) for p in ports)


def test_zero_ports_are_resolved_and_others_kept() -> None:
    resolved = Ports(15432, 0, 0, 18081, 0).resolved()
    assert resolved.postgres == 15432 and resolved.registry == 18081
    assert 0 not in resolved.as_dict().values()
    assert len(set(resolved.as_dict().values())) == len(resolved.as_dict())


def test_default_ports_differ_from_each_other() -> None:
    assert len(set(Ports().as_dict().values())) == len(Ports().as_dict())


def test_taken_port_names_port_and_flag() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(StackError) as caught:
            require_free("registry", port, "Apicurio Registry")
    message = str(caught.value)
    assert f"port {port} (Apicurio Registry)" in message
    assert "--registry-port" in message and "CDC_DEV_REGISTRY_PORT" in message


def test_env_file_round_trip(tmp_path: Path) -> None:
    endpoints = control.endpoints_for(Ports(1, 2, 3, 4, 5))
    write_env_file(tmp_path / "dev.env", endpoints)
    values = read_env_file(tmp_path / "dev.env")
    assert values["CDC_SOURCE_DSN"] == "postgresql://postgres@127.0.0.1:1/source"
    assert values["CDC_TARGET_DSN"] == "postgresql://postgres@127.0.0.1:1/target"
    assert values["CDC_KAFKA_BOOTSTRAP"] == "127.0.0.1:2"
    assert values["CDC_SCHEMA_REGISTRY_URL"] == "http://127.0.0.1:4/apis/ccompat/v7"
    assert Endpoints.from_env(values) == endpoints


def test_kafka_properties_use_the_given_ports(tmp_path: Path) -> None:
    text = kafka.server_properties(tmp_path / "data", 19092, 19093)
    props = dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["log.dirs"] == str(tmp_path / "data")


def test_home_defaults_to_dot_cdc_and_follows_cdc_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CDC_HOME", raising=False)
    assert control.resolve_home() == tmp_path / ".cdc"
    monkeypatch.setenv("CDC_HOME", str(tmp_path / "h"))
    assert control.resolve_home() == tmp_path / "h"
    assert control.resolve_home(Path("x")) == tmp_path / "x"


class _FakeRegistry(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"[]"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_foreign_dev_env_with_some_live_services_is_not_overwritten(tmp_path: Path) -> None:
    server = HTTPServer(("127.0.0.1", 0), _FakeRegistry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        dead = free_ports(2)
        env_file = tmp_path / "dev.env"
        env_file.write_text(
            f"CDC_SOURCE_DSN=postgresql://postgres@127.0.0.1:{dead[0]}/source\n"
            f"CDC_TARGET_DSN=postgresql://postgres@127.0.0.1:{dead[0]}/target\n"
            f"CDC_KAFKA_BOOTSTRAP=127.0.0.1:{dead[1]}\n"
            f"CDC_SCHEMA_REGISTRY_URL=http://127.0.0.1:{server.server_port}/apis/ccompat/v7\n"
        )
        before = env_file.read_text()
        with pytest.raises(StackError, match="did not start here, and part of it still runs"):
            control.up(tmp_path, Ports.free())
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert processes.load_records(tmp_path) == {}
    assert env_file.read_text() == before


def test_a_service_that_dies_while_starting_is_one_line_with_its_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "kafka.out"
    # It lives long enough to be recorded as started; one that dies sooner fails in `start` (tested below).
    script = "sleep 1; for i in $(seq 1 15); do echo line-$i; done; exit 3"
    record = processes.start("kafka", ["sh", "-c", script], log=log, cwd=tmp_path, ports={"kafka": free_ports(1)[0]})
    with pytest.raises(StackError) as caught:
        control._wait_healthy(record, timeout=30)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("Apache Kafka exited with code 3 while starting")
    assert str(log) in message
    assert "line-15" in message and "line-6" in message and "line-5 " not in message + " "


def test_a_service_that_dies_before_it_is_recorded_names_its_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "kafka.out"
    script = "for i in $(seq 1 15); do echo line-$i; done; exit 3"
    try:
        record = processes.start("kafka", ["sh", "-c", script], log=log, cwd=tmp_path)
    except StackError as exc:  # it died before `start` looked at it
        message = str(exc)
        assert message.startswith("kafka exited at once with code 3")
    else:  # it was recorded while still running; the health wait then reports it
        with pytest.raises(StackError) as caught:
            control._wait_healthy(record, timeout=30)
        message = str(caught.value)
    assert "\n" not in message
    assert str(log) in message and "line-15" in message and "line-5 " not in message + " "


def test_a_dead_recorded_service_keeps_its_ports_over_the_requested_ones() -> None:
    dead = processes.ProcessRecord("kafka", 1, -1, "log", {"kafka": 40001, "kafka_controller": 40002})
    assert not processes.is_running(dead)
    ports = control._effective_ports(Ports(), {"kafka": dead})
    assert (ports.kafka, ports.kafka_controller) == (40001, 40002)
    assert ports.postgres == Ports().postgres


def test_postmaster_pid_is_the_live_server_of_that_data_dir_and_port(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    # A process whose command line names the data directory, as a postmaster's does.
    server = subprocess.Popen(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)", "-D", str(data)],
        stdout=subprocess.PIPE,
    )
    try:
        assert server.stdout is not None and server.stdout.readline() == b"up\n"  # exec'd: its command line is final
        (data / "postmaster.pid").write_text(f"{server.pid}\n{data}\n1700000000\n5433\n/run\n127.0.0.1\n")
        assert postgres.postmaster_pid(data, 5433) == server.pid
        assert postgres.postmaster_pid(data, 5434) is None  # another port
        assert postgres.postmaster_pid(tmp_path, 5433) is None  # no postmaster.pid
        # A file left by a crash whose pid now belongs to another program.
        (data / "postmaster.pid").write_text(f"{os.getpid()}\n{data}\n1700000000\n5433\n")
        assert postgres.postmaster_pid(data, 5433) is None
    finally:
        server.kill()
        server.communicate()


def test_a_recorded_port_taken_by_another_program_says_how_to_forget_it(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        dead = processes.ProcessRecord("kafka", 1, -1, "log", {"kafka": port})
        with pytest.raises(StackError) as caught:
            control._require_recorded_ports_free(dead, tmp_path)
    assert f"port {port}" in str(caught.value) and "pids.json" in str(caught.value)
    assert "cdc dev down" in str(caught.value)

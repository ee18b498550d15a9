"""A peer that accepts and never answers, and a path that stops delivering: connects and requests are bounded,
SIGTERM ends the process within the grace period, a second signal at once, and a silent replication stream is
noticed, reported on /healthz and reconnected."""

from __future__ import annotations

import logging
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from connector.config import ConnectorConfig
from connector.ops import OpsServer
from connector.pipeline import Pipeline
from tests.integration.pipeline_support import wait_until
from tests.integration.sources.postgres.pgsource_support import make_env
from tests.support.examples import REPO_ROOT
from tests.support.helpers import http_get

pytestmark = pytest.mark.integration


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


class FreezingProxy:
    """Forwards TCP to `upstream` until `freeze()`: then nothing more is delivered either way, and nothing is closed.

    Connections accepted while frozen are held silent too; `thaw()` lets new connections through again.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self._upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._frozen = threading.Event()
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self._frozen.set()

    def thaw(self) -> None:
        self._frozen.clear()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._held.append(client)
            if self._frozen.is_set():
                continue
            server = socket.create_connection(self._upstream)
            self._held.append(server)
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self._frozen.is_set():
                data = src.recv(65536)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                if self._frozen.is_set():
                    return
                dst.sendall(data)
        except OSError:
            return

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


@contextmanager
def _sigterm_while_connecting(
    tmp_path: Path, stack: Any, name: str, port: int, *, shutdown_grace_s: float
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A `cdc run` whose source connect hangs, sent SIGTERM once it serves its probes; killed on leaving."""
    config = _config(tmp_path, stack, name, port, source={"connect_timeout_s": 120}, shutdown_grace_s=shutdown_grace_s)
    log = tmp_path / "run.log"
    process = _cdc("run", str(config), log=log)
    try:
        _wait_for_log(log, "serving /healthz", process)
        process.send_signal(signal.SIGTERM)
        yield process, log
    finally:
        process.kill()


def test_sigterm_ends_run_within_the_grace_period_while_connect_hangs(
    stack: Any, unique_name: Any, silent: SilentServer, tmp_path: Path
) -> None:
    # The connect outlasts the grace period: only the grace period can end the process.
    with _sigterm_while_connecting(tmp_path, stack, unique_name("hang"), silent.port, shutdown_grace_s=2) as (
        process,
        log,
    ):
        code = process.wait(timeout=30)
    text = log.read_text()
    assert "SIGTERM received" in text
    assert "source did not stop within 2s (shutdown_grace_s)" in text
    assert code == 1


def test_a_second_signal_exits_at_once(stack: Any, unique_name: Any, silent: SilentServer, tmp_path: Path) -> None:
    with _sigterm_while_connecting(tmp_path, stack, unique_name("hang"), silent.port, shutdown_grace_s=600) as (
        process,
        log,
    ):
        _wait_for_log(log, "SIGTERM received", process)
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=10)
    assert "second SIGINT while stopping: exiting now" in log.read_text()
    assert code == 128 + signal.SIGINT


@contextmanager
def _running(pipeline: Pipeline) -> Iterator[OpsServer]:
    servers: list[OpsServer] = []
    ready = threading.Event()

    def on_ready(ops: OpsServer | None) -> None:
        assert ops is not None
        servers.append(ops)
        ready.set()

    errors: list[BaseException] = []

    def run() -> None:
        try:
            pipeline.run(install_signals=False, on_ready=on_ready)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(30)
    try:
        yield servers[0]
    finally:
        pipeline.stop.set()
        thread.join(60)
        assert not thread.is_alive()
        assert not errors, errors


def test_a_silent_replication_path_is_detected_reported_and_reconnected(
    stack: Any, unique_name: Any, caplog: pytest.LogCaptureFixture
) -> None:
    env = make_env(stack, unique_name)
    params = conninfo_to_dict(stack.source_dsn)
    proxy = FreezingProxy((str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432)))
    try:
        table = env.table("t", "CREATE TABLE {t} (id int PRIMARY KEY, v text)")
        data = env.config_data(
            dsn=make_conninfo(stack.source_dsn, host="127.0.0.1", port=proxy.port),
            receive_timeout_s=2.0,
            connect_timeout_s=2,
        )
        data["server"] = {"port": 0}
        pipeline = Pipeline(ConnectorConfig.model_validate(data))
        caplog.set_level(logging.INFO)
        with _running(pipeline) as ops:
            wait_until(lambda: http_get(ops.port, "/readyz")[0] == 200, 60, "the source to stream")
            env.sql(f'INSERT INTO "{table}" VALUES (1, %s)', ("before",))
            env.read(env.topic(table), min_count=1)
            assert http_get(ops.port, "/healthz")[0] == 200

            proxy.freeze()
            wait_until(lambda: http_get(ops.port, "/healthz")[0] == 503, 30, "/healthz to turn red")
            # Whichever bound notices first (the stream's receive timeout, or a side query of the streaming loop),
            # the source says so and reconnects.
            assert any(
                r.name == "sources.postgres.source" and "reconnecting" in r.getMessage() for r in caplog.records
            )

            proxy.thaw()
            env.sql(f'INSERT INTO "{table}" VALUES (2, %s)', ("after",))
            wait_until(lambda: http_get(ops.port, "/healthz")[0] == 200, 60, "/healthz to turn green again")
            events = env.read(env.topic(table), min_count=2)
            assert [e.key["id"] for e in events if e.key] == [1, 2]
    finally:
        proxy.close()
        env.close()

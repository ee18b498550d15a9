"""`/status` of a running sink answers while the sink is busy, from what its loop published."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import urllib.request
from typing import Any

import pytest

from connector.ops import OpsServer
from connector.pipeline import Pipeline
from tests.integration.sinks.conftest import Env, caught_up, log_end, to_config, wait_until

pytestmark = pytest.mark.integration

REQUEST_BOUND_S = 2.0  # generous: a request that needs this long is blocked, not slow


def _status(port: int) -> tuple[int, dict[str, Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=REQUEST_BOUND_S) as response:
        return response.status, json.loads(response.read())


def _hang_up_mid_request(port: int) -> None:
    """Send a request and reset the connection before reading the answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=REQUEST_BOUND_S)
    sock.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
    sock.close()


def test_status_answers_every_request_while_the_sink_applies_a_steady_stream(
    env: Env, capfd: pytest.CaptureFixture[str]
) -> None:
    feed = env.feed("id bigint PRIMARY KEY, name text", partitions=3)
    data = env.config([feed.topic])
    data["server"] = {"port": 0}
    config = to_config(data)
    pipeline = Pipeline(config, "sink")
    ports: list[int] = []
    exit_codes: list[int] = []

    def on_ready(ops: OpsServer | None) -> None:
        assert ops is not None
        ports.append(ops.port)

    runner = threading.Thread(
        target=lambda: exit_codes.append(pipeline.run(install_signals=False, on_ready=on_ready)), daemon=True
    )
    producing = threading.Event()
    written: list[int] = []

    def produce() -> None:
        while producing.is_set():
            next_id = len(written) + 1
            feed.insert(id=next_id, name=f"n{next_id}")
            written.append(next_id)
            if next_id % 50 == 0:
                env.flush()

    producer = threading.Thread(target=produce, daemon=True)
    runner.start()
    try:
        wait_until(lambda: bool(ports) and pipeline.ready(), 60, "the sink to be assigned its partitions")
        port = ports[0]
        producing.set()
        producer.start()
        wait_until(lambda: len(written) > 200, 60, "the stream to start")
        answers = []
        for round_ in range(60):
            if round_ % 10 == 0:
                _hang_up_mid_request(port)
            started = time.monotonic()
            code, body = _status(port)
            answers.append((code, time.monotonic() - started))
            assert code == 200
            assert body["sink"]["group_id"] == config.group_id
            time.sleep(0.05)
        assert len(answers) == 60
        producing.clear()
        producer.join(30)
        env.flush()
        ends = log_end(env.stack.kafka_bootstrap, [feed.topic])
        wait_until(lambda: caught_up(env.target, config.group_id, ends), 120, "the sink to catch up")
        # What the loop published reaches the log end once it is caught up.
        wait_until(
            lambda: all(p["lag"] == 0 for p in _status(port)[1]["sink"]["partitions"])
            and len(_status(port)[1]["sink"]["partitions"]) == 3,
            30,
            "/status to show the sink caught up",
        )
        _hang_up_mid_request(port)
    finally:
        producing.clear()
        pipeline.stop.set()
        runner.join(60)
    assert exit_codes == [0]
    assert "Traceback" not in capfd.readouterr().err

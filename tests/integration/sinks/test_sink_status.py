"""The sink's status: `/status` of a running sink answers while it is busy (from what its loop published);
`cdc status` reads stored offsets, log ends and subjects with stable `--json` keys and names what it cannot read."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from connector.cli import app
from connector.ops import OpsServer
from connector.pipeline import Pipeline
from tests.integration.pipeline_support import free_port
from tests.integration.sinks.conftest import (
    Env,
    applied_five_one_pending,
    caught_up,
    log_end,
    to_config,
    wait_until,
)

pytestmark = pytest.mark.integration

REQUEST_BOUND_S = 2.0  # generous: a request that needs this long is blocked, not slow
KEYS = {"name", "ok", "unreadable", "kafka", "source", "sink", "schema_registry"}
SOURCE_KEYS = {
    "error", "slot", "slot_state", "active_pid", "confirmed_flush_lsn", "lag_bytes", "wal_status", "snapshot"
}
SINK_KEYS = {"error", "group_id", "partitions", "lag"}


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
    # What the HTTP server prints for a request that raised (other tests' log handlers may print their own).
    err = capfd.readouterr().err
    assert "Exception occurred during processing of request" not in err
    assert "BrokenPipeError" not in err and "ConnectionResetError" not in err


def _cdc_status(tmp_path: Path, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    path = tmp_path / f"{data['name']}.json"
    path.write_text(json.dumps(data))
    result = CliRunner().invoke(app, ["--env-file", "/dev/null", "status", str(path), "--json", "--timeout", "3"])
    return result.exit_code, json.loads(result.stdout)


def test_status_json_has_stable_keys_and_names_an_unreadable_kafka(env: Env, tmp_path: Path) -> None:
    feed, data = applied_five_one_pending(env)
    slot = env.unique_name("slot")
    data["source"] = {
        "dsn": env.stack.source_dsn,
        "topic_prefix": env.unique_name("nothing"),
        "slot": {"name": slot},
        "publication": {"name": slot},
    }

    code, report = _cdc_status(tmp_path, data)
    assert code == 0, report
    assert set(report) == KEYS and report["ok"] is True and report["unreadable"] == []
    assert set(report["source"]) == SOURCE_KEYS
    assert report["source"]["slot"] == slot and report["source"]["slot_state"] == "missing"
    assert set(report["sink"]) == SINK_KEYS
    assert report["sink"]["partitions"] == [
        {"topic": feed.topic, "partition": 0, "next_offset": 5, "log_end": 6, "lag": 1}
    ]
    assert report["sink"]["lag"] == 1
    assert report["kafka"]["topics"] == [
        {"topic": feed.topic, "partitions": [{"partition": 0, "log_start": 0, "log_end": 6}]}
    ]
    assert report["schema_registry"]["subjects"] == [f"{feed.topic}-key", f"{feed.topic}-value"]

    data["kafka"] = {"bootstrap_servers": f"127.0.0.1:{free_port()}"}
    code, unreachable = _cdc_status(tmp_path, data)
    assert code == 1
    assert set(unreachable) == KEYS and unreachable["ok"] is False
    assert [u["part"] for u in unreachable["unreadable"]] == ["kafka"]
    assert unreachable["kafka"]["error"] and unreachable["kafka"]["topics"] is None
    # What could be read still is: the stored offsets, without a log end to compare them with.
    assert unreachable["sink"]["partitions"] == [
        {"topic": feed.topic, "partition": 0, "next_offset": 5, "log_end": None, "lag": None}
    ]
    assert unreachable["sink"]["lag"] is None

"""The probe server: a client that hangs up before its answer leaves no traceback."""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time

import pytest

from connector.ops import OpsServer

pytestmark = pytest.mark.unit


def test_a_client_hanging_up_before_the_answer_is_noted_without_a_traceback(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    asked = threading.Event()
    answer = threading.Event()

    def status() -> dict[str, int]:
        asked.set()
        answer.wait(5)
        return {"rows": 1}

    server = OpsServer("127.0.0.1", 0, problems=list, ready=lambda: True, status=status)
    server.start()
    caplog.set_level(logging.DEBUG, logger="connector.ops")
    try:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        assert asked.wait(5)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
        sock.close()
        answer.set()
        deadline = time.monotonic() + 5
        while "went away" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        server.stop()
    assert "went away" in caplog.text
    assert "Traceback" not in capfd.readouterr().err
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

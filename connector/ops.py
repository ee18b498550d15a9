"""The sidecar HTTP endpoints: /healthz (making progress), /readyz (streaming), /metrics, /status (JSON)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from connector.metrics import REGISTRY

log = logging.getLogger(__name__)


class OpsServer:
    """Serves the probes on a daemon thread; `port` is the bound port (useful with port 0)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        problems: Callable[[], list[str]],
        ready: Callable[[], bool],
        status: Callable[[], dict[str, Any]],
    ) -> None:
        probes: dict[str, Any] = {"problems": problems, "ready": ready, "status": status}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    # Red while a component cannot make progress, with the reasons (one per line).
                    found: list[str] = probes["problems"]()
                    text = "".join(f"{p}\n" for p in found) if found else "ok\n"
                    self._send(503 if found else 200, text.encode(), "text/plain; charset=utf-8")
                elif path == "/readyz":
                    ok = probes["ready"]()
                    self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n", "text/plain")
                elif path == "/metrics":
                    self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
                elif path == "/status":
                    try:
                        body = json.dumps(probes["status"](), default=str).encode()
                        self._send(200, body, "application/json")
                    except Exception as exc:  # a probe must answer, even when status cannot be read
                        self._send(500, json.dumps({"error": type(exc).__name__}).encode(), "application/json")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("ops %s", format % args)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="ops-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

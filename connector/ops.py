"""The sidecar HTTP endpoints: /healthz (making progress), /readyz (streaming), /metrics (Prometheus), /status.

Every answer comes from state the components publish (no I/O on a request thread), so a probe answers at
once however busy or stuck the loops are. A client that hangs up before its answer is written is normal
(a probe's own timeout, a shutdown) and noted at debug level only.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from core.metrics import REGISTRY

log = logging.getLogger(__name__)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            log.debug("ops client %s went away: %s", client_address, type(error).__name__)
        else:
            log.error("ops request from %s failed", client_address, exc_info=error)


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
        metrics: Callable[[], bytes] = lambda: generate_latest(REGISTRY),
    ) -> None:
        probes: dict[str, Any] = {"problems": problems, "ready": ready, "status": status, "metrics": metrics}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                code, body, content_type = self._answer(self.path.split("?", 1)[0])
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except ConnectionError as exc:
                    self.close_connection = True
                    log.debug("ops client went away before the answer to %s: %s", self.path, type(exc).__name__)

            def _answer(self, path: str) -> tuple[int, bytes, str]:
                if path == "/healthz":
                    # Red while a component cannot make progress, with the reasons (one per line).
                    found: list[str] = probes["problems"]()
                    text = "".join(f"{p}\n" for p in found) if found else "ok\n"
                    return (503 if found else 200), text.encode(), "text/plain; charset=utf-8"
                if path == "/readyz":
                    ok = probes["ready"]()
                    return (200 if ok else 503), (b"ready\n" if ok else b"not ready\n"), "text/plain"
                if path == "/metrics":
                    return 200, probes["metrics"](), CONTENT_TYPE_LATEST
                if path == "/status":
                    try:
                        return 200, json.dumps(probes["status"](), default=str).encode(), "application/json"
                    except Exception as exc:  # a probe must answer, even when status cannot be read
                        log.warning("/status failed: %s: %s", type(exc).__name__, exc)
                        return 500, json.dumps({"error": type(exc).__name__}).encode(), "application/json"
                return 404, b"not found\n", "text/plain"

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("ops %s", format % args)

        self._server = _Server((host, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="ops-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

"""Local HTTP health endpoint: ``GET /health`` (JSON) and ``GET /metrics`` (Prometheus).

Binds to loopback by default; when a token is configured every request must send
``Authorization: Bearer <token>`` (compared in constant time). Runs on a daemon thread and only
reads a snapshot the frame loop publishes, so a slow client can never stall the loop.
``/metrics`` is served by ``prometheus_client`` from a registry private to this server
(:mod:`edge.app.metrics_prom`: counters, per-stage latency histograms and gauges, with HELP and
TYPE, labelled by camera).
"""

from __future__ import annotations

import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from edge.app.metrics_prom import exposition, snapshot_registry


class HealthServer:
    def __init__(self, bind: str, port: int, snapshot: Callable[[], dict], token: str | None = None):
        self._snapshot, self._token = snapshot, token
        self.registry = snapshot_registry(snapshot)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # no per-request lines in the service log
                return

            def do_GET(self):  # noqa: N802 (the http.server API)
                if server._token is not None:
                    sent = self.headers.get("Authorization", "")
                    if not hmac.compare_digest(sent.encode(), f"Bearer {server._token}".encode()):
                        return self._reply(401, "application/json", b'{"error": "unauthorised"}\n')
                path = self.path.split("?", 1)[0]
                if path == "/health":
                    body = json.dumps(server._snapshot(), indent=1).encode() + b"\n"
                    return self._reply(200, "application/json", body)
                if path == "/metrics":
                    body, kind = exposition(server.registry, self.headers.get("Accept"))
                    return self._reply(200, kind, body)
                return self._reply(404, "application/json", b'{"error": "not found: try /health or /metrics"}\n')

            def _reply(self, code: int, kind: str, body: bytes):
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer((bind, port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="health", daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def start(self) -> HealthServer:
        self.thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

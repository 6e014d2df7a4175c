"""Local HTTP health endpoint: ``GET /health`` (JSON) and ``GET /metrics`` (Prometheus text).

Binds to loopback by default; when a token is configured every request must send
``Authorization: Bearer <token>`` (compared in constant time). Runs on a daemon thread and only
reads a snapshot the frame loop publishes, so a slow client can never stall the loop.
"""

from __future__ import annotations

import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


def prometheus_text(snapshot: dict[str, Any], prefix: str = "poseface") -> str:
    """Flatten the numeric leaves of a health snapshot into Prometheus exposition lines.

    ``{"stages": {"detect": {"p50_ms": 1.2}}}`` -> ``poseface_stages_detect_p50_ms 1.2``.
    Booleans become 0/1; strings and lists are left out (they are in /health).
    """
    lines: list[str] = []

    def walk(node: Any, name: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                safe = "".join(c if c.isalnum() or c == "_" else "_" for c in str(key))
                walk(value, f"{name}_{safe}")
        elif isinstance(node, bool):
            lines.append(f"{name} {int(node)}")
        elif isinstance(node, (int, float)) and node == node:  # skip NaN
            lines.append(f"{name} {node}")

    walk(snapshot, prefix)
    return "\n".join(lines) + "\n"


class HealthServer:
    def __init__(self, bind: str, port: int, snapshot: Callable[[], dict], token: str | None = None):
        self._snapshot, self._token = snapshot, token
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
                    return self._reply(200, "text/plain; version=0.0.4", prometheus_text(server._snapshot()).encode())
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

"""A webhook receiver for the notification tests: a small threaded HTTP server on 127.0.0.1 that records each
POST (headers and body) and answers with the status the test sets, after the delay it sets. It can be stopped
and started again on the same port (the receiver down, then up)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]  # names in lower case
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """Records what it receives; `status` and `delay` say how it answers."""

    port: int = 0
    status: int = 200
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    attempts: int = 0  # every POST, whatever it was answered
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/agent-service"

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.attempts += 1
                time.sleep(receiver.delay)
                if receiver.status < 300:
                    receiver.received.append(Received({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                """Quiet."""

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The payloads received (of one event type, if given), oldest first."""
        return [r.event for r in list(self.received) if kind is None or r.event["event"] == kind]

    def wait_for(self, what: Callable[[], bool], *, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not what():
            if time.monotonic() > deadline:
                raise AssertionError(f"the receiver got {[r.event for r in self.received]}")
            time.sleep(0.02)

"""A loopback OTLP/HTTP receiver for the tracing runs: it accepts every export (POST /v1/traces) and keeps
nothing, so a run measures what producing and exporting spans costs the service, not a collector."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Accept(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)  # an empty body is an empty ExportTraceServiceResponse: all accepted
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        """Quiet."""


@contextmanager
def otlp_sink() -> Iterator[str]:
    """A receiver on a free loopback port for the length of a with-block; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Accept)
    threading.Thread(target=server.serve_forever, name="otlp-sink", daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()

"""A loopback HTTP server answering JSON as a test scripts it: a registry that misbehaves
in ways the embedded one does not (a catch-all route, a failing storage, a race)."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections.abc import Iterator


class JsonHandler(http.server.BaseHTTPRequestHandler):
    """A request handler whose ``do_GET``/``do_POST`` answer with ``answer``."""

    def answer(self, status: int, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def read_body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def log_message(self, *args: object) -> None:
        """Quiet: a test reads the records of the code under test only."""


@contextlib.contextmanager
def serving(handler: type[JsonHandler]) -> Iterator[str]:
    """Serve ``handler`` on a free loopback port; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)

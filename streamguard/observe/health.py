"""HTTP endpoints for orchestrators and Prometheus: /metrics, /healthz, /readyz.

Served from a daemon thread on loopback by default; a pod exposes it by binding
``metrics_host="0.0.0.0"`` deliberately.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from streamguard.errors import ConfigurationError

# Seconds a client may take to send its request or read its answer. Each connection
# holds a thread: without a limit, one that never sends (a prober whose host vanished,
# a port scan) would hold it for the life of the process.
CLIENT_TIMEOUT = 10.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that left before its answer was written (a probe or scrape past its
        # timeout), or did not read it within CLIENT_TIMEOUT, is no error of the
        # service's: socketserver would print a traceback to stderr, amid the service's
        # JSON log lines.
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


class _Server6(_Server):
    """For an IPv6 address (``::`` on an IPv6 or dual-stack cluster, whose probes come to
    the pod's IPv6 address): an IPv4 socket refused it as an address family it does not
    support."""

    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        # ``::`` takes IPv4 connections too where the system allows, as ``0.0.0.0`` does
        # not take IPv6 ones: one setting for dual-stack pods, whichever family probes.
        with contextlib.suppress(OSError, AttributeError):
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class HealthServer:
    """Serves the registry and the service's health report.

    ``/healthz`` answers 200 while the process can answer at all (liveness);
    ``/readyz`` answers 200 only when every check of the service's report passes
    (assigned, polling, able to write dead letters, ...), else 503 with the failing
    checks (readiness).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        health: Callable[[], dict[str, Any]],
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._registry = registry
        self._health = health
        if not host.strip():
            # The socket's "" is every interface: an unset variable in --metrics-host
            # "$HOST" would expose the endpoints beyond loopback unasked.
            raise ConfigurationError(
                "the metrics host is empty, which would serve on every interface; give "
                "an address (127.0.0.1, or 0.0.0.0 to serve on all)"
            )
        try:
            server = _Server6 if ":" in host else _Server  # an IPv6 literal, not a name
            self._server = server((host, port), self._handler_class())
        except (OSError, OverflowError) as exc:  # in use, not an address here, out of range
            raise ConfigurationError(
                f"cannot serve /metrics on {host}:{port}: {getattr(exc, 'strerror', None) or exc}; "
                "choose another metrics port or host"
            ) from None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        registry, health = self._registry, self._health

        class Handler(BaseHTTPRequestHandler):
            timeout = CLIENT_TIMEOUT

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send(200, b'{"alive": true}\n', "application/json")
                elif path == "/readyz":
                    report = health()
                    body = json.dumps(report).encode() + b"\n"
                    self._send(200 if report.get("ready") else 503, body, "application/json")
                else:
                    self._send(404, b"not found\n", "text/plain")

            # The same status and headers without the body: uptime checkers and some
            # load balancers probe with HEAD, and would read 501 as the service down.
            do_HEAD = do_GET

            def _refuse(self) -> None:
                """405 with the methods it takes, not http.server's HTML 501 page."""
                self.send_response(405)
                self.send_header("Allow", "GET, HEAD")
                self.send_header("Content-Type", "text/plain")
                body = b"method not allowed: GET or HEAD\n"
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            # Every other method HTTP defines; one it does not define gets http.server's
            # 501 Not Implemented, which is what HTTP says to answer.
            do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse
            do_TRACE = do_CONNECT = _refuse

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # scrapes every few seconds would drown the service's own logs

        return Handler

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="streamguard-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

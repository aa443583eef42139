"""The health server answers probes and scrapes, whatever its clients do."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streamguard.errors import ConfigurationError
from streamguard.observe.health import HealthServer


@pytest.fixture
def slow_server() -> Iterator[tuple[HealthServer, threading.Event]]:
    """A health server whose report takes 0.3 s, like a throttled pod's; the event is set
    once the report is made (the answer is written right after)."""
    reported = threading.Event()

    def health() -> dict[str, Any]:
        time.sleep(0.3)
        reported.set()
        return {"ready": True}

    server = HealthServer(CollectorRegistry(), health)
    server.start()
    yield server, reported
    server.stop()


def test_a_client_gone_before_its_answer_prints_no_traceback(
    slow_server: tuple[HealthServer, threading.Event], capfd: pytest.CaptureFixture[str]
) -> None:
    """A probe that gives up (its connection reset) before /readyz answers leaves no
    traceback on stderr, where the service writes its JSON log lines."""
    server, reported = slow_server
    client = socket.create_connection(("127.0.0.1", server.port))
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.sendall(b"GET /readyz HTTP/1.1\r\nHost: pod\r\n\r\n")
    time.sleep(0.05)
    client.close()  # with SO_LINGER 0: a reset, as a client past its timeout may send
    assert reported.wait(5)
    time.sleep(0.5)  # the answer's write, and what socketserver would print of it
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert "Exception occurred" not in err


def test_a_client_that_sends_nothing_is_let_go(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection that never sends a request (a vanished prober, a port scan) is
    closed after CLIENT_TIMEOUT, so that silent clients cannot pile up threads."""
    from streamguard.observe import health

    monkeypatch.setattr(health, "CLIENT_TIMEOUT", 0.5)
    server = HealthServer(CollectorRegistry(), lambda: {"ready": True})
    server.start()
    try:
        silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(5)]
        try:
            for client in silent:
                client.settimeout(5)
                assert client.recv(1) == b""  # closed by the server, well before 5 s
        finally:
            for client in silent:
                client.close()
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("path", "ready", "status"),
    [
        ("/healthz", True, 200),
        ("/readyz", True, 200),
        ("/readyz", False, 503),
        ("/nope", True, 404),
    ],
)
def test_head_answers_as_get_without_a_body(path: str, ready: bool, status: int) -> None:
    """HEAD, which uptime checkers and load balancers probe with, gets GET's status and
    headers and no body, not 501."""
    import http.client

    server = HealthServer(CollectorRegistry(), lambda: {"ready": ready})
    server.start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        connection.request("GET", path)
        got = connection.getresponse()
        length = got.getheader("Content-Length")
        got.read()
        connection.close()
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        connection.request("HEAD", path)
        head = connection.getresponse()
        assert (head.status, got.status) == (status, status)
        assert head.getheader("Content-Length") == length
        assert head.read() == b""
        connection.close()
    finally:
        server.stop()


@pytest.mark.parametrize(
    "method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"]
)
def test_other_methods_get_405_with_the_methods_it_takes(method: str) -> None:
    """The endpoints are read-only: every other method HTTP defines gets a plain 405
    naming GET and HEAD, not http.server's HTML 501 page."""
    import http.client

    server = HealthServer(CollectorRegistry(), lambda: {"ready": True})
    server.start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        connection.request(method, "/readyz", body=b"{}")
        got = connection.getresponse()
        assert got.status == 405
        assert got.getheader("Allow") == "GET, HEAD"
        assert got.read() == b"method not allowed: GET or HEAD\n"
        connection.close()
    finally:
        server.stop()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
@pytest.mark.parametrize(("host", "clients"), [("::1", ["::1"]), ("::", ["::1", "127.0.0.1"])])
def test_an_ipv6_metrics_host_is_served(host: str, clients: list[str]) -> None:
    """On an IPv6 cluster the kubelet probes the pod's IPv6 address, which 0.0.0.0 does
    not take: --metrics-host :: (or an IPv6 address) must serve, not fail the start as an
    address family not supported; :: answers IPv4 probes as well."""
    import http.client

    server = HealthServer(CollectorRegistry(), lambda: {"ready": True}, host)
    server.start()
    try:
        for client in clients:
            connection = http.client.HTTPConnection(client, server.port, timeout=5)
            connection.request("GET", "/healthz")
            assert connection.getresponse().status == 200, client
            connection.close()
    finally:
        server.stop()


@pytest.mark.parametrize("host", ["", " "])
def test_an_empty_metrics_host_is_refused(host: str) -> None:
    """--metrics-host "" (an unset variable) bound every interface, silently exposing
    the endpoints that are on loopback unless 0.0.0.0 is asked for."""
    with pytest.raises(ConfigurationError, match="metrics host is empty"):
        HealthServer(CollectorRegistry(), lambda: {"ready": True}, host)

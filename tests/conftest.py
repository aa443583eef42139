"""Shared fixtures: one real broker per test worker, and factories for topics and clients."""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import os
import signal
import socket
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, Message, Producer

from streamguard.devbroker import DevBroker
from streamguard.topics import create_topics

# Group joins wait for half the session timeout; 2 s makes them take ~1 s, not ~23 s
# (docs/local-broker.md). Static membership is not used: it is unstable at this session.
FAST_GROUP = {
    "session.timeout.ms": 2000,
    "heartbeat.interval.ms": 500,
    "topic.metadata.refresh.interval.ms": 1000,
}


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """Each test leaves the root logger as it found it. One that runs the demo or the
    CLI in-process (``configure_logging``) left a handler on a capture stream closed
    after it, and a later test's log line (httpx's, say) printed "Logging error" and a
    traceback into the stderr that test checks. ``configure_logging`` also routes
    Python's warnings through logging, which is undone too."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    showwarning = warnings.showwarning
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    if warnings.showwarning is not showwarning:
        logging.captureWarnings(False)
        warnings.showwarning = showwarning


@pytest.fixture(scope="session")
def broker() -> Iterator[DevBroker]:
    """A broker of this test worker's own, on a free loopback port, killed by PID at the end."""
    dev = DevBroker()
    dev.start()
    try:
        yield dev
    finally:
        _close_clients_left_behind()
        dev.stop()


@pytest.fixture
def own_broker() -> Iterator[DevBroker]:
    """A broker of the test's own, which the test may suspend (SIGSTOP) by its PID, or
    kill and restart on its port."""
    dev = DevBroker()
    dev.start()
    try:
        yield dev
    finally:
        if dev.pid is not None:
            # A stopped process would not take the SIGKILL at once; a killed one is gone.
            with contextlib.suppress(ProcessLookupError):
                os.kill(dev.pid, signal.SIGCONT)
        dev.stop()


def suspend(pid: int | None) -> None:
    """SIGSTOP the broker ``pid`` and return once the kernel shows it stopped: the signal
    takes effect a moment later, and a request sent within it could still be answered
    (a test saw records acknowledged right after the kill)."""
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as stat:
            # The state follows the command in parentheses, which may hold spaces.
            if stat.read().rpartition(")")[2].split()[0] in ("T", "t"):
                return
        time.sleep(0.001)
    raise AssertionError(f"broker {pid} not stopped 5 s after SIGSTOP")


def _close_clients_left_behind() -> None:
    """Close the Kafka clients that tests dropped but that are still alive.

    Left open, each would reconnect to the stopped broker until the worker exits, and
    librdkafka prints an error line per attempt: dozens of "Connection refused" lines
    at the end of a passing run. Queued records are purged first, so no close waits.
    """
    gc.collect()
    for client in [o for o in gc.get_objects() if isinstance(o, Producer | Consumer)]:
        with contextlib.suppress(Exception):
            if isinstance(client, Producer):
                client.purge(in_queue=True, in_flight=True, blocking=False)
            client.close()


@pytest.fixture(scope="session")
def bootstrap(broker: DevBroker) -> str:
    return broker.bootstrap_servers


_counter = itertools.count()


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Unique names per test, so tests never see each other's topics or groups."""
    run = uuid.uuid4().hex[:8]

    def make(prefix: str) -> str:
        return f"{prefix}-{os.getpid()}-{run}-{next(_counter)}"

    return make


@pytest.fixture
def topic_factory(bootstrap: str, unique: Callable[[str], str]) -> Callable[..., str]:
    """Create a fresh topic (created before anyone subscribes, as docs/local-broker.md advises)."""

    def make(prefix: str = "t", partitions: int = 1) -> str:
        name = unique(prefix)
        create_topics(bootstrap, [name], partitions=partitions)
        return name

    return make


@pytest.fixture
def read_all(bootstrap: str, unique: Callable[[str], str]) -> Callable[..., list[Message]]:
    """Read a topic from the beginning until ``count`` records arrived or time is up."""

    def read(topic: str, count: int, timeout: float = 15.0) -> list[Message]:
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": unique("reader"),
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                **FAST_GROUP,
            }
        )
        consumer.subscribe([topic])
        got: list[Message] = []
        import time

        deadline = time.monotonic() + timeout
        try:
            while len(got) < count and time.monotonic() < deadline:
                for msg in consumer.consume(num_messages=500, timeout=0.2):
                    if msg.error() is None:
                        got.append(msg)
        finally:
            consumer.close()
        return got

    return read


def refusing_port() -> socket.socket:
    """A loopback socket bound to a free port and never listening: connections to the
    port are refused (a cluster that is down), and no other process can take the port
    while the socket is open, as it could a port found free and released (another test
    worker's broker, say). Close it to hand the port over."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def port_of(sock: socket.socket) -> int:
    """The port ``sock`` is bound to."""
    return int(sock.getsockname()[1])


def fast_group_config(**extra: Any) -> dict[str, Any]:
    """Consumer settings for tests: fast joins, plus ``extra``."""
    return {**FAST_GROUP, **extra}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that uses the broker fixture (directly or through another) is a
    ``broker`` test, so ``pytest -m "not broker"`` starts no broker at all."""
    for item in items:
        if "broker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.broker)

"""Creating topics: a cluster that does not answer is unreachable, not misconfigured."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from streamguard.errors import BrokerUnavailable
from streamguard.topics import create_topics
from tests.conftest import port_of, refusing_port


def test_a_cluster_that_does_not_answer_is_unavailable_within_the_timeout() -> None:
    """The demo (and a service creating its DLQ) reported a cluster that was down as a
    ConfigurationError: exit 2, "bad usage", where every other command exits 1 for an
    unreachable cluster."""
    sock = refusing_port()
    try:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match=r"no answer from 127\.0\.0\.1:\d+ within 1s"):
            create_topics(f"127.0.0.1:{port_of(sock)}", ["orders"], timeout=1.0)
        assert time.monotonic() - started < 10
    finally:
        sock.close()


def test_the_demo_against_a_cluster_that_is_down_exits_1() -> None:
    """Exit 1 with the demo's own message, after one of librdkafka's connect failures
    and their count, not a line for each (the demo's own wait is 15 s; 1 s tells the
    same)."""
    script = (
        "import sys; from functools import partial; import streamguard.demo.run as demo; "
        "demo.create_topics = partial(demo.create_topics, timeout=1.0); "
        "from streamguard.cli import main; sys.exit(main())"
    )
    sock = refusing_port()
    try:
        address = f"127.0.0.1:{port_of(sock)}"
        done = subprocess.run(
            [sys.executable, "-c", script, "demo", "--bootstrap-servers", address],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        sock.close()
    assert done.returncode == 1, done.stderr
    assert f"no answer from {address}" in done.stderr
    failures = [line for line in done.stderr.splitlines() if "Connection refused" in line]
    assert 1 <= len(failures) <= 3, done.stderr

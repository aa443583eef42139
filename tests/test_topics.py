"""Creating topics: a cluster that does not answer is unreachable, not misconfigured."""

from __future__ import annotations

import time
from functools import partial

import pytest

from streamguard.cli import main
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


def test_the_demo_against_a_cluster_that_is_down_exits_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock = refusing_port()
    try:
        # The demo's own wait is 15 s; 1 s tells the same.
        monkeypatch.setattr(
            "streamguard.demo.run.create_topics", partial(create_topics, timeout=1.0)
        )
        assert main(["demo", "--bootstrap-servers", f"127.0.0.1:{port_of(sock)}"]) == 1
    finally:
        sock.close()
    assert "no answer from" in capsys.readouterr().err

"""librdkafka's lines through RepeatsCollapsed: each kind once, the repeats counted."""

from __future__ import annotations

import logging

import pytest

from streamguard.observe.librdkafka_logs import RepeatsCollapsed

# confluent-kafka's call for a logger setting: log(level, "%s [%s] %s", fac, client, text).
FORMAT = "%s [%s] %s"
REFUSED = (
    "[thrd:127.0.0.1:1/bootstrap]: 127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 "
    "failed: Connection refused (after {ms}ms in state CONNECT{suppressed})"
)
SSL = "[thrd:ssl://k:9093/bootstrap]: ssl://k:9093/bootstrap: SSL handshake failed"


def test_a_kind_is_logged_once_and_its_repeats_counted_at_flush(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Repeats that differ only in librdkafka's timing and client name are one kind; an
    error of another kind among them (a TLS failure) is shown, not counted away."""
    lines = RepeatsCollapsed(logging.getLogger("test.librdkafka"))
    with caplog.at_level(logging.DEBUG, "test.librdkafka"):
        for i in range(50):
            suppressed = ", 1 identical error(s) suppressed" if i % 2 else ""
            text = REFUSED.format(ms=i, suppressed=suppressed)
            lines.log(logging.ERROR, FORMAT, "FAIL", f"rdkafka#consumer-{i % 2}", text)
            if i == 20:
                lines.log(logging.ERROR, FORMAT, "FAIL", "rdkafka#consumer-1", SSL)
        shown = [r.getMessage() for r in caplog.records]
        lines.flush()
        lines.flush()  # nothing new to count: no line
    assert shown == [
        FORMAT % ("FAIL", "rdkafka#consumer-0", REFUSED.format(ms=0, suppressed="")),
        FORMAT % ("FAIL", "rdkafka#consumer-1", SSL),
    ]
    (counted,) = [r for r in caplog.records if "not shown" in r.getMessage()]
    assert counted.levelno == logging.ERROR
    assert counted.getMessage() == (
        "FAIL: 49 more line(s) like this not shown: 127.0.0.1:1/bootstrap: "
        "Connect to ipv4#127.0.0.1:1 failed: Connection refused"
    )


def test_after_pass_through_every_line_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A service collapses its consumer's lines only while it connects: pass_through()
    logs the counts so far, then each later line (a later outage's course shows)."""
    lines = RepeatsCollapsed(logging.getLogger("test.librdkafka"))
    refused = REFUSED.format(ms=0, suppressed="")
    with caplog.at_level(logging.DEBUG, "test.librdkafka"):
        for _ in range(3):
            lines.log(logging.ERROR, FORMAT, "FAIL", "rdkafka#consumer-1", refused)
        lines.pass_through()
        for _ in range(2):
            lines.log(logging.ERROR, FORMAT, "FAIL", "rdkafka#consumer-1", refused)
        lines.flush()
    shown = [r.getMessage() for r in caplog.records]
    line = FORMAT % ("FAIL", "rdkafka#consumer-1", refused)
    assert shown == [
        line,
        "FAIL: 2 more line(s) like this not shown: 127.0.0.1:1/bootstrap: "
        "Connect to ipv4#127.0.0.1:1 failed: Connection refused",
        line,
        line,
    ]

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


def test_after_pass_through_each_kind_is_logged_every_ten_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A service collapses its consumer's lines fully only while it connects: after
    pass_through() a kind is written at most every 10 s, with the count of those left
    out since. A later outage's course shows, without the ~20 connect failures a second
    librdkafka logs for a bootstrap broker that is down (one line each flooded the log)."""
    now = [0.0]
    lines = RepeatsCollapsed(logging.getLogger("test.librdkafka"), clock=lambda: now[0])
    refused = REFUSED.format(ms=0, suppressed="")
    counted = (
        "FAIL: {} more line(s) like this not shown: 127.0.0.1:1/bootstrap: "
        "Connect to ipv4#127.0.0.1:1 failed: Connection refused"
    )
    with caplog.at_level(logging.DEBUG, "test.librdkafka"):
        for _ in range(3):
            lines.log(logging.ERROR, FORMAT, "FAIL", "rdkafka#consumer-1", refused)
        lines.pass_through()
        for i in range(300):  # an outage a minute later: 20 lines a second for 15 s
            now[0] = 60.0 + i / 20
            lines.log(logging.ERROR, FORMAT, "FAIL", "rdkafka#consumer-1", refused)
            lines.log(logging.INFO, FORMAT, "FAIL", "rdkafka#consumer-1", SSL)
        lines.flush()
    shown = [r.getMessage() for r in caplog.records]
    line = FORMAT % ("FAIL", "rdkafka#consumer-1", refused)
    ssl = FORMAT % ("FAIL", "rdkafka#consumer-1", SSL)
    ssl_counted = (
        "FAIL: {} more line(s) like this not shown: ssl://k:9093/bootstrap: SSL handshake failed"
    )
    assert shown == [
        line,
        counted.format(2),
        line,  # at 60 s: the outage began
        ssl,  # another kind: its own line
        counted.format(199),  # at 70 s
        line,
        ssl_counted.format(199),
        ssl,
        counted.format(99),  # at the flush
        ssl_counted.format(99),
    ]


def test_after_pass_through_debug_lines_are_all_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Debug lines come only when asked for (``-X debug=...``): each is written."""
    lines = RepeatsCollapsed(logging.getLogger("test.librdkafka"), clock=lambda: 0.0)
    lines.pass_through()
    with caplog.at_level(logging.DEBUG, "test.librdkafka"):
        for _ in range(3):
            lines.log(logging.DEBUG, FORMAT, "HEARTBEAT", "rdkafka#consumer-1", "Heartbeat")
    assert len(caplog.records) == 3


def test_kinds_of_varying_repeated_texts_stay_bounded_and_are_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Texts that vary (an address each) and each repeat: the kinds that had repeats
    were all kept, so they grew without bound (and each new kind copied them all).
    They are now forgotten once too many, their counts logged then, none lost."""
    clock = [0.0]
    lines = RepeatsCollapsed(logging.getLogger("test.librdkafka"), clock=lambda: clock[0])
    lines.pass_through()
    kinds = 5000
    with caplog.at_level(logging.DEBUG, "test.librdkafka"):
        for i in range(kinds):
            for _ in range(3):
                lines.log(
                    logging.WARNING, FORMAT, "FAIL", "rdkafka#consumer-1", f"to 10.{i} failed"
                )
            assert len(lines._kinds) <= 1024
        lines.flush()
    shown = [r.getMessage() for r in caplog.records]
    assert sum(1 for m in shown if m.startswith("FAIL [")) == kinds
    counted = [m for m in shown if "more line(s) like this not shown" in m]
    assert sum(int(m.split()[1]) for m in counted) == 2 * kinds


def test_a_configuration_warning_does_not_quote_the_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """librdkafka's CONFWARN quoted the value it warns about: a secret read with
    --kafka-config-env and given to the wrong key (sasl.mechanisms=KAFKA_PASSWORD) was
    logged. The line keeps the key and the advice, not the value; so does its count."""
    from confluent_kafka import Consumer

    from streamguard.observe.librdkafka_logs import LOGGER

    lines = RepeatsCollapsed(LOGGER)
    config = {"bootstrap.servers": "127.0.0.1:1", "group.id": "g", "logger": lines}
    with caplog.at_level(logging.INFO, LOGGER.name):
        for _ in range(2):  # two clients: the second line is counted, then flushed
            consumer = Consumer({**config, "sasl.mechanisms": "Hunter2Secret"})
            consumer.poll(0.2)  # librdkafka hands its lines over when a client is served
            consumer.close()
        lines.flush()
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("CONFWARN")]
    assert len(warnings) == 2, warnings
    assert all("`sasl.mechanism` set to `***` but" in line for line in warnings), warnings
    assert not [r for r in caplog.records if "Hunter2Secret" in r.getMessage()]

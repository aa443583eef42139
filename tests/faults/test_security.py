"""A hostile producer's headers, and secrets in settings: what may reach metrics and logs.

Header values are untrusted input: any producer writes any ``sg-subject``, ``sg-version``,
``sg-fingerprint`` or ``sg-producer``. They must not create metric series (a label per
value would grow the scrape without bound), must reach logs only reduced to safe
characters, and a stream of new producer names must not log a line per record.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
from confluent_kafka import Producer
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

import streamguard as sg
from streamguard import headers as h
from streamguard.deadletter import REASONS
from streamguard.demo.contracts import OrderPlaced
from streamguard.observe.untrusted import LogBudget, shown
from streamguard.testing import ServiceHarness
from streamguard.topics import create_topics
from tests.faults.capture import captured_logs
from tests.faults.workload import POISON, start
from tests.runtime.conftest import order, wait_for

VALUE = OrderPlaced.model_validate(order(1).model_dump()).model_dump_json().encode()
header_text = st.one_of(
    st.text(max_size=80), st.binary(max_size=80).map(lambda b: b.decode("latin-1"))
)


class Counted(sg.ConsumerService):
    topic = "orders"
    contract = OrderPlaced
    group_id = "security"

    def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...


class Strict(Counted):
    drift = "dead_letter"


def _label_values(registry: CollectorRegistry) -> set[tuple[str, str]]:
    return {
        (name, value)
        for family in registry.collect()
        for sample in family.samples
        for name, value in sample.labels.items()
        if name != "le"
    }


def _allowed() -> set[str]:
    kinds = {
        "no_schema_headers", "other_subject", "newer_version", "older_version",
        "unknown_fingerprint", "unknown_fields",
    }  # fmt: skip
    runtimes = {"consumer"}
    return {"orders", OrderPlaced.__subject__, "handled", "dead_lettered", *REASONS, *kinds} | (
        runtimes
    )


@pytest.mark.parametrize("service", [Counted, Strict])
@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(header_text, header_text, header_text, header_text), max_size=25))
def test_hostile_schema_headers_never_become_metric_labels(
    service: type[sg.ConsumerService], values: list[tuple[str, str, str, str]]
) -> None:
    """Arbitrary sg-subject, sg-version, sg-fingerprint and sg-producer values leave
    every metric label within the fixed set (topic, contract subject, outcomes, reasons,
    drift kinds), whether drift is counted or dead-lettered."""
    registry = CollectorRegistry()
    with ServiceHarness(service, registry=registry) as kit:
        for subject, version, fingerprint, producer in values:
            headers = [
                (h.SUBJECT, subject.encode("utf-8", "replace")),
                (h.VERSION, version.encode("utf-8", "replace")),
                (h.FINGERPRINT, fingerprint.encode("utf-8", "replace")),
                (h.PRODUCER, producer.encode("utf-8", "replace")),
            ]
            kit.send_raw(VALUE, key="k", headers=headers)
    labels = {value for _, value in _label_values(registry)}
    assert labels <= _allowed(), labels - _allowed()


def test_a_new_producer_name_per_record_logs_a_few_safe_lines() -> None:
    """500 records, each naming a new producer with a forged log field and a long tail:
    the drift metric counts all 500, at most LogBudget's rate of lines are logged, and
    each shows the producer cut to safe characters."""
    registry = CollectorRegistry()
    hostile = "evil\n level=critical user=root " + "x" * 5000
    with captured_logs() as capture, ServiceHarness(Counted, registry=registry) as kit:
        for i in range(500):
            headers = [
                (h.SUBJECT, b"someone.Else"),
                (h.VERSION, b"1\nforged=1"),
                (h.PRODUCER, f"{i}-{hostile}".encode()),
            ]
            assert kit.send_raw(VALUE, key="k", headers=headers).handled
    counted = registry.get_sample_value(
        "streamguard_schema_drift_total",
        {"runtime": "consumer", "subject": OrderPlaced.__subject__, "kind": "other_subject"},
    )
    assert counted == 500
    lines = [json.loads(line) for line in capture.lines if '"schema drift"' in line]
    assert 1 <= len(lines) <= 10
    for line in lines:
        assert re.fullmatch(r"[A-Za-z0-9._:/@+?-]{1,64}(\.\.\.)?", line["producer"])
        assert "\n" not in line["writer_version"]
        assert "level=critical" not in json.dumps(line)


def test_a_forged_version_header_reads_as_none_and_the_event_is_handled() -> None:
    """An sg-version that is not a plain decimal number (a superscript digit, 5,000
    digits, text) gives ``ctx.writer_version`` None: reading it no longer raises, so a
    valid event is handled instead of dead-lettered as permanent_error."""
    seen: list[int | None] = []

    class ReadsVersion(Counted):
        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            seen.append(ctx.writer_version)

    forged = ["\u00b2".encode(), "\u0663".encode(), b"9" * 5000, b"1\nforged=1", b"-1", b" 2"]
    with ServiceHarness(ReadsVersion) as kit:
        for version in [*forged, b"3"]:
            outcome = kit.send_raw(VALUE, key="k", headers=[(h.VERSION, version)])
            assert outcome.handled, (version[:20], outcome.reason)
    assert seen == [None] * len(forged) + [3]


def test_long_producer_names_are_remembered_reduced() -> None:
    """The drift check remembers each producer it logged by its reduced name: 50
    records, each naming a new producer of 200,000 characters, leave well under a
    megabyte held (whole names held 10 MB, and up to 1,024 of any length)."""
    import gc
    import tracemalloc

    from streamguard.observe.metrics import ServiceMetrics
    from streamguard.runtime.drift import DriftCheck

    check = DriftCheck(
        OrderPlaced,
        ServiceMetrics(CollectorRegistry()),
        dead_letter=False,
        topic="orders",
        service="Billing",
    )
    tracemalloc.start()
    try:
        for i in range(50):
            name = b"%d-" % i + b"p" * 200_000
            check.check([(h.PRODUCER, name), (h.SUBJECT, b"someone.Else")], VALUE)
        gc.collect()
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 1024 * 1024, f"{held} bytes held"


def test_shown_and_log_budget() -> None:
    """shown() keeps safe names whole and cuts or masks the rest; LogBudget allows its
    rate per window and counts what it suppressed."""
    assert shown("billing-v2@eu-west:1") == "billing-v2@eu-west:1"
    assert shown("a b\nc=d") == "a?b?c?d"
    assert shown("y" * 100) == "y" * 64 + "..."
    assert shown(None) is None
    now = [0.0]
    budget = LogBudget(rate=2, per=10.0, clock=lambda: now[0])
    assert [budget.allow() for _ in range(4)] == [True, True, False, False]
    assert budget.suppressed == 2
    now[0] = 10.0
    assert budget.allow()


SECRET = "zqsecret-hunter2-qz"


@pytest.mark.broker
def test_secrets_never_reach_logs_metrics_or_health(bootstrap: str) -> None:
    """A running service with secrets in its Kafka, DLQ and registry settings handles
    and dead-letters records: the secrets appear in no log line (librdkafka's included),
    metric, health report or repr."""
    src = f"secrets-{time.monotonic_ns()}"
    create_topics(bootstrap, [src, f"{src}.dlq"], partitions=1)

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = f"g-{src}"

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

    secrets: dict[str, Any] = {"sasl.username": "svc", "sasl.password": SECRET}
    with captured_logs() as capture:
        running = start(
            Billing,
            bootstrap,
            kafka_config=secrets,
            dead_letter_config={"sasl.password": SECRET},
            schema_registry={"url": "http://127.0.0.1:9", "basic.auth.user.info": f"u:{SECRET}"},
        )
        try:
            producer = Producer({"bootstrap.servers": bootstrap})
            producer.produce(src, POISON, key="p")
            producer.produce(src, VALUE, key="v")
            producer.flush(10)
            assert wait_for(
                lambda: (
                    running.metric("streamguard_messages_total", topic=src, outcome="dead_lettered")
                    == 1
                )
            )
            shown_anywhere = "\n".join(
                [
                    capture.text(),
                    generate_latest(running.registry).decode(),
                    json.dumps(running.service.health()),
                    repr(running.service),
                ]
            )
        finally:
            running.stop()
    assert not running.error
    assert SECRET not in shown_anywhere

"""Messages written with another schema are counted (and, if asked, dead-lettered)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry
from pydantic import field_validator

import streamguard as sg
from streamguard import headers as h
from streamguard.demo.contracts import OrderPlaced
from streamguard.observe.metrics import ServiceMetrics
from streamguard.observe.untrusted import LogBudget
from streamguard.runtime.drift import DriftCheck
from tests.runtime.conftest import Running, committed, dlq_headers, order, wait_for


def _stamp(version: int, fingerprint: str, producer: str = "checkout") -> list[tuple[str, bytes]]:
    return [
        (h.SUBJECT, OrderPlaced.__subject__.encode()),
        (h.VERSION, str(version).encode()),
        (h.FINGERPRINT, fingerprint.encode()),
        (h.PRODUCER, producer.encode()),
    ]


def _send_mix(producer: Producer, topic: str) -> None:
    ours = OrderPlaced.fingerprint()
    value = order(1).model_dump_json().encode()
    with_extra = json.dumps({**json.loads(value), "coupon": "X"}).encode()
    producer.produce(topic, value, headers=_stamp(1, ours))  # no drift
    producer.produce(topic, value, headers=_stamp(2, "f" * 64))  # newer_version
    producer.produce(topic, value, headers=_stamp(2, "f" * 64))  # newer_version again
    producer.produce(topic, value, headers=_stamp(1, "0" * 64))  # unknown_fingerprint
    producer.produce(topic, value)  # no_schema_headers
    producer.produce(topic, with_extra, headers=_stamp(2, "e" * 64, "legacy"))  # newer + fields
    producer.flush(10)


def test_drift_is_counted_by_kind_and_logged_once_per_producer(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Producer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With drift="count", every message is handled; drift is counted per kind, and the
    first occurrence per producer and kind is logged once."""
    caplog.set_level(logging.WARNING, logger="streamguard.runtime")
    src = topic_factory("orders")
    _send_mix(raw_producer, src)
    group = unique("g")

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        options = sg.ServiceOptions(drift_sample=1)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

    running = start_service(Billing)
    assert wait_for(lambda: committed(bootstrap, group, src).get(0) == 6)
    subject = OrderPlaced.__subject__

    def drift(kind: str) -> float:
        return running.metric("streamguard_schema_drift_total", subject=subject, kind=kind)

    assert drift("newer_version") == 3
    assert drift("unknown_fingerprint") == 1
    assert drift("no_schema_headers") == 1
    assert drift("unknown_fields") == 1  # only "legacy" sends a field the contract lacks
    assert running.metric("streamguard_messages_total", topic=src, outcome="handled") == 6
    logged = [(r.__dict__["producer"], r.__dict__["kind"]) for r in caplog.records
              if r.getMessage() == "schema drift"]  # fmt: skip
    assert logged.count(("checkout", "newer_version")) == 1
    assert ("legacy", "unknown_fields") in logged
    # Whose drift: a process may run several services, some on one topic.
    lines = [r for r in caplog.records if r.getMessage() == "schema drift"]
    assert {(r.__dict__["service"], r.__dict__["topic"]) for r in lines} == {("Billing", src)}


def test_drift_policy_dead_letter_sends_drifting_messages_to_the_dlq(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Producer,
    read_all: Callable[..., list[Any]],
) -> None:
    """With drift="dead_letter", every drifting message is dead-lettered (schema_drift)
    and only the matching one reaches the handler."""
    src = topic_factory("orders")
    _send_mix(raw_producer, src)
    handled: list[int] = []
    group = unique("g")

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        drift = "dead_letter"

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            handled.append(ctx.offset)

    start_service(Billing)
    records = read_all(f"{src}.dlq", 5)
    assert [dlq_headers(r)["sg-dlq-reason"] for r in records] == ["schema_drift"] * 5
    assert "newer_version" in dlq_headers(records[0])["sg-dlq-error-message"]
    assert wait_for(lambda: committed(bootstrap, group, src).get(0) == 6)
    assert handled == [0]


@pytest.mark.parametrize("kind", ["sync", "async", "async, key order"])
def test_the_first_record_of_a_batch_is_checked_with_the_default_sample(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Producer,
    kind: str,
) -> None:
    """At a low rate every batch is a few records, so checking each batch's first is
    what keeps drift seen there. Under key order the event loop checks the first record
    after each hand-over, as a worker thread checks a batch's first (it used to check
    only every 256th record of the service)."""
    src = topic_factory("orders")
    value = order(1).model_dump_json().encode()
    raw_producer.produce(src, value, headers=_stamp(2, "f" * 64))  # newer_version
    raw_producer.flush(10)
    group = unique("g")

    if kind.startswith("async"):

        class Billing(sg.ConsumerService):
            topic = src
            contract = OrderPlaced
            group_id = group
            ordering = "key" if kind.endswith("key order") else "partition"

            async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

    else:

        class Billing(sg.ConsumerService):  # type: ignore[no-redef]
            topic = src
            contract = OrderPlaced
            group_id = group

            def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

    assert Billing.options.drift_sample > 1
    running = start_service(Billing)
    assert wait_for(lambda: committed(bootstrap, group, src).get(0) == 1)
    subject = OrderPlaced.__subject__
    assert (
        running.metric("streamguard_schema_drift_total", subject=subject, kind="newer_version") == 1
    )


def test_every_drift_series_exists_at_zero_before_its_first_drift(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Producer,
) -> None:
    """Each kind's series of the contract's subject is exported at zero from the start,
    so increase() (and the drift alert) sees a drift that happens once: a series that
    first appeared with its first drift already at 1 showed no increase."""
    src = topic_factory("orders")
    group = unique("g")

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

    running = start_service(Billing)
    assert wait_for(lambda: running.service.health()["checks"]["assigned"])
    subject = OrderPlaced.__subject__
    kinds = ("newer_version", "older_version", "unknown_fingerprint", "unknown_fields",
             "no_schema_headers", "other_subject")  # fmt: skip

    def series() -> dict[str, float | None]:
        return {
            kind: running.registry.get_sample_value(
                "streamguard_schema_drift_total",
                {"runtime": "consumer", "subject": subject, "kind": kind},
            )
            for kind in kinds
        }

    assert series() == dict.fromkeys(kinds, 0.0)
    value = order(1).model_dump_json().encode()
    raw_producer.produce(src, value, headers=_stamp(2, "f" * 64))  # newer_version
    raw_producer.flush(10)
    assert wait_for(lambda: committed(bootstrap, group, src).get(0) == 1)
    assert series() == {**dict.fromkeys(kinds, 0.0), "newer_version": 1.0}


def test_a_drift_first_seen_while_the_log_budget_is_spent_is_logged_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The first drift of a producer and kind is logged once the rate allows a line,
    when other producers' first lines had spent it: it was remembered as logged and
    never written, so which producer wrote the new version was never told."""
    caplog.set_level(logging.WARNING, logger="streamguard.runtime")
    now = [0.0]
    check = DriftCheck(
        OrderPlaced,
        ServiceMetrics(CollectorRegistry()),
        dead_letter=False,
        log_budget=LogBudget(rate=10, per=60.0, clock=lambda: now[0]),
        topic="orders",
        service="Billing",
    )
    value = order(1).model_dump_json().encode()
    for pod in range(11):  # eleven replicas of a producer, each named by its host
        check.check(_stamp(2, "f" * 64, f"checkout-{pod}"), value)
    now[0] = 61.0  # a minute later the rate allows lines again
    for _ in range(3):
        check.check(_stamp(2, "f" * 64, "checkout-10"), value)
    logged = [r.__dict__["producer"] for r in caplog.records if r.getMessage() == "schema drift"]
    assert logged == [f"checkout-{pod}" for pod in range(11)]


def test_a_drift_check_is_refused_without_the_service_and_topic_its_lines_name() -> None:
    """Its lines would name an empty service and topic, which no operator's filter on
    them matches: both are required, not defaulted to ``""``."""
    metrics = ServiceMetrics(CollectorRegistry())
    with pytest.raises(TypeError, match="service"):
        DriftCheck(OrderPlaced, metrics, dead_letter=False, topic="orders")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="topic"):
        DriftCheck(OrderPlaced, metrics, dead_letter=False, service="Billing")  # type: ignore[call-arg]


class _LookedUp(sg.Contract):
    """A contract whose validator looks something up, and times out on its first call."""

    __subject__ = "orders.LookedUp"
    __version__ = 1

    order_id: str

    @field_validator("order_id")
    @classmethod
    def _look_up(cls, value: str) -> str:
        _LOOKUPS.append(value)
        if len(_LOOKUPS) == 1:
            raise TimeoutError("lookup timed out")  # pydantic passes it on: transient
        return value


_LOOKUPS: list[str] = []


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_record_whose_decode_failed_transiently_is_still_checked_for_drift(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Producer,
    read_all: Callable[..., list[Any]],
    kind: str,
) -> None:
    """A contract's validator raising a transient error (pydantic passes it on) stops
    the try before the drift check. Its retry used to count the check as done: under
    drift="dead_letter" a record without schema headers was handled, not dead-lettered."""
    _LOOKUPS.clear()
    src = topic_factory("orders")
    raw_producer.produce(src, b'{"order_id": "o-1"}')  # no schema headers
    raw_producer.flush(10)
    handled: list[int] = []
    group = unique("g")

    class Billing(sg.ConsumerService):
        topic = src
        contract = _LookedUp
        group_id = group
        drift = "dead_letter"
        retry = sg.RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.01)

        def handle(self, event: _LookedUp, ctx: sg.MessageContext) -> None:
            handled.append(ctx.offset)

    class AsyncBilling(Billing):
        async def handle(self, event: _LookedUp, ctx: sg.MessageContext) -> None:  # type: ignore[override]
            handled.append(ctx.offset)

    start_service(AsyncBilling if kind == "async" else Billing)
    records = read_all(f"{src}.dlq", 1)
    assert dlq_headers(records[0])["sg-dlq-reason"] == "schema_drift"
    assert wait_for(lambda: committed(bootstrap, group, src).get(0) == 1)
    assert len(_LOOKUPS) == 2  # the failed try, then the retry
    assert handled == []

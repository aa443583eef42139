"""A guarded Faust agent gives every event one final outcome, like a ConsumerService."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from faust.contrib.asgi import faust_app_running

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from streamguard.faust import guarded_agent
from streamguard.faust import lane as lane_module
from streamguard.topics import DEAD_LETTER_HEADROOM, create_topics, max_message_bytes
from tests.faust.conftest import run_app, until
from tests.runtime.conftest import Running, check_dead_letter_size_warning, committed, order

pytestmark = pytest.mark.broker

SECRET = "SECRET-4242"
FAST_RETRY = sg.RetryPolicy(attempts=3, base_delay=0.02, max_delay=0.05, max_budget_ms=5_000)


def poison_mix() -> list[tuple[bytes | None, str]]:
    """Values and the outcome each must reach, in offset order."""
    return [
        (order(0).model_dump_json().encode(), "handled"),
        (b"{not json", "decode_error"),
        (json.dumps({"order_id": "nope", "customer_id": SECRET}).encode(), "contract_violation"),
        (order(3, customer_id="flaky-twice").model_dump_json().encode(), "handled"),
        (order(4, customer_id="permanent").model_dump_json().encode(), "permanent_error"),
        (order(5, customer_id="flaky").model_dump_json().encode(), "retries_exhausted"),
        (b'{"pad": "' + b"x" * 3000 + b'"}', "oversize"),
        (order(7).model_dump_json().encode(), "handled"),
        (None, "decode_error"),  # a tombstone: a contract describes a value
    ]


def produce(producer: Producer, topic: str, values: list[bytes | None], timestamp: int) -> None:
    for i, value in enumerate(values):
        producer.produce(
            topic,
            value,
            key=f"k{i}".encode(),
            headers=[("trace", b"t%d" % i), ("trace", b"again"), ("empty", b"")],
            timestamp=timestamp + i,
        )
    producer.flush(10)


def behaviour(calls: Counter[str]) -> Callable[[OrderPlaced], None]:
    """The handler logic both runtimes share in these tests."""

    def act(event: OrderPlaced) -> None:
        calls[event.customer_id] += 1
        if event.customer_id == "permanent":
            raise sg.PermanentError("customer is closed")
        if event.customer_id == "flaky":
            raise TimeoutError(f"upstream timed out for {event.customer_id}")
        if event.customer_id == "flaky-twice" and calls[event.customer_id] < 3:
            raise sg.TransientError("try again")

    return act


def test_poison_mix_reaches_one_outcome_each(
    bootstrap: str,
    topic_factory: Callable[..., str],
    make_app: Callable[..., Any],
    raw_producer: Producer,
    read_all: Callable[..., list[Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Valid events are handled once (a transient one after its retries, each retry
    logged as a service logs it), every bad one is dead-lettered once with its exact
    reason, and the offset commits to the end."""
    src = topic_factory("orders")
    mix = poison_mix()
    produce(raw_producer, src, [v for v, _ in mix], 1_700_000_000_000)
    app = make_app()
    calls: Counter[str] = Counter()
    act = behaviour(calls)
    handled: list[tuple[int, int]] = []

    @guarded_agent(
        app, src, contract=OrderPlaced, codec=sg.JsonCodec(max_bytes=2048), retry=FAST_RETRY
    )
    async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        act(event)
        handled.append((ctx.offset, ctx.attempt))

    def metric(name: str, **labels: str) -> float:
        value = bill.registry.get_sample_value(name, {"runtime": "faust", "topic": src, **labels})
        return 0.0 if value is None else value

    async def scenario() -> None:
        assert await until(lambda: committed(bootstrap, app.conf.id, src).get(0) == len(mix), 40)
        assert bill.registry.get_sample_value("streamguard_ready", {"runtime": "faust"}) == 1.0

    with caplog.at_level("INFO", logger="streamguard.faust"):
        run_app(app, scenario)

    assert handled == [(0, 1), (3, 3), (7, 1)]
    assert calls["flaky"] == 3  # the policy's three attempts, then the DLQ
    retries = [r for r in caplog.records if r.getMessage() == "retrying message"]
    assert [(r.offset, r.attempt) for r in retries] == [(3, 1), (3, 2), (5, 1), (5, 2)]  # type: ignore[attr-defined]
    assert all(r.topic == src and r.not_logged == 0 for r in retries)  # type: ignore[attr-defined]
    assert "upstream timed out" not in caplog.text  # the error's text, naming the customer
    expected = {i: reason for i, (_, reason) in enumerate(mix) if reason != "handled"}
    dlq = read_all(f"{src}.dlq", len(expected), timeout=20)
    assert len(dlq) == len(expected)
    by_offset = {}
    for record in dlq:
        headers = {k: v for k, v in record.headers() if k.startswith("sg-dlq-")}
        by_offset[int(headers["sg-dlq-original-offset"])] = (record, headers)
    assert {o: h["sg-dlq-reason"].decode() for o, (_, h) in by_offset.items()} == expected
    for offset, (record, headers) in by_offset.items():
        assert record.key() == f"k{offset}".encode()
        assert record.value() == mix[offset][0]  # byte for byte
        original = [(k, v) for k, v in record.headers() if not k.startswith("sg-dlq-")]
        assert original == [("trace", b"t%d" % offset), ("trace", b"again"), ("empty", b"")]
        assert headers["sg-dlq-original-topic"] == src.encode()
        assert headers["sg-dlq-original-timestamp"] == b"%d" % (1_700_000_000_000 + offset)
        assert headers["sg-dlq-consumer-group"] == app.conf.id.encode()
        assert headers["sg-dlq-expected-subject"] == b"orders.OrderPlaced"
        assert SECRET.encode() not in b"".join(v or b"" for v in headers.values())
    violation = by_offset[2][1]
    assert [e["loc"] for e in json.loads(violation["sg-dlq-errors"])] == [
        ["order_id"],
        ["amount"],
        ["currency"],
        ["placed_at"],
    ]
    exhausted = by_offset[5][1]
    assert exhausted["sg-dlq-attempts"] == b"3"
    assert exhausted["sg-dlq-error-class"] == b"builtins.TimeoutError"
    assert b"redacted" in exhausted["sg-dlq-error-message"]  # a foreign error's text
    assert by_offset[4][1]["sg-dlq-error-message"] == b"customer is closed"

    assert metric("streamguard_messages_total", outcome="handled") == 3
    assert metric("streamguard_messages_total", outcome="dead_lettered") == 6
    assert metric("streamguard_retries_total") == 4  # two for each flaky event
    assert metric("streamguard_dead_letters_total", reason="oversize") == 1
    assert metric("streamguard_handler_seconds_count") == 3


def test_dead_letter_headers_match_consumer_service(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    make_app: Callable[..., Any],
    raw_producer: Producer,
    read_all: Callable[..., list[Any]],
    start_service: Callable[..., Running],
) -> None:
    """The same bad input gets the same DLQ record from a guarded agent as from a
    ConsumerService: same key, value and headers, in the same order, with the same
    values except where it came from and when."""
    mix = [(v, r) for v, r in poison_mix() if r != "handled"]
    values = [v for v, _ in mix]
    src_faust, src_service = topic_factory("orders"), topic_factory("orders")
    produce(raw_producer, src_faust, values, 1_700_000_000_000)
    produce(raw_producer, src_service, values, 1_700_000_000_000)

    service_calls: Counter[str] = Counter()
    service_act = behaviour(service_calls)

    class Billing(sg.ConsumerService):
        topic = src_service
        contract = OrderPlaced
        group_id = unique("billing")
        codec = sg.JsonCodec(max_bytes=2048)
        retry = FAST_RETRY
        service_name = "billing"

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            service_act(event)

    running = start_service(Billing)
    from_service = read_all(f"{src_service}.dlq", len(mix), timeout=30)
    running.stop()

    app = make_app()
    agent_calls: Counter[str] = Counter()
    agent_act = behaviour(agent_calls)

    @guarded_agent(
        app,
        src_faust,
        contract=OrderPlaced,
        codec=sg.JsonCodec(max_bytes=2048),
        retry=FAST_RETRY,
        name="billing",
    )
    async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        agent_act(event)

    async def scenario() -> None:
        assert await until(
            lambda: committed(bootstrap, app.conf.id, src_faust).get(0) == len(mix), 40
        )

    run_app(app, scenario)
    from_agent = read_all(f"{src_faust}.dlq", len(mix), timeout=20)

    differ = {
        "sg-dlq-original-topic",
        "sg-dlq-consumer-group",
        "sg-dlq-first-failure-ms",
        "sg-dlq-dead-lettered-ms",
    }

    def same(key: str, value: bytes) -> bytes | None:
        if key in differ:
            return None
        if key == "sg-dlq-error-message":  # "gave up after 3 attempt(s) in 61 ms: ..."
            return re.sub(rb" in \d+ ms", b" in N ms", value)
        return value

    def comparable(record: Any) -> tuple[Any, ...]:
        headers = [(k, same(k, v)) for k, v in record.headers()]
        return record.key(), record.value(), headers

    def by_offset(records: list[Any]) -> dict[bytes, tuple[Any, ...]]:
        return {dict(r.headers())["sg-dlq-original-offset"]: comparable(r) for r in records}

    assert len(from_service) == len(from_agent) == len(mix)
    assert by_offset(from_agent) == by_offset(from_service)


def test_results_are_forwarded_to_a_sink(
    bootstrap: str,
    topic_factory: Callable[..., str],
    make_app: Callable[..., Any],
    send_orders: Callable[..., None],
    read_all: Callable[..., list[Any]],
) -> None:
    """A handler's non-None result goes to the sink topic before its event is acked."""
    src, out = topic_factory("orders"), topic_factory("invoices")
    send_orders(src, 3)
    app = make_app()
    invoices = app.topic(out, value_serializer="json")

    @guarded_agent(app, src, contract=OrderPlaced, sink=[invoices])
    async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> dict[str, str] | None:
        if ctx.offset == 1:
            return None  # nothing to forward
        return {"invoice_for": str(event.order_id)}

    async def scenario() -> None:
        assert await until(lambda: committed(bootstrap, app.conf.id, src).get(0) == 3, 40)

    run_app(app, scenario)
    records = read_all(out, 2, timeout=15)
    assert sorted(json.loads(r.value())["invoice_for"] for r in records) == [
        str(order(0).order_id),
        str(order(2).order_id),
    ]


def test_results_reach_a_sink_at_once_when_the_app_publishes_on_commit(
    bootstrap: str,
    topic_factory: Callable[..., str],
    make_app: Callable[..., Any],
    send_orders: Callable[..., None],
    read_all: Callable[..., list[Any]],
) -> None:
    """With ``stream_publish_on_commit``, Faust holds a send made while an event is
    processed until that event's offset is committed; a result is still sent and
    confirmed before its event is acked, so the partition does not wait for itself."""
    src, out = topic_factory("orders"), topic_factory("invoices")
    send_orders(src, 3)
    app = make_app(stream_publish_on_commit=True)
    invoices = app.topic(out, value_serializer="json")

    @guarded_agent(app, src, contract=OrderPlaced, sink=[invoices])
    async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> dict[str, str]:
        return {"invoice_for": str(event.order_id)}

    async def scenario() -> None:
        assert await until(lambda: committed(bootstrap, app.conf.id, src).get(0) == 3, 40)

    run_app(app, scenario)
    records = read_all(out, 3, timeout=15)
    assert sorted(json.loads(r.value())["invoice_for"] for r in records) == sorted(
        str(order(i).order_id) for i in range(3)
    )


def test_a_handler_updates_a_faust_table_for_every_event(
    bootstrap: str,
    topic_factory: Callable[..., str],
    make_app: Callable[..., Any],
    send_orders: Callable[..., None],
    read_all: Callable[..., list[Any]],
) -> None:
    """The handler runs with its event as Faust's current event, as in a plain agent,
    so a table it updates takes every event's change (on the event's partition), not
    only the first event's of a partition, and no valid event is dead-lettered."""
    src = topic_factory("orders", partitions=2)
    send_orders(src, 12, key=lambda i: f"customer-{i % 3}")
    app = make_app()
    orders_by_partition = app.Table(f"{src}-per-partition", default=int, partitions=2)

    @guarded_agent(app, src, contract=OrderPlaced)
    async def count(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        orders_by_partition[str(ctx.partition)] += 1

    def handled() -> float:
        labels = {"runtime": "faust", "topic": src, "outcome": "handled"}
        return count.registry.get_sample_value("streamguard_messages_total", labels) or 0.0

    async def scenario() -> None:
        assert await until(lambda: sum(committed(bootstrap, app.conf.id, src).values()) == 12)
        assert await until(lambda: handled() == 12, 5)

    run_app(app, scenario)
    assert read_all(f"{src}.dlq", 1, timeout=2) == []
    per_partition = committed(bootstrap, app.conf.id, src)
    assert dict(orders_by_partition.items()) == {str(p): n for p, n in per_partition.items() if n}


def test_schema_drift_is_counted(
    bootstrap: str,
    topic_factory: Callable[..., str],
    make_app: Callable[..., Any],
    raw_producer: Producer,
    send_orders: Callable[..., None],
) -> None:
    """An event without schema headers is handled and counted as drift, under the same
    metric the consumer runtime uses (the partition's first event: always checked)."""
    src = topic_factory("orders")
    raw_producer.produce(src, order(9).model_dump_json().encode())
    raw_producer.flush(10)
    send_orders(src, 2)  # stamped by a GuardedProducer: no drift
    app = make_app()

    @guarded_agent(app, src, contract=OrderPlaced)
    async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        return None

    async def scenario() -> None:
        assert await until(lambda: committed(bootstrap, app.conf.id, src).get(0) == 3, 40)

    run_app(app, scenario)
    labels = {"runtime": "faust", "subject": "orders.OrderPlaced", "kind": "no_schema_headers"}
    assert bill.registry.get_sample_value("streamguard_schema_drift_total", labels) == 1


def test_a_keyless_tombstone_is_dead_lettered_keyless(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    make_app: Callable[..., Any],
    start_service: Callable[..., Running],
    raw_producer: Producer,
    read_all: Callable[..., list[Any]],
) -> None:
    """A record with neither key nor value, which aiokafka's send() refuses, is
    dead-lettered with a null key and value, as a ConsumerService writes it (an empty
    key would be replayed as one), and the events after it are handled."""
    src = topic_factory("orders")
    raw_producer.produce(src, None, headers=[("trace", b"t")])
    raw_producer.produce(src, order(1).model_dump_json().encode())
    raw_producer.flush(10)
    app = make_app()
    handled: list[int] = []

    @guarded_agent(app, src, contract=OrderPlaced)
    async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        handled.append(ctx.offset)

    async def scenario() -> None:
        assert await until(lambda: committed(bootstrap, app.conf.id, src).get(0) == 2, 30)

    run_app(app, scenario)
    assert handled == [1]
    (dead,) = read_all(f"{src}.dlq", 1, timeout=10)
    assert (dead.key(), dead.value()) == (None, None)
    headers = dict(dead.headers())
    assert headers["sg-dlq-reason"] == b"decode_error"
    assert headers["trace"] == b"t"

    group = unique("g")

    class Bill(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        dead_letter_topic = f"{src}.dlq2"

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

    start_service(Bill)
    (theirs,) = read_all(f"{src}.dlq2", 1, timeout=10)
    assert (theirs.key(), theirs.value()) == (dead.key(), dead.value())


def test_a_small_record_with_thousands_of_errors_is_dead_lettered(
    bootstrap: str,
    topic_factory: Callable[..., str],
    make_app: Callable[..., Any],
    raw_producer: Producer,
    read_all: Callable[..., list[Any]],
) -> None:
    """A 22 KB order with 7,500 empty items (15,000 errors) is dead-lettered with a
    capped sg-dlq-errors header: its dead letter fits Faust's 1 MB request limit (a
    header of every error did not, and held the partition for good)."""
    src = topic_factory("orders")
    doc = json.loads(order(1).model_dump_json())
    doc["items"] = [{}] * 7500
    raw_producer.produce(src, json.dumps(doc, separators=(",", ":")).encode(), key=b"k")
    raw_producer.produce(src, order(2).model_dump_json().encode(), key=b"k")
    raw_producer.flush(10)
    app = make_app()
    handled: list[int] = []

    @guarded_agent(app, src, contract=OrderPlaced)
    async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        handled.append(ctx.offset)

    async def scenario() -> None:
        assert await until(lambda: committed(bootstrap, app.conf.id, src).get(0) == 2, 30)

    run_app(app, scenario)
    assert handled == [1]
    (dead,) = read_all(f"{src}.dlq", 1, timeout=10)
    errors = json.loads(dict(dead.headers())["sg-dlq-errors"])
    assert errors[-1]["type"] == "errors_left_out"


@pytest.mark.parametrize("drift_sample", [1, 256])
def test_drift_is_sampled_while_a_partition_is_behind(
    bootstrap: str,
    topic_factory: Callable[..., str],
    make_app: Callable[..., Any],
    raw_producer: Producer,
    drift_sample: int,
) -> None:
    """600 events without schema headers wait behind a held handler, then run at full
    speed: with the default sample only some are drift-checked (a check parses the
    value), with 1 every one; all are handled either way."""
    src = topic_factory("orders")
    total = 600
    value = order(1).model_dump_json().encode()
    for _ in range(total):
        raw_producer.produce(src, value)
    raw_producer.flush(10)
    app = make_app()
    release = asyncio.Event()
    handled = []

    @guarded_agent(app, src, contract=OrderPlaced, drift_sample=drift_sample)
    async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        await release.wait()
        handled.append(ctx.offset)

    def waiting() -> float:
        labels = {"runtime": "faust", "topic": src}
        return bill.registry.get_sample_value("streamguard_inflight", labels) or 0.0

    async def scenario() -> None:
        assert await until(lambda: waiting() >= total, 40), waiting()
        release.set()
        assert await until(lambda: committed(bootstrap, app.conf.id, src).get(0) == total, 40)

    run_app(app, scenario)
    assert handled == list(range(total))
    labels = {"runtime": "faust", "subject": "orders.OrderPlaced", "kind": "no_schema_headers"}
    checked = bill.registry.get_sample_value("streamguard_schema_drift_total", labels)
    if drift_sample == 1:
        assert checked == total
    else:  # the first, every 256th, and any event 10 ms after the last check
        assert checked is not None
        assert 3 <= checked <= 30, checked


def test_slow_event_holds_back_only_its_own_partition(
    bootstrap: str,
    topic_factory: Callable[..., str],
    make_app: Callable[..., Any],
    send_orders: Callable[..., None],
) -> None:
    """Faust issue #606: while the first event of a partition is still in its handler,
    faster later events of that partition wait and nothing past it is committed; the
    other partition is handled and committed meanwhile, though the held one has far more
    events waiting than its buffer (it is paused, not waited for)."""
    src = topic_factory("orders", partitions=2)
    per_partition = 40
    send_orders(src, 2 * per_partition, key=lambda i: "slow" if i % 2 else "fast")
    app = make_app()
    release = asyncio.Event()
    seen: list[tuple[int, int]] = []
    slow: dict[str, int] = {}

    @guarded_agent(app, src, contract=OrderPlaced, partition_buffer=5)
    async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        if ctx.key == b"slow" and not slow:
            slow["partition"] = ctx.partition
            await release.wait()
        seen.append((ctx.partition, ctx.offset))

    async def scenario() -> None:
        try:
            assert await until(lambda: bool(slow), 30)
            held, other = slow["partition"], 1 - slow["partition"]
            assert await until(
                lambda: committed(bootstrap, app.conf.id, src).get(other) == per_partition, 20
            )
            await asyncio.sleep(1.0)  # five commit intervals with the slow event in flight
            assert committed(bootstrap, app.conf.id, src).get(held, 0) == 0
            assert [o for p, o in seen if p == held] == []
        finally:
            release.set()  # also on failure, so that the app can stop
        assert await until(
            lambda: committed(bootstrap, app.conf.id, src).get(held) == per_partition, 20
        )
        assert [o for p, o in seen if p == held] == list(range(per_partition))

    run_app(app, scenario)


def test_stop_during_retry_leaves_the_event_for_redelivery(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    make_app: Callable[..., Any],
    send_orders: Callable[..., None],
    read_all: Callable[..., list[Any]],
) -> None:
    """An app stopped while an event waits to be retried stops promptly without acking
    it, and a restarted app handles it: it is neither lost nor dead-lettered."""
    src = topic_factory("orders")
    send_orders(src, 2)
    group = unique("billing")
    patient = sg.RetryPolicy(attempts=10, base_delay=2.0, max_delay=2.0, max_budget_ms=25_000)
    first = make_app(group)
    failures: list[int] = []

    @guarded_agent(first, src, contract=OrderPlaced, retry=patient)
    async def failing(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        if ctx.offset == 1:
            failures.append(ctx.attempt)
            raise sg.TransientError("downstream is down")

    stop_began: list[float] = []

    async def until_retrying() -> None:
        assert await until(lambda: len(failures) >= 1, 30)
        assert await until(lambda: committed(bootstrap, group, src).get(0) == 1, 10)
        stop_began.append(time.monotonic())

    run_app(first, until_retrying)
    # The retry budget is 25 s; the stop does not wait for it.
    assert time.monotonic() - stop_began[0] < 10
    assert committed(bootstrap, group, src).get(0) == 1  # the retried event is not acked

    second = make_app(group)
    handled: list[tuple[int, int]] = []

    @guarded_agent(second, src, contract=OrderPlaced, retry=patient)
    async def healthy(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        handled.append((ctx.offset, ctx.attempt))

    async def redelivered() -> None:
        assert await until(lambda: committed(bootstrap, group, src).get(0) == 2, 30)

    run_app(second, redelivered)
    assert handled == [(1, 1)]
    assert read_all(f"{src}.dlq", 1, timeout=2) == []


def test_unwritable_dead_letter_topic_holds_the_event(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    make_app: Callable[..., Any],
    raw_producer: Producer,
    read_all: Callable[..., list[Any]],
) -> None:
    """While the DLQ refuses a dead letter, its event is not acked and nothing after it
    is committed; the event comes back and is dead-lettered once the DLQ takes it."""
    src = topic_factory("orders")
    poison = b'{"pad": "' + b"x" * 4000 + b'"}'  # a contract violation, 4 kB
    raw_producer.produce(src, order(0).model_dump_json().encode())
    raw_producer.produce(src, poison)
    raw_producer.produce(src, order(2).model_dump_json().encode())
    raw_producer.flush(10)
    group = unique("billing")
    # The app's producer refuses requests over 2 kB: the DLQ cannot take the poison.
    first = make_app(group, producer_max_request_size=2048)
    seen: list[int] = []

    @guarded_agent(first, src, contract=OrderPlaced)
    async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        seen.append(ctx.offset)

    def failures() -> float:
        labels = {"runtime": "faust", "topic": src}
        return bill.registry.get_sample_value("streamguard_dead_letter_failures_total", labels) or 0

    async def refused() -> None:
        assert await until(lambda: failures() >= 2, 30)
        assert await until(lambda: committed(bootstrap, group, src).get(0) == 1, 10)
        await asyncio.sleep(0.5)
        assert committed(bootstrap, group, src).get(0) == 1
        assert seen == [0]  # the event behind the poison waits
        assert not bill.dead_letter_writable
        ready = bill.registry.get_sample_value("streamguard_ready", {"runtime": "faust"})
        assert ready == 0.0

    run_app(first, refused)

    second = make_app(group)

    @guarded_agent(second, src, contract=OrderPlaced)
    async def bill_again(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        seen.append(ctx.offset)

    async def recovered() -> None:
        assert await until(lambda: committed(bootstrap, group, src).get(0) == 3, 30)

    run_app(second, recovered)
    assert seen == [0, 2]
    dlq = read_all(f"{src}.dlq", 1, timeout=15)
    assert [r.value() for r in dlq] == [poison]


def test_a_dead_letter_the_broker_is_slow_to_confirm_is_written_once(
    broker: Any,
    bootstrap: str,
    topic_factory: Callable[..., str],
    make_app: Callable[..., Any],
    raw_producer: Producer,
    read_all: Callable[..., list[Any]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A dead letter whose confirmation outlasts a try (the broker stalls) is waited
    for, not sent again: the DLQ holds one record per dead letter counted, however
    many tries the stall took, and everything is committed once the broker is back.
    The lines saying the DLQ failed and recovered name the agent, its topic and DLQ."""
    monkeypatch.setattr(lane_module, "DEAD_LETTER_TIMEOUT", 1.0)  # 30 s in production
    caplog.set_level("INFO", logger="streamguard.faust")
    src = topic_factory("orders")
    raw_producer.produce(src, order(0).model_dump_json().encode())
    raw_producer.produce(src, b"{not json")
    raw_producer.produce(src, order(2).model_dump_json().encode())
    raw_producer.flush(10)
    app = make_app()
    release = asyncio.Event()

    @guarded_agent(app, src, contract=OrderPlaced)
    async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        if ctx.offset == 0:
            await release.wait()

    def metric(name: str, **labels: str) -> float:
        value = bill.registry.get_sample_value(name, {"runtime": "faust", "topic": src, **labels})
        return 0.0 if value is None else value

    async def scenario() -> None:
        assert await until(lambda: 0 in bill._lanes and bill._lanes[0].busy, 30)
        # The poison and the last event are fetched behind the held one before the stall:
        # a fixed 0.5 s was too short under a loaded CI run, and with the poison never
        # fetched no dead letter was tried while the broker stalled.
        assert await until(lambda: len(bill._lanes[0].queue) >= 2, 30)
        os.kill(broker.pid, signal.SIGSTOP)  # the broker stalls: nothing is confirmed
        try:
            release.set()
            assert await until(lambda: metric("streamguard_dead_letter_failures_total") >= 3, 20)
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        assert await until(lambda: committed(bootstrap, app.conf.id, src).get(0) == 3, 60)

    run_app(app, scenario, timeout=120)
    dead_lettered = metric("streamguard_messages_total", outcome="dead_lettered")
    assert dead_lettered >= 1
    records = read_all(f"{src}.dlq", 10, timeout=5)
    # One record per counted dead letter (a rebalance after the stall may redeliver
    # the event, which is then dead-lettered and counted again: at least once).
    assert len(records) == dead_lettered
    down = "cannot write to the dead-letter topic; holding the partition and backing off"
    said = [r for r in caplog.records if r.getMessage() in (down, WRITABLE_AGAIN)]
    assert [r.getMessage() for r in said][:2] == [down, WRITABLE_AGAIN]
    whose = {(r.service, r.topic, r.dlq) for r in said}  # type: ignore[attr-defined]
    assert whose == {(bill.name, src, f"{src}.dlq")}


WRITABLE_AGAIN = "dead-letter topic is writable again"


def test_not_ready_until_the_app_is_assigned_partitions_of_the_topic(
    topic_factory: Callable[..., str], make_app: Callable[..., Any]
) -> None:
    """Between the app's start and its first group join (about half the session
    timeout) the agent is not ready, as a service's ``assigned`` check keeps it; ready
    once the group gave the app the topic's partition."""
    src = topic_factory("orders")
    app = make_app()

    @guarded_agent(app, src, contract=OrderPlaced)
    async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        return None

    def assigned() -> bool:
        try:
            return any(tp.topic == src for tp in app.consumer.assignment())
        except Exception:  # the consumer is not started yet
            return False

    def gauge() -> float | None:
        return bill.registry.get_sample_value("streamguard_ready", {"runtime": "faust"})

    # (ready, started and not rebalancing), every 10 ms until the assignment: watched
    # while the app starts, as a readiness probe would.
    early: list[tuple[bool, bool]] = []

    async def watch() -> None:
        deadline = time.monotonic() + 20
        while not assigned() and time.monotonic() < deadline:
            early.append((bill.ready, bool(app.started and not app.rebalancing)))
            await asyncio.sleep(0.01)

    async def main() -> None:
        watcher = asyncio.ensure_future(watch())
        async with faust_app_running(app, stop_timeout=20):
            await asyncio.wait_for(watcher, 25)
            assert assigned()
            assert any(idle for _, idle in early)  # up, not rebalancing, not assigned
            assert not any(ready for ready, _ in early)
            assert await until(lambda: bill.ready, 20)
            assert gauge() == 1.0

    asyncio.run(main())
    assert gauge() == 0.0


def test_dead_letter_topic_is_created_at_startup(
    bootstrap: str,
    topic_factory: Callable[..., str],
    make_app: Callable[..., Any],
    send_orders: Callable[..., None],
) -> None:
    """The DLQ topic exists, with the source's partition count, before any dead letter."""
    src = topic_factory("orders", partitions=3)
    send_orders(src, 3, key=lambda i: f"k{i}")
    app = make_app()

    @guarded_agent(app, src, contract=OrderPlaced)
    async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        return None

    async def scenario() -> None:
        assert await until(lambda: sum(committed(bootstrap, app.conf.id, src).values()) == 3, 30)
        assert await until(lambda: partitions_of(bootstrap, f"{src}.dlq") == 3, 10)

    run_app(app, scenario)
    labels = {"runtime": "faust", "topic": src, "outcome": "dead_lettered"}
    assert bill.registry.get_sample_value("streamguard_messages_total", labels) == 0


def test_dead_letter_topic_takes_the_source_partition_count_without_the_group_join(
    bootstrap: str,
    topic_factory: Callable[..., str],
    make_app: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Faust's group join waits for half its session timeout (30 s by default, here 12 s):
    the DLQ is still declared at once with the source's partition count, from the
    producer's metadata. Before, with no consumer metadata after 10 s, it got Faust's
    default count (8)."""
    src = topic_factory("orders", partitions=3)
    app = make_app(broker_session_timeout=24)
    caplog.set_level("INFO", logger="streamguard.faust")

    @guarded_agent(app, src, contract=OrderPlaced)
    async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        return None

    def ready() -> list[Any]:
        return [r for r in caplog.records if r.getMessage() == "dead-letter topic ready"]

    async def scenario() -> None:
        assert await until(lambda: partitions_of(bootstrap, f"{src}.dlq") > 0, 12)
        assert await until(lambda: len(ready()) == 1, 10)

    run_app(app, scenario)
    assert partitions_of(bootstrap, f"{src}.dlq") == 3
    # Whose DLQ: a worker may run several agents, some on one topic.
    (line,) = ready()
    assert (line.service, line.topic, line.dlq) == (bill.name, src, f"{src}.dlq")


def test_a_dead_letter_topic_that_cannot_be_declared_only_warns(
    topic_factory: Callable[..., str],
    make_app: Callable[..., Any],
    send_orders: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A DLQ the agent cannot create at start-up (here its declaration fails) leaves
    the agent consuming, with a warning naming the agent, its topic and DLQ."""
    import faust.topics

    src = topic_factory("orders")
    send_orders(src, 1)
    app = make_app()
    declare = faust.topics.Topic.__dict__["maybe_declare"]  # a descriptor (mode's stampede)

    async def refused(topic: Any) -> None:
        if topic.get_topic_name() == f"{src}.dlq":
            raise RuntimeError("topic creation refused")
        await declare.__get__(topic, type(topic))()

    monkeypatch.setattr(faust.topics.Topic, "maybe_declare", refused)
    caplog.set_level("INFO", logger="streamguard.faust")
    handled: list[int] = []

    @guarded_agent(app, src, contract=OrderPlaced)
    async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        handled.append(ctx.offset)

    warning = "could not create the dead-letter topic; create it before the first dead letter"

    def said() -> list[Any]:
        return [r for r in caplog.records if r.getMessage() == warning]

    async def scenario() -> None:
        assert await until(lambda: len(said()) == 1 and handled == [0], 30)

    run_app(app, scenario)
    (line,) = said()
    assert (line.service, line.topic, line.dlq) == (bill.name, src, f"{src}.dlq")
    assert line.error == "topic creation refused"


def test_the_dead_letter_topic_takes_a_dead_letter_of_the_sources_largest_record(
    bootstrap: str,
    unique: Callable[[str], str],
    make_app: Callable[..., Any],
) -> None:
    """A dead letter is its record plus the sg-dlq-* headers: the DLQ of a source that
    takes 5 MiB records is created with the source's max.message.bytes plus their room,
    as a ConsumerService's. Before, Faust created it at the broker's default, and the
    dead letter of one large record held its partition for good. A source whose limit is
    the broker's default leaves the DLQ's at it too. (The embedded broker enforces no
    size limit: the setting is read back from the broker.)"""
    big, plain = unique("orders"), unique("orders")
    create_topics(bootstrap, [big], topic_config={"max.message.bytes": "5242880"})
    create_topics(bootstrap, [plain])
    app = make_app()
    agents = []
    for src in (big, plain):

        @guarded_agent(app, src, contract=OrderPlaced, name=f"bill-{src}")
        async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> None:
            return None

        agents.append(bill)

    async def scenario() -> None:
        assert await until(lambda: all(a._dlq_declared is not None for a in agents), 20)
        for agent in agents:
            await asyncio.wait_for(agent.dead_letter_topic_ready(), 30)

    run_app(app, scenario)
    assert max_message_bytes(bootstrap, f"{big}.dlq") == 5242880 + DEAD_LETTER_HEADROOM
    assert partitions_of(bootstrap, f"{plain}.dlq") == 1
    assert max_message_bytes(bootstrap, f"{plain}.dlq") is None


@pytest.mark.parametrize(
    ("source_size", "dlq_size", "needed"),
    [
        # Below a batch of the app's aiokafka producer (producer_max_batch_size, 16384).
        (None, 100_000, 16_384 + DEAD_LETTER_HEADROOM),
        (5_242_880, 1_100_000, 5_242_880 + DEAD_LETTER_HEADROOM),  # below the source's
        (5_242_880, 5_242_880 + DEAD_LETTER_HEADROOM, None),  # what the agent would make
    ],
)
def test_a_dead_letter_topic_that_exists_smaller_than_needed_is_warned_of(
    bootstrap: str,
    unique: Callable[[str], str],
    make_app: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
    source_size: int | None,
    dlq_size: int,
    needed: int | None,
) -> None:
    """Faust leaves an existing DLQ as it is, and nothing looked at its size: one too
    small for the source's records stalled a partition at its first large dead letter.
    The agent now warns once, as a ConsumerService does, with the command that raises
    it; it starts anyway."""
    caplog.set_level(logging.INFO, logger="streamguard.faust")
    src = unique("orders")
    given = {} if source_size is None else {"max.message.bytes": str(source_size)}
    create_topics(bootstrap, [src], topic_config=given)
    create_topics(bootstrap, [f"{src}.dlq"], topic_config={"max.message.bytes": str(dlq_size)})
    app = make_app()

    @guarded_agent(app, src, contract=OrderPlaced, name="Billing")
    async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        return None

    async def scenario() -> None:
        assert await until(lambda: bill._dlq_declared is not None, 20)
        await asyncio.wait_for(bill.dead_letter_topic_ready(), 30)

    run_app(app, scenario)
    assert max_message_bytes(bootstrap, f"{src}.dlq") == dlq_size  # not resized
    check_dead_letter_size_warning(caplog.records, bootstrap, src, dlq_size, needed)


def partitions_of(bootstrap: str, topic: str) -> int:
    """A topic's partition count, 0 if it does not exist."""
    # list_topics() without a name: asking for one topic would create it here.
    topics = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=5).topics
    found = topics.get(topic)
    return 0 if found is None else len(found.partitions)


def copies_of_one_order(producer: Producer, topic: str) -> Callable[[int], None]:
    """Produces ``count`` copies of one valid order to ``topic`` and waits for them."""
    value = order(0).model_dump_json().encode()

    def produce_many(count: int) -> None:
        for _ in range(count):
            producer.produce(topic, value)
            producer.poll(0)
        producer.flush(30)

    return produce_many


def stays_unfetched(
    full: Callable[[], Awaitable[bool]],
    held: Callable[[], float],
    produce_many: Callable[[int], None],
    release: asyncio.Event,
    bootstrap: str,
    app: Any,
    topic: str,
) -> Callable[[], Awaitable[None]]:
    """The scenario of a partition held at its buffer: once ``full``, 3,000 more events
    produced meanwhile stay in Kafka (``held`` does not grow); once released, all
    3,300 are committed."""

    async def scenario() -> None:
        try:
            assert await full()
            before = held()
            await asyncio.to_thread(produce_many, 3000)
            await asyncio.sleep(2.0)  # several fetch rounds, were the partition fetched
            assert held() == before <= 300
        finally:
            release.set()  # also on failure, so that the app can stop
        assert await until(lambda: committed(bootstrap, app.conf.id, topic).get(0) == 3300, 60)

    return scenario


def test_held_partition_stops_fetching_and_loses_nothing(
    bootstrap: str,
    topic_factory: Callable[..., str],
    make_app: Callable[..., Any],
    raw_producer: Producer,
) -> None:
    """A partition held by its first event stops being fetched once its buffer is
    full, so events produced meanwhile stay in Kafka, not in memory; released, it is
    fetched again and every event is handled in order, none skipped."""
    src = topic_factory("orders", partitions=1)
    produce_many = copies_of_one_order(raw_producer, src)
    produce_many(300)
    app = make_app()
    release = asyncio.Event()
    seen: list[int] = []

    @guarded_agent(app, src, contract=OrderPlaced, partition_buffer=100)
    async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        if ctx.offset == 0:
            await release.wait()
        seen.append(ctx.offset)

    def inflight() -> float:
        labels = {"runtime": "faust", "topic": src}
        return bill.registry.get_sample_value("streamguard_inflight", labels) or 0.0

    async def full() -> bool:
        if not await until(lambda: inflight() >= 100, 30):
            return False
        await asyncio.sleep(0.5)
        return True

    scenario = stays_unfetched(full, inflight, produce_many, release, bootstrap, app, src)
    run_app(app, scenario, timeout=120)
    assert seen == list(range(3300))


def test_a_partition_held_by_one_agent_stays_held_while_another_drains_it(
    bootstrap: str,
    topic_factory: Callable[..., str],
    make_app: Callable[..., Any],
    raw_producer: Producer,
) -> None:
    """Two agents of one app on one topic (billing and audit) share the partition's
    fetching: when audit drains its own lane, a partition billing holds at its
    ``partition_buffer`` is not fetched again. Before, audit's release resumed the
    partition, and billing's held lane took every event produced meanwhile."""
    src = topic_factory("orders", partitions=1)
    produce_many = copies_of_one_order(raw_producer, src)
    produce_many(300)
    app = make_app()
    release = asyncio.Event()
    audited: list[int] = []

    @guarded_agent(app, src, contract=OrderPlaced, partition_buffer=100, name="billing")
    async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        if ctx.offset == 0:
            await release.wait()

    @guarded_agent(app, src, contract=OrderPlaced, partition_buffer=100, name="audit")
    async def audit(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        await asyncio.sleep(0.001)  # slower than the fetch: its lane fills and drains
        audited.append(ctx.offset)

    def held() -> int:
        lane = bill._lanes.get(0)
        return 0 if lane is None else lane.inflight

    async def full() -> bool:
        return await until(lambda: held() >= 100 and len(audited) >= 300, 30)

    scenario = stays_unfetched(full, held, produce_many, release, bootstrap, app, src)
    run_app(app, scenario, timeout=120)
    assert audited == list(range(3300))


def test_a_poison_flood_logs_a_few_lines_that_account_for_every_dead_letter(
    bootstrap: str,
    topic_factory: Callable[..., str],
    make_app: Callable[..., Any],
    raw_producer: Producer,
    read_all: Callable[..., list[Any]],
    caplog: Any,
) -> None:
    """150 invalid events: all in the DLQ, and the agent's `dead-lettering message`
    lines, rate-limited, plus the `not_logged` counts they and the flush after the
    flood report, add up to every one of them."""
    src = topic_factory("orders")
    count = 150
    bad = [order(i).model_dump_json().replace('"EUR"', '"GBP"').encode() for i in range(count)]
    produce(raw_producer, src, bad, 1_700_000_000_000)
    app = make_app()

    @guarded_agent(app, src, contract=OrderPlaced)
    async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        raise AssertionError("no event of the flood is valid")

    def accounted() -> int:
        said = [
            r
            for r in caplog.records
            if r.getMessage() in ("dead-lettering message", "dead-lettered messages not logged")
        ]
        lines = sum(r.getMessage() == "dead-lettering message" for r in said)
        return lines + sum(r.not_logged for r in said)  # type: ignore[attr-defined]

    caplog.set_level("WARNING", logger="streamguard.faust")

    async def scenario() -> None:
        assert await until(lambda: committed(bootstrap, app.conf.id, src).get(0) == count, 40)
        assert await until(lambda: accounted() >= count, 10)

    run_app(app, scenario)
    dlq = read_all(f"{src}.dlq", count, timeout=20)
    assert {int(dict(r.headers())["sg-dlq-original-offset"]) for r in dlq} == set(range(count))
    lines = [r for r in caplog.records if r.getMessage() == "dead-lettering message"]
    assert 1 <= len(lines) < count // 2
    # Every line, the count's too, names the agent and its topic: a worker may run several.
    names = ("dead-lettering message", "dead-lettered messages not logged")
    said = [r for r in caplog.records if r.getMessage() in names]
    assert {(r.service, r.topic) for r in said} == {(bill.name, src)}  # type: ignore[attr-defined]


class Invoice(sg.Contract):
    """What a handler derives from an order and sends on with a ``GuardedProducer``."""

    __subject__ = "tests.faust.Invoice"
    __version__ = 1
    order_id: str
    total: int


def test_a_contract_violation_raised_by_the_handler_is_a_permanent_error(
    bootstrap: str,
    topic_factory: Callable[..., str],
    make_app: Callable[..., Any],
    send_orders: Callable[..., None],
    read_all: Callable[..., list[Any]],
) -> None:
    """As in a ``ConsumerService``: the handler's own ``ContractViolation`` (its
    producer refused a derived event, on the second attempt) dead-letters the valid
    event as ``permanent_error`` with ``attempts`` 2, not as a ``contract_violation``
    of the event with ``attempts`` 1."""
    src = topic_factory("orders")
    send_orders(src, 1)
    app = make_app()
    producer = sg.GuardedProducer(bootstrap)

    @guarded_agent(app, src, contract=OrderPlaced, retry=FAST_RETRY)
    async def invoice(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        if ctx.attempt == 1:
            raise TimeoutError("the invoice service is busy")
        producer.send("invoices", {"order_id": "o-1", "total": "n/a"}, contract=Invoice)

    async def scenario() -> None:
        assert await until(lambda: committed(bootstrap, app.conf.id, src).get(0) == 1, 40)

    run_app(app, scenario)
    (record,) = read_all(f"{src}.dlq", 1)
    headers = {k: v for k, v in record.headers() if k.startswith("sg-dlq-")}
    assert headers["sg-dlq-reason"] == b"permanent_error"
    assert headers["sg-dlq-attempts"] == b"2"
    assert headers["sg-dlq-error-class"] == b"streamguard.errors.ContractViolation"


def test_an_app_that_declares_no_topics_is_told_its_dlq_must_exist(
    bootstrap: str,
    topic_factory: Callable[..., str],
    make_app: Callable[..., Any],
    raw_producer: Producer,
    read_all: Callable[..., list[Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With Faust's ``topic_allow_declare`` off, Faust creates no topic: the agent said
    ``dead-letter topic ready`` all the same, of a DLQ nobody had created. It now says
    the DLQ must exist, and dead-letters into one made beforehand."""
    src = topic_factory("orders")
    create_topics(bootstrap, [f"{src}.dlq"])
    produce(raw_producer, src, [b"not json"], 1_700_000_000_000)
    app = make_app(topic_allow_declare=False)
    caplog.set_level(logging.INFO, logger="streamguard.faust")

    @guarded_agent(app, src, contract=OrderPlaced)
    async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        return None

    async def scenario() -> None:
        assert await until(lambda: committed(bootstrap, app.conf.id, src).get(0) == 1, 40)

    run_app(app, scenario)
    said = {r.getMessage(): r.__dict__ for r in caplog.records}
    assert "dead-letter topic ready" not in said
    line = said[
        "dead-letter topic not declared (Faust's topic_allow_declare is off); it must exist"
    ]
    assert (line["service"], line["topic"], line["dlq"]) == (bill.name, src, f"{src}.dlq")
    assert [m.offset() for m in read_all(f"{src}.dlq", 1)] == [0]

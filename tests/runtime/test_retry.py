"""Transient failures are retried with bounded backoff while only their partition waits."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from tests.runtime.conftest import Running, committed, dlq_headers, order, wait_for


def test_transient_failure_is_retried_until_it_succeeds(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
) -> None:
    """A handler failing twice with TransientError sees attempts 1, 2, 3 and then the
    message counts as handled, with two retries."""
    src = topic_factory("orders")
    producer = sg.GuardedProducer(bootstrap)
    producer.send(src, order(1))
    producer.flush()
    attempts: list[int] = []
    group = unique("g")

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        retry = sg.RetryPolicy(attempts=5, base_delay=0.02, max_delay=0.05)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            attempts.append(ctx.attempt)
            if ctx.attempt < 3:
                raise sg.TransientError("database is restarting")

    running = start_service(Billing)
    assert wait_for(
        lambda: running.metric("streamguard_messages_total", topic=src, outcome="handled") == 1
    )
    assert attempts == [1, 2, 3]
    assert running.metric("streamguard_retries_total", topic=src) == 2
    assert wait_for(lambda: committed(bootstrap, group, src).get(0) == 1)


@pytest.mark.parametrize("ordering", ["partition", "key"])
def test_a_transient_failure_inside_a_task_group_is_retried(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    read_all: Callable[..., list[Any]],
    ordering: str,
) -> None:
    """An async handler that fans out with ``asyncio.TaskGroup`` raises its children's
    errors as an ``ExceptionGroup``. One of only transient errors is retried, as each
    alone would be; one holding any other error is dead-lettered as permanent. Before,
    every group was permanent: a dependency timing out dead-lettered the record at once
    (and in an outage, every record)."""
    src = topic_factory("orders")
    producer = sg.GuardedProducer(bootstrap)
    producer.send(src, order(0), key="a")
    producer.send(src, order(1), key="b")
    producer.flush()
    attempts: dict[int, list[int]] = {0: [], 1: []}
    group = unique("g")

    async def call(error: Exception | None) -> None:
        await asyncio.sleep(0.001)
        if error is not None:
            raise error

    class Enrich(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        retry = sg.RetryPolicy(attempts=5, base_delay=0.02, max_delay=0.05)

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            attempts[ctx.offset].append(ctx.attempt)
            if ctx.attempt > 2:
                return
            failing = TimeoutError("slow") if ctx.offset == 0 else ValueError("bad")
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(call(failing))
                tasks.create_task(call(ConnectionError("reset") if ctx.offset == 0 else None))

    Enrich.ordering = ordering  # type: ignore[assignment]
    running = start_service(Enrich)
    assert wait_for(lambda: committed(bootstrap, group, src).get(0) == 2)
    assert attempts == {0: [1, 2, 3], 1: [1]}
    assert running.metric("streamguard_messages_total", topic=src, outcome="handled") == 1
    assert running.metric("streamguard_retries_total", topic=src) == 2
    (dead,) = read_all(f"{src}.dlq", 1)
    headers = dlq_headers(dead)
    assert (headers["sg-dlq-reason"], headers["sg-dlq-original-offset"]) == ("permanent_error", "1")


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_each_retry_is_logged_without_the_value(
    asynchronous: bool,
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A record that fails transiently, then succeeds, leaves a ``retrying message``
    line per retry (position, attempt, error class, the wait): before, only the metrics
    showed it, and the logs of a recovered failure were silent. The error's text, which
    may quote the record, stays out."""
    src = topic_factory("orders")
    producer = sg.GuardedProducer(bootstrap)
    producer.send(src, order(1, customer_id="canary-7f3a"))
    producer.flush()

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = unique("g")
        retry = sg.RetryPolicy(attempts=5, base_delay=0.02, max_delay=0.05)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            if ctx.attempt < 3:
                raise TimeoutError(f"no answer for {event.customer_id}")

    class AsyncBilling(Billing):
        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:  # type: ignore[override]
            Billing.handle(self, event, ctx)

    with caplog.at_level("INFO", logger="streamguard.runtime"):
        running = start_service(AsyncBilling if asynchronous else Billing)
        assert wait_for(
            lambda: running.metric("streamguard_messages_total", topic=src, outcome="handled") == 1
        )
    lines = [r for r in caplog.records if r.getMessage() == "retrying message"]
    assert [(r.partition, r.offset, r.attempt) for r in lines] == [(0, 0, 1), (0, 0, 2)]  # type: ignore[attr-defined]
    assert {r.error_class for r in lines} == {"builtins.TimeoutError"}  # type: ignore[attr-defined]
    assert all(0 <= r.retry_in_s <= 0.05 for r in lines)  # type: ignore[attr-defined]
    # Whose retry: a process may run several services, some on one topic.
    service = "AsyncBilling" if asynchronous else "Billing"
    assert {(r.service, r.topic) for r in lines} == {(service, src)}  # type: ignore[attr-defined]
    assert "canary-7f3a" not in caplog.text


class _Longest(random.Random):
    """Full jitter drawn at its cap: every backoff is ``max_delay``."""

    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("closed", [True, False], ids=["lane-closed", "stop-requested"])
def test_a_transient_failure_after_the_stop_is_logged_as_dropped_not_retried(
    closed: bool,
    asynchronous: bool,
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A handler in flight at the stop that then fails transiently gets no retry, once
    the stop closed its lane or just after ``stop()``, before it did (nothing claims
    the lane again): the record stays uncommitted and comes again, and the line says
    the retry is dropped. It said ``retrying message`` with a ``retry_in_s``, and the
    counter counted a retry that never came."""
    src, group = topic_factory("orders"), unique("g")
    producer = sg.GuardedProducer(bootstrap)
    producer.send(src, order(1))
    producer.flush()
    started, release = threading.Event(), threading.Event()

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        retry = sg.RetryPolicy(attempts=5, base_delay=1.0, max_delay=1.0, rng=_Longest())
        options = sg.ServiceOptions(shutdown_timeout=10.0)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            started.set()
            release.wait(10)
            raise TimeoutError("no answer")

    class AsyncBilling(Billing):
        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:  # type: ignore[override]
            started.set()
            await asyncio.to_thread(release.wait, 10)
            raise TimeoutError("no answer")

    with caplog.at_level("INFO", logger="streamguard.runtime"):
        running = start_service(AsyncBilling if asynchronous else Billing)
        assert started.wait(20)
        running.service.stop()
        if closed:
            time.sleep(0.5)  # the stop closed the lane and waits for the handler
        release.set()
        running.thread.join(15)
        assert not running.thread.is_alive()
    events = [r.getMessage() for r in caplog.records]
    assert "retrying message" not in events
    [dropped] = [r for r in caplog.records if r.getMessage().startswith("retry dropped")]
    assert (dropped.partition, dropped.offset, dropped.attempt) == (0, 0, 1)  # type: ignore[attr-defined]
    assert running.metric("streamguard_retries_total", topic=src) == 0
    assert committed(bootstrap, group, src) == {}  # delivered again after a restart


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_record_parked_for_a_suspected_outage_is_logged_as_waiting(
    asynchronous: bool,
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two records in a row time out with nothing handled between: the first is
    dead-lettered, the second's retries run out while the breaker suspects an outage, so
    it waits for the dependency with its attempt given back. Its line says so (attempts
    used of the policy's, what it waits for): before, it was ``retrying message`` with
    ``attempt: 3`` every 0.1 s under ``RetryPolicy(attempts=3)``, which read as a loop."""
    src = topic_factory("orders")
    producer = sg.GuardedProducer(bootstrap)
    producer.send(src, order(1, customer_id="canary-1a"))
    producer.send(src, order(2, customer_id="canary-2b"))
    producer.flush()

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = unique("g")
        retry = sg.RetryPolicy(attempts=3, base_delay=0.02, max_delay=0.05)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            raise TimeoutError(f"no answer for {event.customer_id}")

    class AsyncBilling(Billing):
        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:  # type: ignore[override]
            Billing.handle(self, event, ctx)

    def waits() -> list[Any]:
        return [r for r in caplog.records if r.getMessage() == "message waits for a dependency"]

    with caplog.at_level("INFO", logger="streamguard.runtime"):
        running = start_service(AsyncBilling if asynchronous else Billing)
        assert wait_for(lambda: len(waits()) >= 3, timeout=20)
        assert wait_for(
            lambda: (
                running.metric(
                    "streamguard_dead_letters_total", topic=src, reason="retries_exhausted"
                )
                == 1
            )
        )
        running.stop()
    first = waits()[0]
    assert (first.topic, first.partition, first.offset) == (src, 0, 1)
    assert (first.waiting_for, first.why) == ("dependency", "outage_suspected")
    assert (first.attempts_used, first.attempts) == (3, 3)
    assert first.error_class == "builtins.TimeoutError"
    assert 0 <= first.look_again_in_s <= 0.1
    retries = [r for r in caplog.records if r.getMessage() == "retrying message"]
    # Only real retries: attempts 1 and 2 of each record, never the parked attempt 3.
    assert sorted((r.offset, r.attempt) for r in retries) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert "canary-" not in caplog.text


def test_time_budget_ends_retries_before_attempts_do(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    read_all: Callable[..., list[Any]],
) -> None:
    """With a 300 ms budget, a message that always times out is dead-lettered as
    retries_exhausted long before its 1000 attempts, with its attempt count."""
    src = topic_factory("orders")
    producer = sg.GuardedProducer(bootstrap)
    producer.send(src, order(1))
    producer.flush()
    group = unique("g")

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        retry = sg.RetryPolicy(attempts=1000, base_delay=0.05, max_delay=0.1, max_budget_ms=300)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            raise TimeoutError("payment gateway")

    start = time.monotonic()
    start_service(Billing)
    (record,) = read_all(f"{src}.dlq", 1)
    headers = dlq_headers(record)
    assert headers["sg-dlq-reason"] == "retries_exhausted"
    assert 2 <= int(headers["sg-dlq-attempts"]) < 1000
    assert headers["sg-dlq-error-class"] == "builtins.TimeoutError"
    assert time.monotonic() - start < 15


def test_retrying_partition_is_paused_while_others_flow(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
) -> None:
    """While partition 0 waits out a long backoff (paused), partition 1's messages are
    all handled; no message of partition 0 overtakes the one being retried."""
    src = topic_factory("orders", partitions=2)
    producer = sg.GuardedProducer(bootstrap)
    for i in range(5):
        producer.send(src, order(i, customer_id=f"p0-{i}"), partition=0)
        producer.send(src, order(100 + i, customer_id=f"p1-{i}"), partition=1)
    producer.flush()
    release = threading.Event()
    handled: list[str] = []
    group = unique("g")

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        retry = sg.RetryPolicy(attempts=100, base_delay=0.2, max_delay=0.2, max_budget_ms=60_000)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            if event.customer_id == "p0-0" and not release.is_set():
                raise ConnectionError("downstream unavailable")
            handled.append(event.customer_id)

    running = start_service(Billing)
    assert wait_for(lambda: sum(c.startswith("p1-") for c in handled) == 5)
    assert not any(c.startswith("p0-") for c in handled)
    assert wait_for(lambda: running.metric("streamguard_paused_partitions", topic=src) == 1)
    assert running.metric("streamguard_retries_total", topic=src) >= 1
    release.set()
    assert wait_for(lambda: len(handled) == 10)
    assert [c for c in handled if c.startswith("p0-")] == [f"p0-{i}" for i in range(5)]
    assert wait_for(lambda: running.metric("streamguard_paused_partitions", topic=src) == 0)
    assert wait_for(lambda: committed(bootstrap, group, src) == {0: 5, 1: 5})


@pytest.mark.parametrize("mode", ["partition", "key"])
def test_retries_reach_the_metrics_while_every_call_fails(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    send_orders: Callable[..., None],
    mode: str,
) -> None:
    """On the event loop, retries reach ``streamguard_retries_total`` while no handler call
    succeeds: a dependency down is what the counter (the dashboard's Retries panel, the
    runbook's "high: a dependency keeps failing") is for. Before, the loop wrote its
    retry count only with a flush that a success scheduled, so it stayed 0 for as long
    as every call failed."""
    src = topic_factory("orders")
    send_orders(src, 3, key=lambda i: f"customer-{i}")
    group = unique("billing")
    calls: list[int] = []

    class Down(sg.ConsumerService):
        topic, contract, group_id = src, OrderPlaced, group
        ordering = mode  # type: ignore[assignment]
        retry = sg.RetryPolicy(attempts=1000, base_delay=0.02, max_delay=0.05)
        breaker = sg.CircuitBreaker(enabled=False)

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            calls.append(ctx.attempt)
            raise TimeoutError("the database is down")

    running = start_service(Down)
    assert wait_for(lambda: len(calls) >= 10)
    assert wait_for(lambda: running.metric("streamguard_retries_total", topic=src) >= 5, 5), (
        f"{len(calls)} failed calls, retries_total "
        f"{running.metric('streamguard_retries_total', topic=src)}"
    )


@pytest.mark.parametrize("mode", ["key", "none"])
def test_a_retry_waiting_for_a_handler_slot_keeps_its_budget(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    send_orders: Callable[..., None],
    mode: str,
) -> None:
    """Under key or no ordering a retry waits for one of ``max_in_flight`` slots ahead of
    the records queued behind it, and that wait is not charged to its budget. Before, it
    queued behind the whole backlog (5 s here against a 1 s budget) and was dead-lettered
    as retries_exhausted after two of its three attempts."""
    src = topic_factory("orders")
    send_orders(src, 400, key=lambda i: f"customer-{i}")
    group = unique("billing")
    calls: list[tuple[int, float]] = []
    dead: list[str] = []

    class Flaky(sg.ConsumerService):
        topic, contract, group_id = src, OrderPlaced, group
        ordering = mode  # type: ignore[assignment]
        retry = sg.RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02, max_budget_ms=1000)
        breaker = sg.CircuitBreaker(enabled=False)
        options = sg.ServiceOptions(max_in_flight=4)

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            if ctx.offset == 10:
                calls.append((ctx.attempt, time.monotonic()))
                if ctx.attempt < 3:
                    raise sg.TransientError("flaky dependency")
            await asyncio.sleep(0.02)

        def on_dead_letter(self, ctx: sg.MessageContext, failure: sg.Failure) -> None:
            dead.append(failure.reason)

    start_service(Flaky)
    assert wait_for(lambda: committed(bootstrap, group, src).get(0) == 400, 60)
    assert dead == []
    assert [attempt for attempt, _ in calls] == [1, 2, 3]
    assert calls[-1][1] - calls[0][1] < 1.0  # within the budget, slot waits and all


def test_a_transient_failure_just_after_the_stop_request_commits_nothing_past_it(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
) -> None:
    """Partition order, async: offset 0 fails transiently right after ``stop()``, its
    lane still open with offsets 1-4 queued behind it. Its retry is dropped, so nothing
    after it may run: the run went on with 1-4 and the stop committed 5, past a record
    that never reached an outcome (lost)."""
    src, group = topic_factory("orders"), unique("g")
    producer = sg.GuardedProducer(bootstrap)
    for i in range(5):
        producer.send(src, order(i))
    producer.flush()
    started, release = threading.Event(), threading.Event()
    handled: list[int] = []

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        retry = sg.RetryPolicy(attempts=5, base_delay=1.0, max_delay=1.0, rng=_Longest())
        options = sg.ServiceOptions(shutdown_timeout=10.0)

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            if ctx.offset == 0:
                started.set()
                await asyncio.to_thread(release.wait, 10)
                raise TimeoutError("no answer")
            handled.append(ctx.offset)

    running = start_service(Billing)
    assert started.wait(20)
    running.service.stop()
    release.set()  # at once: the stop has not closed the lane yet
    running.thread.join(15)
    assert not running.thread.is_alive()
    assert committed(bootstrap, group, src) == {}  # all five delivered again
    assert handled == []  # nothing after the dropped retry ran

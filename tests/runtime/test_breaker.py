"""An outage of a handler's dependency does not empty the topic into the DLQ."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from tests.runtime.conftest import Running, committed, order, wait_for

OUTAGE = 10.0


class FirstCalls:
    """Holds each partition's first handler call (up to 10 s) until every partition has
    made one, so that an outage starting at the first call reaches several messages at
    once. Otherwise a partition fetched a tenth of a second before the others has its
    head fail alone, and a message that fails alone is dead-lettered when its retries
    run out, as designed: nothing else says the dependency is down."""

    def __init__(self, partitions: int = 3) -> None:
        self.partitions = partitions
        self.seen: set[int] = set()

    def _met(self, partition: int, deadline: float) -> bool:
        self.seen.add(partition)
        return len(self.seen) >= self.partitions or time.monotonic() >= deadline

    def wait(self, partition: int) -> None:
        deadline = time.monotonic() + 10
        while not self._met(partition, deadline):
            time.sleep(0.005)

    async def wait_async(self, partition: int) -> None:
        deadline = time.monotonic() + 10
        while not self._met(partition, deadline):
            await asyncio.sleep(0.005)


def test_an_outage_opens_the_breaker_and_nothing_is_dead_lettered(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    send_orders: Callable[..., None],
    read_all: Callable[..., list[Any]],
) -> None:
    """The dependency fails every call for 10 s under 5,000 messages: the breaker opens
    (unready, partitions paused), probes, closes; every message is handled afterwards,
    none is dead-lettered, and the handler was called a bounded number of times."""
    src = topic_factory("orders", partitions=3)
    group = unique("billing")
    total = 5000
    send_orders(src, total, key=lambda i: f"c{i % 50}")
    lock = threading.Lock()
    started: list[float] = []
    calls_in_outage = 0
    handled: set[tuple[int, int]] = set()
    first_calls = FirstCalls()

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        retry = sg.RetryPolicy(attempts=3, base_delay=0.05, max_delay=0.2, max_budget_ms=2_000)
        breaker = sg.CircuitBreaker(cool_down=1.0)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            nonlocal calls_in_outage
            first_calls.wait(ctx.partition)
            with lock:
                if not started:
                    started.append(time.monotonic())
                if time.monotonic() - started[0] < OUTAGE:
                    calls_in_outage += 1
                    raise ConnectionError("database is down")
                handled.add((ctx.partition, ctx.offset))

    running = start_service(Billing)
    assert wait_for(lambda: not running.service.health()["checks"]["breaker_closed"], timeout=20)
    assert running.service.health()["breaker"] in ("open", "half_open")
    assert wait_for(lambda: running.metric("streamguard_paused_partitions", topic=src) == 3)
    assert wait_for(lambda: len(handled) == total, timeout=60)
    assert wait_for(lambda: sum(committed(bootstrap, group, src).values()) == total)
    assert running.service.health()["checks"]["breaker_closed"]
    assert (
        running.metric("streamguard_dead_letters_total", topic=src, reason="retries_exhausted") == 0
    )
    assert running.metric("streamguard_messages_total", topic=src, outcome="dead_lettered") == 0
    assert running.metric("streamguard_breaker_opened_total", topic=src) >= 1
    assert running.metric("streamguard_breaker_state", topic=src) == 0
    # Without the breaker, 5,000 messages x 3 attempts would have called it 15,000 times.
    assert calls_in_outage < 300
    assert read_all(f"{src}.dlq", 1, timeout=3) == []  # the DLQ is empty
    running.stop()
    assert not running.error


def test_failures_while_the_dependency_is_healthy_still_exhaust_retries(
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    send_orders: Callable[..., None],
    read_all: Callable[..., list[Any]],
) -> None:
    """A few failing messages among many healthy ones are dead-lettered as
    retries_exhausted: the breaker stays closed."""
    src = topic_factory("orders")
    group = unique("billing")
    send_orders(src, 300)

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        retry = sg.RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            if ctx.offset % 50 == 7:
                raise TimeoutError("this one always times out")

    running = start_service(Billing)
    dlq = read_all(f"{src}.dlq", 6, timeout=30)
    assert len(dlq) == 6
    assert running.metric("streamguard_breaker_opened_total", topic=src) == 0
    assert running.service.health()["checks"]["breaker_closed"]
    running.stop()


def test_records_in_flight_through_an_outage_recover_at_full_speed(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    send_orders: Callable[..., None],
) -> None:
    """Under no ordering every record in flight fails when the dependency goes down, and
    the breaker opens; once it closes, they are all handled at once, none dead-lettered.
    Each of their retries used to wait for a token of the retry budget: about 12 a
    second, so 400 records took half a minute after the dependency was back."""
    src = topic_factory("orders")
    group = unique("enrich")
    total = 400
    send_orders(src, total)
    outage = 3.0
    lock = threading.Lock()
    started: list[float] = []
    handled: set[int] = set()

    class Enrich(sg.ConsumerService):
        topic, contract, group_id = src, OrderPlaced, group
        ordering = "none"
        retry = sg.RetryPolicy(attempts=3, base_delay=0.05, max_delay=0.2, max_budget_ms=2_000)
        breaker = sg.CircuitBreaker(cool_down=0.5)
        options = sg.ServiceOptions(max_in_flight=64)

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            await asyncio.sleep(0.005)
            with lock:
                if not started:
                    started.append(time.monotonic())
                if time.monotonic() - started[0] < outage:
                    raise ConnectionError("database is down")
                handled.add(ctx.offset)

    running = start_service(Enrich)
    assert wait_for(lambda: running.metric("streamguard_breaker_opened_total", topic=src) >= 1)
    assert wait_for(lambda: bool(started) and time.monotonic() - started[0] >= outage)
    assert wait_for(lambda: len(handled) == total, timeout=10), f"{len(handled)} handled"
    assert wait_for(lambda: committed(bootstrap, group, src) == {0: total})
    assert running.metric("streamguard_messages_total", topic=src, outcome="dead_lettered") == 0
    running.stop()
    assert not running.error


def billing(
    kind: str, src: str, group: str, call: Callable[[sg.MessageContext], None]
) -> type[sg.ConsumerService]:
    """A service on ``src`` (3 partitions) whose handler, sync or async by ``kind``, makes
    ``call`` once every partition has been called (``FirstCalls``), with short retries
    and a half-second cool-down."""
    first_calls = FirstCalls()

    class SyncBilling(sg.ConsumerService):
        topic, contract, group_id = src, OrderPlaced, group
        retry = sg.RetryPolicy(attempts=3, base_delay=0.05, max_delay=0.2, max_budget_ms=2_000)
        breaker = sg.CircuitBreaker(cool_down=0.5)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            first_calls.wait(ctx.partition)
            call(ctx)

    class AsyncBilling(SyncBilling):
        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:  # type: ignore[override]
            await first_calls.wait_async(ctx.partition)
            call(ctx)

    return SyncBilling if kind == "sync" else AsyncBilling


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_an_outage_starting_mid_batch_dead_letters_nothing(
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    send_orders: Callable[..., None],
    kind: str,
) -> None:
    """The dependency goes down in the middle of a batch, for longer than a message's
    retry budget: the message that failed first waits for it like the others, and
    nothing is dead-lettered. The successes before it reached the breaker after its
    first failure, as if something had succeeded since, and it was dead-lettered."""
    src = topic_factory("orders", partitions=3)
    group = unique("billing")
    total = 1500
    send_orders(src, total, key=lambda i: f"c{i}")
    lock = threading.Lock()
    calls = 0
    down_since: list[float] = []
    handled: set[tuple[int, int]] = set()

    def call(ctx: sg.MessageContext) -> None:
        nonlocal calls
        with lock:
            calls += 1
            if calls == 600:
                down_since.append(time.monotonic())
            if down_since and time.monotonic() - down_since[0] < 4.0:
                raise ConnectionError("database is down")
            handled.add((ctx.partition, ctx.offset))

    running = start_service(billing(kind, src, group, call))
    assert wait_for(lambda: len(handled) == total, timeout=40), f"{len(handled)} handled"
    assert (
        running.metric("streamguard_dead_letters_total", topic=src, reason="retries_exhausted") == 0
    )
    running.stop()
    assert not running.error


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_message_failing_on_its_own_does_not_keep_the_breaker_open(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Any,
    kind: str,
) -> None:
    """The head of partition 0 always times out, for a reason of its own. Once the outage
    ends, another message probes, the breaker closes, the others flow, and the bad one is
    dead-lettered. Before, it probed after every cool-down, its failed probe gave its
    attempt back, and every partition stayed paused (0 of 299 handled after 25 s)."""
    src = topic_factory("orders", partitions=3)
    for i in range(300):
        raw_producer.produce(src, order(i).model_dump_json().encode(), partition=i % 3)
    raw_producer.flush(10)
    group = unique("billing")
    outage = 2.0
    lock = threading.Lock()
    started: list[float] = []
    handled: set[tuple[int, int]] = set()

    def call(ctx: sg.MessageContext) -> None:
        with lock:
            if not started:
                started.append(time.monotonic())
            if (ctx.partition, ctx.offset) == (0, 0):
                raise TimeoutError("this customer's call always times out")
            if time.monotonic() - started[0] < outage:
                raise ConnectionError("database is down")
            handled.add((ctx.partition, ctx.offset))

    running = start_service(billing(kind, src, group, call))
    assert wait_for(lambda: len(handled) == 299, timeout=40)
    assert wait_for(lambda: sum(committed(bootstrap, group, src).values()) == 300, timeout=20)
    assert (
        running.metric("streamguard_dead_letters_total", topic=src, reason="retries_exhausted") == 1
    )
    assert running.service.health()["checks"]["breaker_closed"]


@pytest.mark.parametrize("retried", [False, True], ids=["handled", "handled-on-retry"])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_successes_told_after_an_outage_began_do_not_dead_letter_its_first_failure(
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Any,
    kind: str,
    retried: bool,
) -> None:
    """Partition 1 handles a record (``retried``: on its retry, after a blip); then
    partition 0's head fails, the dependency is down, and partition 1's next record
    fails too. Lanes tell the breaker their successes a batch at a time: that success,
    told when partition 1's record failed (a retry's, on the event loop, at the head's
    own retry), was timed after the head's first failure, so the head looked as if it
    failed while others succeeded and was dead-lettered when its retries ran out."""
    src = topic_factory("orders", partitions=2)
    for i, partition in enumerate((1, 1, 0)):
        raw_producer.produce(src, order(i).model_dump_json().encode(), partition=partition)
    raw_producer.flush(10)
    group = unique("billing")
    lock = threading.Lock()
    handled: set[tuple[int, int]] = set()
    down_since: list[float] = []
    deadline = time.monotonic() + 10

    def ready(ctx: sg.MessageContext) -> bool:
        """Partition 0's head goes first once (1, 0) is handled; (1, 1) once it failed."""
        if time.monotonic() > deadline:
            return True
        with lock:
            if ctx.partition == 0:
                return (1, 0) in handled
            return ctx.offset == 0 or bool(down_since)

    def call(ctx: sg.MessageContext) -> None:
        with lock:
            if retried and (ctx.partition, ctx.offset, ctx.attempt) == (1, 0, 1):
                raise ConnectionError("a blip")
            if ctx.partition == 0 and not down_since:
                down_since.append(time.monotonic())
            if down_since and time.monotonic() - down_since[0] < 3.0:
                raise ConnectionError("database is down")
            handled.add((ctx.partition, ctx.offset))

    class SyncBilling(sg.ConsumerService):
        topic, contract, group_id = src, OrderPlaced, group
        retry = sg.RetryPolicy(attempts=3, base_delay=0.05, max_delay=0.2, max_budget_ms=2_000)
        breaker = sg.CircuitBreaker(cool_down=0.5)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            while not ready(ctx):
                time.sleep(0.005)
            call(ctx)

    class AsyncBilling(SyncBilling):
        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:  # type: ignore[override]
            while not ready(ctx):
                await asyncio.sleep(0.005)
            call(ctx)

    running = start_service(SyncBilling if kind == "sync" else AsyncBilling)
    assert wait_for(lambda: len(handled) == 3, timeout=30), f"{sorted(handled)} handled"
    assert running.metric("streamguard_messages_total", topic=src, outcome="dead_lettered") == 0
    running.stop()
    assert not running.error


@pytest.mark.parametrize("ends", ["returns", "rejects"])
@pytest.mark.parametrize("kind", ["sync", "async", "async-key"])
def test_a_success_whose_call_ran_on_past_an_outage_start_does_not_dead_letter_it(
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Any,
    kind: str,
    ends: str,
) -> None:
    """(1, 0)'s call gets its answer from the dependency, then goes on until partition
    0's head has failed: the dependency went down in between. Timed by the end of its
    call, that success came after the head's first failure, so the head looked as if it
    failed while others succeeded and was dead-lettered when its retries ran out. Under
    load, a thread switch between a call's return and the clock read did the same (CI:
    test_an_outage_starting_mid_batch...[sync], the success timed 5.4 ms after the first
    failure); an async handler's task resumed late does so too, in partition or key
    order: a success is timed by the start of its call. One key, so that key order runs
    (1, 0) and (1, 1) one after the other too. ``rejects``: (1, 0) then fails
    permanently, which tells the breaker the dependency answered, as a success does:
    timed by its judging, it dead-lettered the head all the same."""
    src = topic_factory("orders", partitions=2)
    for i, partition in enumerate((1, 1, 0)):
        value = order(i).model_dump_json().encode()
        raw_producer.produce(src, value, key=b"c1", partition=partition)
    raw_producer.flush(10)
    group = unique("billing")
    lock = threading.Lock()
    answered: set[tuple[int, int]] = set()  # calls the dependency answered
    failed: dict[tuple[int, int], float] = {}  # first failures, as the handler saw them
    down_since: list[float] = []
    deadline = time.monotonic() + 10

    def before(key: tuple[int, int], attempt: int) -> Callable[[], bool]:
        if key == (0, 0) and attempt == 1:  # the head goes once (1, 0) was answered
            return lambda: (1, 0) in answered
        if key == (0, 0):  # its last tries once (1, 1) failed, and (1, 0) was told
            return lambda: time.monotonic() - failed.get((1, 1), math.inf) > 0.2
        return lambda: True

    def dependency(key: tuple[int, int]) -> None:
        with lock:
            if key == (0, 0) and not down_since:
                down_since.append(time.monotonic())
            if down_since and time.monotonic() - down_since[0] < 3.0:
                failed.setdefault(key, time.monotonic())
                raise ConnectionError("database is down")
            answered.add(key)

    def after(key: tuple[int, int]) -> Callable[[], bool]:
        if key == (1, 0):  # the call goes on after its answer, past the head's failure
            return lambda: time.monotonic() - failed.get((0, 0), math.inf) > 0.2
        return lambda: True

    def met(until: Callable[[], bool]) -> bool:
        with lock:
            return until() or time.monotonic() > deadline

    def rejected(key: tuple[int, int]) -> None:
        if key == (1, 0) and ends == "rejects":
            raise ValueError("order rejected")  # permanent: dead-lettered at once

    class SyncBilling(sg.ConsumerService):
        topic, contract, group_id = src, OrderPlaced, group
        retry = sg.RetryPolicy(attempts=3, base_delay=0.05, max_delay=0.2, max_budget_ms=2_000)
        breaker = sg.CircuitBreaker(cool_down=0.5)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            key = (ctx.partition, ctx.offset)
            while not met(before(key, ctx.attempt)):
                time.sleep(0.005)
            dependency(key)
            while not met(after(key)):
                time.sleep(0.005)
            rejected(key)

    class AsyncBilling(SyncBilling):
        ordering = "key" if kind == "async-key" else "partition"

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:  # type: ignore[override]
            key = (ctx.partition, ctx.offset)
            while not met(before(key, ctx.attempt)):
                await asyncio.sleep(0.005)
            dependency(key)
            while not met(after(key)):
                await asyncio.sleep(0.005)
            rejected(key)

    running = start_service(SyncBilling if kind == "sync" else AsyncBilling)
    assert wait_for(lambda: len(answered) == 3, timeout=30), f"{sorted(answered)} answered"
    dead = 1 if ends == "rejects" else 0  # (1, 0)'s, never the head's
    assert running.metric("streamguard_messages_total", topic=src, outcome="dead_lettered") == dead
    running.stop()
    assert not running.error


def test_a_message_failing_alone_after_one_that_recovered_is_dead_lettered(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    read_all: Callable[..., list[Any]],
) -> None:
    """On one partition, a record fails once and is handled on its retry; a record that
    then fails on its own is dead-lettered after its three attempts, and the record
    behind it is handled. It was held as an outage (the first record still counted as
    failing), the breaker opened, and with only that record left to probe it never
    closed: nothing on the partition was handled again."""
    src = topic_factory("orders")
    group = unique("g")
    calls: list[tuple[str, int]] = []

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        retry = sg.RetryPolicy(attempts=3, base_delay=0.02, max_delay=0.05)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            calls.append((event.customer_id, ctx.attempt))
            if event.customer_id == "flaky" and ctx.attempt == 1:
                raise TimeoutError("a blip")
            if event.customer_id == "bad":
                raise TimeoutError("fails for this record only")

    running = start_service(Billing)
    producer = sg.GuardedProducer(bootstrap)
    producer.send(src, order(1, customer_id="flaky"))
    producer.flush()
    assert wait_for(lambda: ("flaky", 2) in calls)
    producer.send(src, order(2, customer_id="bad"))  # in a batch of its own
    producer.send(src, order(3, customer_id="good"))
    producer.flush()
    assert wait_for(lambda: committed(bootstrap, group, src).get(0) == 3, timeout=15)
    (record,) = read_all(f"{src}.dlq", 1)
    assert dict(record.headers() or [])["sg-dlq-attempts"] == b"3"
    assert [c for c in calls if c[0] == "bad"] == [("bad", 1), ("bad", 2), ("bad", 3)]
    assert running.metric("streamguard_breaker_opened_total", topic=src) == 0


def test_a_run_stopped_with_the_breaker_open_leaves_no_breaker_state(
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    send_orders: Callable[..., None],
) -> None:
    """A run that ends with its breaker open takes its breaker state out of the registry,
    as it does its other gauges: the registry may outlive the run (the application's,
    or one shared with other services), and a 2 left in it kept
    StreamguardCircuitBreakerOpen firing for a service that no longer runs."""
    src = topic_factory("orders", partitions=2)
    send_orders(src, 20, key=lambda i: f"c{i}")

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = unique("billing")
        retry = sg.RetryPolicy(attempts=1000, base_delay=0.01, max_delay=0.05)
        breaker = sg.CircuitBreaker(min_calls=5, cool_down=60.0)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            raise ConnectionError("database is down")

    running = start_service(Billing)
    assert wait_for(lambda: running.metric("streamguard_breaker_state", topic=src) == 2)
    running.stop()
    labels = {"runtime": "consumer", "topic": src}
    assert running.registry.get_sample_value("streamguard_breaker_state", labels) is None
    assert running.registry.get_sample_value("streamguard_breaker_opened_total", labels) == 1
    for partition in ("0", "1"):  # nor a lag, as docs/consumer.md says
        lag = running.registry.get_sample_value(
            "streamguard_consumer_lag", {**labels, "partition": partition}
        )
        assert lag is None, partition


def test_a_retry_waiting_for_the_budget_counts_once_as_deferred(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    send_orders: Callable[..., None],
) -> None:
    """``streamguard_retries_deferred_total`` counts retries that waited for the retry
    budget, each once, however long it waited: never more than the retries made. It
    counted every look a waiting retry took (one per ``PARK_WAIT``, 0.1 s), so 50 retries
    waiting about a second for tokens read as hundreds."""
    src = topic_factory("orders")
    total = 150  # each fails once: 150 retries against a bucket of 100 tokens
    send_orders(src, total, key=lambda i: f"customer-{i}")
    group = unique("billing")
    lock = threading.Lock()
    calls: dict[int, int] = {}

    class Flaky(sg.ConsumerService):
        topic, contract, group_id = src, OrderPlaced, group
        ordering = "key"
        retry = sg.RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.002)
        # Never opens (min_calls); no tokens from calls, 25 a second from the floor.
        breaker = sg.CircuitBreaker(min_calls=10**6, retry_ratio=0.0, min_retries_per_second=25)

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            with lock:
                calls[ctx.offset] = calls.get(ctx.offset, 0) + 1
                if calls[ctx.offset] == 1:
                    raise TimeoutError("the database is slow")

    running = start_service(Flaky)
    assert wait_for(lambda: sum(committed(bootstrap, group, src).values()) == total, timeout=20)
    retries = running.metric("streamguard_retries_total", topic=src)
    deferred = running.metric("streamguard_retries_deferred_total", topic=src)
    assert retries == total
    assert 1 <= deferred <= retries, f"{deferred:.0f} deferred of {retries:.0f} retries"
    running.stop()
    assert not running.error

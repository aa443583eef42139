"""ordering = "key" | "none": keys run concurrently, each key in order, and the commit
never passes a record without a final outcome. Through the real broker."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from streamguard.runtime import eventloop
from streamguard.runtime.assignment import Assignment
from streamguard.runtime.poller import Poller
from tests.runtime.conftest import Running, committed, dlq_headers, order, wait_for
from tests.runtime.test_commits import _end, _handled, _run_recorder


class Spans:
    """Start and end of every handler call, by key, from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_key: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
        self.running = 0
        self.max_running = 0

    def start(self) -> float:
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        return time.monotonic()

    def end(self, key: str, offset: int, started: float) -> None:
        with self.lock:
            self.running -= 1
            self.by_key[key].append((offset, started, time.monotonic()))

    def count(self) -> int:
        with self.lock:
            return sum(len(v) for v in self.by_key.values())

    def assert_each_key_in_order(self) -> None:
        for key, spans in self.by_key.items():
            offsets = [o for o, _, _ in spans]
            assert offsets == sorted(offsets), f"key {key} out of offset order"
            for (_, _, end), (_, start, _) in itertools.pairwise(spans):
                assert start >= end, f"two handlers of key {key} overlapped"


def send_keyed(bootstrap: str, topic: str, count: int, keys: int) -> None:
    producer = sg.GuardedProducer(bootstrap)
    for i in range(count):
        producer.send(topic, order(i), key=f"k{i % keys}")
    producer.flush()


def test_key_ordering_runs_keys_concurrently_and_each_key_in_order(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
) -> None:
    """Async handlers under key ordering: many keys at once, never two of one key,
    offsets increasing per key; everything committed at the end."""
    src = topic_factory("clicks", partitions=3)
    group = unique("enrich")
    send_keyed(bootstrap, src, 600, keys=40)
    spans = Spans()

    class Enrich(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        ordering = "key"
        options = sg.ServiceOptions(max_in_flight=64)

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            started = spans.start()
            await asyncio.sleep(0.004)
            spans.end(str(ctx.key), ctx.offset, started)

    running = start_service(Enrich)
    assert wait_for(lambda: spans.count() == 600, timeout=30)
    assert wait_for(lambda: sum(committed(bootstrap, group, src).values()) == 600)
    spans.assert_each_key_in_order()
    assert spans.max_running > 8, "keys did not run concurrently"
    assert spans.max_running <= 64
    assert running.metric("streamguard_handlers_limit", topic=src) == 64
    assert running.metric("streamguard_handlers_in_flight", topic=src) == 0
    assert running.metric("streamguard_waiting_for_key", topic=src) == 0
    running.stop()
    assert not running.error


def test_sync_handlers_run_on_a_bounded_pool_under_key_ordering(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
) -> None:
    """A sync handler that waits runs concurrently on the pool, each key in order."""
    src = topic_factory("clicks", partitions=2)
    group = unique("enrich")
    send_keyed(bootstrap, src, 300, keys=30)
    spans = Spans()

    class Enrich(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        ordering = "key"
        options = sg.ServiceOptions(max_in_flight=16)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            started = spans.start()
            time.sleep(0.003)
            spans.end(str(ctx.key), ctx.offset, started)

    running = start_service(Enrich)
    assert wait_for(lambda: spans.count() == 300, timeout=30)
    spans.assert_each_key_in_order()
    assert 4 < spans.max_running <= 16
    running.stop()
    assert not running.error


def test_a_retrying_key_does_not_hold_other_keys(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
) -> None:
    """A transient failure backs off while only its key waits: later records of other
    keys in the same partition finish first; its own later record waits behind it."""
    src = topic_factory("clicks")
    group = unique("enrich")
    producer = sg.GuardedProducer(bootstrap)
    producer.send(src, order(0, customer_id="slow"), key="slow")
    for i in range(1, 21):
        producer.send(src, order(i), key=f"other-{i}")
    producer.send(src, order(21, customer_id="slow-2"), key="slow")
    producer.flush()
    finished: list[int] = []
    attempts: dict[int, int] = defaultdict(int)

    class Enrich(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        ordering = "key"
        retry = sg.RetryPolicy(attempts=100, base_delay=0.05, max_delay=0.1)

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            attempts[ctx.offset] += 1
            # The slow key fails until every other key's record is done: if they
            # waited behind it, neither would ever finish.
            if ctx.offset == 0 and len(finished) < 20:
                raise TimeoutError("dependency timed out")
            finished.append(ctx.offset)

    running = start_service(Enrich)
    assert wait_for(lambda: len(finished) == 22, timeout=30)
    assert sorted(finished[:20]) == list(range(1, 21)), "other keys waited for the retrying key"
    assert finished[20:] == [0, 21], "the key's later record overtook it"
    assert attempts[0] >= 2
    assert attempts[21] == 1
    assert wait_for(lambda: committed(bootstrap, group, src) == {0: 22})
    assert running.metric("streamguard_retries_total", topic=src) == attempts[0] - 1
    running.stop()


@pytest.mark.parametrize("mode", ["key", "none"])
def test_a_failure_is_judged_with_every_success_before_it(
    mode: str,
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
) -> None:
    """Under key and no ordering, successes reach the breaker in folds (a call per
    record cost 3.8 µs of CPU a record), yet a failure is judged with every success
    before it counted. A third of the records time out once, a quarter of the calls:
    judged on the failures alone (the successes since the last fold not yet told), the
    breaker would open; here it stays closed, and every record is handled after at
    most one retry. Five keys, so that each key's run goes on past its failures."""
    src = topic_factory("clicks")
    group = unique("enrich")
    total = 1000
    send_keyed(bootstrap, src, total, keys=5)
    handled: set[int] = set()

    class Enrich(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        ordering = mode
        retry = sg.RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02)

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            if ctx.offset % 3 == 1 and ctx.attempt == 1:
                raise TimeoutError("timed out once")
            handled.add(ctx.offset)

    running = start_service(Enrich)
    assert wait_for(lambda: len(handled) == total, timeout=30)
    assert wait_for(lambda: committed(bootstrap, group, src) == {0: total})
    assert running.metric("streamguard_breaker_opened_total", topic=src) == 0
    assert running.metric("streamguard_retries_total", topic=src) == len(range(1, total, 3))
    assert running.metric("streamguard_messages_total", topic=src, outcome="dead_lettered") == 0
    running.stop()


def test_dead_letters_per_record_under_key_ordering(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Producer,
    read_all: Callable[..., list[Any]],
) -> None:
    """Invalid records and permanent failures are dead-lettered one by one, never
    retried, while valid records of the same keys are handled."""
    src = topic_factory("clicks")
    group = unique("enrich")
    mix = [
        (b"k1", order(0).model_dump_json().encode(), None),
        (b"k1", b"{broken", "decode_error"),
        (b"k2", b'{"order_id": "x"}', "contract_violation"),
        (b"k2", order(3, customer_id="closed").model_dump_json().encode(), "permanent_error"),
        (b"k1", order(4).model_dump_json().encode(), None),
        (None, b"[]", "contract_violation"),
    ]
    for key, value, _ in mix:
        raw_producer.produce(src, value, key=key)
    raw_producer.flush(10)
    handled: list[int] = []

    class Enrich(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        ordering = "key"

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            if event.customer_id == "closed":
                raise sg.PermanentError("account closed")
            handled.append(ctx.offset)

    running = start_service(Enrich)
    expected = sorted(reason for _, _, reason in mix if reason)
    dlq = read_all(f"{src}.dlq", len(expected), timeout=20)
    assert sorted(dlq_headers(m)["sg-dlq-reason"] for m in dlq) == expected
    assert all(dlq_headers(m)["sg-dlq-attempts"] == "1" for m in dlq)
    assert sorted(handled) == [0, 4]
    assert wait_for(lambda: committed(bootstrap, group, src) == {0: len(mix)})
    running.stop()


def test_the_commit_stops_at_the_first_unfinished_record(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
) -> None:
    """With a slow record in flight, later records of other keys finish but the
    committed offset stays at the slow one until it is done."""
    src = topic_factory("clicks")
    group = unique("enrich")
    send_keyed(bootstrap, src, 30, keys=30)
    release = threading.Event()
    finished: list[int] = []

    class Enrich(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        ordering = "key"
        options = sg.ServiceOptions(commit_interval=0.1)

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            if ctx.offset == 5:
                while not release.is_set():
                    await asyncio.sleep(0.01)
            finished.append(ctx.offset)

    running = start_service(Enrich)
    assert wait_for(lambda: len(finished) == 29, timeout=20)
    time.sleep(0.5)  # several commit intervals
    assert committed(bootstrap, group, src) == {0: 5}
    release.set()
    assert wait_for(lambda: committed(bootstrap, group, src) == {0: 30})
    running.stop()


def test_a_hot_key_keeps_partition_order(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
) -> None:
    """Every record with the same key: one at a time, in offset order."""
    src = topic_factory("clicks")
    group = unique("enrich")
    send_keyed(bootstrap, src, 200, keys=1)
    spans = Spans()

    class Enrich(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        ordering = "key"

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            started = spans.start()
            await asyncio.sleep(0)
            spans.end(str(ctx.key), ctx.offset, started)

    running = start_service(Enrich)
    assert wait_for(lambda: spans.count() == 200, timeout=20)
    spans.assert_each_key_in_order()
    assert spans.max_running == 1
    running.stop()


def test_no_ordering_handles_everything_concurrently(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
) -> None:
    """ordering = "none": records of one key may overlap; all are handled and committed."""
    src = topic_factory("clicks")
    group = unique("enrich")
    send_keyed(bootstrap, src, 100, keys=1)
    spans = Spans()

    class Enrich(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        ordering = "none"

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            started = spans.start()
            await asyncio.sleep(0.005)
            spans.end(str(ctx.key), ctx.offset, started)

    running = start_service(Enrich)
    assert wait_for(lambda: spans.count() == 100, timeout=20)
    assert spans.max_running > 4
    assert wait_for(lambda: committed(bootstrap, group, src) == {0: 100})
    running.stop()


def test_rebalance_with_handlers_in_flight_loses_nothing(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
) -> None:
    """A second member joins while key-ordered handlers are in flight: every record is
    handled (at least once) and the group's commits reach the end of each partition."""
    src = topic_factory("clicks", partitions=4)
    group = unique("enrich")
    total = 800
    send_keyed(bootstrap, src, total, keys=100)
    seen: set[tuple[int, int]] = set()
    lock = threading.Lock()

    class Enrich(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        ordering = "key"
        options = sg.ServiceOptions(max_in_flight=32, revoke_timeout=3.0)

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            await asyncio.sleep(0.01)
            with lock:
                seen.add((ctx.partition, ctx.offset))

    first = start_service(Enrich)
    assert wait_for(lambda: len(seen) >= 100, timeout=30)
    second = start_service(Enrich)
    assert wait_for(lambda: len(seen) == total, timeout=60)
    ends = {p: max(o for q, o in seen if q == p) + 1 for p in range(4)}
    assert wait_for(lambda: committed(bootstrap, group, src) == ends, timeout=30)
    first.stop()
    second.stop()
    assert not first.error
    assert not second.error


def test_a_revoke_gives_up_at_once_a_partition_only_waiting_for_a_slot(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Producer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Under partition order, a revoked partition whose run only waits for a
    ``max_in_flight`` slot (no handler of it running) is given up at once; its records
    stay uncommitted and its new owner handles them. It used to wait the whole
    ``revoke_timeout`` for another partition's handler to free the slot, then warn
    that a handler of it was still running."""
    src = topic_factory("orders", partitions=2)
    group = unique("enrich")
    # librdkafka's cooperative-sticky assignor moves partition 0 to a member joining
    # a group whose only member holds partitions 0 and 1 (asserted below).
    waiting, holding = 0, 1
    revoke_timeout = 15.0
    release = threading.Event()
    started: list[int] = []
    revoked: list[tuple[float, list[int]]] = []
    taken_over: list[tuple[int, int]] = []
    value = order(1).model_dump_json().encode()

    class Enrich(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        options = sg.ServiceOptions(
            max_in_flight=1, revoke_timeout=revoke_timeout, shutdown_timeout=revoke_timeout
        )

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            started.append(ctx.partition)
            for _ in range(3000):  # holds the only slot until released (30 s at most)
                if release.is_set():
                    return
                await asyncio.sleep(0.01)

        def on_revoke(self, partitions: list[int]) -> None:
            revoked.append((time.monotonic(), partitions))

    class Takeover(Enrich):
        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            taken_over.append((ctx.partition, ctx.offset))

    first = start_service(Enrich)
    try:
        assert wait_for(lambda: first.service.health()["checks"]["assigned"])
        raw_producer.produce(src, value, partition=holding)
        raw_producer.flush(10)
        assert wait_for(lambda: started == [holding])
        for _ in range(3):
            raw_producer.produce(src, value, partition=waiting)
        raw_producer.flush(10)
        # The waiting partition's three records are fetched: its run waits for the slot.
        assert wait_for(lambda: first.metric("streamguard_inflight", topic=src) == 4)
        joined = time.monotonic()
        second = start_service(Takeover)
        assert wait_for(lambda: revoked, timeout=2 * revoke_timeout)
        assert revoked[0][1] == [waiting], f"the assignor moved {revoked[0][1]}"
        took = revoked[0][0] - joined  # the second member's join, then the revoke
        assert took < revoke_timeout / 3, f"the revoke ended {took:.1f} s after the join"
        assert wait_for(lambda: sorted(taken_over) == [(waiting, i) for i in range(3)])
        assert not [r for r in caplog.records if r.getMessage().startswith("handler still")]
        assert started == [holding]  # nothing of the revoked partition ran here
    finally:
        release.set()
    assert wait_for(lambda: committed(bootstrap, group, src) == {waiting: 3, holding: 1})
    first.stop()
    second.stop()
    assert not first.error
    assert not second.error


def test_a_revoke_lets_fetched_records_reach_their_outcome(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Producer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A partition revoked while a record of a key runs, the next record of that key
    queued behind it and records of other keys handled past it: the revoke lets the
    queued record run, commits the partition's end, and its next owner handles nothing
    again. The revoke used to drop the queued record, the commit stopped at it, and the
    records of other keys handled after it came again at the new owner (119 records in
    a trial of three replicas under key ordering, logged as revoked, not lost)."""
    src = topic_factory("orders", partitions=2)
    group = unique("enrich")
    # librdkafka's cooperative-sticky assignor moves partition 0 to a member joining
    # a group whose only member holds partitions 0 and 1 (asserted below).
    moved = 0
    revoking = threading.Event()
    handled: list[int] = []
    revoked: list[list[int]] = []
    taken_over: list[tuple[int, int]] = []
    second_assigned: list[int] = []
    on_revoke = Assignment.on_revoke

    def revoke(self: Assignment, consumer: Any, partitions: list[Any]) -> None:
        if partitions:
            revoking.set()
        on_revoke(self, consumer, partitions)

    monkeypatch.setattr(Assignment, "on_revoke", revoke)

    class Enrich(sg.ConsumerService):
        topic, contract, group_id = src, OrderPlaced, group
        ordering = "key"
        options = sg.ServiceOptions(max_in_flight=4, revoke_timeout=8.0)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            if ctx.partition == moved and ctx.offset == 0:
                # Runs until the revoke has begun (10 s at most), then a little longer.
                revoking.wait(10)
                time.sleep(0.3)
            handled.append(ctx.offset)

        def on_revoke(self, partitions: list[int]) -> None:
            revoked.append(partitions)

    class Takeover(Enrich):
        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            taken_over.append((ctx.partition, ctx.offset))

        def on_assign(self, partitions: list[int]) -> None:
            second_assigned.extend(partitions)

    first = start_service(Enrich)
    assert wait_for(lambda: first.service.health()["checks"]["assigned"])
    # Offsets 0 and 1 of key A, then 2 to 11 of other keys, handled past offset 1.
    for i, key in enumerate(["A", "A", *(f"B{i}" for i in range(2, 12))]):
        raw_producer.produce(src, order(i).model_dump_json().encode(), key=key, partition=moved)
    raw_producer.flush(10)
    assert wait_for(lambda: sorted(handled) == list(range(2, 12)), timeout=20)
    second = start_service(Takeover)
    assert wait_for(lambda: revoked, timeout=20)
    assert revoked[0] == [moved], f"the assignor moved {revoked[0]}"
    assert wait_for(lambda: moved in second_assigned, timeout=20)
    assert not wait_for(lambda: bool(taken_over), timeout=2.0), f"handled again: {taken_over}"
    assert sorted(handled) == list(range(12))
    assert committed(bootstrap, group, src).get(moved) == 12
    first.stop()
    second.stop()
    assert not first.error
    assert not second.error


def test_a_handler_still_running_after_revoke_timeout_is_cancelled(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Producer,
) -> None:
    """A revoke that gave up waiting for an async handler cancels it, as a shutdown
    does: left running, it went on beside the record's next call, and when the
    partition came back to its member, that member ran the key's next record while
    the first was still in its handler (two handlers of one key at once)."""
    src = topic_factory("orders", partitions=2)
    group = unique("enrich")
    value = order(1).model_dump_json().encode()
    for _ in range(2):
        raw_producer.produce(src, value, key=b"K", partition=0)
    raw_producer.flush(10)
    lock = threading.Lock()
    spans: list[tuple[str, int, float, float]] = []  # member, offset, start, end
    slow_once = threading.Event()
    second_started = threading.Event()

    class Enrich(sg.ConsumerService):
        topic, contract, group_id = src, OrderPlaced, group
        ordering = "key"
        options = sg.ServiceOptions(revoke_timeout=1.0, shutdown_timeout=1.0)
        member = "first"

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            started = time.monotonic()
            try:
                if self.member == "second":
                    second_started.set()
                    await asyncio.sleep(5)  # still running when it stops: cancelled
                elif not slow_once.is_set():
                    slow_once.set()
                    await asyncio.sleep(12)  # outlasts the revoke
            finally:
                with lock:
                    spans.append((self.member, ctx.offset, started, time.monotonic()))

    class Second(Enrich):
        member = "second"

    first = start_service(Enrich)
    assert wait_for(slow_once.is_set)
    second = start_service(Second)  # takes partition 0 (cooperative-sticky)
    assert wait_for(second_started.is_set), "partition 0 did not move"
    second.stop()  # its call is cancelled; partition 0 comes back, offset 0 uncommitted
    assert wait_for(lambda: sum(1 for s in spans if s[0] == "first") >= 3, timeout=20)
    ours = sorted((start, end, offset) for member, offset, start, end in spans if member == "first")
    for (_, end, _), (start, _, offset) in itertools.pairwise(ours):
        assert start >= end, f"offset {offset} of key K started while another ran"
    assert wait_for(lambda: committed(bootstrap, group, src) == {0: 2})
    first.stop()
    assert not first.error
    assert not second.error


def test_a_clean_stop_does_not_wait_for_a_revoked_partitions_deaf_handler(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Producer,
) -> None:
    """A clean stop lets the fetched records of its own partitions finish, not the run
    of a partition revoked earlier whose handler ignores its cancellation: the stop
    waited the whole ``shutdown_timeout`` for it, for a partition no longer ours."""
    src = topic_factory("orders", partitions=2)
    group = unique("enrich")
    shutdown_timeout = 10.0
    release = threading.Event()
    started: list[int] = []
    revoked: list[list[int]] = []

    class Enrich(sg.ConsumerService):
        topic, contract, group_id = src, OrderPlaced, group
        ordering = "key"
        options = sg.ServiceOptions(revoke_timeout=0.5, shutdown_timeout=shutdown_timeout)

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            started.append(ctx.partition)
            for _ in range(3000):  # until released (30 s at most), deaf to cancelling
                if release.is_set():
                    return
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(0.01)

        def on_revoke(self, partitions: list[int]) -> None:
            revoked.append(partitions)

    class Takeover(Enrich):
        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            pass

    first = start_service(Enrich)
    try:
        assert wait_for(lambda: first.service.health()["checks"]["assigned"])
        raw_producer.produce(src, order(1).model_dump_json().encode(), key=b"K", partition=0)
        raw_producer.flush(10)
        assert wait_for(lambda: started == [0])
        second = start_service(Takeover)  # takes partition 0 (cooperative-sticky)
        assert wait_for(lambda: revoked, timeout=20)
        assert revoked[0] == [0], f"the assignor moved {revoked[0]}"
        began = time.monotonic()
        first.stop()  # partition 1 is ours and idle: nothing to finish
        took = time.monotonic() - began
        assert took < shutdown_timeout / 2, f"the stop took {took:.1f} s"
    finally:
        release.set()
    second.stop()
    assert not first.error
    assert not second.error


def test_sigkill_mid_stream_loses_nothing_under_key_ordering(
    bootstrap: str, topic_factory: Callable[..., str], unique: Callable[[str], str], tmp_path: Path
) -> None:
    """A key-ordered service killed with SIGKILL and restarted handles every record."""
    src = topic_factory("clicks", partitions=2)
    group = unique("g")
    total = 400
    send_keyed(bootstrap, src, total, keys=50)
    out = tmp_path / "handled.txt"
    first = _run_recorder(bootstrap, src, group, out, delay="0.02", app="KeyedRecorder")
    try:
        assert wait_for(lambda: len(_handled(out)) >= 80, timeout=30)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    assert len(set(_handled(out))) < total, "the service finished before it was killed"
    second = _run_recorder(bootstrap, src, group, out, delay="0", app="KeyedRecorder")
    try:
        assert wait_for(lambda: len(set(_handled(out))) == total, timeout=40)
        assert wait_for(
            lambda: committed(bootstrap, group, src) == {0: _end(out, 0), 1: _end(out, 1)}
        )
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0


def fill(raw_producer: Producer, topic: str, total: int) -> None:
    """``total`` copies of one valid order, keyed over 997 keys."""
    value = order(1).model_dump_json().encode()
    for i in range(total):
        raw_producer.produce(topic, value, key=b"k%d" % (i % 997))
        if i % 5000 == 4999:
            raw_producer.flush(10)
    raw_producer.flush(10)


def counting(
    src: str, group: str, ordering: str = "partition"
) -> tuple[type[sg.ConsumerService], list[int]]:
    """An async service on ``src`` and the count of records it handled (``seen[0]``)."""
    counted = itertools.count(1)
    seen = [0]

    class Counting(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            seen[0] = next(counted)

    Counting.ordering = ordering  # type: ignore[assignment]
    return Counting, seen


@pytest.mark.parametrize("ordering", ["partition", "key"])
def test_a_busy_stream_is_handled_to_the_last_record(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Producer,
    ordering: str,
) -> None:
    """20,000 records on 3 partitions through async handlers: every one is handled and
    committed (batches accepted while a run ends must start a new run, never join the
    finished one)."""
    src = topic_factory("clicks", partitions=3)
    group = unique("busy")
    total = 20_000
    fill(raw_producer, src, total)
    service, seen = counting(src, group, ordering)
    running = start_service(service)
    assert wait_for(lambda: seen[0] >= total, timeout=60), f"handled {seen[0]} of {total}"
    assert wait_for(lambda: sum(committed(bootstrap, group, src).values()) == total)
    running.stop()
    assert not running.error


def test_the_event_loop_fetches_once_per_batch_and_never_in_vain(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Producer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A backlog on 4 partitions through an async handler: the partitions' runs take
    turns, so about one poll fetches each batch, and no poll finds a partition's buffer
    full (the loop used to fetch whenever one run ran dry and keep going, while the
    others' buffers filled up; then the polling thread spun on polls that fetched
    nothing while the loop waited for the interpreter lock)."""
    src = topic_factory("clicks", partitions=4)
    total = 40_000
    fill(raw_producer, src, total)
    polls = {"all": 0, "in_vain": 0, "batches": 0}
    poll_once = Poller.poll_once
    dispatch = Poller._dispatch

    def counted_poll(self: Poller, timeout: float) -> list[Any]:
        polls["all"] += 1
        polls["in_vain"] += self.flow.throttled  # a full buffer: fetches nothing
        return poll_once(self, timeout)

    def counted_dispatch(self: Poller, msgs: list[Any]) -> list[Any]:
        polls["batches"] += 1
        return dispatch(self, msgs)

    monkeypatch.setattr(Poller, "poll_once", counted_poll)
    monkeypatch.setattr(Poller, "_dispatch", counted_dispatch)
    service, seen = counting(src, unique("turns"))
    running = start_service(service)
    assert wait_for(lambda: seen[0] >= total, timeout=60), f"handled {seen[0]} of {total}"
    running.stop()
    assert not running.error
    assert polls["batches"] >= total // 500
    # Idle polls before the first record and after the last add a few dozen at most.
    assert polls["all"] <= polls["batches"] * 1.5 + 40, polls
    assert polls["in_vain"] <= 5, polls


@pytest.mark.parametrize("mode", ["partition", "key"])
def test_the_loop_folds_handler_times_into_the_metrics_before_many_pile_up(
    mode: str,
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Handler times (and counts) reach the metrics once METRICS_MAX are held, not only
    on the timer: at full speed half a second of them was tens of thousands of floats,
    and holding them cost the async service 8 MiB over a million records. Both paths:
    an in-order run's folds, and the per-record one of key ordering."""
    monkeypatch.setattr(eventloop, "METRICS_EVERY", 60.0)  # the timer alone: nothing for a minute
    src = topic_factory("orders", partitions=3)
    group = unique("folded")
    count = 2 * eventloop.METRICS_MAX + 300
    send_keyed(bootstrap, src, count, keys=50)
    handled = []

    class Fast(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        ordering = mode

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            handled.append(ctx.offset)

    running = start_service(Fast)
    assert wait_for(lambda: len(handled) == count, timeout=30)

    def reported() -> tuple[float, float]:
        return (
            running.metric("streamguard_handler_seconds_count", topic=src),
            running.metric("streamguard_messages_total", topic=src, outcome="handled"),
        )

    least = 2 * eventloop.METRICS_MAX
    assert wait_for(lambda: min(reported()) >= least, 5), reported()
    assert max(reported()) <= count


def test_every_async_handler_call_is_timed_when_handlers_wait(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
) -> None:
    """Partition order, handlers that wait across metric flushes: the handler-time
    histogram counts every call (a flush while a handler was suspended used to hand
    the run a fresh list, and the run's later timings were dropped)."""
    src = topic_factory("orders")
    group = unique("timed")
    count = 300  # folds every 64 records, so flushes fall due while handlers wait
    send_keyed(bootstrap, src, count, keys=5)
    handled = []

    class Timed(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            await asyncio.sleep(0.005)  # 300 x 5 ms spans a few 0.5 s metric flushes
            handled.append(ctx.offset)

    running = start_service(Timed)
    assert wait_for(lambda: len(handled) == count, timeout=30)
    assert wait_for(
        lambda: running.metric("streamguard_handler_seconds_count", topic=src) == count, 5
    ), running.metric("streamguard_handler_seconds_count", topic=src)
    assert running.metric("streamguard_messages_total", topic=src, outcome="handled") == count
    running.stop()
    assert not running.error


class _LongestWait(random.Random):
    """Full jitter that always draws its cap: the retry waits the whole backoff."""

    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.mark.parametrize("ordering", ["partition", "key"])
def test_a_transient_failure_as_its_partition_closes_is_not_waited_for(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Producer,
    caplog: pytest.LogCaptureFixture,
    ordering: str,
) -> None:
    """A handler that fails transiently after its partition closed (the stop began
    during its call) leaves its record uncommitted at once, as a record already waiting
    to be retried is. Under partition order the stop used to sleep through the retry's
    whole backoff (capped by shutdown_timeout), then warn that a handler was still
    running."""
    src = topic_factory("orders")
    group = unique("closing")
    raw_producer.produce(src, order(1).model_dump_json().encode(), key=b"K")
    raw_producer.flush(10)
    entered = threading.Event()
    release = threading.Event()

    class Failing(sg.ConsumerService):
        topic, contract, group_id = src, OrderPlaced, group
        options = sg.ServiceOptions(shutdown_timeout=8.0, revoke_timeout=8.0)
        retry = sg.RetryPolicy(
            attempts=3, base_delay=20.0, max_delay=20.0, max_budget_ms=60_000, rng=_LongestWait()
        )

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            entered.set()
            while not release.is_set():
                await asyncio.sleep(0.01)
            raise sg.TransientError("the dependency went away as the service stopped")

    Failing.ordering = ordering  # type: ignore[assignment]
    running = start_service(Failing)
    assert wait_for(entered.is_set)
    began = time.monotonic()
    running.service.stop()
    time.sleep(1.0)  # the stop closes the partition while the call runs
    release.set()
    running.thread.join(30)
    took = time.monotonic() - began
    assert not running.thread.is_alive()
    assert not running.error
    assert took < 4.0, f"the stop took {took:.1f} s"
    assert not [r for r in caplog.records if r.getMessage().startswith("handler still")]
    assert committed(bootstrap, group, src).get(0, 0) == 0  # redelivered


@pytest.mark.parametrize("ordering", ["key", "none"])
def test_a_clean_stop_lets_fetched_records_reach_their_outcome(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    ordering: str,
) -> None:
    """A stop while a record waits for its retry (due well within shutdown_timeout)
    gives it its retry, and runs the record queued behind its key: the commit reaches
    the partition's end, and a restart handles nothing again. The stop used to drop
    the waiting records uncommitted, and the records of other keys handled past them
    came again after the restart."""
    src = topic_factory("clicks")
    group = unique("enrich")
    producer = sg.GuardedProducer(bootstrap)
    producer.send(src, order(0), key="A")
    for i in range(1, 21):
        producer.send(src, order(i), key=f"B{i}")
    producer.send(src, order(21), key="A")
    producer.flush()
    handled: list[int] = []
    attempts: dict[int, int] = defaultdict(int)

    class Enrich(sg.ConsumerService):
        topic, contract, group_id = src, OrderPlaced, group
        options = sg.ServiceOptions(shutdown_timeout=5.0)
        retry = sg.RetryPolicy(attempts=3, base_delay=0.5, max_delay=0.5, rng=_LongestWait())

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            attempts[ctx.offset] += 1
            if ctx.offset == 0 and attempts[0] == 1:
                raise TimeoutError("dependency timed out")
            handled.append(ctx.offset)

    Enrich.ordering = ordering  # type: ignore[assignment]
    running = start_service(Enrich)
    assert wait_for(lambda: set(range(1, 21)) <= set(handled), timeout=30)
    assert attempts[0] == 1, "the retry came before the stop: the test proves nothing"
    began = time.monotonic()
    running.stop()
    took = time.monotonic() - began
    assert not running.error
    assert attempts[0] == 2
    assert sorted(handled) == list(range(22))
    assert took < 5.0, f"the stop took {took:.1f} s"
    assert committed(bootstrap, group, src) == {0: 22}
    handled.clear()
    again = start_service(Enrich)
    producer.send(src, order(22), key="C")
    producer.flush()
    assert wait_for(lambda: 22 in handled, timeout=30)
    again.stop()
    assert handled == [22], "records handled before the stop came again"


@pytest.mark.parametrize("ordering", ["key", "none"])
def test_a_clean_stop_drops_a_retry_due_after_its_deadline(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    ordering: str,
) -> None:
    """A retry whose backoff ends after the stop's shutdown_timeout is not waited for:
    its record is dropped uncommitted at once, and the stop stays within its bound."""
    src = topic_factory("clicks")
    group = unique("enrich")
    send_keyed(bootstrap, src, 10, keys=10)
    handled: list[int] = []
    attempts: dict[int, int] = defaultdict(int)

    class Enrich(sg.ConsumerService):
        topic, contract, group_id = src, OrderPlaced, group
        options = sg.ServiceOptions(shutdown_timeout=3.0, revoke_timeout=3.0)
        retry = sg.RetryPolicy(
            attempts=3, base_delay=6.0, max_delay=6.0, max_budget_ms=60_000, rng=_LongestWait()
        )

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            attempts[ctx.offset] += 1
            if ctx.offset == 0:
                raise TimeoutError("dependency timed out")
            handled.append(ctx.offset)

    Enrich.ordering = ordering  # type: ignore[assignment]
    running = start_service(Enrich)
    assert wait_for(lambda: len(handled) == 9, timeout=30)
    began = time.monotonic()
    running.stop()
    took = time.monotonic() - began
    assert not running.error
    assert took < 2.0, f"the stop took {took:.1f} s"  # not waited for
    assert attempts[0] == 1
    assert committed(bootstrap, group, src).get(0, 0) == 0  # redelivered


@pytest.mark.parametrize("ordering", ["partition", "key"])
def test_a_handler_the_stop_gives_up_on_is_reported_with_shutdown_timeout(
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    send_orders: Callable[..., None],
    caplog: pytest.LogCaptureFixture,
    ordering: str,
) -> None:
    """The warning for a handler still running when the stop gives up names the
    shutdown_timeout it was given. Under key or no ordering the clean stop's wait for
    the fetched records used that time up first, and the warning said ``timeout``: 0.0,
    as if the service were set to wait for no handler."""
    src = topic_factory("orders")
    send_orders(src, 1, key=str)
    entered = threading.Event()

    class Slow(sg.ConsumerService):
        topic, contract, group_id = src, OrderPlaced, unique("slow")
        options = sg.ServiceOptions(shutdown_timeout=1.0, revoke_timeout=1.0)

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            entered.set()
            await asyncio.sleep(30)

    Slow.ordering = ordering  # type: ignore[assignment]
    running = start_service(Slow)
    assert entered.wait(20)
    with caplog.at_level(logging.WARNING, logger="streamguard.runtime"):
        running.stop()
    assert not running.error
    (warning,) = [r for r in caplog.records if r.getMessage().startswith("handler still")]
    assert warning.timeout == 1.0  # type: ignore[attr-defined]
    assert (warning.service, warning.topic) == ("Slow", src)  # type: ignore[attr-defined]


@pytest.mark.parametrize("ordering", ["key", "none"])
def test_a_clean_stop_drops_records_waiting_for_a_suspected_outage(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    send_orders: Callable[..., None],
    ordering: str,
) -> None:
    """A record whose retries ran out while every call fails waits for the dependency
    (an outage is suspected, the breaker not open yet), with no outcome before it is
    back: a clean stop drops it uncommitted at once, as one the open breaker holds. The
    stop used to wait out shutdown_timeout, calling the dependency every 0.1 s."""
    src = topic_factory("orders")
    send_orders(src, 3, key=lambda i: f"k{i}")
    group = unique("g")
    calls = [0]

    class Down(sg.ConsumerService):
        topic, contract, group_id = src, OrderPlaced, group
        options = sg.ServiceOptions(shutdown_timeout=4.0, revoke_timeout=4.0)
        retry = sg.RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02)
        breaker = sg.CircuitBreaker(min_calls=10**6)  # suspects an outage, never opens

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            calls[0] += 1
            raise TimeoutError("the dependency is down")

    Down.ordering = ordering  # type: ignore[assignment]
    running = start_service(Down)
    assert wait_for(lambda: calls[0] >= 12, timeout=20)  # past their 2 attempts: parked
    began = time.monotonic()
    running.stop()
    took = time.monotonic() - began
    assert not running.error
    assert took < 2.0, f"the stop took {took:.1f} s"
    assert running.metric("streamguard_messages_total", topic=src, outcome="dead_lettered") == 0
    assert not any(committed(bootstrap, group, src).values())  # redelivered

"""A partition whose buffer is full is paused, so memory stays bounded."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

from confluent_kafka import Consumer, Producer

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from streamguard.runtime.flow import REFETCH_AHEAD, FlowControl
from streamguard.runtime.lag import LagMonitor
from streamguard.runtime.outcomes import RetryState
from streamguard.runtime.service import CONSUMER_DEFAULTS
from tests.conftest import fast_group_config
from tests.runtime.conftest import Running, committed, order, wait_for


def test_full_buffer_pauses_the_partition_and_bounds_inflight(
    send_orders: Callable[..., None],
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
) -> None:
    """With a blocked handler and 2,000 messages waiting, at most max_buffered plus one
    batch are held; the partition is paused, then resumed once the handler drains it."""
    src = topic_factory("orders")
    send_orders(src, 2000)
    gate = threading.Event()
    group = unique("g")

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        options = sg.ServiceOptions(batch_size=50, max_buffered=100)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            gate.wait(30)

    running = start_service(Billing)
    assert wait_for(lambda: running.metric("streamguard_paused_partitions", topic=src) == 1)
    peak = 0.0
    for _ in range(20):  # sample the gauge for a while: it must stay bounded
        peak = max(peak, running.metric("streamguard_inflight", topic=src))
        threading.Event().wait(0.05)
    # Bound: the buffer limit plus what one consume() call can still return, plus
    # records librdkafka had fetched before the pause took effect.
    assert 100 <= peak <= 100 + 50 + 500
    gate.set()
    assert wait_for(lambda: committed(bootstrap, group, src).get(0) == 2000, timeout=40)
    assert running.metric("streamguard_paused_partitions", topic=src) == 0


def test_an_event_loop_on_many_partitions_is_not_fetched_far_ahead(
    send_orders: Callable[..., None],
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
) -> None:
    """The supervisor polls on at once for a busy event loop, which cannot poll while its
    handlers wait; on many partitions no lane nears its own limit (a batch brings a few
    records a lane), and those polls ran ahead of a loop that handled records as fast as
    they came: 19,000-27,000 held on 128 partitions at the default settings. It refills
    only while the lanes hold less than four partitions' buffers, the handlers and a
    batch (scaled down here: a smaller buffer and batch)."""
    src = topic_factory("orders", partitions=128)
    send_orders(src, 60_000, key=lambda i: f"customer-{i}")
    group = unique("g")
    handled = [0]

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        options = sg.ServiceOptions(max_buffered=1000, batch_size=250)

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            handled[0] += 1

    running = start_service(Billing)
    peak = 0.0
    deadline = time.monotonic() + 60
    while handled[0] < 60_000 and time.monotonic() < deadline:
        peak = max(peak, running.metric("streamguard_inflight", topic=src))
        time.sleep(0.002)
    assert handled[0] == 60_000
    # The refill bound (4 x 1,000 + 256 + 250), and the poll that crossed it or one the
    # loop made meanwhile (a batch each): 12,816 and 20,388 held before.
    assert peak <= 4506 + 2 * 250, peak


def test_consumer_lag_reports_the_backlog_and_drains_to_zero(
    send_orders: Callable[..., None],
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
) -> None:
    """streamguard_consumer_lag shows the unprocessed backlog while a handler is blocked,
    and falls to zero once everything is handled."""
    src = topic_factory("orders")
    send_orders(src, 300)
    gate = threading.Event()
    group = unique("g")

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        options = sg.ServiceOptions(commit_interval=0.2)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            gate.wait(30)

    running = start_service(Billing)
    # The high watermark comes from fetch responses (right on every broker); here the
    # whole backlog is unprocessed while the handler is blocked on its first message.
    assert wait_for(
        lambda: running.metric("streamguard_consumer_lag", topic=src, partition="0") == 300
    )
    gate.set()
    assert wait_for(
        lambda: running.metric("streamguard_consumer_lag", topic=src, partition="0") == 0
    )
    assert wait_for(lambda: committed(bootstrap, group, src).get(0) == 300)


def test_caught_up_partition_has_no_lag_after_a_restart(
    send_orders: Callable[..., None],
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
) -> None:
    """A service restarted on a fully committed partition reports lag 0, not the
    partition's history (nothing has reached an outcome since its assignment)."""
    src = topic_factory("orders")
    send_orders(src, 40)
    group = unique("g")

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        options = sg.ServiceOptions(commit_interval=0.2)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

    first = start_service(Billing)
    assert wait_for(lambda: committed(bootstrap, group, src).get(0) == 40)
    first.stop()
    second = start_service(Billing)
    assert wait_for(
        lambda: (
            second.registry.get_sample_value(
                "streamguard_consumer_lag",
                {"runtime": "consumer", "topic": src, "partition": "0"},
            )
            is not None
        )
    )
    assert second.metric("streamguard_consumer_lag", topic=src, partition="0") == 0


def test_a_new_group_reading_from_latest_reports_no_lag_for_the_history(
    send_orders: Callable[..., None],
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
) -> None:
    """With ``auto.offset.reset=latest`` a new group starts at the high watermark: the
    records already there are never consumed, so they are not lag. Before, counting
    started at the low mark, and an idle topic with history showed its whole history as
    lag until a new record arrived. New records still count until handled."""
    src = topic_factory("orders")
    # One batch per record: the embedded broker answers ListOffsets(latest) with the
    # last batch's base offset, and a consumer reset there would read the history.
    producer = sg.GuardedProducer(bootstrap)
    for i in range(50):
        producer.send(src, order(i))
        producer.flush()
    handled = threading.Event()

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = unique("g")
        options = sg.ServiceOptions(commit_interval=0.2)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            handled.set()

    running = start_service(
        Billing, kafka_config=fast_group_config(**{"auto.offset.reset": "latest"})
    )

    def lag() -> float | None:
        return running.registry.get_sample_value(
            "streamguard_consumer_lag",
            {"runtime": "consumer", "topic": src, "partition": "0"},
        )

    assert wait_for(lambda: lag() is not None)
    time.sleep(1.0)  # a few maintenance ticks (commit_interval) later
    assert lag() == 0
    assert not handled.is_set()  # the history was skipped indeed
    send_orders(src, 5)
    assert wait_for(handled.is_set)
    assert wait_for(lambda: lag() == 0)


def test_a_stopped_service_reports_no_lag_for_partitions_it_gave_up(
    send_orders: Callable[..., None],
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
) -> None:
    """Shutdown forgets the lag of its partitions, as a revoke does. Left set, a gauge
    stayed frozen in the registry, which outlives run(): scraped, or when the service
    runs again and owns other partitions, it reported the lag of partitions that were
    no longer its own."""
    src = topic_factory("orders", partitions=2)
    send_orders(src, 20, key=str)
    group = unique("g")

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

    running = start_service(Billing)

    def lag(partition: str) -> float | None:
        return running.registry.get_sample_value(
            "streamguard_consumer_lag",
            {"runtime": "consumer", "topic": src, "partition": partition},
        )

    assert wait_for(lambda: lag("0") is not None and lag("1") is not None)
    running.stop()
    assert lag("0") is None
    assert lag("1") is None


# A retry wait far longer than any test: its partition stays paused while it is set.
LONG_WAIT = RetryState(1, 0, 0.0, due=float("inf"))


class FedLanes:
    """A real consumer feeding stand-in lanes as the poller's dispatch does: each
    record's offset goes to its partition's lane (``fetched_to``) and ``offsets``."""

    def __init__(self, bootstrap: str, group: str, partitions: range, **extra: Any) -> None:
        self.consumer = Consumer(
            {
                **CONSUMER_DEFAULTS,
                **fast_group_config(),
                "bootstrap.servers": bootstrap,
                "group.id": group,
                **extra,
            }
        )
        self.lanes: Any = {
            p: SimpleNamespace(buffered=0, retry=None, fetched_to=None) for p in partitions
        }
        self.offsets: dict[int, list[int]] = {p: [] for p in partitions}

    def consume(self, count: int, timeout: float) -> int:
        records = self.consumer.consume(count, timeout)
        for record in records:
            self.offsets[record.partition()].append(record.offset())
            self.lanes[record.partition()].fetched_to = record.offset() + 1
        return len(records)

    def read_until(self, topic: str, done: Callable[[], bool]) -> None:
        """Subscribe, then consume (100 records at most per call) until ``done()``."""
        self.consumer.subscribe([topic])
        deadline = time.monotonic() + 20
        while not done() and time.monotonic() < deadline:
            self.consume(100, 0.5)
        assert done()

    def drain(self) -> None:
        """Take what was handed over already, without waiting."""
        while self.consume(500, 0):
            pass

    def wait_for_a_record(self, since: float) -> float:
        """Seconds from ``since`` until a record comes (5 at most)."""
        while not self.consume(1, 0.01) and time.monotonic() - since < 5:
            pass
        return time.monotonic() - since


def test_partitions_resumed_after_all_were_paused_are_fetched_at_once(
    send_orders: Callable[..., None],
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
) -> None:
    """Every partition paused (each waits to retry), resumed, paused again before a
    record came, then resumed: the next record comes within a fetch, not when
    librdkafka's idle broker thread next wakes (about a second later without the seek
    in FlowControl.resume). Each partition's records still come in order, none twice
    and none skipped."""
    src = topic_factory("orders", partitions=3)
    send_orders(src, 3000, key=str)
    # fetch.wait.max.ms=10: an in-flight fetch ends before the resume
    fed = FedLanes(bootstrap, unique("g"), range(3), **{"fetch.wait.max.ms": 10})
    flow = FlowControl(fed.consumer, src, sg.ServiceOptions(), service="s")

    def set_waiting(waiting: bool, now: float) -> None:
        for lane in fed.lanes.values():
            lane.retry = LONG_WAIT if waiting else None
        flow.update(fed.lanes, now=now, writable=True)

    waits = []
    try:
        fed.read_until(src, lambda: all(fed.offsets.values()))  # a record of each partition
        for tick in range(5):
            set_waiting(True, tick)  # pauses all three
            fed.drain()  # anything handed over before the pause
            set_waiting(False, tick + 0.1)  # resumes and seeks
            set_waiting(True, tick + 0.2)  # paused again before a record came
            time.sleep(0.1)  # librdkafka's broker thread goes idle
            resumed = time.monotonic()
            set_waiting(False, tick + 0.3)
            waits.append(fed.wait_for_a_record(resumed))
        while fed.consume(500, 0.2):  # the rest of what was fetched
            pass
    finally:
        fed.consumer.close()
    assert statistics.median(waits) < 0.3, waits  # about 0.9 s each without the seek
    for got in fed.offsets.values():
        assert got == list(range(len(got)))


def test_a_partition_resumed_next_to_an_idle_one_waits_at_most_the_fetch_wait(
    raw_producer: Producer,
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
) -> None:
    """One partition with records paused and resumed, another idle: while the first
    is paused, librdkafka's one fetch request to the broker asks for the idle partition
    alone, and the broker holds it for fetch.wait.max.ms. The resumed partition waits
    for it: with the runtime's 100 ms, not librdkafka's 500."""
    src = topic_factory("orders", partitions=2)
    for i in range(3000):
        raw_producer.produce(src, b'{"n": %d}' % i, partition=1)
    raw_producer.flush(10)
    fed = FedLanes(bootstrap, unique("g"), range(2))
    busy = fed.lanes[1]
    flow = FlowControl(fed.consumer, src, sg.ServiceOptions(), service="s")
    waits = []
    try:
        fed.read_until(src, lambda: busy.fetched_to is not None)
        for tick in range(5):
            busy.retry = LONG_WAIT
            flow.update(fed.lanes, now=tick, writable=True)  # pauses partition 1 alone
            fed.drain()
            time.sleep(0.05)  # a fetch for the idle partition alone is out now
            busy.retry = None
            resumed = time.monotonic()
            flow.update(fed.lanes, now=tick + 0.5, writable=True)
            waits.append(fed.wait_for_a_record(resumed))
    finally:
        fed.consumer.close()
    assert statistics.median(waits) < 0.25, waits  # about 0.45 s each with 500 ms


def test_a_retry_due_within_a_refetch_keeps_what_was_prefetched_and_a_longer_one_drops_it(
    send_orders: Callable[..., None],
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
) -> None:
    """A partition whose retry is due within REFETCH_AHEAD is not paused: the records
    librdkafka prefetched for it keep coming. One waiting longer is paused, and
    librdkafka drops them (they are fetched again on resume)."""
    src = topic_factory("orders", partitions=1)
    send_orders(src, 3000, key=str)
    fed = FedLanes(bootstrap, unique("g"), range(1))
    lane = fed.lanes[0]
    flow = FlowControl(fed.consumer, src, sg.ServiceOptions(), service="s")
    try:
        fed.read_until(src, lambda: lane.fetched_to is not None)
        time.sleep(0.2)  # librdkafka prefetches the rest
        now = time.monotonic()
        lane.retry = RetryState(1, 0, now, due=now + REFETCH_AHEAD / 2)
        flow.update(fed.lanes, now=now, writable=True)
        assert not flow.paused
        assert fed.consume(500, 2) == 500  # prefetched (or fetched under load), kept
        lane.retry = LONG_WAIT
        flow.update(fed.lanes, now=now, writable=True)
        assert flow.paused == {0}
        assert fed.consume(500, 0.2) == 0  # prefetched, dropped
    finally:
        fed.consumer.close()
    assert fed.offsets[0] == list(range(len(fed.offsets[0])))


def test_consumer_lag_of_a_paused_partition_grows_with_what_arrives(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
) -> None:
    """A paused partition is not fetched, so the high watermark its last fetch carried
    goes stale: its lag stood at what it was when it paused while records kept arriving
    (the dashboard's stuck partition looked steady). The lag is read from the broker for
    a paused partition."""
    src = topic_factory("orders")
    producer = sg.GuardedProducer(bootstrap)
    producer.send(src, order(0))
    producer.flush()

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = unique("g")
        retry = sg.RetryPolicy(
            attempts=10_000, base_delay=0.2, max_delay=0.2, max_budget_ms=600_000
        )
        options = sg.ServiceOptions(commit_interval=0.2)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            attempts.append(ctx.attempt)
            raise ConnectionError("the database is down")

    attempts: list[int] = []
    running = start_service(Billing)

    def lag() -> float:
        return running.metric("streamguard_consumer_lag", topic=src, partition="0")

    # From its second failure on, a message keeps its partition paused until its outcome.
    assert wait_for(lambda: len(attempts) >= 3)
    assert running.metric("streamguard_paused_partitions", topic=src) == 1
    assert wait_for(lambda: lag() == 1)
    for i in range(1, 6):  # one produce request each: ListOffsets is exact on every broker
        producer.send(src, order(i))
        producer.flush()
    assert wait_for(lambda: lag() == 6, timeout=30), lag()
    assert running.metric("streamguard_paused_partitions", topic=src) == 1


def tick(monitor: LagMonitor, lanes: Any, paused: set[int]) -> None:
    """The runtime's order: the tick's update, then the supervisor's requests if due."""
    monitor.update(lanes, paused)
    if monitor.due:
        monitor.refresh(lanes)


def test_a_cluster_that_does_not_answer_costs_one_lag_query_per_refresh() -> None:
    """While ListOffsets gets no answer, the supervisor waits for one paused
    partition's query per PAUSED_REFRESH, not for one per partition and update."""
    from prometheus_client import CollectorRegistry

    from streamguard.observe.metrics import ServiceMetrics
    from streamguard.runtime.lag import PAUSED_REFRESH

    asked: list[int] = []

    class Away:
        def get_watermark_offsets(
            self, tp: Any, timeout: float | None = None, cached: bool = False
        ) -> tuple[int, int] | None:
            if cached:
                return (0, 10)
            asked.append(tp.partition)
            return None  # timed out

    now = [100.0]
    registry = CollectorRegistry()
    monitor = LagMonitor(cast(Consumer, Away()), "t", ServiceMetrics(registry), lambda: now[0])
    lanes = {p: SimpleNamespace(commit_position=lambda: 4, first_fetched=4) for p in range(6)}
    for _ in range(10):
        tick(monitor, cast(Any, lanes), paused=set(lanes))
        now[0] += 0.5
    assert asked == [0]
    now[0] += PAUSED_REFRESH
    tick(monitor, cast(Any, lanes), paused=set(lanes))
    assert len(asked) == 2
    assert (
        registry.get_sample_value(
            "streamguard_consumer_lag", {"runtime": "consumer", "topic": "t", "partition": "5"}
        )
        == 6
    )


def test_every_paused_partition_has_its_lag_asked_for_in_turn() -> None:
    """With more paused partitions than updates in PAUSED_REFRESH, each is asked in
    turn: before, the first paused ones fell due again first, and the others' lag was
    never refreshed."""
    from prometheus_client import CollectorRegistry

    from streamguard.observe.metrics import ServiceMetrics
    from streamguard.runtime.lag import PAUSED_REFRESH

    asked: list[int] = []

    class Answers:
        def get_watermark_offsets(
            self, tp: Any, timeout: float | None = None, cached: bool = False
        ) -> tuple[int, int] | None:
            if not cached:
                asked.append(tp.partition)
            return (0, 10)

    now = [100.0]
    monitor = LagMonitor(
        cast(Consumer, Answers()), "t", ServiceMetrics(CollectorRegistry()), lambda: now[0]
    )
    lanes = {p: SimpleNamespace(commit_position=lambda: 4, first_fetched=4) for p in range(8)}
    for _ in range(int(3 * PAUSED_REFRESH)):  # an update a second, as commit_interval's default
        tick(monitor, cast(Any, lanes), paused=set(lanes))
        now[0] += 1.0
    assert set(asked) == set(range(8))

"""The consumer-lag gauge's broker requests never hold up the event loop."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from types import SimpleNamespace
from typing import Any, cast

import pytest
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import CollectorRegistry

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from streamguard.devbroker import DevBroker
from streamguard.observe.metrics import ServiceMetrics
from streamguard.runtime.lag import LagMonitor
from streamguard.topics import create_topics
from tests.conftest import suspend
from tests.faults.workload import start
from tests.runtime.conftest import order, wait_for

# The loop's timer ticks this often; a stall shows as a longer gap between two ticks.
TICK = 0.005


class LoopTicks:
    """A timer task on the service's event loop that records the longest gap between
    its ticks: how long the loop was held by something that did not yield."""

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.longest = 0.0
        self.started = threading.Event()
        self.done = False
        self._reset = False

    def start_here(self) -> None:
        """Start ticking on the running loop (once)."""
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._tick())

    def measure_from_now(self) -> None:
        """Forget the gaps so far (the service's start-up)."""
        self._reset = True

    async def _tick(self) -> None:
        last = time.monotonic()
        self.started.set()
        for _ in range(int(120 / TICK)):  # two minutes at most
            if self.done:
                return
            await asyncio.sleep(TICK)
            now = time.monotonic()
            if self._reset:
                self._reset, self.longest = False, 0.0
            else:
                self.longest = max(self.longest, now - last)
            last = now


@pytest.mark.broker
def test_a_cluster_that_does_not_answer_does_not_stall_the_event_loop(
    own_broker: DevBroker,
) -> None:
    """While the broker is suspended, the lag of a paused partition is still asked for,
    and that request waits for its timeout; the event loop meanwhile goes on with its
    tasks. Before, the loop's own poll made the request, and every task on the loop
    stalled for the request's timeout (0.5 s) every PAUSED_REFRESH."""
    bootstrap = own_broker.bootstrap_servers
    src = f"lag-stall-{os.getpid()}-{time.monotonic_ns()}"
    create_topics(bootstrap, [src, f"{src}.dlq"], partitions=1)
    producer = sg.GuardedProducer(bootstrap)
    producer.send(src, order(0))
    producer.flush()
    ticks = LoopTicks()
    attempts: list[int] = []

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = f"g-{src}"
        # Retries under 30 ms apart, from the second on with the partition paused: the
        # loop polls before each retry wait, more often than the supervisor would, so
        # it is the loop that runs the maintenance tick (and the lag update in it).
        retry = sg.RetryPolicy(
            attempts=100_000, base_delay=0.03, max_delay=0.03, max_budget_ms=600_000
        )
        breaker = sg.CircuitBreaker(enabled=False)  # no retry budget spacing the retries
        options = sg.ServiceOptions(commit_interval=0.2)

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            ticks.start_here()
            attempts.append(ctx.attempt)
            raise ConnectionError("the database is down")

    # librdkafka gives up its assignment when the coordinator has not answered for a
    # session timeout: the suspension must end before that, with the partition still ours.
    running = start(
        Billing,
        bootstrap,
        kafka_config={"session.timeout.ms": 10_000, "heartbeat.interval.ms": 1000},
    )
    try:

        def lag() -> float:
            return running.metric("streamguard_consumer_lag", topic=src, partition="0")

        assert wait_for(lambda: len(attempts) >= 3 and ticks.started.is_set())
        assert wait_for(lambda: running.metric("streamguard_paused_partitions", topic=src) == 1)
        assert wait_for(lambda: lag() == 1)
        suspend(own_broker.pid)
        try:
            ticks.measure_from_now()
            before = len(attempts)
            # Longer than PAUSED_REFRESH: the paused partition is asked for at least once.
            time.sleep(6.5)
            longest, retried = ticks.longest, len(attempts) - before
        finally:
            os.kill(own_broker.pid or 0, signal.SIGCONT)
        assert retried > 50, retried  # the loop did poll and retry all along
        assert longest < 0.2, f"the event loop stood still for {longest:.3f} s"
        assert running.thread.is_alive()
    finally:
        ticks.done = True
        time.sleep(2 * TICK)  # ended before the service's loop stops
        running.stop()
    assert not running.error, running.error


def test_the_tick_makes_no_broker_request_and_the_supervisor_makes_them() -> None:
    """``update`` (the tick, on whichever thread polls) reads only cached marks; the
    group's committed offset and a paused partition's ListOffsets wait for ``refresh``
    (the supervisor), and the next update uses their answers. Before, the tick made
    both requests itself: on the event loop, each stalled every handler on it."""
    requests: list[tuple[str, int]] = []

    class Cluster:
        def get_watermark_offsets(
            self, tp: Any, timeout: float | None = None, cached: bool = False
        ) -> tuple[int, int]:
            if cached:
                return (0, 10)
            requests.append(("list_offsets", tp.partition))
            return (0, 25)

        def committed(self, tps: list[Any], timeout: float | None = None) -> list[Any]:
            requests.append(("committed", tps[0].partition))
            return [TopicPartition(tps[0].topic, tps[0].partition, 3)]

    registry = CollectorRegistry()
    monitor = LagMonitor(cast(Consumer, Cluster()), "t", ServiceMetrics(registry))
    lanes: Any = {
        0: SimpleNamespace(commit_position=lambda: 4, first_fetched=4),  # paused
        1: SimpleNamespace(commit_position=lambda: None, first_fetched=None),  # nothing yet
    }

    def lag(partition: str) -> float | None:
        return registry.get_sample_value(
            "streamguard_consumer_lag",
            {"runtime": "consumer", "topic": "t", "partition": partition},
        )

    monitor.update(lanes, paused={0})
    assert requests == []
    assert monitor.due
    assert lag("0") == 6  # the cached mark, for now
    assert lag("1") is None  # where counting starts is not known yet
    monitor.refresh(lanes)
    assert requests == [("committed", 1), ("list_offsets", 0)]
    assert not monitor.due
    monitor.update(lanes, paused={0})
    assert lag("0") == 21
    assert lag("1") == 7
    assert not monitor.due  # asked already: nothing more for PAUSED_REFRESH


def test_from_latest_counting_starts_at_the_first_high_mark_seen() -> None:
    """With ``auto.offset.reset=latest`` and no committed offset, the history before the
    first high mark seen is not lag (it is never consumed); what arrives later is, until
    fetched. With earliest, the history is lag: it will be consumed."""
    marks = [(0, 50)]

    class Cluster:
        def get_watermark_offsets(
            self, tp: Any, timeout: float | None = None, cached: bool = False
        ) -> tuple[int, int]:
            return marks[0]

        def committed(self, tps: list[Any], timeout: float | None = None) -> list[Any]:
            return [TopicPartition(tps[0].topic, tps[0].partition, -1001)]

    lanes: Any = {0: SimpleNamespace(commit_position=lambda: None, first_fetched=None)}
    lags: dict[str, tuple[float | None, float | None]] = {}
    for reset in ("latest", "earliest"):
        registry = CollectorRegistry()
        monitor = LagMonitor(
            cast(Consumer, Cluster()), "t", ServiceMetrics(registry), offset_reset=reset
        )
        marks[0] = (0, 50)
        monitor.update(lanes)
        monitor.refresh(lanes)
        monitor.update(lanes)
        first = registry.get_sample_value(
            "streamguard_consumer_lag", {"runtime": "consumer", "topic": "t", "partition": "0"}
        )
        marks[0] = (0, 53)  # three records arrive, not fetched yet
        monitor.update(lanes)
        later = registry.get_sample_value(
            "streamguard_consumer_lag", {"runtime": "consumer", "topic": "t", "partition": "0"}
        )
        lags[reset] = (first, later)
    assert lags == {"latest": (0, 3), "earliest": (50, 53)}

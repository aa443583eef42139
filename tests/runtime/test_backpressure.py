"""A partition whose buffer is full is paused, so memory stays bounded."""

from __future__ import annotations

import threading
from collections.abc import Callable

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from tests.runtime.conftest import Running, committed, wait_for


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

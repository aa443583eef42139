"""A member's assignment in its metrics: the partitions it holds, and each change."""

from __future__ import annotations

from collections.abc import Callable

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from tests.runtime.conftest import Running, wait_for


def _held(running: Running, topic: str) -> float | None:
    return running.registry.get_sample_value(
        "streamguard_assigned_partitions", {"runtime": "consumer", "topic": topic}
    )


def _changes(running: Running, topic: str, change: str) -> float | None:
    return running.registry.get_sample_value(
        "streamguard_rebalances_total", {"runtime": "consumer", "topic": topic, "change": change}
    )


def test_a_second_member_shows_in_each_ones_partitions_and_rebalances(
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
) -> None:
    """The first member holds both partitions, then gives one up to a second: the
    gauge follows each member's assignment (together they hold the two), the counter
    counts each assignment and revoke, its ``lost`` series is there at zero from the
    start (an alert on its increase sees the first one), and the gauge goes with the
    run."""
    src = topic_factory("orders", partitions=2)
    group = unique("g")

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            pass

    first = start_service(Billing)
    assert wait_for(lambda: _held(first, src) == 2, timeout=20)
    assert _changes(first, src, "assigned") == 1
    assert _changes(first, src, "revoked") == 0
    assert _changes(first, src, "lost") == 0

    second = start_service(Billing)
    assert wait_for(lambda: _held(second, src) == 1 and _held(first, src) == 1, timeout=30)
    assert (_changes(first, src, "revoked") or 0) >= 1
    assert (_changes(first, src, "assigned") or 0) >= 2
    assert (_changes(second, src, "assigned") or 0) >= 1
    assert _changes(first, src, "lost") == _changes(second, src, "lost") == 0

    second.stop()
    assert wait_for(lambda: _held(first, src) == 2, timeout=30)
    first.stop()
    assert _held(first, src) is None  # not a run's partitions once it ended

"""Assignment's rebalance callbacks after the shutdown settled every lane.

Pure logic: the consumer, the publisher, flow control, commits and the lag gauge are
stand-ins that record what they are asked (the broker tests exercise them for real).
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from confluent_kafka import TopicPartition

import streamguard as sg
from streamguard.runtime.assignment import Assignment


def _assignment(events: list[str], rebalanced: Callable[[str], None] | None = None) -> Assignment:
    # flush returns what is still unacknowledged: None would keep a settle waiting out
    # its whole deadline (20 s with the default shutdown_timeout).
    publisher = SimpleNamespace(flush=lambda timeout: 0, writable=True, topic="orders.dlq")

    def release(parts: list[int]) -> list[int]:
        events.append(f"release {parts}")
        return []

    flow = SimpleNamespace(release=release)
    committer = SimpleNamespace(
        commit=lambda lanes, asynchronous, final=False: None, forget=lambda parts: None
    )
    lag = SimpleNamespace(forget=lambda parts: None)
    lane = SimpleNamespace(
        partition=0,
        close=lambda: None,
        give_up=lambda: None,
        cancel=lambda: None,
        abandon_by=lambda deadline: None,
    )
    return Assignment(
        SimpleNamespace(spec=SimpleNamespace(names=lambda: {"service": "Svc", "topic": "t"})),  # type: ignore[arg-type]
        publisher,  # type: ignore[arg-type]
        sg.ServiceOptions(),
        flow,  # type: ignore[arg-type]
        committer,  # type: ignore[arg-type]
        lag,  # type: ignore[arg-type]
        on_assigned=lambda parts: events.append(f"on_assign {parts}"),
        on_revoked=lambda parts: events.append(f"on_revoke {parts}"),
        new_lane=lambda part: lane,  # type: ignore[arg-type,return-value]
        rebalanced=rebalanced,
    )


def _settled(events: list[str]) -> Assignment:
    assignment = _assignment(events)
    consumer: Any = None
    assignment.on_assign(consumer, [TopicPartition("orders", 0)])
    assignment.lanes[0] = SimpleNamespace(  # type: ignore[assignment]
        partition=0,
        close=lambda: None,
        give_up=lambda: None,
        wait_idle=lambda timeout: True,
        unacknowledged_dead_letters=lambda: 0,
    )
    assignment.settle_all()
    events.clear()
    return assignment


def test_partitions_lost_as_the_consumer_closes_reach_no_hook_after_the_shutdown() -> None:
    """close() serves a session expiry that the last poll did not: its lost partitions
    were settled by the shutdown already, and on_stop ran. on_revoke must not run after
    on_stop (what it tears down, on_stop released), as a revoke at close does not."""
    events: list[str] = []
    assignment = _settled(events)
    consumer: Any = None
    assignment.on_lost(consumer, [TopicPartition("orders", 0)])
    assignment.on_revoke(consumer, [TopicPartition("orders", 0)])
    assert events == []


def test_an_empty_assignment_does_not_count_as_assigned() -> None:
    """A member of a group with more members than partitions gets on_assign with no
    partitions: it must stay "assigned": false (/readyz 503), which the runbook gives as
    the sign of too many replicas; one that was given a partition counts from then on,
    also after a rebalance leaves it none."""
    events: list[str] = []
    assignment = _assignment(events)
    consumer: Any = None
    assignment.on_assign(consumer, [])
    assert not assignment.assigned_once
    assert events == ["on_assign []"]  # the hook still hears of it
    assignment.on_assign(consumer, [TopicPartition("orders", 0)])
    assert assignment.assigned_once
    assignment.on_assign(consumer, [])
    assert assignment.assigned_once


def test_each_change_of_the_assignment_is_counted_until_the_shutdown() -> None:
    """streamguard_rebalances_total hears of every assignment (an empty one too: the
    member took part in a rebalance) and every loss; once the shutdown settled, the
    revoke and loss that close() serves are no change of a running member's."""
    events: list[str] = []
    changes: list[str] = []
    assignment = _assignment(events, changes.append)
    consumer: Any = None
    assignment.on_assign(consumer, [TopicPartition("orders", 0)])
    assignment.on_lost(consumer, [TopicPartition("orders", 0)])
    assignment.on_assign(consumer, [])
    assert changes == ["assigned", "lost", "assigned"]
    assignment.settle_all()
    assignment.on_lost(consumer, [TopicPartition("orders", 0)])
    assignment.on_revoke(consumer, [TopicPartition("orders", 0)])
    assert changes == ["assigned", "lost", "assigned"]


def test_a_revoke_or_loss_of_no_partitions_is_no_change() -> None:
    """A member holding no partition is handed an empty revoke (the eager protocol's
    each rebalance) or an empty loss (its session expired while idle): it gave up
    nothing, so neither ``revoked`` nor ``lost`` counts (StreamguardPartitionsLost would
    fire for a member that lost nothing). Its empty assignment still counts."""
    events: list[str] = []
    changes: list[str] = []
    assignment = _assignment(events, changes.append)
    consumer: Any = None
    assignment.on_assign(consumer, [])
    assignment.on_revoke(consumer, [])
    assignment.on_lost(consumer, [])
    assert changes == ["assigned"]


def test_a_change_is_counted_before_the_partitions_gauge_shows_it() -> None:
    """streamguard_assigned_partitions counts the lanes; a reader (a scrape, or a test
    that waits for the gauge and then reads the counter) that sees the new gauge must
    see the change in streamguard_rebalances_total too. An assignment counted after its
    lanes appeared left a moment when it did not (a test read ``assigned`` 0 there)."""
    events: list[str] = []
    lanes_when_counted: list[tuple[str, int]] = []

    def rebalanced(change: str) -> None:
        lanes_when_counted.append((change, len(assignment.lanes)))

    assignment = _assignment(events, rebalanced)
    consumer: Any = None
    assignment.on_assign(consumer, [TopicPartition("orders", 0)])
    assignment.on_lost(consumer, [TopicPartition("orders", 0)])
    assignment.on_assign(consumer, [TopicPartition("orders", 0)])
    # A loss (as a revoke) is counted while its lanes are still there; an assignment
    # before its lanes are.
    assert lanes_when_counted == [("assigned", 0), ("lost", 1), ("assigned", 0)]

"""A guarded agent loses nothing when its worker is killed or its group rebalances."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from faust.contrib.asgi import faust_app_running

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from streamguard.faust import guarded_agent
from tests.faust.conftest import run_app, until
from tests.runtime.conftest import committed, order, wait_for

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[2]


def handled_lines(path: Path) -> list[tuple[int, int]]:
    if not path.exists():
        return []
    pairs = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:  # a line cut by the kill is incomplete: not counted
            pairs.append((int(parts[0]), int(parts[1])))
    return pairs


def test_kill_and_restart_loses_nothing(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    send_orders: Callable[..., None],
    tmp_path: Path,
) -> None:
    """A worker SIGKILLed mid-stream and started again handles every event at least
    once, and the group's committed offsets reach the end."""
    src = topic_factory("orders", partitions=2)
    total = 200
    send_orders(src, total, key=lambda i: f"customer-{i % 7}")
    group = unique("billing")
    out = tmp_path / "handled.txt"

    def start() -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "tests.faust.worker", bootstrap, src, group]
        return subprocess.Popen(
            [*argv, str(tmp_path / "data"), str(out)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    first = start()
    try:
        assert wait_for(lambda: len(handled_lines(out)) >= 40, 60), "the worker did not start"
    finally:
        first.kill()
        first.wait(10)
    at_kill = len(handled_lines(out))
    assert at_kill < total, "the kill came too late to test anything"

    second = start()
    try:

        def done() -> bool:
            offsets = committed(bootstrap, group, src)
            return sum(offsets.values()) == total

        assert wait_for(done, 90), f"committed {committed(bootstrap, group, src)}"
    finally:
        second.terminate()
        try:
            second.wait(15)
        except subprocess.TimeoutExpired:
            second.kill()
            second.wait(10)
    handled = handled_lines(out)
    per_partition = committed(bootstrap, group, src)
    expected = {(p, o) for p, end in per_partition.items() for o in range(end)}
    assert set(handled) == expected  # every event, duplicates allowed (at least once)


def test_rebalance_during_a_retry_hands_the_event_over(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    make_app: Callable[..., Any],
    send_orders: Callable[..., None],
) -> None:
    """When a second worker joins while an event waits for its retry, the rebalance
    completes without waiting for the retry budget, and the event is handled after it
    (by whichever worker owns its partition), never lost or dead-lettered."""
    src = topic_factory("orders", partitions=2)
    send_orders(src, 20, key=lambda i: f"customer-{i % 5}")
    group = unique("billing")
    patient = sg.RetryPolicy(attempts=20, base_delay=2.0, max_delay=2.0, max_budget_ms=25_000)
    first, second = make_app(group), make_app(group)
    joined: list[float] = []
    failures: list[tuple[int, int]] = []
    handled: list[tuple[str, int, int]] = []
    stuck: dict[str, int] = {}

    def handler_for(name: str, app: Any) -> Any:
        async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> None:
            # One event of the first worker fails until its assignment changes.
            if name == "a" and (
                not stuck or (stuck["p"], stuck["o"]) == (ctx.partition, ctx.offset)
            ):
                stuck.setdefault("generation", app.consumer_generation_id)
                if stuck["generation"] == app.consumer_generation_id:
                    stuck.update(p=ctx.partition, o=ctx.offset)
                    failures.append((ctx.partition, ctx.offset))
                    raise sg.TransientError("downstream is down")
            handled.append((name, ctx.partition, ctx.offset))

        bill.__qualname__ = f"bill_{name}"
        return bill

    a = guarded_agent(first, src, contract=OrderPlaced, retry=patient)(handler_for("a", first))
    guarded_agent(second, src, contract=OrderPlaced, retry=patient)(handler_for("b", second))

    async def scenario() -> None:
        assert await until(lambda: bool(failures), 30)
        async with AsyncExitStack() as stack:
            joined.append(time.monotonic())
            await stack.enter_async_context(faust_app_running(second, stop_timeout=20))
            assert await until(lambda: second.consumer.assignment() != set(), 20), (
                "the rebalance did not complete"
            )
            took = time.monotonic() - joined[0]
            assert took < 15, f"the rebalance took {took:.1f} s"  # the budget is 25 s

            def all_committed() -> bool:
                return sum(committed(bootstrap, group, src).values()) == 20

            assert await until(all_committed, 30), committed(bootstrap, group, src)
        await asyncio.sleep(0)

    run_app(first, scenario, timeout=90)
    assert (stuck["p"], stuck["o"]) in {(p, o) for _, p, o in handled}
    assert {(p, o) for _, p, o in handled} == {
        (p, o) for p, end in committed(bootstrap, group, src).items() for o in range(end)
    }
    assert a.registry.get_sample_value(
        "streamguard_messages_total",
        {"runtime": "faust", "topic": src, "outcome": "dead_lettered"},
    ) in (None, 0.0)


def test_a_rebalance_commits_what_was_acked_before_it(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    make_app: Callable[..., Any],
) -> None:
    """Events acked before a rebalance, but not yet committed by Faust's commit
    interval, are committed by the rebalance and not handled again after it, while an
    event that waits for its retry (and those behind it) is handed over. (Faust forgets
    the acked offsets of revoked partitions before its own revoke-time commit, so every
    event acked in the last commit interval was delivered again.)"""
    src = topic_factory("orders", partitions=2)
    total = 20
    ends = {0: 6, 1: 14}  # events per partition
    producer = sg.GuardedProducer(bootstrap)
    for i in range(total):
        producer.send(src, order(i), key=f"customer-{i}", partition=0 if i < ends[0] else 1)
    producer.flush()
    group = unique("billing")
    # No interval commit within the test: only the rebalance can commit the acks.
    first = make_app(group, broker_commit_interval=60)
    second = make_app(group, broker_commit_interval=60)
    retry = sg.RetryPolicy(attempts=50, base_delay=0.2, max_delay=0.2, max_budget_ms=20_000)
    handled: list[tuple[int, int]] = []
    stuck: dict[str, int] = {}  # the generation in which partition 1's offset 3 fails

    def handler_for(name: str, app: Any) -> Any:
        async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> None:
            # On the first worker, partition 1's offset 3 fails until the rebalance.
            if name == "a" and (ctx.partition, ctx.offset) == (1, 3):
                stuck.setdefault("generation", app.consumer_generation_id)
                if stuck["generation"] == app.consumer_generation_id:
                    raise sg.TransientError("downstream is down")
            handled.append((ctx.partition, ctx.offset))

        bill.__qualname__ = f"bill_{name}"
        return bill

    guarded_agent(first, src, contract=OrderPlaced, retry=retry)(handler_for("a", first))
    guarded_agent(second, src, contract=OrderPlaced, retry=retry)(handler_for("b", second))

    async def scenario() -> None:
        # Partition 0 acked, and partition 1 up to its offset 3, waiting in its retry.
        assert await until(lambda: bool(stuck) and len(handled) == ends[0] + 3, 30), handled
        before = {0: ends[0], 1: 3}
        assert dict(Counter(p for p, _ in handled)) == before
        assert committed(bootstrap, group, src) == {}  # acked, not committed yet
        async with faust_app_running(second, stop_timeout=20):
            assert await until(lambda: second.consumer.assignment() != set(), 20), (
                "the rebalance did not complete"
            )
            assert await until(lambda: len(set(handled)) == total, 20), "not all handled"
            # Redeliveries come within a fetch of the new assignment.
            await until(lambda: len(handled) > total, 3)
            assert committed(bootstrap, group, src) == before  # by the rebalance

    run_app(first, scenario, timeout=90)
    again = sorted(tp for tp, n in Counter(handled).items() if n > 1)
    assert not again, f"handled again after the rebalance: {again}"


def test_a_worker_leaving_cleanly_does_not_redeliver_what_the_other_acked(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    make_app: Callable[..., Any],
    send_orders: Callable[..., None],
) -> None:
    """When one of two workers stops cleanly, the one that stays keeps its partition
    across the rebalance without handling again what it acked before it."""
    src = topic_factory("orders", partitions=2)
    group = unique("billing")
    # No interval commit within the test: only the stop and the rebalance commit.
    first = make_app(group, broker_commit_interval=60)
    second = make_app(group, broker_commit_interval=60)
    handled: list[tuple[int, int]] = []

    def handler_for(name: str) -> Any:
        async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> None:
            handled.append((ctx.partition, ctx.offset))

        bill.__qualname__ = f"bill_{name}"
        return bill

    guarded_agent(first, src, contract=OrderPlaced)(handler_for("a"))
    guarded_agent(second, src, contract=OrderPlaced)(handler_for("b"))

    def owned(app: Any) -> set[Any]:
        return {tp for tp in app.consumer.assignment() if tp.topic == src}

    async def scenario() -> None:
        assert await until(lambda: len(owned(first)) == 2, 20)
        async with faust_app_running(second, stop_timeout=20):
            both = await until(lambda: len(owned(first)) == len(owned(second)) == 1, 20)
            assert both, "the second worker did not get a partition"
            send_orders(src, 40, key=lambda i: f"customer-{i % 7}")
            assert await until(lambda: len(handled) == 40, 20), len(handled)
        assert await until(lambda: len(owned(first)) == 2, 20), "no rebalance after the stop"
        await until(lambda: len(handled) > 40, 3)  # redeliveries come within a fetch
        assert sum(committed(bootstrap, group, src).values()) == 40

    run_app(first, scenario, timeout=90)
    again = sorted(tp for tp, n in Counter(handled).items() if n > 1)
    assert not again, f"handled again after the rebalance: {again}"

"""A guarded agent loses nothing when its worker is killed or its group rebalances."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
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
from tests.runtime.conftest import committed, wait_for

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

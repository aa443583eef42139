"""A guarded Faust agent's metrics match an account kept without them, as a
``ConsumerService``'s do (tests/runtime/test_metrics_differential.py): a seeded mix of
valid and poison records, transient and permanent failures, run through the real
broker, then the registry compared with the DLQ and its headers, the group's committed
offsets and the handler's own log."""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from streamguard.faust import guarded_agent
from tests.faust.conftest import run_app, until
from tests.runtime.conftest import committed, dlq_headers
from tests.runtime.test_metrics_differential import (
    ATTEMPTS,
    PARTITIONS,
    PLANNED_REASONS,
    SLOW,
    Planned,
    expected_counts,
    metric_labels,
    plan_records,
    produce,
    read_to_end,
)

pytestmark = pytest.mark.broker

RECORDS = 30
# kind -> weight. "flaky<k>" fails transiently k times, then succeeds. No tombstones:
# an agent has no tombstone handler, so one is a decode_error, as "garbage" is.
MIX = {"ok": 4, "violation": 2, "garbage": 2, "flaky1": 2, "flaky2": 2, "doomed": 1, "permanent": 2}


def plan(seed: int) -> list[Planned]:
    return plan_records(random.Random(seed), MIX, RECORDS)


@pytest.mark.parametrize("partition_buffer", [1000, 1], ids=["buffered", "held"])
def test_agent_metrics_match_an_independent_account(
    bootstrap: str,
    topic_factory: Callable[..., str],
    make_app: Callable[..., Any],
    partition_buffer: int,
) -> None:
    """Counters, histogram and gauges against the broker's and the handler's account."""
    seed = int(os.environ.get("SG_DIFFERENTIAL_SEED", "0")) + 100
    planned = plan(seed)
    src = topic_factory("orders", partitions=PARTITIONS)
    where = produce(bootstrap, src, planned)
    ends = {p: max(o for q, o in where if q == p) + 1 for p in range(PARTITIONS)}
    sleeps = {f"{p.kind}-{i}": p.sleep for i, p in enumerate(planned)}
    calls: Counter[tuple[int, int]] = Counter()
    succeeded: list[tuple[int, int]] = []
    timed: list[float] = []
    failed = [0]  # calls that raised a transient error

    app = make_app()
    group = str(app.conf.id)
    registry = CollectorRegistry()

    @guarded_agent(
        app,
        src,
        contract=OrderPlaced,
        retry=sg.RetryPolicy(attempts=ATTEMPTS, base_delay=0.01, max_delay=0.03),
        drift_sample=1,
        registry=registry,
        partition_buffer=partition_buffer,
    )
    async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        calls[(ctx.partition, ctx.offset)] += 1
        kind = event.customer_id.split("-")[0]
        if kind == "permanent":
            raise sg.PermanentError("closed account")
        failures = {"flaky1": 1, "flaky2": 2, "doomed": 1 << 30}.get(kind, 0)
        if calls[(ctx.partition, ctx.offset)] <= failures:
            failed[0] += 1
            raise TimeoutError("upstream timed out")
        slept = sleeps[event.customer_id]
        if slept:
            await asyncio.sleep(slept)
        succeeded.append((ctx.partition, ctx.offset))
        timed.append(slept)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"runtime": "faust", **labels})

    def expected() -> dict[tuple[str, str], float]:
        dead = read_to_end(bootstrap, f"{src}.dlq")
        reasons = Counter(dlq_headers(d)["sg-dlq-reason"] for d in dead)
        dead_at = {
            (int(h["sg-dlq-original-partition"]), int(h["sg-dlq-original-offset"]))
            for h in map(dlq_headers, dead)
        }
        assert len(set(succeeded)) == len(succeeded), f"seed {seed}: a record handled twice"
        assert len(dead_at) == len(dead), f"seed {seed}: a record dead-lettered twice"
        assert dead_at | set(succeeded) == set(where), f"seed {seed}: a record without outcome"
        planned_reasons = Counter(
            PLANNED_REASONS.get(planned[i].kind, "handled") for i in where.values()
        )
        assert planned_reasons.pop("handled") == len(succeeded), f"seed {seed}"
        assert planned_reasons == reasons, f"seed {seed}"
        return expected_counts(
            handled=len(succeeded),
            reasons=reasons,
            transient=failed[0],
            timed=len(timed),
            planned=planned,
            breaker_opened=0,  # an agent has no circuit breaker
        )

    def exposed(keys: Any) -> dict[tuple[str, str], float | None]:
        return {
            (name, extra): value(name, **metric_labels(name, extra, src)) for name, extra in keys
        }

    account: dict[tuple[str, str], float] = {}
    seen: dict[tuple[str, str], float | None] = {}

    async def scenario() -> None:
        # All final: the group's committed offsets reach the end of every partition.
        assert await until(lambda: committed(bootstrap, group, src) == ends, 15), (
            f"seed {seed}: committed {committed(bootstrap, group, src)}, ends {ends}"
        )
        account.update(await asyncio.to_thread(expected))
        # Handled counts reach the registry 50 ms after a lane runs dry.
        await until(lambda: exposed(account) == account, 3)
        seen.update(exposed(account))
        below = value("streamguard_handler_seconds_bucket", topic=src, le="0.025")
        assert below is not None
        assert below <= sum(1 for s in timed if s < SLOW)
        total = value("streamguard_handler_seconds_sum", topic=src)
        assert total is not None
        assert total >= sum(timed) - 0.001 * len(timed)

    run_app(app, scenario, timeout=30)
    differences = {k: (v, account[k]) for k, v in seen.items() if v != account[k]}
    assert not differences, f"seed {seed} (exposed, expected): {differences}"
    # Stopped: the counters stay as they were, and the agent is no longer ready.
    counters = [k for k in account if k[0].endswith(("_total", "_count"))]
    assert exposed(counters) == {k: seen[k] for k in counters}
    assert value("streamguard_ready") == 0
    # Unlike a ConsumerService's, the agent's gauges stay after it stops, at 0; it has
    # no handler-concurrency series (docs/consumer.md, *ConsumerService or a guarded
    # Faust agent*).
    gauges = [k for k in account if k not in counters and k[0] != "streamguard_ready"]
    assert exposed(gauges) == dict.fromkeys(gauges, 0)
    for name in ("handlers_in_flight", "handlers_limit", "waiting_for_key"):
        assert value(f"streamguard_{name}", topic=src) is None


def test_slow_handlers_reach_the_metrics_while_their_partition_has_a_backlog(
    bootstrap: str,
    topic_factory: Callable[..., str],
    make_app: Callable[..., Any],
    send_orders: Callable[..., None],
) -> None:
    """What slow handlers finished reaches the counters and the histogram within about
    half a second, as in a ``ConsumerService`` (docs/consumer.md, *Metrics and health*),
    not only when the partition's backlog is through: a throughput panel would show a
    busy partition as stalled, and a hung handler's alert sign ("inflight above 0 while
    streamguard_messages_total stands still") would fire on a slow one."""
    src = topic_factory("orders")
    events = 40
    send_orders(src, events)
    app = make_app()
    handled: list[int] = []

    @guarded_agent(app, src, contract=OrderPlaced)
    async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        await asyncio.sleep(0.05)  # 2 s for the backlog
        handled.append(ctx.offset)

    def value(name: str, **labels: str) -> float:
        found = bill.registry.get_sample_value(name, {"runtime": "faust", "topic": src, **labels})
        return 0.0 if found is None else found

    async def scenario() -> None:
        assert await until(lambda: len(handled) >= 5, 20)
        await asyncio.sleep(0.7)  # past a half-second fold, with the backlog not through
        assert len(handled) < events
        assert bill._lanes[0].queue
        done = len(handled)
        assert value("streamguard_messages_total", outcome="handled") >= done - 12
        assert value("streamguard_handler_seconds_count") >= done - 12
        assert await until(lambda: committed(bootstrap, app.conf.id, src).get(0) == events, 20)

    run_app(app, scenario, timeout=30)


def test_handler_seconds_leave_out_the_sinks(
    bootstrap: str,
    topic_factory: Callable[..., str],
    make_app: Callable[..., Any],
    send_orders: Callable[..., None],
) -> None:
    """``streamguard_handler_seconds`` times the handler only, as in a
    ``ConsumerService`` (docs/operations.md, *StreamguardHandlerLatencyHigh*): a sink
    slow to confirm a result holds its event back, but is not the handler's latency."""
    src = topic_factory("orders")
    events = 3
    send_orders(src, events)
    app = make_app()
    slow = 0.3

    async def confirm_slowly(result: str) -> None:
        await asyncio.sleep(slow)

    @guarded_agent(app, src, contract=OrderPlaced, sink=[confirm_slowly])
    async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> str:
        return str(event.order_id)

    def value(name: str) -> float | None:
        return bill.registry.get_sample_value(name, {"runtime": "faust", "topic": src})

    async def scenario() -> None:
        assert await until(lambda: committed(bootstrap, app.conf.id, src).get(0) == events, 20)
        assert await until(lambda: value("streamguard_handler_seconds_count") == events, 2)
        total = value("streamguard_handler_seconds_sum")
        assert total is not None
        assert total < slow

    run_app(app, scenario, timeout=30)


def test_what_was_handled_reaches_the_metrics_while_the_next_event_retries(
    topic_factory: Callable[..., str],
    make_app: Callable[..., Any],
    send_orders: Callable[..., None],
) -> None:
    """Events handled before one that is retrying are counted while it waits, as a
    ``ConsumerService`` folds its counts when a retry ends the batch. Before, a lane that
    went from a success straight into a retry's backoff kept them until its next
    success: for the retry budget, or for as long as a schema registry outage lasts."""
    src = topic_factory("orders", partitions=1)
    send_orders(src, 3)
    app = make_app()
    failures: list[int] = []
    patient = sg.RetryPolicy(attempts=100, base_delay=0.5, max_delay=0.5, max_budget_ms=20_000)

    @guarded_agent(app, src, contract=OrderPlaced, retry=patient)
    async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        if ctx.offset == 0:
            await asyncio.sleep(0.2)  # the next events are queued when it is done
        if ctx.offset == 1:
            failures.append(ctx.attempt)
            raise sg.TransientError("downstream is down")

    def value(name: str, **labels: str) -> float:
        found = bill.registry.get_sample_value(name, {"runtime": "faust", "topic": src, **labels})
        return 0.0 if found is None else found

    async def scenario() -> None:
        assert await until(lambda: len(failures) >= 1, 20)
        assert await until(lambda: value("streamguard_messages_total", outcome="handled") == 1, 2)
        assert value("streamguard_handler_seconds_count") == 1

    run_app(app, scenario, timeout=30)

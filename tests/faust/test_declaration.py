"""A guarded agent refuses, at decoration, what cannot work, and its metrics fit in."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from faust.sensors.prometheus import setup_prometheus_sensors
from prometheus_client import CollectorRegistry, generate_latest

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from streamguard.faust import guarded_agent


async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> None:
    return None


@pytest.fixture
def make_app(unique: Callable[[str], str], tmp_path: Path) -> Callable[..., Any]:
    """An app that is declared but never started: these tests need no broker."""

    def make(name: str | None = None, **settings: Any) -> Any:
        app_id = name or unique("declared")
        return faust.App(app_id, broker="kafka://127.0.0.1:1", datadir=str(tmp_path), **settings)

    return make


def test_retry_budget_over_half_the_rebalance_timeout_is_refused(
    make_app: Callable[..., Any],
) -> None:
    """A policy that may hold events longer than half the rebalance timeout is refused
    with the limit and both ways to fix it."""
    app = make_app(broker_rebalance_timeout=20)
    policy = sg.RetryPolicy(attempts=5, max_budget_ms=15_000)
    with pytest.raises(sg.ConfigurationError) as info:
        guarded_agent(app, "orders", contract=OrderPlaced, retry=policy)(bill)
    text = str(info.value)
    assert "broker_rebalance_timeout is 20 s" in text
    assert "lower max_budget_ms to 10000 or less" in text


def test_default_policy_fits_faust_defaults(make_app: Callable[..., Any]) -> None:
    """The default RetryPolicy fits under Faust's default rebalance timeout."""
    agent = guarded_agent(make_app(), "orders", contract=OrderPlaced)(bill)
    assert agent.dead_letter_topic == "orders.dlq"
    assert agent.retry == sg.RetryPolicy()


def test_blocking_handler_is_refused(make_app: Callable[..., Any]) -> None:
    """A plain def handler is refused: it would block Faust's event loop."""

    def blocking(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        return None

    with pytest.raises(sg.ConfigurationError, match="async def"):
        guarded_agent(make_app(), "orders", contract=OrderPlaced)(blocking)  # type: ignore[arg-type]


def test_a_handler_async_only_inside_a_plain_wrapper_needs_functools_wraps(
    make_app: Callable[..., Any],
) -> None:
    """A plain def wrapper of an async def that drops ``__wrapped__`` is refused with
    the fix (functools.wraps), and a handler with a yield is refused as a generator."""

    async def base(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        return None

    def unwrapped(event: OrderPlaced, ctx: sg.MessageContext) -> Any:
        return base(event, ctx)

    async def generator(event: OrderPlaced, ctx: sg.MessageContext) -> Any:
        yield None

    app = make_app()
    with pytest.raises(sg.ConfigurationError, match=r"must keep __wrapped__: functools\.wraps"):
        guarded_agent(app, "orders", contract=OrderPlaced)(unwrapped)
    with pytest.raises(sg.ConfigurationError, match="is a generator"):
        guarded_agent(app, "orders", contract=OrderPlaced)(generator)


def test_bad_declarations_are_refused(make_app: Callable[..., Any]) -> None:
    """Invalid topic names (the default DLQ's too), a DLQ equal to the source, a
    non-contract, buffer or drift-sample sizes below one, and a transient type that
    is not an Exception (never retried: it crashes the worker) are refused."""
    app = make_app()
    with pytest.raises(sg.ConfigurationError, match="partition_buffer must be at least 1"):
        guarded_agent(app, "orders", contract=OrderPlaced, partition_buffer=0)(bill)
    with pytest.raises(sg.ConfigurationError, match="drift_sample must be at least 1"):
        guarded_agent(app, "orders", contract=OrderPlaced, drift_sample=0)(bill)
    with pytest.raises(sg.ConfigurationError, match="not a valid Kafka topic name"):
        guarded_agent(app, "bad name!", contract=OrderPlaced)(bill)
    with pytest.raises(sg.ConfigurationError, match="must differ"):
        guarded_agent(app, "orders", contract=OrderPlaced, dead_letter_topic="orders")(bill)
    with pytest.raises(sg.ConfigurationError, match="default dead-letter topic"):
        guarded_agent(app, "o" * 247, contract=OrderPlaced)(bill)  # + ".dlq" is too long
    long_source = guarded_agent(app, "o" * 247, contract=OrderPlaced, dead_letter_topic="o.dlq")
    assert long_source(bill).dead_letter_topic == "o.dlq"
    with pytest.raises(sg.ConfigurationError, match=r"sg\.Contract"):
        guarded_agent(app, "orders", contract=dict)(bill)  # type: ignore[arg-type]
    with pytest.raises(sg.ConfigurationError, match="a base for contracts"):
        guarded_agent(app, "orders", contract=sg.Contract)(bill)
    with pytest.raises(sg.ConfigurationError, match="KeyboardInterrupt, which is not"):
        guarded_agent(app, "orders", contract=OrderPlaced, transient=(KeyboardInterrupt,))(bill)


def test_metrics_share_names_and_live_beside_faust_sensors(make_app: Callable[..., Any]) -> None:
    """Guarded agents register the consumer runtime's metric names with runtime="faust",
    once per registry, next to Faust's own Prometheus sensors even for an app named
    "streamguard"."""
    app = make_app("streamguard")
    registry = CollectorRegistry()
    setup_prometheus_sensors(app, registry=registry)
    first = guarded_agent(app, "orders", contract=OrderPlaced, registry=registry)(bill)

    async def refund(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        return None

    second = guarded_agent(app, "refunds", contract=OrderPlaced, registry=registry)(refund)
    assert first.metrics is second.metrics
    text = generate_latest(registry).decode()
    for topic in ("orders", "refunds"):
        series = f'streamguard_messages_total{{outcome="handled",runtime="faust",topic="{topic}"}}'
        assert series in text
    assert "streamguard_messages_received_total" in text  # Faust's own sensor


def test_agents_on_one_topic_add_up_their_gauges(make_app: Callable[..., Any]) -> None:
    """Two guarded agents of one app on the same topic share its series: the inflight
    and paused-partition gauges count both agents' partitions, not the last one's."""
    app = make_app()

    async def audit(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        return None

    billing = guarded_agent(app, "orders", contract=OrderPlaced)(bill)
    auditing = guarded_agent(app, "orders", contract=OrderPlaced)(audit)
    billing._lanes[0] = SimpleNamespace(inflight=5, waiting=True, paused_tp=None)
    auditing._lanes[0] = SimpleNamespace(inflight=2, waiting=False, paused_tp=None)
    labels = {"runtime": "faust", "topic": "orders"}
    assert billing.registry.get_sample_value("streamguard_inflight", labels) == 7
    assert billing.registry.get_sample_value("streamguard_paused_partitions", labels) == 1


def test_a_second_agent_of_the_same_name_is_refused(make_app: Callable[..., Any]) -> None:
    """Faust keeps one agent per name: a second guarded agent with the first one's name
    (the handler's, by default, as when one handler is declared for several topics)
    would replace it silently, and the first topic would never be consumed."""
    app = make_app()
    first = guarded_agent(app, "orders", contract=OrderPlaced)(bill)
    with pytest.raises(sg.ConfigurationError, match="pass name="):
        guarded_agent(app, "refunds", contract=OrderPlaced)(bill)
    other = guarded_agent(app, "refunds", contract=OrderPlaced, name="refunds")(bill)
    assert {first.name, other.name} == set(app.agents)

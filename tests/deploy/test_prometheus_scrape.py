"""A real Prometheus server scrapes a real service and reads the counts it produced."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from confluent_kafka import Producer

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from streamguard.devbroker import free_port
from tests.deploy.conftest import ROOT, PrometheusServer
from tests.deploy.test_alert_rules import EXPECTED_ALERTS
from tests.runtime.conftest import Running, order, wait_for

PROMQL_START = ("streamguard_", "sum", "rate", "increase", "histogram_quantile", "up{")


def runbook_queries() -> list[str]:
    """The PromQL lines of docs/operations.md's code blocks, trailing comments removed."""
    text = (ROOT / "docs" / "operations.md").read_text()
    lines = [
        line.split("  #", 1)[0].strip()
        for block in re.findall(r"```\n(.*?)```", text, re.DOTALL)
        for line in block.splitlines()
    ]
    return [line for line in lines if line.startswith(PROMQL_START)]


@pytest.mark.broker
def test_prometheus_scrapes_message_outcomes(
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Producer,
    prometheus_server: Callable[[int], PrometheusServer],
) -> None:
    """Three valid orders and one poison message reach Prometheus as handled=3 and
    dead_lettered=1 (decode_error), with the target up, every alert rule healthy and
    every query of the runbook accepted."""
    src = topic_factory("orders")
    group = unique("billing")
    for i in range(3):
        raw_producer.produce(src, order(i).model_dump_json().encode(), key=b"k%d" % i)
    raw_producer.produce(src, b"{not json", key=b"poison")
    raw_producer.flush(10)

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            return None

    metrics_port = free_port()
    running = start_service(Billing, metrics_port=metrics_port)
    assert wait_for(
        lambda: (
            running.metric("streamguard_messages_total", topic=src, outcome="dead_lettered") == 1
        )
    ), f"the service did not finish the messages: {running.error}"

    prometheus = prometheus_server(metrics_port)
    expected = {"handled": 3.0, "dead_lettered": 1.0}
    outcomes = f'streamguard_messages_total{{job="streamguard",topic="{src}"}}'
    assert wait_for(lambda: prometheus.query(outcomes, "outcome") == expected, 45, 0.5), (
        f"Prometheus saw {prometheus.query(outcomes, 'outcome')}, expected {expected}; "
        f"its log:\n{prometheus.log_tail()}"
    )

    assert prometheus.query('up{job="streamguard"}', "instance") == {
        f"127.0.0.1:{metrics_port}": 1.0
    }
    reasons = f'streamguard_dead_letters_total{{topic="{src}"}}'
    # Every reason's series exists from the start (at zero), so rate() sees the first.
    assert prometheus.query(reasons, "reason") == {
        "decode_error": 1.0,
        "oversize": 0.0,
        "contract_violation": 0.0,
        "permanent_error": 0.0,
        "retries_exhausted": 0.0,
        "schema_drift": 0.0,
    }
    handled = f'streamguard_handler_seconds_count{{topic="{src}"}}'
    assert prometheus.query(handled, "topic") == {src: 3.0}

    def rule_health() -> list[tuple[str, str]]:
        data = prometheus.api("rules")
        if data is None:
            return []
        return [(r["name"], r["health"]) for g in data["groups"] for r in g["rules"]]

    assert wait_for(
        lambda: (
            {name for name, _ in rule_health()} == EXPECTED_ALERTS
            and all(h == "ok" for _, h in rule_health())
        ),
        15,
        0.5,
    ), f"alert rules did not all evaluate: {rule_health()}"
    queries = runbook_queries()
    assert len(queries) >= 10
    refused = [q for q in queries if prometheus.api("query", query=q) is None]
    assert not refused, f"Prometheus refused the runbook's queries: {refused}"
    running.stop()
    assert not running.error

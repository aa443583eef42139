"""The alert rules, evaluated by a real Prometheus on a real service in trouble.

promtool's unit tests (alerts.test.yml) feed each rule synthetic series; here the
service itself is driven into an outage and Prometheus evaluates each rule's own
expression (without its ``for:``, which would take minutes) on what it scraped.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

import pytest

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from streamguard.devbroker import free_port
from tests.deploy.conftest import ROOT, PrometheusServer
from tests.deploy.test_alert_rules import EXPECTED_ALERTS
from tests.runtime.conftest import Running, order, wait_for

RUNBOOK = (ROOT / "docs" / "operations.md").read_text()


def alert_exprs(prometheus: PrometheusServer) -> dict[str, str]:
    """Each alert rule's expression, as the server loaded it from alerts.yml."""
    data = prometheus.api("rules", type="alert")
    if data is None:
        return {}
    return {r["name"]: r["query"] for g in data["groups"] for r in g["rules"]}


def active(prometheus: PrometheusServer, exprs: dict[str, str]) -> set[str]:
    """The alerts whose expression has a result now (would fire after its ``for:``)."""
    return {
        name
        for name, expr in exprs.items()
        if (prometheus.api("query", query=expr) or {}).get("result")
    }


def runbook_section(alert: str) -> str:
    match = re.search(rf"^## {alert}\n(.*?)(?=^## |\Z)", RUNBOOK, re.M | re.S)
    assert match, f"docs/operations.md has no section {alert}"
    return match.group(1)


@pytest.mark.broker
def test_an_open_breaker_raises_its_alerts_and_each_leads_to_its_section(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    prometheus_server: Callable[[int], PrometheusServer],
) -> None:
    """A healthy service raises no alert. When its dependency goes down, the breaker
    opens: StreamguardCircuitBreakerOpen, and with it StreamguardNotReady and
    StreamguardPartitionsPausedLong (the breaker pauses every partition). The on-call
    reader may get any of them first, so each one's runbook section leads to the
    breaker's."""
    src = topic_factory("orders", partitions=2)
    group = unique("billing")
    down = threading.Event()

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        retry = sg.RetryPolicy(attempts=1000, base_delay=0.01, max_delay=0.05)
        transient = (TimeoutError,)
        breaker = sg.CircuitBreaker(min_calls=5, cool_down=60.0)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            if down.is_set():
                raise TimeoutError("the database is down")

    metrics_port = free_port()
    running = start_service(Billing, metrics_port=metrics_port)
    prometheus = prometheus_server(metrics_port)
    assert wait_for(prometheus.sees_ready, 45, 0.5), (
        f"Prometheus did not see the service ready: {running.error}\n{prometheus.log_tail()}"
    )
    exprs = alert_exprs(prometheus)
    assert set(exprs) == EXPECTED_ALERTS, exprs
    # A member starved of CPU past the tests' 2 s session loses its partitions, which
    # this alert then rightly reports: the machine's doing, not the service's health.
    del exprs["StreamguardPartitionsLost"]

    producer = sg.GuardedProducer(bootstrap)  # schema headers: no drift
    for i in range(4):
        producer.send(src, order(i), key=f"customer-{i}")
    producer.flush()
    handled = f'streamguard_messages_total{{topic="{src}",outcome="handled"}}'
    assert wait_for(lambda: prometheus.query(handled, "topic") == {src: 4.0}, 30, 0.5)
    assert active(prometheus, exprs) == set(), "alerts raised by a healthy service"

    down.set()
    for i in range(4, 24):
        producer.send(src, order(i), key=f"customer-{i}")
    producer.flush()
    outage = {
        "StreamguardCircuitBreakerOpen",
        "StreamguardNotReady",
        "StreamguardPartitionsPausedLong",
    }
    assert wait_for(lambda: active(prometheus, exprs) == outage, 30, 0.5), (
        f"alerts raised in the outage: {sorted(active(prometheus, exprs))}"
    )
    for alert in outage - {"StreamguardCircuitBreakerOpen"}:
        assert "(#streamguardcircuitbreakeropen)" in runbook_section(alert), (
            f"the runbook's {alert} section does not lead to StreamguardCircuitBreakerOpen"
        )
    running.stop()
    assert not running.error

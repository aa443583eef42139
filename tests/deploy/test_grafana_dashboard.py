"""The Grafana dashboard is well formed, documented, and every panel's query has data.

Grafana cannot run here, so its structure is checked against what Grafana requires of a
provisioned dashboard, and each query is run against a real Prometheus scraping a real
service: a panel whose metric or label does not exist returns nothing and fails.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from streamguard.devbroker import free_port
from streamguard.observe.metrics import ServiceMetrics
from tests.deploy.conftest import ROOT, SERVICE_LABEL, PrometheusServer
from tests.runtime.conftest import Running, order, wait_for

DASHBOARD_PATH = ROOT / "deploy" / "grafana" / "streamguard.json"
DASHBOARD: dict[str, Any] = json.loads(DASHBOARD_PATH.read_text())
RUNBOOK = ROOT / "docs" / "operations.md"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
FILTERS = ("job", "service", "topic")
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range"}
GRID_WIDTH = 24


def panels() -> list[dict[str, Any]]:
    return list(DASHBOARD["panels"])


def variables() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in DASHBOARD["templating"]["list"]}


def referenced_variables(text: str) -> set[str]:
    """Names used as ``$name`` or ``${name}`` in ``text``."""
    return {a or b for a, b in re.findall(r"\$\{(\w+)\}|\$(\w+)", text)}


def exprs() -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel."""
    for panel in panels():
        for target in panel["targets"]:
            yield panel["title"], target["expr"]


def test_dashboard_has_the_structure_grafana_provisions() -> None:
    """The JSON has a uid, a title, a schema version with datasource references by uid,
    panels with unique ids, and a grid layout without overlaps."""
    assert re.fullmatch(r"[a-z0-9-]{1,40}", DASHBOARD["uid"])
    assert DASHBOARD["title"]
    # 36 is the first schema version whose datasource references are {type, uid}.
    assert 36 <= DASHBOARD["schemaVersion"] <= 41
    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels():
        grid = panel["gridPos"]
        assert min(grid["w"], grid["h"]) > 0, panel["title"]
        assert grid["x"] + grid["w"] <= GRID_WIDTH, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_every_panel_queries_the_datasource_variable() -> None:
    """Each panel and target reads from ${datasource}, a Prometheus datasource variable, so
    the dashboard imports into any Grafana without editing."""
    source = variables()["datasource"]
    assert source["type"] == "datasource"
    assert source["query"] == "prometheus"
    for panel in panels():
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]


def test_dashboard_is_templated_by_job_service_and_topic() -> None:
    """job, service and topic are multi-value query variables defaulting to all, and every
    variable a query uses is defined."""
    defined = variables()
    for name in FILTERS:
        var = defined[name]
        assert var["type"] == "query"
        assert var["datasource"] == DATASOURCE
        assert var["multi"], name
        assert var["includeAll"], name
        assert var["allValue"] == ".*", name
        assert re.fullmatch(rf"label_values\(.+, {name}\)", var["query"]["query"])
    for title, expr in exprs():
        unknown = referenced_variables(expr) - set(defined) - GRAFANA_BUILTINS
        assert not unknown, f"{title} uses undefined variables {sorted(unknown)}"
        assert 'job=~"$job"' in expr, title
        assert 'service=~"$service"' in expr, title
    for var in defined.values():
        query = var["query"] if isinstance(var["query"], str) else var["query"]["query"]
        assert referenced_variables(query) <= set(defined), var["name"]


def test_dashboard_queries_only_metrics_streamguard_exports() -> None:
    """Every streamguard_* series a panel queries is one ServiceMetrics registers."""
    registry = CollectorRegistry()
    ServiceMetrics(registry)
    exported = {family.name for family in registry.collect()}
    for title, expr in exprs():
        for name in re.findall(r"\bstreamguard_[a-z_]+", expr):
            family = re.sub(r"_(total|bucket|count|sum)$", "", name)
            assert family in exported, f"{title} queries {name}, which streamguard does not export"


def test_per_topic_panels_keep_services_apart() -> None:
    """A panel that groups by topic keeps the ``service`` label too: with the service
    filter at All, two consumer groups reading one topic showed as one (the larger of
    their lags, one latency for a slow and a busy fast service), as the alerts did."""
    for title, expr in exprs():
        for labels in re.findall(r"\bby \(([^)]*)\)", expr):
            names = {name.strip() for name in labels.split(",")}
            if "topic" in names:
                assert "service" in names, f"{title}: by ({labels}) merges services"


def test_every_panel_is_documented_with_its_question() -> None:
    """docs/operations.md's dashboard table lists each panel, in order, with the question
    it answers."""
    section = RUNBOOK.read_text().split("\n## The dashboard\n", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| \*\*(.+?)\*\* \| (.+?) \|", section, re.M)
    assert [title for title, _ in documented] == [panel["title"] for panel in panels()]
    assert all(question.rstrip().endswith("?") for _, question in documented)


def promql_for(expr: str, job: str, service: str, topic: str) -> str:
    """A panel's query as Grafana sends it with one value selected per variable."""
    values = {"job": job, "service": service, "topic": topic, "__rate_interval": "1m"}
    return re.sub(r"\$(\w+)", lambda m: values[m.group(1)], expr)


def label_values_query(query: str) -> tuple[str, str]:
    """``label_values(SELECTOR, LABEL)`` as (selector, label)."""
    match = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
    assert match, query
    return match.group(1), match.group(2)


@pytest.mark.broker
def test_every_panel_query_returns_data_from_a_real_service(
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Producer,
    prometheus_server: Callable[[int], PrometheusServer],
) -> None:
    """With a service that handled, retried, dead-lettered and saw drift, scraped by a real
    Prometheus, each variable lists the service's values and each panel query, with those
    values selected, returns at least one sample that is a number."""
    src = topic_factory("orders", partitions=2)
    group = unique("billing")

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        retry = sg.RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)
        transient = (TimeoutError,)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            if event.customer_id.startswith("flaky-") and ctx.attempt == 1:
                raise TimeoutError("simulated dependency timeout")

    metrics_port = free_port()
    running = start_service(Billing, metrics_port=metrics_port)
    prometheus = prometheus_server(metrics_port)
    # Send only once Prometheus has a sample from before, so every rate() has an increase.
    assert wait_for(prometheus.sees_ready, 45, 0.5), (
        f"Prometheus did not see the service ready: {running.error}\n{prometheus.log_tail()}"
    )

    # Plain JSON without streamguard's schema headers also counts as drift
    # (no_schema_headers), so these messages feed every panel. Drift series appear with
    # their first occurrence, so a second wave gives rate() an increase to see.
    outcomes = f'streamguard_messages_total{{job="streamguard",topic="{src}"}}'
    for wave in (1, 2):
        for i in range(6):
            customer = "flaky-c" if i == 0 else f"c{i}"
            value = order(wave * 10 + i, customer_id=customer).model_dump_json().encode()
            raw_producer.produce(src, value, key=b"k%d" % i)
        raw_producer.produce(src, b"{not json", key=b"poison")
        raw_producer.flush(10)
        expected = {"handled": 6.0 * wave, "dead_lettered": 1.0 * wave}
        assert wait_for(lambda e=expected: prometheus.query(outcomes, "outcome") == e, 45, 0.5), (
            f"Prometheus saw {prometheus.query(outcomes, 'outcome')}, expected {expected}; "
            f"service error: {running.error}; its log:\n{prometheus.log_tail()}"
        )
    lag = f'streamguard_consumer_lag{{job="streamguard",topic="{src}"}}'
    assert wait_for(lambda: len(prometheus.query(lag, "partition")) == 2, 30, 0.5)

    selected = {"job": "streamguard", "service": SERVICE_LABEL, "topic": src}
    for name, value in selected.items():
        raw = variables()[name]["query"]["query"]
        selector, label = label_values_query(promql_for(raw, **selected))
        listed = prometheus.api(f"label/{label}/values", **{"match[]": selector})
        assert listed is not None, f"Prometheus refused the variable {name}'s query"
        assert value in listed, f"variable {name} lists {listed}"

    empty = []
    for title, expr in exprs():
        query = promql_for(expr, **selected)
        data = prometheus.api("query", query=query)
        values = [float(s["value"][1]) for s in (data or {"result": []})["result"]]
        if not any(math.isfinite(v) for v in values):
            empty.append(f"{title}: {query} -> {data}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
    running.stop()
    assert not running.error

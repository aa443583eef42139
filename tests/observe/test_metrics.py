"""The service's metric families expose the series that rate() and alerts depend on."""

from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry

from streamguard.observe.metrics import HANDLER_BUCKETS, ServiceMetrics


def test_start_series_exposes_the_handler_histogram_at_zero() -> None:
    """Before any message, a started topic has every handler bucket, sum and count at 0,
    so rate() over the histogram sees the first batch (the latency panel and alert)."""
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry)
    metrics.start_series("orders", ["decode_error"])
    buckets = {
        sample.labels["le"]: sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "streamguard_handler_seconds_bucket"
        and sample.labels["topic"] == "orders"
    }
    assert len(buckets) == len(HANDLER_BUCKETS) + 1
    assert set(buckets.values()) == {0.0}
    assert (
        registry.get_sample_value(
            "streamguard_handler_seconds_count", {"runtime": "consumer", "topic": "orders"}
        )
        == 0
    )
    assert (
        registry.get_sample_value(
            "streamguard_handler_seconds_sum", {"runtime": "consumer", "topic": "orders"}
        )
        == 0
    )


def test_a_guarded_agents_commit_and_breaker_series_stay_at_zero() -> None:
    """A guarded Faust agent has no circuit breaker and does not commit: as
    docs/consumer.md says, its commit-failure and breaker series exist at 0, so the
    dashboard's breaker panel shows a closed breaker for it rather than no data (the
    state gauge used to appear only when a ConsumerService's breaker set it)."""
    registry = CollectorRegistry()
    ServiceMetrics(registry, runtime="faust").start_series("orders", [])
    topic = {"runtime": "faust", "topic": "orders"}
    assert registry.get_sample_value("streamguard_breaker_state", topic) == 0
    assert registry.get_sample_value("streamguard_breaker_opened_total", topic) == 0
    assert registry.get_sample_value("streamguard_retries_deferred_total", topic) == 0
    assert registry.get_sample_value("streamguard_commit_failures_total", {"runtime": "faust"}) == 0


def test_started_histogram_counts_observations_on_top_of_zero() -> None:
    """Observations after start_series add to the zero series instead of replacing it."""
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry)
    metrics.start_series("orders", [])
    metrics.handler_seconds.observe_many("orders", [0.002, 0.3])
    assert metrics.handler_seconds.count("orders") == 2
    labels = {"runtime": "consumer", "topic": "orders", "le": "0.0025"}
    assert registry.get_sample_value("streamguard_handler_seconds_bucket", labels) == 1


def test_services_and_agents_share_a_registrys_families() -> None:
    """A second service, or a guarded Faust agent, in one registry shares its families
    (prometheus-client refuses a second family of one name), and streamguard_ready
    holds for a runtime only while every owner of that runtime is ready."""

    class Owner:
        def __init__(self, ready: bool) -> None:
            self.ready = ready

    registry = CollectorRegistry()
    first, second = ServiceMetrics(registry), ServiceMetrics(registry)
    agents = ServiceMetrics(registry, runtime="faust")
    first.messages.labels("orders", "handled").inc()
    second.messages.labels("refunds", "handled").inc(2)
    agents.messages.labels("orders", "handled").inc(3)
    second.handler_seconds.observe_many("refunds", [0.002])

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert (
        value("streamguard_messages_total", runtime="consumer", topic="orders", outcome="handled")
        == 1
    )
    assert (
        value("streamguard_messages_total", runtime="consumer", topic="refunds", outcome="handled")
        == 2
    )
    assert (
        value("streamguard_messages_total", runtime="faust", topic="orders", outcome="handled") == 3
    )
    assert value("streamguard_handler_seconds_count", runtime="consumer", topic="refunds") == 1
    a, b, agent = Owner(True), Owner(False), Owner(True)
    first.track_ready(a, lambda owner: owner.ready)
    second.track_ready(b, lambda owner: owner.ready)
    agents.track_ready(agent, lambda owner: owner.ready)
    assert value("streamguard_ready", runtime="consumer") == 0
    assert value("streamguard_ready", runtime="faust") == 1
    b.ready = True
    assert value("streamguard_ready", runtime="consumer") == 1
    b.ready = False
    del b  # a service that is gone no longer counts
    gc.collect()
    assert value("streamguard_ready", runtime="consumer") == 1
    del a  # with no service left, none is ready: the registry may outlive them all
    gc.collect()
    assert value("streamguard_ready", runtime="consumer") == 0

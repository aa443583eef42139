"""The service's metric families expose the series that rate() and alerts depend on."""

from __future__ import annotations

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


def test_started_histogram_counts_observations_on_top_of_zero() -> None:
    """Observations after start_series add to the zero series instead of replacing it."""
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry)
    metrics.start_series("orders", [])
    metrics.handler_seconds.observe_many("orders", [0.002, 0.3])
    assert metrics.handler_seconds.count("orders") == 2
    labels = {"runtime": "consumer", "topic": "orders", "le": "0.0025"}
    assert registry.get_sample_value("streamguard_handler_seconds_bucket", labels) == 1

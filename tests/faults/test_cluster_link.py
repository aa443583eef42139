"""ClusterLink reads reachability from librdkafka statistics and gives up on time."""

from __future__ import annotations

import json
import logging

import pytest

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from streamguard.runtime.connectivity import ClusterLink


def _stats(*brokers: tuple[str, int]) -> str:
    return json.dumps(
        {"brokers": {f"b{i}": {"state": s, "rxidle": idle} for i, (s, idle) in enumerate(brokers)}}
    )


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_connection_heard_from_recently_means_reachable() -> None:
    """One UP connection with a recent receive is enough, whatever the others say."""
    link = ClusterLink(2.0, None, lambda away: None, service="billing", topic="orders")
    link.on_stats(_stats(("INIT", -1), ("UP", 5_000_000), ("UP", 300_000)))
    assert link.reachable


def test_silent_or_down_connections_mean_unreachable_then_reachable_again() -> None:
    """Only silent (stalled) or not-UP connections: unreachable; a fresh receive: back."""
    link = ClusterLink(2.0, None, lambda away: None, service="billing", topic="orders")
    link.on_stats(_stats(("UP", 2_500_000), ("APIVERSION_QUERY", -1)))
    assert not link.reachable
    link.on_stats(_stats(("TRY_CONNECT", -1)))
    assert not link.reachable
    link.on_stats(_stats(("UP", 10_000)))
    assert link.reachable
    assert link.away_since is None


def test_gives_up_once_after_the_timeout_and_never_without_one() -> None:
    """give_up runs once, when the cluster has been away for broker_timeout; with no
    timeout it never runs."""
    clock, calls = Clock(), []
    link = ClusterLink(1.0, 5.0, calls.append, clock=clock, service="billing", topic="orders")
    patient = ClusterLink(1.0, None, calls.append, clock=clock, service="billing", topic="orders")
    for _ in range(12):
        link.on_stats(_stats(("DOWN", -1)))
        patient.on_stats(_stats(("DOWN", -1)))
        clock.now += 1.0
    assert calls == [5.0]


def test_before_the_cluster_was_first_reached_the_link_neither_reports_nor_gives_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Until watch() (the service's start-up reached the cluster), a link tracks
    reachability but logs no outage and never gives up: startup_timeout decides, and
    its "fetching and dead-lettering wait" line came just before the service exited."""
    clock, calls = Clock(), []
    link = ClusterLink(
        1.0, 2.0, calls.append, clock=clock, watching=False, service="billing", topic="orders"
    )
    caplog.set_level(logging.INFO, logger="streamguard.runtime")
    for _ in range(5):
        link.on_stats(_stats(("TRY_CONNECT", -1)))
        clock.now += 1.0
    assert not link.reachable
    assert calls == []
    assert caplog.records == []
    link.watch()
    assert link.reachable
    for _ in range(3):
        link.on_stats(_stats(("DOWN", -1)))
        clock.now += 1.0
    assert calls == [2.0]
    link.on_stats(_stats(("UP", 10_000)))
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "cannot reach the cluster",
        "cluster reachable again",
    ]
    # Whose link: a process may run several services.
    assert [(r.service, r.topic) for r in caplog.records] == [("billing", "orders")] * 2


def test_garbage_statistics_change_nothing() -> None:
    """A report that is not JSON leaves the state as it was."""
    link = ClusterLink(1.0, None, lambda away: None, service="billing", topic="orders")
    link.on_stats("not json")
    assert link.reachable


@pytest.mark.parametrize("interval", [0, 20_000])
def test_a_statistics_interval_that_would_blind_the_link_is_refused(interval: int) -> None:
    """At 0 librdkafka sends no statistics (the cluster's loss would never show); above
    broker_silence (10 s by default) a healthy cluster would look lost between reports.
    The service says so when it is built, naming the setting."""

    class Billing(sg.ConsumerService):
        topic = "orders"
        contract = OrderPlaced
        group_id = "billing"

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

    config = {"statistics.interval.ms": interval}
    with pytest.raises(sg.ConfigurationError, match=f"statistics.interval.ms={interval}"):
        Billing(bootstrap_servers="127.0.0.1:9", kafka_config=config)
    Billing(bootstrap_servers="127.0.0.1:9", kafka_config={"statistics.interval.ms": 500})


def test_a_heartbeat_slower_than_broker_silence_is_refused() -> None:
    """With every partition paused (the DLQ or a dependency down) or none assigned, a
    healthy consumer hears from the cluster only at each heartbeat: one slower than
    broker_silence made the link log "cannot reach the cluster" and /readyz report the
    cluster unreachable with nothing wrong, as the option's docstring warned."""

    class Billing(sg.ConsumerService):
        topic = "orders"
        contract = OrderPlaced
        group_id = "billing"

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

    slow = {"heartbeat.interval.ms": "12000", "session.timeout.ms": "45000"}
    with pytest.raises(sg.ConfigurationError, match=r"heartbeat\.interval\.ms=12000"):
        Billing(bootstrap_servers="127.0.0.1:9", kafka_config=slow)

    class Patient(Billing):
        options = sg.ServiceOptions(broker_silence=15.0)

    Patient(bootstrap_servers="127.0.0.1:9", kafka_config=slow)
    Billing(bootstrap_servers="127.0.0.1:9", kafka_config={"heartbeat.interval.ms": 3000})


def test_a_session_timeout_not_above_the_heartbeat_is_refused() -> None:
    """session.timeout.ms=2000 with librdkafka's default 3 s heartbeat was taken: the
    group expired the consumer before each heartbeat, and the service lost and got back
    its partitions every 2 s with no error but librdkafka's SESSTMOUT lines."""

    class Billing(sg.ConsumerService):
        topic = "orders"
        contract = OrderPlaced
        group_id = "billing"

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

    with pytest.raises(sg.ConfigurationError, match=r"session\.timeout\.ms=2000 .*=3000"):
        Billing(bootstrap_servers="127.0.0.1:9", kafka_config={"session.timeout.ms": 2000})
    fast = {"session.timeout.ms": "2000", "heartbeat.interval.ms": "500"}
    Billing(bootstrap_servers="127.0.0.1:9", kafka_config=fast)


@pytest.mark.parametrize(
    ("silence", "setting"),
    [(2.0, r"heartbeat\.interval\.ms=3000"), (0.5, r"statistics\.interval\.ms=1000")],
)
def test_a_broker_silence_under_a_default_interval_is_refused(silence: float, setting: str) -> None:
    """Only a heartbeat or statistics interval set in kafka_config was checked: with
    broker_silence=2 and librdkafka's 3 s heartbeat, a healthy consumer whose partitions
    were all paused had /readyz report the cluster unreachable for a second of every
    three. The defaults are checked too."""

    class Billing(sg.ConsumerService):
        topic = "orders"
        contract = OrderPlaced
        group_id = "billing"
        options = sg.ServiceOptions(broker_silence=silence)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

    config = {"session.timeout.ms": 6000}
    with pytest.raises(sg.ConfigurationError, match=setting):
        Billing(bootstrap_servers="127.0.0.1:9", kafka_config=config)
    fast = {**config, "heartbeat.interval.ms": 400, "statistics.interval.ms": 400}
    Billing(bootstrap_servers="127.0.0.1:9", kafka_config=fast)

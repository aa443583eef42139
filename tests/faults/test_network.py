"""Network faults between a service and its broker: latency, resets, stalls, refusals.

Each test runs a service against a broker of its own behind ``FaultProxy``, breaks the
connection on purpose while it works, and checks that the service rides through,
reports unready while it cannot fetch or write dead letters, and loses nothing: every
valid record handled, every poison record dead-lettered, commits at the end.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tests.faults.conftest import ProxiedBroker
from tests.faults.workload import (
    Seen,
    Workload,
    commits_at_end,
    dead_lettered_originals,
    new_topic,
    recording_service,
    send_workload,
    start,
)
from tests.runtime.conftest import wait_for

pytestmark = pytest.mark.broker

# Fast fault detection for tests: a healthy consumer here hears from the broker every
# 0.5 s (heartbeats, fetch.wait.max.ms), so 1.5 s of silence means a broken link.
FAST: dict[str, Any] = {"broker_silence": 1.5}


def _check_nothing_lost(net: ProxiedBroker, group: str, seen: Seen, work: Workload) -> None:
    assert wait_for(lambda: work.valid <= seen.handled, timeout=30), (
        f"{len(work.valid - seen.handled)} valid records never handled"
    )
    # Every poison record is in the DLQ; one whose acknowledgement a fault broke may be
    # there twice (dead letters are at least once, like every Kafka write).
    dlq = f"{work.topic}.dlq"
    assert dead_lettered_originals(net.bootstrap, dlq, set(work.poison)) == set(work.poison)
    assert wait_for(lambda: commits_at_end(net.bootstrap, group, work), timeout=20)


def test_latency_slows_the_service_but_loses_nothing(proxied: ProxiedBroker) -> None:
    """With 20 ms added to every chunk either way, every record is still handled or
    dead-lettered once, and the commits reach the end."""
    topic = new_topic(proxied.bootstrap)
    work = send_workload(proxied.bootstrap, topic, valid=200)
    seen = Seen()
    proxied.proxy.latency = 0.02
    running = start(recording_service(topic, "g-latency", seen, **FAST), proxied.bootstrap)
    try:
        _check_nothing_lost(proxied, "g-latency", seen, work)
        assert running.service.health()["ready"]
    finally:
        running.stop()
    assert not running.error
    assert seen.calls == len(work.valid), "latency alone must not cause redelivery"


def test_connection_resets_mid_stream_lose_nothing(proxied: ProxiedBroker) -> None:
    """Every connection reset five times while records are handled: the clients
    reconnect, each record is handled (duplicates allowed) or dead-lettered, and the
    commits reach the end."""
    topic = new_topic(proxied.bootstrap)
    work = send_workload(proxied.bootstrap, topic, valid=300)
    seen = Seen()
    running = start(
        recording_service(topic, "g-reset", seen, delay=0.005, **FAST), proxied.bootstrap
    )
    try:
        assert wait_for(lambda: len(seen.handled) >= 20, timeout=20)
        for _ in range(5):
            proxied.proxy.reset()
            time.sleep(0.3)
        _check_nothing_lost(proxied, "g-reset", seen, work)
        assert wait_for(lambda: running.service.health()["ready"], timeout=15)
    finally:
        running.stop()
    assert not running.error
    assert proxied.proxy.accepted > 5, "the clients did not reconnect through the proxy"


def test_a_stalled_connection_makes_the_service_unready_until_it_flows(
    proxied: ProxiedBroker,
) -> None:
    """A connection that goes silent (open, no bytes) is noticed within broker_silence:
    /readyz says broker_reachable false; when bytes flow again the service is ready,
    and nothing is lost."""
    topic = new_topic(proxied.bootstrap)
    work = send_workload(proxied.bootstrap, topic, valid=200)
    seen = Seen()
    running = start(
        recording_service(topic, "g-stall", seen, delay=0.01, **FAST), proxied.bootstrap
    )
    try:
        assert wait_for(lambda: running.service.health()["ready"], timeout=20)
        proxied.proxy.stall()
        assert wait_for(lambda: not running.service.health()["ready"], timeout=10)
        assert running.service.health()["checks"]["broker_reachable"] is False
        time.sleep(1.0)
        assert not running.service.health()["ready"], "ready again while still stalled"
        proxied.proxy.resume()
        assert wait_for(lambda: running.service.health()["ready"], timeout=20)
        _check_nothing_lost(proxied, "g-stall", seen, work)
    finally:
        proxied.proxy.resume()
        running.stop()
    assert not running.error


def test_refused_connections_make_dead_letters_wait_and_the_service_unready(
    proxied: ProxiedBroker,
) -> None:
    """While every connection is refused, dead-letter writes fail (dlq_writable false)
    and the broker is unreachable; once connections are accepted again, the dead
    letters are written, the service is ready, and nothing is lost."""
    topic = new_topic(proxied.bootstrap)
    seen = Seen()
    held, release = threading.Event(), threading.Event()

    def hold_the_first(partition: int, offset: int) -> None:
        # Partition 0's first record is valid and every other record after it poison:
        # held here, none of them is dead-lettered before connections are refused.
        if (partition, offset) == (0, 0):
            held.set()
            release.wait(30)

    running = start(
        recording_service(topic, "g-refuse", seen, delay=0.05, before=hold_the_first, **FAST),
        proxied.bootstrap,
        # Not idempotent: after refused connections the local broker answers an
        # idempotent producer's next writes with PRODUCER_FENCED for good, which Apache
        # Kafka does not (docs/local-broker.md); this test is about the service.
        dead_letter_config={"message.timeout.ms": 1500, "enable.idempotence": False},
        # A session that outlives the refusal: a lost partition's failed dead letters
        # no longer count against the DLQ (its next owner redelivers them), so with the
        # tests' 2 s session the DLQ could look writable again before the check saw it
        # unwritable (seen on a loaded machine). The join takes half of it, 3 s.
        kafka_config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000},
    )
    try:
        assert wait_for(lambda: running.service.health()["ready"], timeout=20)
        # Sent while the proxy accepts. All the poison records are on partition 0, after
        # its first record, which the handler holds: once partition 1 is handled, what
        # is still in flight is partition 0's, so 2 or more means poison records were
        # fetched, and none was dead-lettered yet. Waiting for a count of handled
        # records instead, a loaded machine could refuse connections before a poison
        # record was fetched, or after every dead letter was written: no write failed.
        work = send_workload(proxied.bootstrap, topic, valid=60, poison_every=2)
        second = {(p, o) for p, o in work.valid if p == 1}

        def poison_fetched() -> bool:
            inflight = running.registry.get_sample_value(
                "streamguard_inflight", {"runtime": "consumer", "topic": topic}
            )
            return second <= seen.handled and (inflight or 0) >= 2

        assert (0, 0) in work.valid
        assert all(p == 0 for p, _ in work.poison)
        assert held.wait(20)
        assert wait_for(poison_fetched, timeout=20)
        proxied.proxy.refuse()
        proxied.proxy.reset()
        release.set()  # its dead letters are written while every connection is refused
        # Generous bounds: under a loaded CI machine, statistics and delivery timeouts
        # arrive late; the test is about what happens, not how fast.
        assert wait_for(
            lambda: not running.service.health()["checks"]["broker_reachable"], timeout=20
        )
        assert wait_for(lambda: not running.service.health()["checks"]["dlq_writable"], 20)
        proxied.proxy.refuse(False)
        ok = wait_for(lambda: running.service.health()["ready"], timeout=45)
        assert ok, running.service.health()
        _check_nothing_lost(proxied, "g-refuse", seen, work)
    finally:
        release.set()
        proxied.proxy.refuse(False)
        running.stop()
    assert not running.error

"""FlowControl's decisions, tick by tick: throttle a partition that is full but draining,
pause one that stays full or waits to retry (longer than a refetch takes), resume it
when it may fetch again.

Pure logic: the consumer here only records which partitions were paused and resumed
(tests/runtime/test_backpressure.py runs the same through the broker).
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

import streamguard as sg
from streamguard.runtime.flow import REFETCH_AHEAD, FlowControl
from streamguard.runtime.outcomes import RetryState


class Recorder:
    """Stands in for the consumer's pause(), resume() and seek(), which FlowControl
    calls; a seek of partition 7 fails, as for a partition being revoked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[int]]] = []
        self.sought: list[tuple[int, int, int | None]] = []

    def pause(self, partitions: list[Any]) -> None:
        self.calls.append(("pause", [tp.partition for tp in partitions]))

    def resume(self, partitions: list[Any]) -> None:
        self.calls.append(("resume", [tp.partition for tp in partitions]))

    def seek(self, tp: TopicPartition) -> None:
        if tp.partition == 7:
            raise KafkaException(KafkaError(KafkaError._STATE))
        self.sought.append((tp.partition, tp.offset, tp.leader_epoch))


def _lane(buffered: int = 0, fetched_to: int | None = None) -> SimpleNamespace:
    return SimpleNamespace(buffered=buffered, retry=None, fetched_to=fetched_to)


def _waits(due: float, parked_at: float | None = None, attempt: int = 1) -> RetryState:
    return RetryState(attempt, 0, 0.0, due, parked_at=parked_at)


def _flow() -> tuple[FlowControl, Recorder, SimpleNamespace]:
    consumer = Recorder()
    options = sg.ServiceOptions(max_buffered=100, pause_after=0.25)
    flow = FlowControl(consumer, "orders", options, service="billing")  # type: ignore[arg-type]
    return flow, consumer, _lane()


def test_a_partition_that_keeps_draining_is_throttled_never_paused() -> None:
    """Full, then a little below, then full again, for a whole second: each time it is
    full nothing is fetched (throttled), but it is never paused, since pausing drops
    what librdkafka prefetched for it."""
    flow, consumer, lane = _flow()
    for tick in range(50):  # 20 ms apart: one second
        lane.buffered = 100 if tick % 2 == 0 else 90
        flow.update({0: lane}, now=tick * 0.02, writable=True)  # type: ignore[dict-item]
        assert flow.throttled == (lane.buffered >= 100)
    assert consumer.calls == []
    assert not flow.paused


def test_a_partition_that_stays_full_is_paused_until_it_drains_to_half() -> None:
    flow, consumer, lane = _flow()
    lane.buffered = 100
    flow.update({0: lane}, now=0.0, writable=True)  # type: ignore[dict-item]
    assert flow.throttled
    assert not flow.paused
    flow.update({0: lane}, now=0.3, writable=True)  # type: ignore[dict-item]
    assert consumer.calls == [("pause", [0])]
    assert not flow.throttled  # a paused partition fetches nothing: the others may
    lane.buffered = 70  # draining, but above half: it stays paused
    flow.update({0: lane}, now=0.4, writable=True)  # type: ignore[dict-item]
    assert flow.paused == {0}
    lane.buffered = 50
    flow.update({0: lane}, now=0.5, writable=True)  # type: ignore[dict-item]
    assert consumer.calls == [("pause", [0]), ("resume", [0])]


def test_a_retry_wait_pauses_a_partition_and_resumes_it_a_refetch_ahead_of_the_retry() -> None:
    flow, consumer, lane = _flow()
    lane.buffered, lane.retry = 70, _waits(due=1.0)
    flow.update({0: lane}, now=0.0, writable=True)  # type: ignore[dict-item]
    assert consumer.calls == [("pause", [0])]
    flow.update({0: lane}, now=1.0 - REFETCH_AHEAD - 0.01, writable=True)  # type: ignore[dict-item]
    assert consumer.calls == [("pause", [0])]
    flow.update({0: lane}, now=1.0 - REFETCH_AHEAD + 0.01, writable=True)  # type: ignore[dict-item]
    assert consumer.calls == [("pause", [0]), ("resume", [0])]
    lane.retry = None  # the retry ran: it stays resumed
    flow.update({0: lane}, now=1.1, writable=True)  # type: ignore[dict-item]
    assert consumer.calls == [("pause", [0]), ("resume", [0])]


def test_a_retry_due_sooner_than_a_refetch_does_not_pause_a_partition_unless_it_is_full() -> None:
    """A pause would drop what librdkafka prefetched for the partition, only to fetch
    it again a few milliseconds later; the lane's buffer holds what comes meanwhile."""
    flow, consumer, lane = _flow()
    lane.buffered, lane.retry = 70, _waits(due=0.003)
    flow.update({0: lane}, now=0.0, writable=True)  # type: ignore[dict-item]
    assert consumer.calls == []
    assert not flow.throttled
    lane.buffered = 100  # full while its head waits: it cannot drain, so it is paused
    flow.update({0: lane}, now=0.001, writable=True)  # type: ignore[dict-item]
    assert consumer.calls == [("pause", [0])]


def test_a_message_that_fails_again_keeps_its_partition_paused_until_its_outcome() -> None:
    """Resumed ahead of its first retry only: resuming ahead of every attempt of a
    message that keeps failing would refetch what each new pause drops."""
    flow, consumer, lane = _flow()
    lane.retry = _waits(due=0.2)
    flow.update({0: lane}, now=0.0, writable=True)  # type: ignore[dict-item]
    flow.update({0: lane}, now=0.19, writable=True)  # type: ignore[dict-item]
    assert consumer.calls == [("pause", [0]), ("resume", [0])]
    lane.retry = _waits(due=0.6, attempt=2)  # the retry failed too
    for now in (0.2, 0.58, 0.61):  # even once due: it runs, and may fail again
        flow.update({0: lane}, now=now, writable=True)  # type: ignore[dict-item]
    assert consumer.calls[2:] == [("pause", [0])]
    lane.retry = None  # handled, or dead-lettered
    flow.update({0: lane}, now=0.7, writable=True)  # type: ignore[dict-item]
    assert consumer.calls[2:] == [("pause", [0]), ("resume", [0])]


def test_a_message_parked_by_the_breaker_keeps_its_partition_paused() -> None:
    """A parked message looks again every PARK_WAIT (0.1 s), with no end in sight: its
    partition must not be resumed ahead of each look, only to be paused again."""
    flow, consumer, lane = _flow()
    for tick in range(10):
        now = tick * 0.1
        lane.retry = _waits(due=now + 0.01, parked_at=0.0)
        flow.update({0: lane}, now=now, writable=True)  # type: ignore[dict-item]
    assert consumer.calls == [("pause", [0])]


def test_an_unwritable_dead_letter_topic_pauses_every_partition() -> None:
    flow, consumer, lane = _flow()
    other = _lane()
    lanes: Any = {0: lane, 1: other}
    flow.update(lanes, now=0.0, writable=False)
    assert consumer.calls == [("pause", [0, 1])]
    flow.update(lanes, now=0.1, writable=True)
    assert consumer.calls == [("pause", [0, 1]), ("resume", [0, 1])]


def test_a_resumed_partition_is_sought_to_where_its_lane_s_records_end() -> None:
    """The seek wakes librdkafka's fetcher (see FlowControl.resume). It goes to the
    offset after the last record fetched, with no leader epoch; a partition that has
    fetched nothing is left alone, and one whose seek fails does not stop the others."""
    flow, consumer, lane = _flow()
    lane.fetched_to = 120
    never_read, failing, last = _lane(), _lane(fetched_to=5), _lane(fetched_to=9)
    lanes: Any = {0: lane, 7: failing, 8: never_read, 9: last}
    for each in lanes.values():
        each.retry = _waits(due=1.0)
    flow.update(lanes, now=0.0, writable=True)
    assert consumer.sought == []
    for each in lanes.values():
        each.retry = None
    flow.update(lanes, now=0.1, writable=True)
    assert consumer.calls[-1] == ("resume", [0, 7, 8, 9])
    assert consumer.sought == [(0, 120, None), (9, 9, None)]  # None: no epoch


def test_failed_resume_and_seek_lines_name_the_service_and_topic(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A process may run several services: the lines of a failed seek (a partition
    being revoked) and of a failed resume of revoked partitions say whose they are."""
    flow, consumer, _ = _flow()
    caplog.set_level(logging.DEBUG, logger="streamguard.runtime")
    failing = _lane(buffered=100, fetched_to=5)
    flow.update({7: failing}, now=0.0, writable=True)  # type: ignore[dict-item]
    flow.update({7: failing}, now=1.0, writable=True)  # type: ignore[dict-item]
    assert 7 in flow.paused
    failing.buffered = 0
    flow.update({7: failing}, now=1.1, writable=True)  # type: ignore[dict-item]
    (seek,) = [r for r in caplog.records if r.getMessage() == "seek after resume failed"]
    assert (seek.service, seek.topic) == ("billing", "orders")  # type: ignore[attr-defined]

    def refuse(partitions: list[Any]) -> None:
        raise KafkaException(KafkaError(KafkaError._STATE))

    flow.paused.add(3)
    consumer.resume = refuse  # type: ignore[method-assign]
    assert flow.release([3]) == [3]
    (line,) = [r for r in caplog.records if r.getMessage() == "could not resume revoked partitions"]
    assert (line.service, line.topic) == ("billing", "orders")  # type: ignore[attr-defined]

"""Which offsets a commit sends; no broker: a stub consumer records the calls."""

from __future__ import annotations

import logging
from typing import Any, cast

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry

from streamguard.observe.metrics import ServiceMetrics
from streamguard.runtime.commits import Committer
from streamguard.runtime.lane import PartitionLane


class Calls:
    """A consumer that records its commits and answers none of them."""

    def __init__(self) -> None:
        self.commits: list[tuple[list[tuple[int, int]], bool]] = []

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.commits.append(([(tp.partition, tp.offset) for tp in offsets], asynchronous))


class Lane:
    closed = True  # the client's position is not asked for
    fetched_to = None

    def __init__(self, partition: int, position: int) -> None:
        self.partition = partition
        self.position = position

    def commit_position(self) -> int:
        return self.position


def committer() -> tuple[Committer, Calls]:
    calls = Calls()
    metrics = ServiceMetrics(CollectorRegistry())
    return Committer(cast(Consumer, calls), "t", metrics, service="billing"), calls


def lanes(*lanes: Any) -> list[PartitionLane]:
    return cast(list[PartitionLane], list(lanes))


@pytest.mark.parametrize("asynchronous", [False, True], ids=["revoke", "stop"])
def test_the_final_commit_sends_again_what_an_unacknowledged_async_commit_sent(
    asynchronous: bool,
) -> None:
    """A revoke or shutdown ends with a final commit (the stop's asynchronous, which
    the consumer's close waits for). It skipped an offset that a periodic asynchronous
    commit had just sent: when that one then failed (its callback comes only with a
    later poll, after the partition had gone), the offset was never committed and the
    records were handled again by the next owner or after a restart."""
    commits, calls = committer()
    commits.commit(lanes(Lane(0, 5), Lane(1, 7)), asynchronous=True)
    commits.on_commit(None, [TopicPartition("t", 1, 7)])  # only partition 1's came back
    commits.commit(lanes(Lane(0, 5), Lane(1, 7)), asynchronous=asynchronous, final=True)
    assert calls.commits == [([(0, 5), (1, 7)], True), ([(0, 5)], asynchronous)]


def test_an_unmoved_offset_is_not_sent_again_asynchronously() -> None:
    commits, calls = committer()
    commits.commit(lanes(Lane(0, 5)), asynchronous=True)
    commits.commit(lanes(Lane(0, 5)), asynchronous=True)
    commits.on_commit(None, [TopicPartition("t", 0, 5)])
    commits.commit(lanes(Lane(0, 4)), asynchronous=False)  # never backwards
    assert calls.commits == [([(0, 5)], True)]


def test_the_final_commit_sends_again_an_unacknowledged_offset_past_a_closed_lanes() -> None:
    """On a transactional topic the periodic async commit sends the client's position,
    past the commit marker after the lane's last record; the lane, closed by the revoke,
    then reports its own position, one less. The final synchronous commit skipped the
    partition as "backwards" though the async commit was unacknowledged: when that one
    failed, nothing committed the offset and the records were handled again."""
    commits, calls = committer()
    commits.commit(lanes(Lane(0, 6)), asynchronous=True)  # 6: the client's position
    commits.commit(lanes(Lane(0, 5)), asynchronous=False)  # the closed lane's own
    assert calls.commits == [([(0, 6)], True), ([(0, 6)], False)]
    commits.commit(lanes(Lane(0, 5)), asynchronous=False)  # confirmed now: not again
    assert len(calls.commits) == 2


class Refusing(Calls):
    """A consumer whose commits the group refuses, as during a rebalance."""

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> None:
        super().commit(offsets=offsets, asynchronous=asynchronous)
        raise KafkaException(KafkaError(KafkaError.ILLEGAL_GENERATION))


def test_a_refused_final_commit_says_its_records_come_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A revoke's or shutdown's synchronous commit is not retried (the partitions are
    going): it was logged as "offset commit failed; will retry", which a cold trial's
    rolling restart took for a retry that never came (282 records delivered again)."""
    calls = Refusing()
    metrics = ServiceMetrics(CollectorRegistry())
    commits = Committer(cast(Consumer, calls), "t", metrics, service="billing")
    with caplog.at_level(logging.WARNING, "streamguard.runtime"):
        commits.commit(lanes(Lane(0, 5)), asynchronous=True)
        commits.commit(lanes(Lane(0, 5), Lane(2, 9)), asynchronous=False)
    periodic, final = caplog.records
    assert periodic.getMessage() == "offset commit failed; will retry"
    assert final.getMessage() == (
        "final offset commit failed; records since the last commit come again"
    )
    assert final.partitions == [0, 2]  # type: ignore[attr-defined]
    assert "generation" in final.error  # type: ignore[attr-defined]


def test_a_refused_commit_names_its_service_and_topic(caplog: pytest.LogCaptureFixture) -> None:
    """In a process of several services, some on one topic, both lines tell whose
    commit failed; before, they said only the error, then only the topic."""
    commits = Committer(
        cast(Consumer, Refusing()),
        "refunds.v1",
        ServiceMetrics(CollectorRegistry()),
        service="refunds",
    )
    with caplog.at_level(logging.WARNING, "streamguard.runtime"):
        commits.commit(lanes(Lane(0, 5)), asynchronous=True)
        commits.commit(lanes(Lane(0, 5)), asynchronous=False)
    named = [(vars(r).get("service"), vars(r).get("topic")) for r in caplog.records]
    assert named == [("refunds", "refunds.v1")] * 2


def test_a_refused_stop_commit_says_its_records_come_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The stop's final commit is asynchronous: its refusal comes through the callback,
    in the consumer's close, and nothing retries it after that: said as final."""
    commits, _ = committer()
    refused = KafkaError(KafkaError.REBALANCE_IN_PROGRESS)
    with caplog.at_level(logging.WARNING, "streamguard.runtime"):
        commits.commit(lanes(Lane(0, 5)), asynchronous=True)
        commits.on_commit(refused, [TopicPartition("t", 0, 5)])
        commits.commit(lanes(Lane(0, 5)), asynchronous=True, final=True)
        commits.on_commit(refused, [TopicPartition("t", 0, 5)])
    assert [r.getMessage() for r in caplog.records] == [
        "offset commit failed; will retry",
        "final offset commit failed; records since the last commit come again",
    ]

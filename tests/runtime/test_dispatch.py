"""The poller hands each fetched batch to its partitions' lanes: in fetch order within a
partition, dropping records of partitions no longer assigned, and skipping consumer
errors. No broker: records are built in memory."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Message

from streamguard.runtime.poller import Poller
from streamguard.testing import record


class Lane:
    """Records what it is handed; asks for a worker on its first batch only."""

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.batches: list[list[tuple[int, int]]] = []

    def enqueue(self, batch: list[Any]) -> bool:
        self.batches.append([(m.partition(), m.offset()) for m in batch])
        return len(self.batches) == 1


def poller(*partitions: int) -> tuple[Poller, dict[int, Lane]]:
    lanes = {p: Lane(p) for p in partitions}
    p = Poller.__new__(Poller)  # _dispatch needs the assignment's lanes and the names
    p.assignment = SimpleNamespace(lanes=lanes)  # type: ignore[assignment]
    p._names = {"service": "billing", "topic": "t"}  # named by the line of a consumer error
    return p, lanes


def fetched(*where: tuple[int, int]) -> list[Any]:
    return [record(b"{}", partition=part, offset=off) for part, off in where]


def error(code: int, fatal: bool = False) -> Any:
    return Message(topic="t", partition=0, offset=-1, error=KafkaError(code, fatal=fatal))


def test_one_partition_is_handed_over_whole() -> None:
    """A batch of one partition reaches its lane as fetched."""
    p, lanes = poller(0, 1)
    claimed = p._dispatch(fetched((1, 5), (1, 6), (1, 7)))
    assert claimed == [lanes[1]]
    assert lanes[1].batches == [[(1, 5), (1, 6), (1, 7)]]
    assert lanes[0].batches == []


def test_interleaved_partitions_keep_their_order() -> None:
    """Each lane gets its records in fetch order; lanes in order of first appearance."""
    p, lanes = poller(0, 1, 2)
    claimed = p._dispatch(fetched((2, 1), (0, 1), (2, 2), (0, 2), (0, 3), (2, 3)))
    assert claimed == [lanes[2], lanes[0]]
    assert lanes[2].batches == [[(2, 1), (2, 2), (2, 3)]]
    assert lanes[0].batches == [[(0, 1), (0, 2), (0, 3)]]
    assert p._dispatch(fetched((0, 4))) == []  # already claimed: no second worker
    assert lanes[0].batches[-1] == [(0, 4)]


def test_records_of_an_unassigned_partition_are_dropped() -> None:
    """A partition no longer ours gets nothing: its new owner reads it again."""
    p, lanes = poller(0)
    assert p._dispatch(fetched((3, 1), (0, 1), (3, 2))) == [lanes[0]]
    assert lanes[0].batches == [[(0, 1)]]


def test_errors_are_skipped_and_the_rest_dispatched(caplog: pytest.LogCaptureFixture) -> None:
    """End-of-partition events are ignored, other errors logged, naming the service and
    topic (a process may run several); records still flow."""
    caplog.set_level(logging.WARNING, logger="streamguard.runtime")
    p, lanes = poller(0, 1)
    batch = fetched((1, 1), (0, 1))
    batch[1:1] = [error(KafkaError._PARTITION_EOF), error(KafkaError._TRANSPORT)]
    batch += fetched((1, 2))
    assert p._dispatch(batch) == [lanes[1], lanes[0]]
    assert lanes[1].batches == [[(1, 1), (1, 2)]]
    assert lanes[0].batches == [[(0, 1)]]
    logged = [r.__dict__ for r in caplog.records if r.getMessage() == "consumer error"]
    assert [(r["service"], r["topic"]) for r in logged] == [("billing", "t")]


def test_a_fatal_error_raises() -> None:
    """A fatal consumer error stops the service."""
    p, _ = poller(0)
    with pytest.raises(KafkaException):
        p._dispatch([*fetched((0, 1)), error(KafkaError._FATAL, fatal=True)])

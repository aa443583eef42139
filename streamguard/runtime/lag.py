"""Consumer lag per partition: the high watermark minus the final-outcome position.

The high watermark is the one the last fetch response carried (``cached=True``): it
costs no request, and unlike ListOffsets it is right on every broker. State (where
counting starts for a partition with no outcome yet) belongs to this object and is
touched only by the thread holding the poll lock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping

from confluent_kafka import Consumer, KafkaException, TopicPartition

from streamguard.observe.metrics import ServiceMetrics
from streamguard.runtime.lane import PartitionLane


class LagMonitor:
    """Sets ``streamguard_consumer_lag`` for each assigned partition."""

    def __init__(self, consumer: Consumer, topic: str, metrics: ServiceMetrics) -> None:
        self._consumer = consumer
        self._topic = topic
        self._gauge = metrics.consumer_lag
        self._start: dict[int, int] = {}

    def update(self, lanes: Mapping[int, PartitionLane]) -> None:
        for part, lane in lanes.items():
            tp = TopicPartition(self._topic, part)
            try:
                low, high = self._consumer.get_watermark_offsets(tp, cached=True)
                done = lane.commit_position()
                if done is None:
                    # Nothing reached an outcome since the assignment: what came before
                    # the first fetched record was done by a previous owner.
                    done = lane.first_fetched
                if done is None:
                    done = self._start_of(tp, low)
            except KafkaException:
                continue
            if high < 0 or done is None:
                continue  # no fetch response yet: the high watermark is unknown
            self._gauge.labels(self._topic, str(part)).set(max(0, high - done))

    def _start_of(self, tp: TopicPartition, low: int) -> int | None:
        """The group's committed offset (one request per assignment), else the low mark."""
        start = self._start.get(tp.partition)
        if start is None:
            (committed,) = self._consumer.committed([tp], timeout=2.0)
            if committed.offset >= 0:
                start = int(committed.offset)
            elif low >= 0:
                start = low
            if start is not None:
                self._start[tp.partition] = start
        return start

    def forget(self, partitions: Iterable[int]) -> None:
        """A partition that is no longer ours must not keep reporting a stale lag."""
        for part in partitions:
            self._start.pop(part, None)
            with contextlib.suppress(KeyError):
                self._gauge.remove(self._topic, str(part))

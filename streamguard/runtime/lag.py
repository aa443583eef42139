"""Consumer lag per partition: the high watermark minus the final-outcome position.

The high watermark is the one the last fetch response carried (``cached=True``): it
costs no request, and unlike ListOffsets it is right on every broker. A paused
partition is not fetched, though, so its cached mark stays where the pause found it
while records keep arriving: for those, the broker is asked (ListOffsets), one paused
partition per update and each at most every ``PAUSED_REFRESH`` seconds, and the higher
of both marks is used (ListOffsets can be low on the embedded broker, never high).
State (where counting starts for a partition with no outcome yet, the marks asked for)
belongs to this object and is touched only by the thread holding the poll lock.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Iterable, Mapping

from confluent_kafka import Consumer, KafkaException, TopicPartition

from streamguard.observe.metrics import ServiceMetrics
from streamguard.runtime.lane import PartitionLane

# Seconds between two ListOffsets of one paused partition, and after one that failed
# before the next of any: a cluster that does not answer costs the poll thread one
# PAUSED_QUERY_WAIT per this many seconds, not one per update.
PAUSED_REFRESH = 5.0
PAUSED_QUERY_WAIT = 0.5


class LagMonitor:
    """Sets ``streamguard_consumer_lag`` for each assigned partition."""

    def __init__(
        self,
        consumer: Consumer,
        topic: str,
        metrics: ServiceMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._consumer = consumer
        self._topic = topic
        self._gauge = metrics.consumer_lag
        self._clock = clock
        self._start: dict[int, int] = {}
        self._listed: dict[int, int] = {}  # high marks ListOffsets gave for paused partitions
        self._next_query: dict[int, float] = {}
        self._quiet_until = 0.0

    def update(self, lanes: Mapping[int, PartitionLane], paused: Collection[int] = ()) -> None:
        # One paused partition asked per update: the one asked longest ago, so that
        # every paused partition is refreshed in turn, not the first few of them.
        ours = [p for p in paused if p in lanes]
        if ours:
            self._ask(TopicPartition(self._topic, min(ours, key=self._next_query_at)))
        for part, lane in lanes.items():
            tp = TopicPartition(self._topic, part)
            try:
                low, high = self._consumer.get_watermark_offsets(tp, cached=True)
                high = max(high, self._listed.get(part, -1))
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

    def _next_query_at(self, partition: int) -> float:
        """When the partition may be asked next (0 if never asked): the least is due first."""
        return self._next_query.get(partition, 0.0)

    def _ask(self, tp: TopicPartition) -> None:
        """Ask the broker for a paused partition's high watermark, if it is time to."""
        now = self._clock()
        if now < self._quiet_until or now < self._next_query_at(tp.partition):
            return
        self._next_query[tp.partition] = now + PAUSED_REFRESH
        try:
            marks = self._consumer.get_watermark_offsets(
                tp, timeout=PAUSED_QUERY_WAIT, cached=False
            )
        except KafkaException:
            marks = None
        if marks is None:  # timed out, or refused: the cluster may be away
            self._quiet_until = now + PAUSED_REFRESH
        else:
            self._listed[tp.partition] = max(marks[1], self._listed.get(tp.partition, -1))

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
            self._listed.pop(part, None)
            self._next_query.pop(part, None)
            with contextlib.suppress(KeyError):
                self._gauge.remove(self._topic, str(part))

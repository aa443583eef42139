"""Consumer lag per partition: the high watermark minus the final-outcome position.

The high watermark is the one the last fetch response carried (``cached=True``): it
costs no request, and unlike ListOffsets it is right on every broker. A paused
partition is not fetched, though, so its cached mark stays where the pause found it
while records keep arriving: for those, the broker is asked (ListOffsets), one paused
partition per update and each at most every ``PAUSED_REFRESH`` seconds, and the higher
of both marks is used (ListOffsets can be low on the embedded broker, never high).

``update`` runs in the maintenance tick, on whichever thread polls, and makes no
request: it sets the gauge from what is known and says (``due``) when a request is
wanted. ``refresh`` makes it, on the scheduler's supervisor. A request waits for the
cluster, up to its timeout when the cluster does not answer, and in an async service
the tick often runs on the event loop, which stalled for that long with every handler
on it. Another thread of its own would not help: confluent-kafka (2.16) lets one thread
at a time into a consumer's calls, so the loop's next poll would wait for the request.
The supervisor holds the poll lock meanwhile, and the others' polls skip rather than
wait: the workers and the loop go on with their records, unfetched for that long.

A partition with no outcome yet counts from the group's committed offset, else from where
``auto.offset.reset`` puts the consumer: the low mark (earliest: the history is lag, it
will be consumed), or the first high mark seen (latest: the history is skipped, so it is
not lag). The consumer's position cannot tell where the reset went: librdkafka reports
none until a record is consumed.

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

# Seconds between two ListOffsets of one paused partition, and after a request that
# failed before the next of any: a cluster that does not answer costs the supervisor
# one request's timeout per this many seconds, not one per update.
PAUSED_REFRESH = 5.0
PAUSED_QUERY_WAIT = 0.5
COMMITTED_QUERY_WAIT = 2.0
# librdkafka's names of auto.offset.reset's "latest".
_FROM_LATEST = frozenset({"latest", "largest", "end"})


class LagMonitor:
    """Sets ``streamguard_consumer_lag`` for each assigned partition."""

    def __init__(
        self,
        consumer: Consumer,
        topic: str,
        metrics: ServiceMetrics,
        clock: Callable[[], float] = time.monotonic,
        offset_reset: str = "earliest",
    ) -> None:
        self._consumer = consumer
        self._topic = topic
        self._gauge = metrics.consumer_lag
        self._clock = clock
        # Where counting starts in each partition: the group's committed offset (asked
        # once per assignment), with latest the first high mark seen if it has none;
        # None if it has none (counting then starts at the low mark).
        self._committed: dict[int, int | None] = {}
        self._from_latest = str(offset_reset).lower() in _FROM_LATEST
        self._unstarted: set[int] = set()  # the group's offset is wanted
        self._paused: list[int] = []  # the paused partitions the last update saw
        self._listed: dict[int, int] = {}  # high marks ListOffsets gave for paused partitions
        self._next_query: dict[int, float] = {}
        self._quiet_until = 0.0
        self.due = False  # ``refresh`` has a request to make

    def update(
        self,
        lanes: Mapping[int, PartitionLane],
        paused: Collection[int] = (),
        committed: Mapping[int, int] | None = None,
    ) -> None:
        """Set the gauge from the cached marks and the answers so far (no request).

        ``committed``: the offsets last sent for commit (``Committer.committed``), which
        may be past a lane's own position (transaction markers after its last record).
        """
        self._paused = [p for p in paused if p in lanes]
        for part, lane in lanes.items():
            tp = TopicPartition(self._topic, part)
            try:
                low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            high = max(high, self._listed.get(part, -1))
            done = lane.commit_position()
            sent = committed.get(part) if committed else None
            if sent is not None and (done is None or sent > done):
                done = sent
            if done is None:
                # Nothing reached an outcome since the assignment: what came before
                # the first fetched record was done by a previous owner.
                done = lane.first_fetched
            if done is None:
                done = self._start_of(part, low, high)
            if high < 0 or done is None:
                continue  # no fetch response yet: the high watermark is unknown
            self._gauge.labels(self._topic, str(part)).set(max(0, high - done))
        now = self._clock()
        self.due = now >= self._quiet_until and (
            bool(self._unstarted) or any(now >= self._next_query_at(p) for p in self._paused)
        )

    def refresh(self, lanes: Mapping[int, PartitionLane]) -> None:
        """Make the requests the last update found due; the next update uses the answers.

        Call with the poll lock held, from a thread that may wait (the supervisor):
        each request may take up to its timeout.
        """
        self.due = False
        for part in sorted(self._unstarted):
            tp = TopicPartition(self._topic, part)
            if part in lanes and part not in self._committed and not self._ask_start(tp):
                return  # the cluster does not answer: ask nothing more for now
        self._unstarted.clear()
        # One paused partition per update: the one asked longest ago, so that every
        # paused partition is refreshed in turn, not the first few of them.
        ours = [p for p in self._paused if p in lanes]
        if ours:
            self._ask(TopicPartition(self._topic, min(ours, key=self._next_query_at)))

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

    def _start_of(self, partition: int, low: int, high: int) -> int | None:
        """The group's committed offset (asked once per assignment), else where the reset
        put the consumer; None until both are known (the next ``refresh`` asks for the
        group's offset, a fetch response brings the marks)."""
        if partition not in self._committed:
            self._unstarted.add(partition)
            return None
        committed = self._committed[partition]
        if committed is not None:
            return committed
        if self._from_latest:
            # Reset to the high mark: the first one seen stands for it, and is kept, so
            # that records arriving later are lag until the first of them is fetched.
            if high >= 0:
                self._committed[partition] = high
            return high if high >= 0 else None
        return low if low >= 0 else None

    def _ask_start(self, tp: TopicPartition) -> bool:
        """Ask for the group's committed offset; False if the cluster did not answer."""
        now = self._clock()
        if now < self._quiet_until:
            return False
        try:
            (committed,) = self._consumer.committed([tp], timeout=COMMITTED_QUERY_WAIT)
        except KafkaException:
            self._quiet_until = now + PAUSED_REFRESH
            return False
        self._committed[tp.partition] = committed.offset if committed.offset >= 0 else None
        return True

    def forget(self, partitions: Iterable[int]) -> None:
        """A partition that is no longer ours must not keep reporting a stale lag."""
        for part in partitions:
            self._committed.pop(part, None)
            self._unstarted.discard(part)
            self._listed.pop(part, None)
            self._next_query.pop(part, None)
            with contextlib.suppress(KeyError):
                self._gauge.remove(self._topic, str(part))

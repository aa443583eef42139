"""Commits: each partition's final-outcome prefix, never backwards; a periodic commit
that fails is retried on the next round, a revoke's or shutdown's final one cannot be.

Records a transactional producer wrote are followed by a commit (or abort) marker that
takes an offset and is never delivered, as are aborted records under
``read_committed``. A prefix ends after the last record delivered, so once a partition
has caught up, it stops short of those offsets: the commit would stay one (or more)
behind the partition's end, and the lag gauge above 0, for good. librdkafka moves its
position past what it skipped, so a lane whose every delivered record is final commits
that position instead.

State (the last offset accepted per partition) belongs to this object. It is touched
by the thread holding the poll lock, and by librdkafka's commit callback, which runs
inside that thread's ``consume()`` call, or inside the consumer's ``close()`` once the
stop has taken the lock for good.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from streamguard.observe.metrics import ServiceMetrics
from streamguard.runtime.lane import PartitionLane

log = logging.getLogger("streamguard.runtime")


class Committer:
    """Commits the lanes' commit positions for one topic."""

    def __init__(
        self, consumer: Consumer, topic: str, metrics: ServiceMetrics, *, service: str
    ) -> None:
        self._consumer = consumer
        self._topic = topic
        # Whose commit failed, in its lines: a process may run several services.
        self._names = {"service": service, "topic": topic}
        self._failures = metrics.commit_failures
        self._committed: dict[int, int] = {}
        # Partitions whose last commit was asynchronous and has not been acknowledged
        # (its callback comes only with a later poll): a final commit, a revoke's or
        # the stop's, sends their offset again rather than count on it.
        self._unconfirmed: set[int] = set()
        # Set once the stop's final commit is sent: the callbacks that come after it
        # (in the consumer's close) report failures nothing will retry.
        self._final_sent = False

    @property
    def committed(self) -> Mapping[int, int]:
        """The last offset sent for commit per partition (dropped again if it failed)."""
        return self._committed

    def commit(
        self, lanes: Iterable[PartitionLane], *, asynchronous: bool, final: bool = False
    ) -> None:
        """Commit each lane's final-outcome prefix if it moved since the last commit.

        ``final``: the last commit of these partitions, a revoke's (synchronous) or the
        stop's, which nothing retries: it sends again what an unacknowledged
        asynchronous commit sent, and its failure is reported as final. The stop's is
        asynchronous: the consumer's close waits for it, within a bound of its own (a
        synchronous commit waits without limit while the group coordinator is away).
        """
        final = final or not asynchronous
        offsets: list[TopicPartition] = []
        for lane in lanes:
            position = self._settled(lane)
            last = self._committed.get(lane.partition)
            if position is None:
                continue
            # Never below the last accepted commit, whatever the lane reports.
            if last is not None and position < last:
                # A closed lane reports its own position, not the client's, which an
                # async commit may have sent past transaction markers: that offset is
                # still the one to make sure of, if its commit is unacknowledged.
                if not final or lane.partition not in self._unconfirmed:
                    continue
                position = last
            if position != last or (final and lane.partition in self._unconfirmed):
                offsets.append(TopicPartition(self._topic, lane.partition, position))
                self._committed[lane.partition] = position
        if final and asynchronous:
            self._final_sent = True
        if not offsets:
            return
        try:
            if asynchronous:  # two calls: the client's stubs overload on the literal
                self._consumer.commit(offsets=offsets, asynchronous=True)
                self._unconfirmed.update(tp.partition for tp in offsets)
            else:
                self._consumer.commit(offsets=offsets, asynchronous=False)
                self._unconfirmed.difference_update(tp.partition for tp in offsets)
        except KafkaException as exc:
            self.failed(exc.args[0], offsets, final=final)

    def _settled(self, lane: PartitionLane) -> int | None:
        """The lane's commit position, moved past what the client skipped after it.

        Only when every record ``consume()`` returned for the partition is final (the
        prefix reaches ``fetched_to``) and the lane is open: then the client's position
        can be ahead only by offsets it never delivers (transaction markers, aborted
        records). Both are read with the poll lock held, so no ``consume()`` comes
        between them. A closed lane is left as it is: records fetched after it closed
        were dropped, not handled, and the client's position has passed them too.
        """
        position = lane.commit_position()
        if position is None or position != lane.fetched_to or lane.closed:
            return position
        try:
            (tp,) = self._consumer.position([TopicPartition(self._topic, lane.partition)])
        except KafkaException:
            return position
        # After a seek (a resumed partition) the client reports no position (negative)
        # until it returns a record.
        return tp.offset if tp.offset > position else position

    def on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """librdkafka's commit callback: a failed commit is retried on the next round."""
        failed = [tp for tp in partitions if tp.error is not None]
        if error is not None or failed:
            self.failed(error, failed or partitions, final=self._final_sent)
            return
        for tp in partitions:
            if self._committed.get(tp.partition) == tp.offset:
                self._unconfirmed.discard(tp.partition)

    def failed(
        self, error: KafkaError | None, partitions: list[TopicPartition], final: bool = False
    ) -> None:
        """``final``: a revoke's or the stop's commit, which nothing retries (the
        partitions are going): said so, rather than "will retry"."""
        self._failures.inc()
        reason = error.str() if error else "partition error"
        if final:
            log.warning(
                "final offset commit failed; records since the last commit come again",
                extra={
                    **self._names,
                    "error": reason,
                    "partitions": sorted(tp.partition for tp in partitions),
                },
            )
        else:
            log.warning("offset commit failed; will retry", extra={**self._names, "error": reason})
        for tp in partitions:
            self._committed.pop(tp.partition, None)  # commit again on the next round
            self._unconfirmed.discard(tp.partition)

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions no longer ours: a later owner's commits are not ours to compare."""
        for part in partitions:
            self._committed.pop(part, None)
            self._unconfirmed.discard(part)

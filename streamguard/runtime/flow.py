"""Flow control: when to stop fetching, pause a partition, or resume it.

Backpressure, not buffering. A partition whose buffer is full but still draining is
*throttled* (nothing is fetched for a moment); one that stayed full for
``ServiceOptions.pause_after`` seconds, one whose head message waits to be retried
(see ``REFETCH_AHEAD``), and every partition while the DLQ is unwritable are *paused*,
so the consumer keeps polling and stays in its group while the others flow. Pausing
makes librdkafka drop what it prefetched for the partition, which is why a draining
partition is only throttled. A resumed partition is sought to where its lane's records
end, which wakes librdkafka's fetcher at once (see ``FlowControl.resume``).

All state here belongs to this object and is touched only by the thread holding the
poll lock (the maintenance tick and the rebalance callbacks run there).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from confluent_kafka import Consumer, KafkaException, TopicPartition

from streamguard.runtime.lane import PartitionLane
from streamguard.runtime.options import ServiceOptions

log = logging.getLogger("streamguard.runtime")

# A partition whose message failed once and is retried within this many seconds is not
# paused, and one paused for a longer first wait is resumed at the first tick this close
# to the retry. Pausing makes librdkafka drop what it prefetched for the partition, and
# resuming fetches it again: for a wait of a few milliseconds that costs more than the
# wait (a soak whose retries wait 0-1 ms ran 12-29% faster without those pauses). The
# lane's bounded buffer still holds what arrives meanwhile: a waiting partition whose
# buffer fills is paused at once. Resuming ahead gives a refetch (4-10 ms on the
# embedded broker) time to land; behind a fetch in flight, or when the service polls
# only as the retry falls due, it may still come after the retry. A message that failed
# again keeps its partition paused until it has an outcome, as does one parked by the
# breaker or the retry budget: either may wait a while yet, and resuming ahead of each
# attempt would only refetch what the next pause drops.
REFETCH_AHEAD = 0.05


class FlowControl:
    """Pause, resume and throttle decisions for one consumer's partitions."""

    def __init__(
        self, consumer: Consumer, topic: str, options: ServiceOptions, *, service: str
    ) -> None:
        self._consumer = consumer
        self._topic = topic
        # Whose partitions each line is about: a process may run several services.
        self._names = {"service": service, "topic": topic}
        self._high = options.max_buffered
        self._low = max(1, options.max_buffered // 2)
        self._pause_after = options.pause_after
        self.paused: set[int] = set()
        # When a partition's buffer filled up; cleared as soon as it drains below full, so
        # that only a partition that stays full (stopped draining) is paused.
        self._full_since: dict[int, float] = {}
        self._stuck: set[int] = set()  # paused for staying full, until it drains to half
        self.throttled = False  # some partition is full but draining: fetch nothing
        self.buffered = 0  # records the lanes held at the last tick, fetched and not final

    def update(self, lanes: Mapping[int, PartitionLane], now: float, writable: bool) -> None:
        """Pause and resume partitions for this tick; decide whether to throttle.

        Args:
            now: ``time.monotonic()``, the clock of the lanes' retry waits.
            writable: False pauses every partition (the DLQ cannot be written, or the
                circuit breaker stopped handler calls).
        """
        pause: list[TopicPartition] = []
        resume: list[TopicPartition] = []
        throttled = False
        total = 0
        for part, lane in lanes.items():
            buffered = lane.buffered
            total += buffered
            full = buffered >= self._high
            retry = lane.retry
            waiting = retry is not None and (
                full
                or retry.attempt > 1  # failed again (see REFETCH_AHEAD)
                or retry.parked_at is not None  # parked: looks again every PARK_WAIT
                or retry.due - now > REFETCH_AHEAD
            )
            if full:
                since = self._full_since.setdefault(part, now)
                if now - since >= self._pause_after:
                    self._stuck.add(part)
            else:
                self._full_since.pop(part, None)
                if buffered <= self._low:
                    self._stuck.discard(part)
            stuck = part in self._stuck
            paused = part in self.paused
            if not paused and (stuck or waiting or not writable):
                self.paused.add(part)
                pause.append(TopicPartition(self._topic, part))
            elif paused and not stuck and not waiting and writable:
                self.paused.discard(part)
                resume.append(TopicPartition(self._topic, part))
            elif full and not paused:
                throttled = True
        self.throttled = throttled
        self.buffered = total
        if pause:
            self._consumer.pause(pause)
        if resume:
            self.resume(resume, lanes)

    def resume(self, partitions: list[TopicPartition], lanes: Mapping[int, PartitionLane]) -> None:
        """Resume partitions, and seek each to where its lane's records end, so that
        librdkafka fetches it without waiting for its idle timer.

        librdkafka's broker thread notices a resume only when it next wakes up; while
        every partition it fetches is paused, that is its idle timer, up to a second
        later (measured on the embedded broker: 0.91-1.0 s in ten resumes of fifteen,
        4-10 ms in all fifteen with the seek). A seek reaches that thread at once. A
        fetch request already out to the broker still goes first (see
        ``fetch.wait.max.ms`` in ``CONSUMER_DEFAULTS``).

        The offset is the one after the last record ``consume()`` returned for the
        partition, which is where a resume fetches from: nothing is skipped or read
        twice. It comes from the lane, not from ``position()``, which reports no
        offset after a seek until ``consume()`` returns a record, so a partition paused
        again before that would be left to the timer. The seek carries no leader epoch:
        with one, librdkafka would first ask the broker to validate it (a round trip a
        resume does not make, and a reset to ``auto.offset.reset`` if it fails).
        """
        self._consumer.resume(partitions)
        for tp in partitions:
            offset = lanes[tp.partition].fetched_to
            if offset is None:  # nothing fetched since assigned: the timer wakes it
                continue
            try:
                self._consumer.seek(TopicPartition(self._topic, tp.partition, offset))
            except KafkaException as exc:
                # Only the wake-up is lost: the partition is resumed and fetched
                # within a second. (A partition being revoked, or the consumer closing.)
                log.debug(
                    "seek after resume failed",
                    extra={**self._names, "partition": tp.partition, "error": str(exc)},
                )

    def release(self, partitions: list[int]) -> list[int]:
        """Forget partitions no longer ours, resuming those paused; returns them.

        librdkafka keeps a partition's pause flag across unassign and assign: a
        partition revoked while paused would come back paused, and never be fetched.
        """
        paused = [p for p in partitions if p in self.paused]
        for part in partitions:
            self.paused.discard(part)
            self._full_since.pop(part, None)
            self._stuck.discard(part)
        if paused:
            try:
                self._consumer.resume([TopicPartition(self._topic, p) for p in paused])
            except KafkaException as exc:
                log.warning(
                    "could not resume revoked partitions",
                    extra={**self._names, "error": str(exc)},
                )
        return paused

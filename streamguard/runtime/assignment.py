"""Which partitions are ours: a lane per assigned partition, settled when it goes.

On assign a lane is created. On revoke its in-flight handler (and, under key or no
ordering, its records already fetched) gets ``revoke_timeout`` to finish (then it is
given up on, ``give_up_all``: an async one is cancelled and briefly waited for, and
whatever it still comes to is ignored), its dead letters are awaited and its
final-outcome prefix is committed before the partition moves; nothing after that
prefix is. A *lost* partition (the session expired) may already belong to another
member, so nothing is committed for it: its work is dropped and redelivered. Shutdown
settles every lane the same way, within ``shutdown_timeout``.

The lanes dict is changed only by the rebalance callbacks, which librdkafka runs
inside ``consume()`` on the thread holding the poll lock, and by shutdown, which
holds that lock for good. Other threads read it through ``list()`` snapshots.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from confluent_kafka import Consumer, TopicPartition

from streamguard.runtime.commits import Committer
from streamguard.runtime.deadletters import DeadLetterPublisher
from streamguard.runtime.flow import FlowControl
from streamguard.runtime.lag import LagMonitor
from streamguard.runtime.lane import PartitionLane, give_up_all
from streamguard.runtime.options import ServiceOptions
from streamguard.runtime.pipeline import Pipeline

log = logging.getLogger("streamguard.runtime")

# The longest single wait of a settle: a hurried stop (``hurry``) ends its waits this
# soon at most after it was asked for.
HURRY_CHECK = 0.1


def wait_unless_hurried(
    ready: Callable[[float], bool], deadline: float, hurry: threading.Event
) -> bool:
    """``ready(wait)`` until it is true or ``deadline`` (monotonic) passes, in waits of
    at most ``HURRY_CHECK``: a signal's handler runs between them, and once it set
    ``hurry`` only one more look, without waiting, is taken. Every bounded wait of a
    stop goes through here, so that a second signal ends each of them."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or hurry.is_set():
            return ready(0.0)
        if ready(min(HURRY_CHECK, left)):
            return True


class Assignment:
    """The lanes of the assigned partitions, and the rebalance callbacks that change them."""

    def __init__(
        self,
        pipeline: Pipeline,
        publisher: DeadLetterPublisher,
        options: ServiceOptions,
        flow: FlowControl,
        committer: Committer,
        lag: LagMonitor,
        on_assigned: Callable[[list[int]], None],
        on_revoked: Callable[[list[int]], None],
        new_lane: Callable[[int], PartitionLane] | None = None,
        give_up: Callable[[], None] | None = None,
        finish: Callable[[float, threading.Event], None] | None = None,
        finish_revoked: Callable[[list[PartitionLane], float, threading.Event], None] | None = None,
        hurry: threading.Event | None = None,
        rebalanced: Callable[[str], None] | None = None,
    ) -> None:
        """Args:
        new_lane: builds the lane of a newly assigned partition (worker-thread lanes
            by default; event-loop lanes for services whose handlers run there).
        give_up: called when shutdown stopped waiting for handlers still running.
        finish: on a clean stop, lets the records already fetched reach their
            outcome until the deadline it is given (key or no ordering, see
            ``LoopRunner.finish_fetched``); none: the lanes close at once.
        finish_revoked: the same for a revoke, given its lanes and deadline (see
            ``LoopRunner.finish_revoked``).
        hurry: once set (a second signal), settles wait no more for handlers, fetched
            records or dead letters: what has no outcome yet stays uncommitted.
        rebalanced: told of each change of the assignment, as it is made: "assigned",
            "revoked" or "lost" (``streamguard_rebalances_total``).
        """
        self.lanes: dict[int, PartitionLane] = {}
        self._new_lane = new_lane or (lambda part: PartitionLane(part, pipeline))
        self._give_up = give_up or (lambda: None)
        self._finish = finish
        self._finish_revoked = finish_revoked
        self.hurry = hurry or threading.Event()
        self._rebalanced = rebalanced or (lambda change: None)
        self._pipeline = pipeline
        self._publisher = publisher
        self._options = options
        self._flow = flow
        self._committer = committer
        self._lag = lag
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self.assigned_once = False
        # While a revoke waits for handlers: when that wait ends. The thread that polls
        # is inside it meanwhile, so health counts it as polling until then.
        self.revoke_ends: float | None = None
        self.closed = False  # after shutdown: callbacks from close() change nothing
        # Once shutdown settles: when the stop's documented bound (twice
        # shutdown_timeout from here) runs out; the runner's last waits stay within it.
        self.stop_deadline: float | None = None
        # Lanes taken out of ``lanes`` by a revoke or shutdown while ``settle`` waits for
        # their handlers and dead letters: still in flight until then (a tuple, replaced
        # whole, so that a scrape reads it without a lock).
        self._settling: tuple[PartitionLane, ...] = ()

    def names(self) -> dict[str, str]:
        """Whose partitions: the services of one process (one per topic) share a log."""
        return self._pipeline.spec.names()

    def inflight(self) -> float:
        """Messages fetched and not final, all partitions (a gauge, read at scrape time)."""
        lanes = [*self.lanes.values(), *self._settling]
        return float(sum(lane.inflight() for lane in lanes))

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self.closed:
            return
        # Counted before the lanes that streamguard_assigned_partitions counts appear, as
        # a revoke or loss is counted before its lanes go: whoever reads the new gauge
        # reads this change in the counter too.
        self._rebalanced("assigned")
        for tp in partitions:
            if tp.partition not in self.lanes:
                self.lanes[tp.partition] = self._new_lane(tp.partition)
        # An empty assignment (more members than partitions) is no assignment: an idle
        # member stays unready, as the runbook and the Deployment's comment say.
        if partitions:
            self.assigned_once = True
        parts = [tp.partition for tp in partitions]
        log.info("partitions assigned", extra={**self.names(), "partitions": parts})
        self._on_assigned(parts)

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self.closed:
            return  # close() revokes after shutdown settled and committed everything
        parts = [tp.partition for tp in partitions]
        # The eager protocol (a kafka_config overriding cooperative-sticky) revokes an idle
        # member's empty assignment at every rebalance: nothing changed.
        if parts:
            self._rebalanced("revoked")
        self._flow.release(parts)
        # pop(p, None): a stop that gave up on this poll (a slow hook before it) clears
        # the lanes from its own thread, between a membership test and a pop.
        lanes = [lane for p in parts if (lane := self.lanes.pop(p, None)) is not None]
        timeout = self._options.revoke_timeout
        deadline = self.revoke_ends = time.monotonic() + timeout
        try:
            with self._in_flight(lanes):
                if self._finish_revoked is not None and lanes:
                    self._finish_revoked(lanes, deadline, self.hurry)
                self._settle(lanes, deadline, timeout, 0.0)
        finally:
            self.revoke_ends = None
        self._forget(parts)
        log.info("partitions revoked", extra={**self.names(), "partitions": parts})
        self._on_revoked(parts)

    def on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Lost, not revoked: another member may own them already, so committing now
        # could move its offsets. Drop our work; it is redelivered.
        if self.closed:
            # close() serves a session expiry no poll served: shutdown settled every
            # lane already, and on_stop ran; on_revoke must not come after it.
            return
        parts = [tp.partition for tp in partitions]
        if parts:  # a member holding none lost nothing: no StreamguardPartitionsLost
            self._rebalanced("lost")
        self._flow.release(parts)
        lost = [lane for part in parts if (lane := self.lanes.pop(part, None)) is not None]
        for lane in lost:
            lane.close()
        # Not given a timeout, as a revoke is: an async handler is cancelled now, or it
        # would run on beside the new owner's call of its record (and beside this
        # member's own if the partition came back).
        give_up_all(lost)
        self._forget(parts)
        log.warning("partitions lost", extra={**self.names(), "partitions": parts})
        # The hook hears of them as revoked (as confluent-kafka and the Java client do
        # when no lost callback is given): what it set up per partition in on_assign
        # must be torn down either way, and on_assign comes again when they return.
        self._on_revoked(parts)

    def _forget(self, parts: list[int]) -> None:
        self._committer.forget(parts)
        self._lag.forget(parts)

    def settle(self, lanes: list[PartitionLane], timeout: float, ack_wait: float = 0.0) -> None:
        """Stop lanes, let in-flight handlers finish, await dead letters, commit.

        Handlers get ``timeout``; dead letters what is left of it plus ``ack_wait``, and
        the commit comes after both, so that a dead letter acknowledged meanwhile is
        committed rather than dead-lettered again by the next owner.
        """
        with self._in_flight(lanes):
            self._settle(lanes, time.monotonic() + timeout, timeout, ack_wait)

    @contextmanager
    def _in_flight(self, lanes: list[PartitionLane]) -> Iterator[None]:
        """Count ``lanes``, taken out of ``lanes`` by a revoke or stop, in ``inflight``
        while they settle."""
        self._settling = (*self._settling, *lanes)
        try:
            yield
        finally:
            self._settling = tuple(lane for lane in self._settling if lane not in lanes)

    def _settle(
        self,
        lanes: list[PartitionLane],
        deadline: float,
        timeout: float,
        ack_wait: float,
        commit: bool = True,
        at_close: bool = False,
    ) -> None:
        """``settle`` with the handlers' ``deadline`` (monotonic), ``timeout`` the wait
        they were given in all (said in the warning: a stop's finish may have used it);
        ``commit`` False leaves the offsets as they are (see ``settle_all``);
        ``at_close``: the stop's, whose commit the consumer's close confirms."""
        for lane in lanes:
            lane.close()
        stuck = []
        for lane in lanes:
            if not wait_unless_hurried(lane.wait_idle, deadline, self.hurry):
                log.warning(
                    "handler still running after the timeout; its message will be redelivered",
                    extra={**self.names(), "partition": lane.partition, "timeout": timeout},
                )
                stuck.append(lane)
        give_up_all(stuck)  # async handlers are cancelled, together
        wait_unless_hurried(
            lambda wait: self._publisher.flush(wait) == 0, deadline + ack_wait, self.hurry
        )
        held = [(lane.partition, lane.unacknowledged_dead_letters()) for lane in lanes]
        if any(count for _, count in held):
            # Said, as for a handler given up on: a stop that waited out its timeout for
            # the DLQ, and the messages that come back, must not be a mystery.
            publisher = self._publisher
            log.warning(
                "dead letters not acknowledged by the DLQ; their messages stay uncommitted "
                "and will be delivered again",
                extra={
                    **self._pipeline.spec.dead_letter_names(),
                    "partitions": [part for part, count in held if count],
                    "dead_letters": sum(count for _, count in held),
                    "error": "not acknowledged in time"
                    if publisher.writable
                    else publisher.last_error,
                },
            )
        if commit:
            # A stop's is sent asynchronously: the consumer's close waits for it, in a
            # bound of its own (see runner._close_in_time).
            self._committer.commit(lanes, asynchronous=at_close, final=True)

    def settle_all(self, clean: bool = False, commit: bool = True) -> None:
        """Shutdown: settle every lane, handlers within ``shutdown_timeout`` and dead
        letters within as long again; later callbacks no-op.

        ``clean`` (a stop asked for, not a failure): first, within the same
        ``shutdown_timeout``, the records already fetched may reach their outcome
        (``finish``). Under key or no ordering the commit stops at a partition's first
        record without one, and every record of other keys handled past it came
        again after the restart (30% of those handled, measured).

        ``commit`` False: another thread is inside a poll of the consumer, which must
        not be used meanwhile; what has an outcome is delivered again after the restart.
        """
        lanes = list(self.lanes.values())
        self.lanes.clear()
        timeout = self._options.shutdown_timeout
        now = time.monotonic()
        self.stop_deadline = now + 2 * timeout
        with self._in_flight(lanes):  # the finish's wait included
            if clean and self._finish is not None and lanes:
                self._finish(now + timeout, self.hurry)
            self._settle(
                lanes, now + timeout, timeout, ack_wait=timeout, commit=commit, at_close=True
            )
        # No partition is ours any more: a lag left set would stay frozen in the
        # registry, which outlives the run (scraped, or the service run again).
        self._forget([lane.partition for lane in lanes])
        self.closed = True
        self._give_up()  # handlers still running are given up on

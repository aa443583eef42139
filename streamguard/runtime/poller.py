"""Fetching: one ``consume()`` call, its records handed to lanes, then the tick.

Whoever holds ``lock`` may talk to the consumer; there is no dedicated poll thread.
Workers poll between batches and the scheduler's supervisor polls when none does (see
``scheduler``). Every poll runs the maintenance tick: delivery reports of dead letters,
flow control, DLQ retries, and on its interval the commit and the lag gauge (whose
broker requests the supervisor makes, ``refresh_lag``). Since
handlers never run inside a poll, a slow handler cannot make the consumer miss
``max.poll.interval.ms`` and get evicted from its group.
"""

from __future__ import annotations

import logging
import threading
import time
from itertools import compress
from typing import cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message

from streamguard.headers import Record
from streamguard.runtime.assignment import Assignment, wait_unless_hurried
from streamguard.runtime.breaker import Breaker
from streamguard.runtime.commits import Committer
from streamguard.runtime.deadletters import DeadLetterPublisher
from streamguard.runtime.flow import FlowControl
from streamguard.runtime.lag import LagMonitor
from streamguard.runtime.lane import PartitionLane
from streamguard.runtime.options import ServiceOptions

log = logging.getLogger("streamguard.runtime")


class Poller:
    """Drives one consumer for one topic."""

    def __init__(
        self,
        consumer: Consumer,
        topic: str,
        options: ServiceOptions,
        assignment: Assignment,
        publisher: DeadLetterPublisher,
        flow: FlowControl,
        committer: Committer,
        lag: LagMonitor,
        breaker: Breaker,
        *,
        service: str,
    ) -> None:
        self.consumer = consumer
        self._breaker = breaker
        self.topic = topic
        # Named by its lines: a process may run several services, some on one topic.
        self._names = {"service": service, "topic": topic}
        self.lock = threading.Lock()  # held by whoever calls the consumer
        self._batch_size = options.batch_size
        self._commit_interval = options.commit_interval
        self._next_commit = time.monotonic() + options.commit_interval
        self.assignment = assignment
        self._publisher = publisher
        self.flow = flow
        self.committer = committer
        self._lag = lag
        self.last_poll = time.monotonic()
        self.last_fetched = 0  # records the last poll fetched
        self.polls = 0  # polls so far, by any thread
        self.owned = False  # ``lock`` taken for good: no thread polls from now on

    def subscribe(self) -> None:
        a = self.assignment
        self.consumer.subscribe(
            [self.topic], on_assign=a.on_assign, on_revoke=a.on_revoke, on_lost=a.on_lost
        )

    def poll_once(self, timeout: float) -> list[PartitionLane]:
        """Fetch one batch, hand it to lanes, then run the maintenance tick.

        Call with ``lock`` held. Returns the lanes that now need a worker (claimed,
        not yet running).
        """
        claimed: list[PartitionLane] = []
        self.last_fetched = 0
        self.polls += 1
        if not self.flow.throttled:
            # While a partition is full but still draining, fetch nothing rather than
            # pause it (see FlowControl).
            if timeout > 0:
                # consume(n, timeout) waits for n records or the whole timeout: at a low
                # rate every record would wait. Wait for one, then take what is queued.
                msgs = self.consumer.consume(1, timeout)
                if msgs:
                    msgs.extend(self.consumer.consume(self._batch_size - 1, 0))
            else:
                msgs = self.consumer.consume(self._batch_size, 0)
            if msgs:
                self.last_fetched = len(msgs)
                claimed = self._dispatch(msgs)
        self.last_poll = now = time.monotonic()
        self._publisher.serve_reports()
        lanes = self.assignment.lanes
        writable = self._publisher.maintain(lanes.values(), now)
        self.flow.update(lanes, now, writable and self._breaker.accepting())
        for lane in lanes.values():
            if lane.claim_if_due(now):
                claimed.append(lane)
        if now >= self._next_commit:
            self._next_commit = now + self._commit_interval
            self.committer.commit(lanes.values(), asynchronous=True)
            self._lag.update(lanes, self.flow.paused, self.committer.committed)
        return claimed

    def polled_at(self) -> float:
        """When the consumer was last polled; during a revoke, the end of its wait for
        handlers: the poll that runs the revoke is in progress until then."""
        revoke_ends = self.assignment.revoke_ends
        if revoke_ends is not None and revoke_ends > self.last_poll:
            return min(revoke_ends, time.monotonic())
        return self.last_poll

    @property
    def lag_due(self) -> bool:
        """The lag gauge wants a broker request (see ``refresh_lag``)."""
        return self._lag.due

    def refresh_lag(self) -> None:
        """Make the lag gauge's broker requests. Call with ``lock`` held, on the
        supervisor only: a request may wait up to its timeout for the cluster (see
        ``lag``), which the tick, on a worker or the event loop, must never do."""
        self._lag.refresh(self.assignment.lanes)

    def _dispatch(self, msgs: list[Record]) -> list[PartitionLane]:
        # Without errors, the batch is split by mapping the C methods over it: 0.03 µs
        # per record against 0.05 for a Python loop calling them per record.
        if any(map(Message.error, msgs)):
            by_partition = self._split_with_errors(msgs)
        else:
            # A fetched record always has a partition; the stubs allow None.
            parts = cast("list[int]", list(map(Message.partition, msgs)))
            first = parts[0]
            if parts.count(first) == len(parts):
                by_partition = {first: msgs}
            else:
                by_partition = {
                    part: list(compress(msgs, map(part.__eq__, parts)))
                    for part in dict.fromkeys(parts)
                }
        lanes = self.assignment.lanes
        claimed = []
        for part, batch in by_partition.items():
            lane = lanes.get(part)
            # A record of a partition no longer ours is dropped uncommitted; its new
            # owner reads it from the committed offset.
            if lane is not None and lane.enqueue(batch):
                claimed.append(lane)
        return claimed

    def _split_with_errors(self, msgs: list[Record]) -> dict[int, list[Record]]:
        by_partition: dict[int, list[Record]] = {}
        for msg in msgs:
            if msg.error() is not None:
                self._consumer_error(msg.error())
                continue
            part = msg.partition()
            batch = by_partition.get(part)
            if batch is None:
                by_partition[part] = [msg]
            else:
                batch.append(msg)
        return by_partition

    def _consumer_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.fatal():
            raise KafkaException(error)
        log.warning("consumer error", extra={**self._names, "error": error.str()})

    def shutdown(self, stopping: threading.Event, wait: float, clean: bool = False) -> None:
        """Settle every lane and commit; takes the poll lock for good.

        No worker may touch the consumer once it closes. A worker may be inside a
        rebalance callback, which takes at most ``revoke_timeout`` (a slow ``on_revoke``
        hook longer): ``wait`` covers it, in waits of at most ``HURRY_CHECK`` so that a
        hurried stop (``assignment.hurry``, a second signal) waits no more. If the lock
        is not had by then, the lanes are settled without a commit: a synchronous
        commit waits for the rebalance in progress, for as long as its hook takes.
        ``clean``: a stop asked for, not a failure (see ``Assignment.settle_all``).
        """
        stopping.set()
        hurry = self.assignment.hurry
        self.owned = wait_unless_hurried(
            lambda timeout: self.lock.acquire(timeout=timeout), time.monotonic() + wait, hurry
        )
        if not self.owned:
            log.error(
                "a worker held the consumer past the shutdown wait; nothing more is committed",
                extra={**self.assignment.names(), "wait": wait, "hurried": hurry.is_set()},
            )
            clean = False  # a rebalance may be under way: no record is waited for
        self.assignment.settle_all(clean, commit=self.owned)

    def take_consumer(self) -> bool:
        """Take the poll lock for good if no thread holds it; True once taken.

        Closing the consumer while another thread is inside ``consume()`` (a rebalance
        callback) is unsafe in librdkafka: it may crash or hang the process.
        """
        if not self.owned:
            self.owned = self.lock.acquire(blocking=False)
        return self.owned

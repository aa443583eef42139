"""A partition lane: one partition's buffer, its in-order processing, and its offsets.

Each assigned partition gets a lane. The thread that polls appends fetched batches; one
worker at a time drains the lane, so order within the partition is kept while
different partitions run concurrently. A lane knows the end of its longest prefix of
final outcomes (``FinalPrefix``), which is the only offset the service may commit for
its partition. Everything here is the lane's own state: flow control, commits and
lag keep theirs in their own modules.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from functools import partial
from operator import methodcaller
from typing import Any, Protocol

from confluent_kafka import KafkaError, Message

from streamguard.deadletter import Failure
from streamguard.errors import (
    SchemaDrift,
)
from streamguard.headers import Record
from streamguard.observe.logs import frames
from streamguard.offsets import FinalPrefix
from streamguard.policy import RetryPolicy
from streamguard.runtime.breaker import Breaker
from streamguard.runtime.context import MessageContext
from streamguard.runtime.deadletters import DeliveryReport
from streamguard.runtime.outcomes import RetryState, after_try, gate
from streamguard.runtime.spec import ServiceSpec

log = logging.getLogger("streamguard.runtime")

_offset = methodcaller("offset")

# Seconds of a batch's handler calls after which what they finished is folded into the
# metrics and the committed offsets, without waiting for the batch to end (as an
# event-loop runner's metrics reach the registry every METRICS_EVERY).
FOLD_EVERY = 0.5

# How long handlers given up on get to end once cancelled (a plain cancellation ends an
# async one on its loop's next turn), all of them together, before they are reported and
# what they still do is ignored.
CANCEL_WAIT = 0.1


class Pipeline(Protocol):
    """What a lane needs from its service; shared by all lanes, safe across threads."""

    spec: ServiceSpec
    topic: str
    drift_sample: int
    retry: RetryPolicy
    transient: tuple[type[BaseException], ...]
    breaker: Breaker
    handles_tombstones: bool
    stopping: threading.Event

    def judge(
        self,
        exc: Exception,
        attempt: int,
        retry: RetryState | None,
        now: float,
        message: Hashable,
        by_handler: bool,
        runs_until: float | None = None,
        began: float | None = None,
    ) -> Failure | RetryState: ...

    def decode(self, value: bytes | None) -> Any: ...
    def inspect_drift(self, msg: Record, value: bytes | None) -> SchemaDrift | None: ...
    def invoke(self, event: Any, ctx: MessageContext) -> object: ...
    def invoke_tombstone(self, ctx: MessageContext) -> object: ...
    def returned(self, result: object, tombstone: bool) -> None: ...
    def publish_dead_letter(self, msg: Record, failure: Failure, done: DeliveryReport) -> None: ...
    def resend_dead_letter(
        self, msg: Record, failure: Failure, done: DeliveryReport, write: int
    ) -> None: ...
    def record_batch(self, handled: int, durations: list[float]) -> None: ...
    def dead_lettered(self, msg: Record, failure: Failure) -> None: ...
    def dead_letter_failed(self, error: KafkaError) -> None: ...
    def can_process(self) -> bool: ...


@dataclass(slots=True)
class PendingDeadLetter:
    """A message sent to the DLQ but not yet acknowledged; it holds back the commit."""

    msg: Record
    failure: Failure
    failed: bool = False  # a write failed; stays True until a write is acknowledged
    in_flight: bool = True  # a write awaits its delivery report
    error: str = ""
    attempts: int = field(default=1)


class PartitionLane:
    """Processing state of one partition, processed on worker threads.

    ``lock`` guards every mutable field below: the queue and its counts, the claim
    (``scheduled``), ``closed``, the retry wait, the final-outcome prefix and its open
    dead letters, and ``first_fetched``. The poll side (enqueue, claim, close) and the
    worker that holds the claim (drain) both take it; delivery reports of dead letters
    take it from whichever thread serves them. ``idle`` is an Event, set while no
    handler of this lane runs.
    """

    hands_off = False  # drain() runs handlers; an event-loop lane only hands batches over

    def __init__(
        self, partition: int, pipeline: Pipeline, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.partition = partition
        self.pipeline = pipeline
        self.clock = clock  # monotonic seconds; the test kit passes a virtual one
        self.lock = threading.Lock()
        self.queue: deque[list[Record]] = deque()
        self.buffered = 0
        # The batch a worker is processing (None between batches). Its records that
        # reached an outcome are told by the offsets they passed (see ``inflight``),
        # not counted one by one on the hot path.
        self.in_hand: list[Record] | None = None
        self.scheduled = False
        self.closed = False
        # Given up on by a revoke, a shutdown or a loss: the partition may be another
        # member's already, so a handler that outlived it leaves no dead letter behind.
        self.abandoned = False
        self.idle = threading.Event()  # set while no handler of this lane is running
        self.idle.set()
        self.retry: RetryState | None = None
        # Open offsets: dead letters awaiting acknowledgement, and (on the event loop,
        # under key or no ordering) records still running, whose item is None.
        self.offsets: FinalPrefix[PendingDeadLetter | None] = FinalPrefix()
        # The last record handled in offset order and not yet in ``offsets``: a batch's
        # records join them only when it ends, so this lets a commit (periodic, revoke
        # or shutdown) pass what a batch handled before a slow handler. Written without
        # the lock by the thread running the lane's records (one reference store per
        # record, never backwards), read under it. Every record before it is final or
        # open; key and no ordering, whose records finish in any order, never set it.
        self.last_handled: Record | None = None
        self.first_fetched: int | None = None  # offset of the first record since assigned
        # The offset after the last record fetched: where a resumed partition is sought
        # (see FlowControl.resume). Written and read by the thread holding the poll lock.
        self.fetched_to: int | None = None
        self.done_in_batch = 0
        # Open dead letters whose last write failed: the maintenance tick runs on every
        # poll, and scanning a flood's thousands of open offsets each time to find none
        # cost 2% of its CPU.
        self.failed_count = 0

    # -- the thread that polls ----------------------------------------------------------

    def enqueue(self, batch: list[Record]) -> bool:
        """Buffer a batch; True if the lane needs a worker scheduled."""
        with self.lock:
            if self.closed:
                return False
            if self.first_fetched is None:
                self.first_fetched = batch[0].offset()
            self.fetched_to = batch[-1].offset() + 1
            self.queue.append(batch)
            self.buffered += len(batch)
            return self._claim()

    def claim_if_due(self, now: float) -> bool:
        """Claim the lane for a worker if it has work and no retry wait holds it."""
        with self.lock:
            return self._claim(now)

    def _claim(self, now: float | None = None) -> bool:
        # Not while the DLQ is unwritable: drain() would give the lane straight back,
        # and claiming it again on every poll would spin a worker at full CPU.
        if self.scheduled or self.closed or not self.queue or not self.pipeline.can_process():
            return False
        if self.retry is not None and (now if now is not None else self.clock()) < (self.retry.due):
            return False
        self.scheduled = True
        return True

    def close(self) -> None:
        """Stop processing: buffered messages are dropped and will be redelivered."""
        with self.lock:
            self.closed = True
            self.queue.clear()
            self.buffered = 0

    def wait_idle(self, timeout: float) -> bool:
        """Wait (bounded) until no handler of this lane runs; False on timeout."""
        return self.idle.wait(timeout)

    def cancel(self) -> None:
        """Ask this lane's running handlers to stop. A worker thread cannot be stopped:
        its handler runs on, its record stays uncommitted, and what it comes to is
        ignored (``abandon_by``)."""

    def abandon_by(self, deadline: float) -> None:
        """After ``cancel``: ignore the outcomes still to come, once the handlers that can
        end have (by ``deadline``, monotonic seconds)."""
        self.abandon()

    def abandon(self) -> None:
        """Ignore the outcomes still to come: the lane's last commit is about to go."""
        with self.lock:
            self.abandoned = True

    def commit_position(self) -> int | None:
        """The end of the longest prefix of final outcomes (None: nothing final yet)."""
        with self.lock:
            position = self.offsets.position
            last = self.last_handled
            if last is not None and not len(self.offsets):  # no open outcome before it
                end = last.offset() + 1
                if position is None or end > position:
                    position = end
            return position

    def inflight(self) -> int:
        """Messages fetched and not final yet: buffered, in a handler, or dead letters.

        Of the batch in hand, the records before the last one handled or dead-lettered
        are done (a batch runs in offset order): only those from there on count, found
        here, at scrape time, rather than folded in every half second or at the
        batch's end, which counted up to a batch of finished records as in flight.
        """
        with self.lock:
            count = self.buffered + len(self.offsets)
            batch = self.in_hand
            if batch is None:
                return count
            done_to = self.offsets.end  # past the last fold and the last dead letter
            last = self.last_handled
            if last is not None and (done_to is None or last.offset() >= done_to):
                done_to = last.offset() + 1
            if done_to is None:
                return count + len(batch)
            return count + len(batch) - bisect_left(batch, done_to, key=_offset)

    def unacknowledged_dead_letters(self) -> int:
        """Dead letters the DLQ has not acknowledged yet: in flight, or failed."""
        with self.lock:
            return sum(1 for p in self.offsets.open_items() if p is not None)

    def failed_dead_letters(self) -> list[PendingDeadLetter]:
        with self.lock:
            if not self.failed_count:
                return []
            return [p for p in self.offsets.open_items() if p is not None and p.failed]

    # -- the worker that holds the claim -------------------------------------------------

    def drain(self, max_batches: int = 1 << 30) -> bool:
        """Process buffered batches in order until empty, closed, or waiting to retry.

        Returns True when ``max_batches`` ran out with work left: the lane stays claimed
        and the caller must queue it again. False when it released its claim.
        """
        for _ in range(max_batches):
            with self.lock:
                if (
                    self.closed
                    or not self.queue
                    or (self.retry is not None and self.clock() < self.retry.due)
                    or not self.pipeline.can_process()
                ):
                    self.scheduled = False
                    return False
                batch = self.queue.popleft()
                self.buffered -= len(batch)
                self.in_hand = batch
                self.idle.clear()  # a handler of this lane runs from here on
            self.done_in_batch = 0
            try:
                self._process(batch)
            except BaseException as exc:
                # A handler's own (SystemExit, a BaseException subclass): its text may
                # quote the record, so its class and frames only, as for its errors.
                log.error(
                    "partition lane crashed",
                    extra={
                        **self.pipeline.spec.names(),
                        "partition": self.partition,
                        "error_class": type(exc).__name__,
                        "traceback": frames(exc),
                    },
                )
                with self.lock:
                    self.scheduled = False
                raise
            finally:
                done = self.done_in_batch
                with self.lock:
                    self.in_hand = None
                    if done < len(batch) and not self.closed:
                        rest = batch[done:]
                        self.queue.appendleft(rest)
                        self.buffered += len(rest)
                    self.idle.set()
        return True

    def _process(self, batch: list[Record]) -> int:
        """Run messages through the pipeline; return how many reached an outcome."""
        pipe = self.pipeline
        decode = pipe.decode
        invoke = pipe.invoke
        inspect_drift = pipe.inspect_drift
        sample = pipe.drift_sample
        clock = time.perf_counter
        durations: list[float] = []
        timed = durations.append
        handled = done = seen = 0  # seen: records decoded, for the drift sample
        retry = self.retry
        breaker = pipe.breaker
        # A batch is up to batch_size records: with slow handlers, folding only at its
        # end kept the metrics, the lag and the commits still for minutes. The clock
        # read after each call tells when to fold; a fast batch never reaches it.
        end = 0.0
        fold_at = clock() + FOLD_EVERY
        try:
            for msg in batch:
                if self.closed:
                    break
                if retry is not None or not breaker.closed:
                    parked = gate(breaker, retry, self.clock(), (self.partition, msg.offset()))
                    if parked is not None:
                        retry = parked  # the breaker or the retry budget holds it
                        break
                attempt = 1 if retry is None else retry.attempt + 1
                value = msg.value()
                called = False  # the user's code ran: what it raises is its own
                try:
                    if value is None and pipe.handles_tombstones:
                        called = True
                        start = clock()
                        returned = pipe.invoke_tombstone(MessageContext(msg, attempt))
                        end = clock()
                        timed(end - start)  # a handled tombstone is a handler call too
                    else:
                        event = decode(value)
                        # Counted over the records that decode: a batch whose first
                        # record is invalid still has its first valid one checked.
                        if not seen % sample and (retry is None or not retry.drift_checked):
                            drift = inspect_drift(msg, value)
                            if drift is not None:  # no call reached the dependency
                                breaker.release_probe((self.partition, msg.offset()))
                                self._dead_letter(msg, Failure("schema_drift", drift))
                                done += 1
                                continue
                        seen += 1
                        ctx = MessageContext(msg, attempt)  # not built for invalid input
                        called = True
                        start = clock()
                        returned = invoke(event, ctx)  # None, unless work handed back
                        end = clock()
                        timed(end - start)
                        # Let go now: kept until the next record decoded, a large event
                        # was walked by every young collection of that decode
                        # (docs/benchmark-notes.md, *Larger events*).
                        event = None
                except Exception as exc:
                    # Not held by this frame while the next record decodes, nor after
                    # the batch: the handler frames kept in the dead letter's error
                    # link back to it (see outcomes.release_frames).
                    event = None
                    if called and handled:
                        # The verdict weighs every success before it: folded after it,
                        # they told the breaker something succeeded since this record
                        # first failed, and an outage's first failure was dead-lettered.
                        self._fold(batch, done, handled, durations, end)
                        handled = 0
                    verdict = pipe.judge(
                        exc,
                        attempt,
                        retry,
                        self.clock(),
                        (self.partition, msg.offset()),
                        called,
                        # A closed lane retries nothing; nor does one whose service
                        # stops, which no poll claims again before it closes.
                        -math.inf if self.closed or pipe.stopping.is_set() else None,
                        start if called else None,  # see _fold
                    )
                    if isinstance(verdict, RetryState):
                        retry = after_try(verdict, retry, called)
                        break  # the head waits; the rest of the batch waits behind it
                    self._dead_letter(msg, verdict)
                    del verdict  # or this frame and the error it keeps would hold each other
                else:
                    if returned is not None:  # raises (out of the lane) if work went unrun
                        pipe.returned(returned, value is None)
                    handled += 1
                    self.last_handled = msg
                    if retry is not None:  # it may have failed before: no longer
                        breaker.recovered((self.partition, msg.offset()))
                retry = None
                done += 1
                if end >= fold_at:
                    fold_at = end + FOLD_EVERY
                    self._fold(batch, done, handled, durations, end)
                    handled = 0
        finally:
            self.retry = retry
            self.done_in_batch = done
            self._fold(batch, done, handled, durations, end)
        return done

    def _fold(
        self, batch: list[Record], done: int, handled: int, durations: list[float], end: float
    ) -> None:
        """Count what the first ``done`` records of ``batch`` came to (each final, or
        held until its dead letter is acknowledged): the offsets they pass, the metrics
        and the breaker's successes, the last of which ended at ``end`` (perf_counter).
        Mid-batch, and at its end (a retry ends the batch)."""
        if done:
            with self.lock:
                self.offsets.advance(batch[done - 1].offset() + 1)
        self.pipeline.record_batch(handled, durations)
        # Named by the last success: a half-open breaker closes only on the probe's. A
        # call that started before it opened and answered late closed it unnamed, and
        # every parked record then called a dependency the probe had not found back.
        last = self.last_handled
        if handled:
            # Timed by the start of the last success's call (its end less its duration):
            # the dependency answered at some point after it. Its end, read after the call
            # returned, could come after another lane's first failure of an outage (a
            # thread switch, 5 ms or more under load), which was then dead-lettered.
            self.pipeline.breaker.succeeded(
                handled,
                None if last is None else (self.partition, last.offset()),
                end - durations[-1],
            )
        durations.clear()  # the same list: _process appends through its bound method

    def _dead_letter(self, msg: Record, failure: Failure) -> None:
        pending = PendingDeadLetter(msg, failure)
        with self.lock:
            abandoned = self.abandoned
            if not abandoned:
                self.offsets.hold(msg.offset(), pending)
        if abandoned:
            # Its partition was handed over uncommitted: the new owner runs the record
            # again, and decides on its dead letter.
            log.warning(
                "handler given up on failed after its partition was settled; "
                "no dead letter, its message is redelivered",
                extra={
                    **self.pipeline.spec.names(),
                    "partition": self.partition,
                    "offset": msg.offset(),
                },
            )
            return
        self.pipeline.publish_dead_letter(msg, failure, partial(self._acked, pending))

    def republish(self, pending: PendingDeadLetter) -> None:
        """Try a failed dead-letter write again (the maintenance tick calls this on backoff).

        It stays ``failed`` while the new write is in flight: the DLQ counts as writable
        again only once a write is acknowledged, not as soon as one is attempted.
        """
        with self.lock:
            if self.closed or pending.in_flight:
                return
            pending.in_flight = True
            pending.attempts += 1
        self.pipeline.resend_dead_letter(
            pending.msg, pending.failure, partial(self._acked, pending), pending.attempts
        )

    def _acked(
        self, pending: PendingDeadLetter, error: KafkaError | None, _record: Message | None
    ) -> None:
        """A dead letter's delivery report; a ``partial`` with ``pending`` bound (a
        lambda would run one more Python frame per dead letter)."""
        offset = pending.msg.offset()
        if error is None:
            with self.lock:
                self.offsets.release(offset)
                if pending.failed:
                    self.failed_count -= 1
            self.pipeline.dead_lettered(pending.msg, pending.failure)
            return
        with self.lock:
            if not pending.failed:
                self.failed_count += 1
            pending.failed = True
            pending.in_flight = False
            pending.error = error.str()
        self.pipeline.dead_letter_failed(error)


def give_up_all(lanes: list[PartitionLane]) -> None:
    """A revoke, shutdown or loss stopped waiting for these lanes' handlers: cancel them
    all, then give them one ``CANCEL_WAIT`` together. One wait a lane, in turn, made a
    stop with the event loop blocked take 0.2 s longer for every partition."""
    for lane in lanes:
        lane.cancel()
    deadline = time.monotonic() + CANCEL_WAIT
    for lane in lanes:
        lane.abandon_by(deadline)

"""A partition lane: one partition's buffer, its in-order processing, and its offsets.

Each assigned partition gets a lane. The poll thread appends fetched batches; one worker
at a time drains the lane, so order within the partition is kept while different
partitions run concurrently. A lane knows the end of its longest prefix of final
outcomes, which is the only offset the service may commit for its partition.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import KafkaError

from streamguard.deadletter import Failure, Reason
from streamguard.errors import (
    ContractViolation,
    DecodeError,
    HandlerAbandoned,
    RegistryUnavailable,
    RetriesExhausted,
    SchemaDrift,
)
from streamguard.headers import Record
from streamguard.policy import RetryPolicy, classify
from streamguard.runtime.context import MessageContext

log = logging.getLogger("streamguard.runtime")


class Pipeline(Protocol):
    """What a lane needs from its service; shared by all lanes, safe across threads."""

    topic: str
    drift_sample: int
    retry: RetryPolicy
    transient: tuple[type[BaseException], ...]

    def decode(self, value: bytes | None) -> Any: ...
    def inspect_drift(self, msg: Record, value: bytes | None) -> SchemaDrift | None: ...
    def invoke(self, event: Any, ctx: MessageContext) -> None: ...
    def invoke_tombstone(self, ctx: MessageContext) -> bool: ...
    def publish_dead_letter(
        self, msg: Record, failure: Failure, done: Callable[[KafkaError | None], None]
    ) -> None: ...
    def record_batch(self, handled: int, durations: list[float], retries: int) -> None: ...
    def record_dead_letter(self, reason: Reason) -> None: ...
    def dead_letter_failed(self, error: KafkaError) -> None: ...
    def can_process(self) -> bool: ...


@dataclass(slots=True)
class RetryState:
    """The head message failed transiently; when to try it again, and what came before."""

    attempt: int
    first_failure_ms: int
    first_failure_mono: float
    due: float


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
    """Processing state of one partition. Mutated under ``lock`` by poll and worker."""

    def __init__(self, partition: int, pipeline: Pipeline) -> None:
        self.partition = partition
        self.pipeline = pipeline
        self.lock = threading.Lock()
        self.queue: deque[list[Record]] = deque()
        self.buffered = 0
        self.in_hand = 0
        self.scheduled = False
        self.closed = False
        self.paused = False
        self.full_since: float | None = None  # when the buffer last reached the limit
        self.idle = threading.Event()  # set while no handler of this lane is running
        self.idle.set()
        self.retry: RetryState | None = None
        self.position: int | None = None  # next offset after the last final outcome
        self.first_fetched: int | None = None  # offset of the first record since assigned
        self.pending: dict[int, PendingDeadLetter] = {}
        self.committed: int | None = None
        self.done_in_batch = 0

    # -- poll thread -----------------------------------------------------------------

    def enqueue(self, batch: list[Record]) -> bool:
        """Buffer a batch; True if the lane needs a worker scheduled."""
        with self.lock:
            if self.closed:
                return False
            if self.first_fetched is None:
                self.first_fetched = batch[0].offset()
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
        if self.retry is not None and (now if now is not None else time.monotonic()) < (
            self.retry.due
        ):
            return False
        self.scheduled = True
        return True

    def close(self) -> None:
        """Stop processing: buffered messages are dropped and will be redelivered."""
        with self.lock:
            self.closed = True
            self.queue.clear()
            self.buffered = 0

    def commit_position(self) -> int | None:
        """The end of the longest prefix of final outcomes (None: nothing final yet)."""
        with self.lock:
            if self.pending:
                return next(iter(self.pending))  # first unacknowledged dead letter
            return self.position

    def inflight(self) -> int:
        with self.lock:
            return self.buffered + self.in_hand + len(self.pending)

    def failed_dead_letters(self) -> list[PendingDeadLetter]:
        with self.lock:
            return [p for p in self.pending.values() if p.failed]

    # -- worker thread ---------------------------------------------------------------

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
                    or (self.retry is not None and time.monotonic() < self.retry.due)
                    or not self.pipeline.can_process()
                ):
                    self.scheduled = False
                    return False
                batch = self.queue.popleft()
                self.buffered -= len(batch)
                self.in_hand = len(batch)
                self.idle.clear()  # a handler of this lane runs from here on
            self.done_in_batch = 0
            try:
                self._process(batch)
            except HandlerAbandoned:
                with self.lock:
                    self.scheduled = False
                raise
            except BaseException:
                log.exception("partition lane crashed", extra={"partition": self.partition})
                with self.lock:
                    self.scheduled = False
                raise
            finally:
                done = self.done_in_batch
                with self.lock:
                    self.in_hand = 0
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
        handled = retries = done = 0
        retry = self.retry
        try:
            for index, msg in enumerate(batch):
                if self.closed:
                    break
                attempt = 1 if retry is None else retry.attempt + 1
                value = msg.value()
                ctx = MessageContext(msg, attempt)
                try:
                    if value is None and pipe.invoke_tombstone(ctx):
                        event = None
                    else:
                        event = decode(value)
                        if not index % sample:
                            drift = inspect_drift(msg, value)
                            if drift is not None:
                                self._dead_letter(msg, Failure("schema_drift", drift))
                                done += 1
                                continue
                        start = clock()
                        invoke(event, ctx)
                        durations.append(clock() - start)
                except DecodeError as exc:
                    self._dead_letter(msg, Failure(exc.reason, exc))  # type: ignore[arg-type]
                except ContractViolation as exc:
                    self._dead_letter(msg, Failure("contract_violation", exc))
                except RegistryUnavailable as exc:
                    # Not the message's fault: it waits for the registry, never dead-lettered.
                    retry = self._wait_for_registry(exc, attempt, retry)
                    retries += 1
                    break
                except Exception as exc:
                    if classify(exc, pipe.transient) == "permanent":
                        self._dead_letter(msg, _failure("permanent_error", exc, attempt, retry))
                    else:
                        retry, exhausted = self._schedule_retry(exc, attempt, retry)
                        if not exhausted:
                            retries += 1
                            break  # the head waits; the rest of the batch waits behind it
                        self._dead_letter(msg, exhausted)
                else:
                    handled += 1
                retry = None
                done += 1
        finally:
            self.retry = retry
            self.done_in_batch = done
            if done:
                self.position = batch[done - 1].offset() + 1
            pipe.record_batch(handled, durations, retries)
        return done

    def _schedule_retry(
        self, exc: Exception, attempt: int, retry: RetryState | None
    ) -> tuple[RetryState | None, Failure | None]:
        now_mono = time.monotonic()
        first_ms = retry.first_failure_ms if retry else int(time.time() * 1000)
        first_mono = retry.first_failure_mono if retry else now_mono
        elapsed_ms = (now_mono - first_mono) * 1000.0
        delay = self.pipeline.retry.next_delay(attempt, elapsed_ms)
        if delay is None:
            error = RetriesExhausted(attempt, int(elapsed_ms), exc)
            error.__cause__ = exc
            return None, Failure("retries_exhausted", error, attempt, first_ms)
        return RetryState(attempt, first_ms, first_mono, now_mono + delay), None

    def _wait_for_registry(
        self, exc: RegistryUnavailable, attempt: int, retry: RetryState | None
    ) -> RetryState:
        """Back off as the retry policy does, but without its limits: an outage of the
        schema registry holds the partition (like an unwritable DLQ), it spends no
        message's attempts or budget."""
        if retry is None:  # once per waiting message, not per attempt
            log.warning(
                "schema registry unavailable; the partition waits",
                extra={"partition": self.partition, "error": str(exc)},
            )
        now_mono = time.monotonic()
        first_ms = retry.first_failure_ms if retry else int(time.time() * 1000)
        first_mono = retry.first_failure_mono if retry else now_mono
        policy = self.pipeline.retry
        delay = max(0.05, policy.rng.uniform(0.0, policy.backoff_cap(attempt)))  # never a spin
        return RetryState(attempt, first_ms, first_mono, now_mono + delay)

    def _dead_letter(self, msg: Record, failure: Failure) -> None:
        pending = PendingDeadLetter(msg, failure)
        with self.lock:
            self.pending[msg.offset()] = pending
        self.pipeline.publish_dead_letter(msg, failure, lambda err: self._acked(pending, err))

    def republish(self, pending: PendingDeadLetter) -> None:
        """Try a failed dead-letter write again (the poll thread calls this on backoff).

        It stays ``failed`` while the new write is in flight: the DLQ counts as writable
        again only once a write is acknowledged, not as soon as one is attempted.
        """
        with self.lock:
            if self.closed or pending.in_flight:
                return
            pending.in_flight = True
            pending.attempts += 1
        self.pipeline.publish_dead_letter(
            pending.msg, pending.failure, lambda err: self._acked(pending, err)
        )

    def _acked(self, pending: PendingDeadLetter, error: KafkaError | None) -> None:
        offset = pending.msg.offset()
        if error is None:
            with self.lock:
                self.pending.pop(offset, None)
            self.pipeline.record_dead_letter(pending.failure.reason)
            return
        with self.lock:
            pending.failed = True
            pending.in_flight = False
            pending.error = error.str()
        self.pipeline.dead_letter_failed(error)


def _failure(reason: Reason, exc: Exception, attempt: int, retry: RetryState | None) -> Failure:
    if retry is None:
        return Failure(reason, exc, attempt)
    return Failure(reason, exc, attempt, retry.first_failure_ms)

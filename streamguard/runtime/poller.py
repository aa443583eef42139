"""The poll loop: fetch, hand batches to lanes, pause and resume, commit, rebalance.

Only this thread talks to the consumer. It never runs a handler, so a slow handler
cannot make the consumer miss ``max.poll.interval.ms`` and get evicted from its group;
a slow partition is paused instead, which is backpressure, not buffering.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from streamguard.errors import HandlerAbandoned
from streamguard.headers import Record
from streamguard.runtime.lane import PartitionLane, PendingDeadLetter
from streamguard.runtime.options import ServiceOptions
from streamguard.runtime.pipeline import ServicePipeline

log = logging.getLogger("streamguard.runtime")

# How long every worker may be busy in handlers before the fallback poller polls in
# their place. Far below max.poll.interval.ms; long enough that in steady state the
# fallback thread stays asleep and the workers poll.
FALLBACK_POLL_GAP = 0.05
# How long a lane with work may wait for a worker before another thread is started for
# it. Below this, the busy worker serves it in turn (no thread handoff); above it, a
# slow handler on one partition must not hold up the others.
HANDOFF_AFTER = 0.02


class Poller:
    """Drives one consumer for one topic; owns the lanes of its assigned partitions."""

    def __init__(
        self,
        consumer: Consumer,
        pipeline: ServicePipeline,
        options: ServiceOptions,
        on_assigned: Callable[[list[int]], None],
        on_revoked: Callable[[list[int]], None],
    ) -> None:
        self.consumer = consumer
        self.pipeline = pipeline
        self.options = options
        self.topic = pipeline.topic
        self.lanes: dict[int, PartitionLane] = {}
        self.stopping = threading.Event()
        self.failure: BaseException | None = None
        self.active_workers = 0
        self._active_lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._ready: deque[tuple[float, PartitionLane]] = deque()
        self._ready_lock = threading.Lock()
        self._wake = threading.Event()  # set when the last active worker returns
        self._next_spawn = 0.0
        self._shut = False
        self.assigned_once = False
        self.last_poll = time.monotonic()
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self._throttled = False
        self._high = options.max_buffered
        self._low = max(1, options.max_buffered // 2)
        self._pause_after = options.pause_after
        self._next_commit = time.monotonic() + options.commit_interval
        self._dlq_backoff = 0.1
        self._next_dlq_retry = 0.0
        pipeline.metrics.track(self.topic, self.inflight, self.paused_count)

    # -- gauges (called at scrape time from the HTTP thread) -------------------------

    def inflight(self) -> float:
        return float(sum(lane.inflight() for lane in list(self.lanes.values())))

    def paused_count(self) -> float:
        return float(sum(1 for lane in list(self.lanes.values()) if lane.paused))

    # -- the loop --------------------------------------------------------------------

    def subscribe(self) -> None:
        self.consumer.subscribe(
            [self.topic],
            on_assign=self._assign,
            on_revoke=self._revoke,
            on_lost=self._lost,
        )

    def run(self) -> None:
        """The supervisor: polls when no worker does, adds workers when lanes wait.

        Workers poll between batches themselves and serve ready lanes round-robin
        (leader/follower, see ``_work``), so while handlers are fast one thread fetches
        and processes and the interpreter lock never changes hands: a handoff between
        threads costs more here than the work it hands over. This thread steps in
        when that is not enough: it polls when no worker is active (waiting inside
        librdkafka, without the GIL) or when all of them have been busy in handlers for
        ``FALLBACK_POLL_GAP`` (keeping the consumer in its group), and it starts another
        worker when a lane has waited ``HANDOFF_AFTER`` for one, so a slow partition
        never holds the others for longer than that.
        """
        workers = self.options.workers
        while not self.stopping.is_set():
            if self.failure is not None:
                raise self.failure
            now = time.monotonic()
            waited = self._oldest_ready_wait(now)
            active = self.active_workers
            if (
                waited is not None
                and active < workers
                and (not active or (waited >= HANDOFF_AFTER and now >= self._next_spawn))
            ):
                # With workers running, one more per HANDOFF_AFTER at most: the one just
                # started has not taken its lane yet, and more would only contend.
                self._next_spawn = now + HANDOFF_AFTER
                self._spawn()
                continue
            if active and now - self.last_poll < FALLBACK_POLL_GAP:
                pause = FALLBACK_POLL_GAP if waited is None else HANDOFF_AFTER - waited
                if waited is not None:
                    pause = max(pause, self._next_spawn - now)
                self._wake.wait(max(0.001, pause))
                self._wake.clear()
                continue
            with self._poll_lock:
                if self.stopping.is_set():
                    break
                self._make_ready(self.poll_once(0.0 if active else 0.1))
        if self.failure is not None:
            raise self.failure

    def poll_once(self, timeout: float) -> list[PartitionLane]:
        """Fetch one batch, hand it to lanes, then pause, resume and commit as due.

        Called with ``_poll_lock`` held, by a worker or by the supervisor; returns the
        lanes that now need a worker (claimed, not yet running).
        """
        claimed: list[PartitionLane] = []
        if not self._throttled:
            # While a partition is full but still draining, fetch nothing rather than
            # pause it (see ServiceOptions.pause_after).
            msgs = self.consumer.consume(self.options.batch_size, timeout)
            if msgs:
                claimed = self._dispatch(msgs)
        self.last_poll = time.monotonic()
        self.pipeline.serve_dead_letter_reports()
        self._maintain(self.last_poll, claimed)
        return claimed

    # -- the ready queue: claimed lanes waiting for a worker --------------------------

    def _make_ready(self, lanes: list[PartitionLane]) -> None:
        if lanes:
            now = time.monotonic()
            with self._ready_lock:
                self._ready.extend((now, lane) for lane in lanes)

    def _take_ready(self) -> PartitionLane | None:
        with self._ready_lock:
            return self._ready.popleft()[1] if self._ready else None

    def _oldest_ready_wait(self, now: float) -> float | None:
        with self._ready_lock:
            return now - self._ready[0][0] if self._ready else None

    def _spawn(self) -> None:
        with self._active_lock:
            self.active_workers += 1
        # Daemon threads: a handler stuck past the shutdown timeout must not keep the
        # process alive; its message is uncommitted and delivered again after restart.
        threading.Thread(target=self._work, name="streamguard-worker", daemon=True).start()

    def _work(self) -> None:
        """A worker: serve ready lanes a batch at a time, polling when none is ready."""
        try:
            while not self.stopping.is_set():
                lane = self._take_ready()
                if lane is not None:
                    if lane.drain(max_batches=1):
                        self._make_ready([lane])  # more to do: back of the queue
                    continue
                if not self._poll_lock.acquire(blocking=False):
                    return  # someone else is polling; it will queue what it fetches
                try:
                    if self.stopping.is_set():
                        return
                    claimed = self.poll_once(0.0)
                finally:
                    self._poll_lock.release()
                if not claimed:
                    return  # nothing fetched: the supervisor waits for more
                self._make_ready(claimed)
        except HandlerAbandoned:
            pass  # shutdown gave up on this handler; nothing else to do
        except BaseException as exc:
            self.failure = exc
            self.stopping.set()
            log.exception("worker failed; stopping the service")
        finally:
            with self._active_lock:
                self.active_workers -= 1
                if not self.active_workers:
                    self._wake.set()

    def _dispatch(self, msgs: list[Record]) -> list[PartitionLane]:
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
        claimed = []
        for part, batch in by_partition.items():
            lane = self.lanes.get(part)
            # A record of a partition no longer ours is dropped uncommitted; its new
            # owner reads it from the committed offset.
            if lane is not None and lane.enqueue(batch):
                claimed.append(lane)
        return claimed

    def _consumer_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.fatal():
            raise KafkaException(error)
        log.warning("consumer error", extra={"error": error.str()})

    def _maintain(self, now: float, claimed: list[PartitionLane]) -> None:
        pause: list[TopicPartition] = []
        resume: list[TopicPartition] = []
        # Writability is what the assigned lanes hold, not the last report: a failed
        # dead letter of a partition since revoked no longer counts (its new owner
        # redelivers it), and a later success elsewhere does not excuse one still failed.
        failed = [(lane, p) for lane in self.lanes.values() for p in lane.failed_dead_letters()]
        if failed:
            self.pipeline.dlq_writable = False
            self._retry_dead_letters(now, failed)
        elif not self.pipeline.dlq_writable:
            self.pipeline.dead_letters_recovered()
            self._dlq_backoff = 0.1
            self._next_dlq_retry = 0.0
        writable = self.pipeline.dlq_writable
        throttled = False
        for part, lane in self.lanes.items():
            waiting = lane.retry is not None
            full = lane.buffered >= self._high
            if full and lane.full_since is None:
                lane.full_since = now
            elif lane.buffered <= self._low:
                lane.full_since = None
            stuck = lane.full_since is not None and now - lane.full_since >= self._pause_after
            if not lane.paused and (stuck or waiting or not writable):
                lane.paused = True
                pause.append(TopicPartition(self.topic, part))
            elif lane.paused and lane.full_since is None and not waiting and writable:
                lane.paused = False
                resume.append(TopicPartition(self.topic, part))
            elif full and not lane.paused:
                throttled = True
            if lane.claim_if_due(now):
                claimed.append(lane)
        self._throttled = throttled
        if pause:
            self.consumer.pause(pause)
        if resume:
            self.consumer.resume(resume)
        if now >= self._next_commit:
            self._next_commit = now + self.options.commit_interval
            self.commit(self.lanes.values(), asynchronous=True)
            self._update_lag()

    def _update_lag(self) -> None:
        """Lag = high watermark minus the final-outcome position, per partition.

        The high watermark is the one the last fetch response carried (cached=True):
        it costs no request, and unlike ListOffsets it is right on every broker.
        """
        gauge = self.pipeline.metrics.consumer_lag
        for part, lane in self.lanes.items():
            tp = TopicPartition(self.topic, part)
            try:
                low, high = self.consumer.get_watermark_offsets(tp, cached=True)
                done = lane.commit_position()
                if done is None:
                    # Nothing reached an outcome since the assignment: what came before
                    # the group's committed offset was done by a previous owner.
                    done = lane.first_fetched
                if done is None:
                    done = lane.first_fetched = self._committed_or_low(tp, low)
            except KafkaException:
                continue
            if high < 0 or done is None:
                continue  # no fetch response yet: the high watermark is unknown
            gauge.labels(self.topic, str(part)).set(max(0, high - done))

    def _committed_or_low(self, tp: TopicPartition, low: int) -> int | None:
        """The group's committed offset (one request per assignment), else the low mark."""
        (committed,) = self.consumer.committed([tp], timeout=2.0)
        if committed.offset >= 0:
            return int(committed.offset)
        return low if low >= 0 else None

    def _retry_dead_letters(
        self, now: float, failed: list[tuple[PartitionLane, PendingDeadLetter]]
    ) -> None:
        if now < self._next_dlq_retry:
            return
        for lane, pending in failed:
            lane.republish(pending)
        self._next_dlq_retry = now + self._dlq_backoff
        self._dlq_backoff = min(self._dlq_backoff * 2, self.options.dead_letter_backoff_max)

    # -- commits -------------------------------------------------------------------------

    def commit(self, lanes: Iterable[PartitionLane], *, asynchronous: bool) -> None:
        """Commit each lane's final-outcome prefix if it moved since the last commit."""
        offsets: list[TopicPartition] = []
        for lane in lanes:
            position = lane.commit_position()
            # Never below the last accepted commit: a dead letter acknowledged in the
            # middle of a batch can briefly make the prefix look shorter than it was.
            if position is not None and (lane.committed is None or position > lane.committed):
                offsets.append(TopicPartition(self.topic, lane.partition, position))
                lane.committed = position
        if not offsets:
            return
        try:
            if asynchronous:
                self.consumer.commit(offsets=offsets, asynchronous=True)
            else:
                self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            self.commit_failed(exc.args[0], offsets)

    def on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        failed = [tp for tp in partitions if tp.error is not None]
        if error is not None or failed:
            self.commit_failed(error, failed or partitions)

    def commit_failed(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        self.pipeline.metrics.commit_failures.inc()
        log.warning(
            "offset commit failed; will retry",
            extra={"error": error.str() if error else "partition error"},
        )
        for tp in partitions:
            lane = self.lanes.get(tp.partition)
            if lane is not None:
                lane.committed = None  # commit again on the next round

    # -- rebalance -------------------------------------------------------------------

    def _assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._shut:
            return
        for tp in partitions:
            if tp.partition not in self.lanes:
                self.lanes[tp.partition] = PartitionLane(tp.partition, self.pipeline)
        self.assigned_once = True
        log.info("partitions assigned", extra={"partitions": [tp.partition for tp in partitions]})
        self._on_assigned([tp.partition for tp in partitions])

    def _revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._shut:
            return  # close() revokes after shutdown settled and committed everything
        self._resume_paused(partitions)
        lanes = [self.lanes.pop(tp.partition) for tp in partitions if tp.partition in self.lanes]
        self.settle(lanes, self.options.revoke_timeout)
        self._forget_lag(partitions)
        log.info("partitions revoked", extra={"partitions": [tp.partition for tp in partitions]})
        self._on_revoked([tp.partition for tp in partitions])

    def _lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Lost, not revoked: another member may own them already, so committing now
        # could move its offsets. Drop our work; it is redelivered.
        self._resume_paused(partitions)
        for tp in partitions:
            lane = self.lanes.pop(tp.partition, None)
            if lane is not None:
                lane.close()
        self._forget_lag(partitions)
        log.warning("partitions lost", extra={"partitions": [tp.partition for tp in partitions]})

    def _resume_paused(self, partitions: list[TopicPartition]) -> None:
        # librdkafka keeps a partition's pause flag across unassign and assign: a
        # partition revoked while paused would come back paused, and never be fetched.
        paused = [
            TopicPartition(self.topic, tp.partition)
            for tp in partitions
            if (lane := self.lanes.get(tp.partition)) is not None and lane.paused
        ]
        if paused:
            try:
                self.consumer.resume(paused)
            except KafkaException as exc:
                log.warning("could not resume revoked partitions", extra={"error": str(exc)})

    def _forget_lag(self, partitions: list[TopicPartition]) -> None:
        # A partition that is no longer ours must not keep reporting a stale lag.
        for tp in partitions:
            with contextlib.suppress(KeyError):
                self.pipeline.metrics.consumer_lag.remove(self.topic, str(tp.partition))

    def settle(self, lanes: list[PartitionLane], timeout: float) -> None:
        """Stop lanes, let in-flight handlers finish, await dead letters, commit."""
        deadline = time.monotonic() + timeout
        for lane in lanes:
            lane.close()
        for lane in lanes:
            if not lane.idle.wait(max(0.0, deadline - time.monotonic())):
                log.warning(
                    "handler still running after the timeout; its message will be redelivered",
                    extra={"partition": lane.partition, "timeout": timeout},
                )
        self.pipeline.flush_dead_letters(max(0.0, deadline - time.monotonic()))
        self.commit(lanes, asynchronous=False)

    def shutdown(self) -> None:
        """Finish or abandon in-flight work within the timeout, commit, close.

        Takes the poll lock for good: no worker may touch the consumer once it closes.
        """
        self.stopping.set()
        # A worker may be in a rebalance callback, which takes at most revoke_timeout.
        wait = self.options.revoke_timeout + self.options.shutdown_timeout
        if not self._poll_lock.acquire(timeout=wait):
            log.error("a worker held the consumer for %.0fs; closing it anyway", wait)
        lanes = list(self.lanes.values())
        self.lanes.clear()
        self.settle(lanes, self.options.shutdown_timeout)
        self._shut = True
        self.pipeline.abandon.set()  # handlers still running are given up on

"""Handlers on the service's event loop: async handlers, and key or no ordering.

A lane whose handlers run here hands its fetched batches to the loop thread one batch
at a time (``LoopLane.drain``), never a message at a time: a thread hand-off costs more
than a handler that does not wait. On the loop, records are grouped by their *ordering
key*, and each busy key has one task that runs its records one after another:

- ``ordering = "partition"``: one key per partition, so records run in offset order,
  as on a worker thread. Only async handlers take this path.
- ``ordering = "key"``: the record's key. Records with the same key run one at a time
  in offset order; different keys of a partition run concurrently. A record without a
  key has nothing to be ordered with, so it runs on its own, as under ``"none"``.
- ``ordering = "none"``: every record on its own, in any order (idempotent handlers).

At most ``ServiceOptions.max_in_flight`` handlers run at once, service-wide. Async
handlers are awaited on the loop; sync ones run on a bounded thread pool, so no
handler ever runs on a thread that must keep polling. A transient failure retries
with the policy's backoff while only its key waits (its later records queue behind
it; other keys flow). A record's offset is held open in its lane's ``FinalPrefix``
until its outcome is final, so the commit never passes an unfinished record.

All state here is the loop thread's: other threads reach it only through
``call_soon_threadsafe``. Counters read by gauges, and a lane's ``running`` (which a
revoke on another thread waits to see at zero), are plain ints.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterator
from typing import Any

from streamguard.deadletter import Failure
from streamguard.headers import Record
from streamguard.observe.logs import frames
from streamguard.runtime.assignment import HURRY_CHECK, wait_unless_hurried
from streamguard.runtime.context import MessageContext
from streamguard.runtime.lane import CANCEL_WAIT, PartitionLane
from streamguard.runtime.outcomes import RetryState, after_try, gate
from streamguard.runtime.pipeline import Pipeline
from streamguard.runtime.poller import Poller
from streamguard.runtime.slots import Slots
from streamguard.runtime.spec import Ordering, async_only_inside, is_async

log = logging.getLogger("streamguard.runtime")

Sleep = Callable[[float], Awaitable[None]]
# While no record may start (DLQ unwritable, breaker open), how often that is checked.
DLQ_WAIT = 0.05
# What ``_prepare`` hands to ``_call`` for a tombstone the service handles.
_TOMBSTONE = object()
# Records of an in-order run whose bookkeeping is folded into one lane update.
_FOLD = 64
# Names successes counted while the breaker was closed: never a half-open probe's.
_NO_PROBE = ("successes before the probe",)
# Records the loop runs between two polls of its own (a consume batch's worth).
_POLL_EVERY = 512
# Handler counts and times reach the metrics at least every METRICS_EVERY seconds, and
# as soon as METRICS_MAX times are held: half a second's worth at 80k records a second
# is 40k floats, allocated among the records' objects and freed at once, and holding
# them left the async service about 8 MiB larger after a million records (69.6 against
# 61.6 MiB by median, alternating runs).
METRICS_EVERY = 0.5
METRICS_MAX = 1024
# How often a revoke or shutdown waiting for a lane's handlers looks again: first after
# a millisecond, then twice as long each time, up to IDLE_CHECK_MAX.
IDLE_CHECK = 0.001
IDLE_CHECK_MAX = 0.016


def _poll_until(done: Callable[[], bool], deadline: float) -> bool:
    """Whether ``done()`` came true before ``deadline`` (monotonic), looked at after
    ``IDLE_CHECK``, then twice as long each time up to ``IDLE_CHECK_MAX``."""
    pause = IDLE_CHECK
    while not done():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(pause, left))
        pause = min(pause * 2, IDLE_CHECK_MAX)
    return True


def new_event_loop(kind: str = "auto") -> asyncio.AbstractEventLoop:
    """uvloop's loop where it is installed (``"auto"``), else asyncio's own.

    Timers and task switches dominate a handler that awaits I/O, and uvloop's cost
    about half of asyncio's; ``"asyncio"`` keeps the standard loop, for handlers that
    rely on something only it does.
    """
    if kind == "auto":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
    return asyncio.new_event_loop()


def stop_event_loop(
    loop: asyncio.AbstractEventLoop,
    thread: threading.Thread,
    timeout: float = 5.0,
    hurry: threading.Event | None = None,
) -> None:
    """Stop a loop running forever on ``thread`` and close it once the thread is done.

    Closed, not left to the collector: uvloop's loop is never collected, and kept five
    descriptors (epoll, pipes) per run or test harness. A thread still running after
    ``timeout`` (a handler blocks it: a blocking call inside ``async def``) is left, a
    daemon, with its loop open; when ``hurry`` is set (a second signal), which is looked
    at every ``HURRY_CHECK``, after ``HURRY_CHECK`` at most: a loop not blocked stops
    within milliseconds, and left unclosed it kept its descriptors.
    """
    loop.call_soon_threadsafe(loop.stop)
    deadline = time.monotonic() + timeout

    def ended(wait: float) -> bool:
        thread.join(timeout=wait)
        return not thread.is_alive()

    # A first wait even hurried (see above), then as any bounded wait of a stop.
    if not ended(min(HURRY_CHECK, timeout)):
        wait_unless_hurried(ended, deadline, hurry or threading.Event())
    if not thread.is_alive():
        loop.close()


class LoopLane(PartitionLane):
    """A partition whose records are processed on the event loop (see module doc)."""

    hands_off = True

    def __init__(self, partition: int, pipeline: Pipeline, runner: LoopRunner) -> None:
        super().__init__(partition, pipeline)
        self.runner = runner
        # Handler calls of this lane under way (under partition order: its run, while it
        # runs), written on the loop thread. ``wait_idle`` reads it; the inherited
        # ``idle`` Event is not used here.
        self.running = 0

    def drain(self, max_batches: int = 1 << 30) -> bool:
        """Hand the lane to the loop, which takes its buffered batches in order.

        The records stay counted in ``buffered`` until their outcome is final, which
        bounds memory. The loop takes them from the queue itself (``take``), so that
        batches handed over from different threads can never change places.
        """
        with self.lock:
            self.scheduled = False
            if self.closed or not self.queue:
                return False
        self.runner.submit(self)
        return False

    def take(self) -> list[list[Record]]:
        """On the loop: every buffered batch, oldest first; their offsets held open
        under key or no ordering (they may finish in any order)."""
        with self.lock:
            batches = list(self.queue)
            self.queue.clear()
            if self.closed:
                return []
            if self.runner.keyed:
                for batch in batches:
                    for msg in batch:
                        self.offsets.hold(msg.offset(), None)
            return batches

    def close(self) -> None:
        super().close()
        self.runner.close_lane(self)

    def cancel(self) -> None:
        """A revoke or shutdown stopped waiting for this lane's handlers: cancel them.

        Left running, an async handler of a revoked partition went on beside the new
        owner's call of the same record, and beside this member's own if the partition
        came back (two handlers of one key at once); it also kept its slot.
        """
        self.runner.cancel_lane(self)

    def abandon_by(self, deadline: float) -> None:
        """Cancelling only asks: a handler that awaits in its cleanup, or swallows the
        cancellation, goes on. It gets until ``deadline`` to end (what it comes to then
        is settled with the lane); past that it is reported and abandoned, so that what
        it still does leaves no dead letter once the partition moved. Its record stays
        uncommitted either way unless it finished.
        """
        if self.wait_idle(max(0.0, deadline - time.monotonic())):
            self.abandon()
            return
        log.warning(
            "handler still running after it was cancelled; it may run on beside the "
            "partition's next owner, and its outcome is ignored",
            extra={
                **self.pipeline.spec.names(),
                "partition": self.partition,
                "wait": CANCEL_WAIT,
            },
        )
        self.abandon()
        # An outcome the loop was recording as the flag was set is sent before this
        # returns, and so before the revoke's flush and commit: none goes out after.
        # Bounded by the deadline and one CANCEL_WAIT more for all lanes together: a
        # blocked loop answers none of them.
        if not self.runner.on_loop_thread():
            self.runner.barrier(max(0.0, deadline + CANCEL_WAIT - time.monotonic()))

    def wait_idle(self, timeout: float) -> bool:
        """Wait (bounded) until no handler of this lane runs; False on timeout.

        ``running`` is looked at after ``IDLE_CHECK``, then less often, rather than
        through the ``idle`` Event: under key ordering, setting and clearing an Event
        per record cost 2.6 µs of CPU a record (20.4 against 17.7), and this wait only
        comes with a revoke or a shutdown.
        """
        # On the loop thread this is a rebalance callback of the loop's own poll, which
        # happens only while no handler is suspended: nothing of this lane can run.
        if self.runner.on_loop_thread():
            return True
        return _poll_until(lambda: not self.running, time.monotonic() + timeout)

    def inflight(self) -> int:
        with self.lock:
            dead_letters = sum(1 for p in self.offsets.open_items() if p is not None)
            if self.closed:
                # close() dropped ``buffered``, records in a handler included: while a
                # revoke or stop waits for them, those handlers are what is in flight.
                return self.running + dead_letters
            return self.buffered + dead_letters

    def finished(self, msg: Record, dead_letter: Failure | None) -> None:
        """The record's outcome is final (handled) or decided (a dead letter to send)."""
        offset = msg.offset()
        with self.lock:
            if not self.closed:  # close() already dropped the buffer's count
                self.buffered -= 1
            if dead_letter is None:
                if self.runner.keyed:
                    self.offsets.release(offset)
                else:
                    self.offsets.advance(offset + 1)
        if dead_letter is not None:
            self._dead_letter(msg, dead_letter)  # held open until the broker acknowledges


class DaemonPool(concurrent.futures.Executor):
    """A thread pool for sync handlers whose threads never keep the process alive.

    ``ThreadPoolExecutor`` joins its threads at interpreter exit, so one stuck handler
    would hang a process that shutdown already gave up on; its message is uncommitted
    and delivered again after the restart, as with worker threads.
    """

    def __init__(self, max_workers: int) -> None:
        self._max = max_workers
        self._queue: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], Any, Any] | None]
        self._queue = queue.SimpleQueue()
        self._threads = 0
        self._idle = 0
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if self._closed:
            future.cancel()
            return future
        self._queue.put((future, fn, (args, kwargs)))
        with self._lock:
            # More calls queued than threads waiting for one: start another thread.
            if self._queue.qsize() > self._idle and self._threads < self._max:
                self._threads += 1
                threading.Thread(target=self._work, name="streamguard-handler", daemon=True).start()
        return future

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            item = self._queue.get()
            with self._lock:
                self._idle -= 1
            if item is None:
                return
            self._call(*item)
            # Its arguments hold the handled event: kept until this thread's next call,
            # which on a quiet topic may never come, it stayed alive and was walked by
            # every young collection.
            del item

    @staticmethod
    def _call(
        future: concurrent.futures.Future[Any],
        fn: Any,
        call: tuple[tuple[Any, ...], dict[str, Any]],
    ) -> None:
        args, kwargs = call
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn(*args, **kwargs))
            except StopIteration as exc:
                # asyncio refuses a StopIteration into the Future that the loop
                # awaits (a TypeError in the loop's callback), which then never
                # finished: the record had no outcome and its key or partition
                # stalled. It arrives as an async handler's does, a RuntimeError.
                error = RuntimeError("handler raised StopIteration")
                error.__cause__ = exc
                del call, args, kwargs  # see below
                future.set_exception(error)
            except BaseException as exc:
                # The event is not kept until the error is let go: the handler's
                # frame, in the error a dead letter holds, links back to this one.
                # Before the loop may judge it.
                del call, args, kwargs
                future.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._closed = True
        for _ in range(self._threads):
            self._queue.put(None)


class _KeyRun:
    """The records of one busy ordering key, and the task that runs them in order."""

    __slots__ = ("in_handler", "lane", "queue", "task")

    def __init__(self, lane: LoopLane) -> None:
        self.lane = lane
        self.queue: deque[Record] = deque()
        self.task: asyncio.Task[None] | None = None
        self.in_handler = False


class LoopRunner:
    """Runs the records of every ``LoopLane`` of a service on its event loop."""

    def __init__(
        self,
        pipeline: Pipeline,
        loop: asyncio.AbstractEventLoop,
        ordering: Ordering,
        max_in_flight: int,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        spec = pipeline.spec
        self._poller: Poller | None = None
        self._stopping: threading.Event | None = None
        self._on_idle: Callable[[], None] = lambda: None
        self._on_failure: Callable[[BaseException], None] = lambda exc: None
        # What stopped a run with no outcome for its record (see ``_crashed``).
        self.failure: BaseException | None = None
        self._thread_id: int | None = None  # the loop thread, once it ran anything
        self.in_handlers = 0  # handler calls started and not returned (suspended ones)
        self._since_poll = 0  # records finished since the loop last polled
        self._polls = 0  # polls the loop made (a run between turns looks whether one did)
        self._resumed: asyncio.Event | None = None
        self.pipeline = pipeline
        self.loop = loop
        self.ordering = ordering
        self.keyed = ordering != "partition"
        self._sleep = sleep
        self._clock = clock
        self._runs: dict[Hashable, _KeyRun] = {}
        self._in_transit = 0  # lanes submitted from other threads, not yet accepted
        self._transit_lock = threading.Lock()
        self.slots = Slots(max_in_flight, loop)
        self.waiting = 0  # records queued behind a busy key (a gauge)
        self._pool = DaemonPool(max_in_flight)
        self._handle = self._caller(spec.handle)
        self._tombstone = (
            self._caller(spec.handle_tombstone) if spec.handle_tombstone is not None else None
        )
        self._handled = 0
        self._durations: list[float] = []
        self._flush_due = False
        self._seen = 0
        self._succeeded = 0  # successes not yet told to the breaker (_fold_successes)
        self._began = 0.0  # when the last successful call of ``_call`` started
        self._failed_began = 0.0  # when the call ``_call`` raised out of last started
        # A clean stop's end, on this loop's clock, once it began (``finish_fetched``):
        # a retry due later is not waited for.
        self._finish_by: float | None = None
        # Under key or no ordering, the runs sleeping until a retry is due, and when
        # (never, for a wait for a dependency).
        self._retrying: dict[asyncio.Task[None], float] = {}

    def _caller(self, fn: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
        pool, loop = self._pool, self.loop
        if async_only_inside(fn):
            # A plain def wrapper of an async def: called in the pool, where a wrapper
            # that runs the coroutine itself (asyncio.run) can; one that returns it
            # has its coroutine awaited here, on the loop.
            async def through_wrapper(*args: Any) -> Any:
                result = await loop.run_in_executor(pool, fn, *args)
                if inspect.iscoroutine(result):
                    return await result
                return result

            return through_wrapper
        if is_async(fn):
            return fn

        def in_pool(*args: Any) -> Awaitable[Any]:
            return loop.run_in_executor(pool, fn, *args)

        return in_pool

    async def _off_loop(self, request: Callable[[], object]) -> None:
        """A blocking registry request (``Pipeline.unfetched``), made in a thread of
        the loop's default executor: the other partitions' handlers go on meanwhile."""
        await self.loop.run_in_executor(None, request)

    def attach(
        self,
        poller: Poller,
        stopping: threading.Event,
        on_idle: Callable[[], None],
        on_failure: Callable[[BaseException], None],
    ) -> None:
        """Let the loop poll between records (see ``_poll_here``).

        Args:
            stopping: set when the service stops; the loop then polls no more.
            on_idle: called when the loop has no work left, so that another thread
                takes over polling at once.
            on_failure: stops the service with this error, as a failed worker does.
        """
        self._poller, self._stopping, self._on_idle = poller, stopping, on_idle
        self._on_failure = on_failure

    @property
    def busy(self) -> bool:
        """True while the loop has records to run, or batches on their way to it (it
        polls between records itself).

        Batches on their way count: the supervisor polled again at once when it saw an
        idle loop it had just handed work, and again, holding the interpreter lock
        while the loop waited for it to take them (measured: thousands of polls that
        fetched nothing, a stall of ~5 ms each time the loop ran dry).
        """
        return bool(self._runs) or self._in_transit > 0

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self._thread_id

    # -- any thread --------------------------------------------------------------------

    def submit(self, lane: LoopLane) -> None:
        """Have the loop take a lane's batches: one thread hand-off (none on the loop)."""
        if threading.get_ident() == self._thread_id:
            self._accept(lane)
            return
        with self._transit_lock:
            self._in_transit += 1
        try:
            self.loop.call_soon_threadsafe(self._arrived, lane)
        except RuntimeError:  # the loop closed: nothing is on its way
            with self._transit_lock:
                self._in_transit -= 1
            raise

    def close_lane(self, lane: LoopLane) -> None:
        """Stop a closed lane's work: nothing new starts; retry waits are cancelled."""
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._close, lane)

    def cancel_lane(self, lane: LoopLane) -> None:
        """Cancel every task of a closed lane, handlers included (records uncommitted)."""
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._close, lane, True)

    def cancel_all(self) -> None:
        """Shutdown gave up waiting: cancel every task (their records stay uncommitted)."""
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._cancel_all)

    def finish_fetched(self, deadline: float, hurry: threading.Event) -> None:
        """A clean stop, with fetching over: wait, until ``deadline`` (monotonic) at
        most, for the records already on the loop to reach their outcome, so that the
        commit can pass them. Records queued behind a key or for a slot run; a retry
        runs if it is due by then, else its record is dropped uncommitted at once.

        Under key or no ordering the commit stops at a partition's first record without
        an outcome, typically one waiting for its retry, and every record of other keys
        handled past it was delivered again after the restart. Not waited for: records
        that cannot start (DLQ unwritable, breaker open), records waiting for a
        dependency (an outage suspected, the registry down) and a crashed run's. Nor,
        once ``hurry`` is set (a second signal), anything more. Nor the runs of lanes
        closed already (see ``_open_runs``).
        """
        if self.loop.is_closed() or self.on_loop_thread() or not self._open_runs():
            return
        try:
            self.loop.call_soon_threadsafe(self._finish_until, deadline)
        except RuntimeError:  # the loop closed meanwhile
            return
        _poll_until(
            lambda: (
                not self._open_runs()
                or self.failure is not None
                or not self.pipeline.can_process()
                or hurry.is_set()
            ),
            deadline,
        )

    def finish_revoked(
        self, lanes: list[PartitionLane], deadline: float, hurry: threading.Event
    ) -> None:
        """A revoke, before it closes ``lanes``: while a handler of theirs runs, until
        ``deadline`` (monotonic) at most, let their records queued behind its key, or
        handed its slot as it ends, run too.

        Closing at once dropped those, the commit stopped at the first of them, and every
        record of other keys handled past it came again at the partition's next owner
        (119 records in a trial of three replicas under key ordering). Not waited for,
        as documented: records waiting for a retry, or only for a slot that handlers of
        other partitions hold; nothing on the loop's own thread, whose poll this revoke
        is part of (it polls only while no handler runs).
        """
        if self.loop.is_closed() or self.on_loop_thread():
            return

        def given_up() -> bool:
            return self.failure is not None or hurry.is_set()

        while _poll_until(lambda: given_up() or not self._revoked_running(lanes), deadline):
            if given_up():
                return
            # A slot passed on as a handler ended reaches its waiter on the loop's next
            # step: look once more after it.
            left = deadline - time.monotonic()
            if left <= 0 or not self.barrier(left, hurry) or not self._revoked_running(lanes):
                return

    def _revoked_running(self, lanes: list[PartitionLane]) -> bool:
        """A handler of ``lanes`` runs, or batches of theirs are on their way here."""
        if self._in_transit > 0 and any(lane.queue for lane in lanes):
            return True
        return any(isinstance(lane, LoopLane) and lane.running for lane in lanes)

    def _open_runs(self) -> bool:
        """Runs of lanes not closed, or batches on their way: what ``finish_fetched``
        waits for. Not ``busy``: that counts too the runs of a partition revoked earlier
        whose handler ignored its cancellation, which held a clean stop for the whole
        ``shutdown_timeout`` though the partition was no longer ours."""
        # list(): the loop thread changes ``_runs`` meanwhile.
        runs = list(self._runs.values())
        return self._in_transit > 0 or any(not run.lane.closed for run in runs)

    def barrier(self, timeout: float, hurry: threading.Event | None = None) -> bool:
        """Return once the loop has run what it was running, at most ``timeout`` later
        and a ``HURRY_CHECK`` after ``hurry`` is set; False when it did not answer (a
        handler blocks its thread, or the stop was hurried first).

        After the shutdown: a run whose handler crashed as the service stopped leaves
        its lane idle and records the crash (``_crashed``) in the same step of the
        loop, and the shutdown may have seen the first before the second.
        """
        if self.loop.is_closed() or not self.loop.is_running():
            return True
        done = threading.Event()
        self.loop.call_soon_threadsafe(done.set)
        if hurry is None:
            return done.wait(timeout)
        return wait_unless_hurried(done.wait, time.monotonic() + timeout, hurry)

    def shutdown(self) -> None:
        """The service stops: release the thread pool, and write the counts and times
        the loop still holds to the metrics (before the loop stops: callbacks run in
        order), since the timer that would have written them never fires."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._report_metrics)

    # -- the loop thread ---------------------------------------------------------------

    def _finish_until(self, deadline: float) -> None:
        """The stop waits for the loop's records until ``deadline`` (monotonic): give up
        at once the retries due after it, as a closed lane's (uncommitted)."""
        until = self._clock() + max(0.0, deadline - time.monotonic())
        self._finish_by = until
        for task, due in list(self._retrying.items()):
            if due > until:
                task.cancel()

    def _runs_until(self, lane: LoopLane) -> float | None:
        """For ``judge``: the latest due of a retry of ``lane`` that still runs (see
        ``_wait_to_retry``). None runs once it closed, nor, under partition order, once
        the stop was asked for (no finish waits for it); under key or no ordering, those
        due by a clean stop's finish do (``shutdown_timeout`` away when it begins)."""
        if self._dropping(lane):
            return -math.inf
        if self._finish_by is None and self.pipeline.stopping.is_set():
            return self._clock() + self.pipeline.spec.options.shutdown_timeout
        return self._finish_by

    def _dropping(self, lane: LoopLane) -> bool:
        """A retry of ``lane`` is given up: it closed, or under partition order the
        service stops. Until the lane closed, a retry due soon enough ran, after a line
        that said it was dropped, or the line said it ran and it did not."""
        return lane.closed or (not self.keyed and self.pipeline.stopping.is_set())

    def _arrived(self, lane: LoopLane) -> None:
        """A lane handed over by another thread reached the loop."""
        try:
            self._accept(lane)
        finally:
            with self._transit_lock:
                self._in_transit -= 1

    def _accept(self, lane: LoopLane) -> None:
        self._thread_id = threading.get_ident()
        batches = lane.take()
        if not batches:
            return
        self._seen = 0  # the next record's writer schema is checked, as a batch's first is
        runs = self._runs
        if not self.keyed:
            run = runs.get(lane)
            if run is None:
                run = runs[lane] = _KeyRun(lane)
                for batch in batches:
                    run.queue.extend(batch)
                self._start(lane, run)
            else:
                for batch in batches:
                    run.queue.extend(batch)
            return
        by_key = self.ordering == "key"
        for batch in batches:
            for msg in batch:
                key = msg.key() if by_key else None
                if key is None:  # keyless, or ordering "none": a run of its own
                    run = _KeyRun(lane)
                    run.queue.append(msg)
                    runs[run] = run
                    self._start(run, run)
                    continue
                ident = (lane, key)
                run = runs.get(ident)
                if run is None:
                    run = runs[ident] = _KeyRun(lane)
                    run.queue.append(msg)
                    self._start(ident, run)
                else:
                    run.queue.append(msg)
                    self.waiting += 1

    def _start(self, ident: Hashable, run: _KeyRun) -> None:
        # The run forgets itself as it ends (``_run``'s ``finally``); a task cancelled
        # before its first step never runs that, so ``_cancel`` adds a done callback.
        # Not one per run: under key ordering a run is often one record, and the
        # callback was one more handle through the loop for each (1.0 µs a record).
        run.task = self.loop.create_task(self._run(ident, run))

    def _cancel(self, ident: Hashable, run: _KeyRun) -> None:
        if run.task is not None:
            run.task.cancel()
            run.task.add_done_callback(lambda _task: self._forget(ident, run))

    def _forget(self, ident: Hashable, run: _KeyRun) -> None:
        """The run is over: nothing more may be added to it. Idempotent.

        Called synchronously as the run's coroutine ends, so that a batch accepted
        right after goes to a new run, never to the queue of a finished one.
        """
        if self._runs.get(ident) is not run:
            return
        del self._runs[ident]
        if self.keyed and len(run.queue) > 1:
            self.waiting -= len(run.queue) - 1
        run.queue.clear()  # only left over when the lane closed: redelivered
        self._schedule_flush()
        if not self._runs:
            self._on_idle()

    async def _run(self, ident: Hashable, run: _KeyRun) -> None:
        lane = run.lane
        queue = run.queue
        try:
            if not self.keyed and not await self._run_in_order(run):
                return
            while queue and not lane.closed:
                if not await self._process(run, queue[0]):
                    # Its lane closed, or under partition order the stop gave its retry
                    # up: nothing after it may run, or the commit would pass it.
                    break
                queue.popleft()
                if queue and self.keyed:
                    self.waiting -= 1
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is None or not task.cancelling():
                self._crashed(lane, exc)  # a handler's own, e.g. from a task cancelled elsewhere
            # else the lane was closed or the service gave up: records stay uncommitted
        except GeneratorExit as exc:
            if run.task is not None and asyncio.current_task(self.loop) is run.task:
                # Raised within a step of the run: the handler's own, a crash. (Taken
                # for the case below, the run vanished with its records, and the
                # partition's later ones were committed past them.)
                self._crashed(lane, exc)
                return
            # Destroyed unfinished: the service stopped and closed the loop while its
            # handler ignored every cancellation (the stop warned of it). Not a crash,
            # and nothing may be scheduled on a closed loop, as ``_forget`` would.
            if self._runs.get(ident) is run:
                del self._runs[ident]
            raise
        except BaseException as exc:
            self._crashed(lane, exc)
        finally:
            self._forget(ident, run)

    def _crashed(self, lane: LoopLane, exc: BaseException) -> None:
        """A run ended with no outcome for its record (a handler raised what is not an
        ``Exception``, or a bug): stop the service, as a failed worker thread does.

        The lane closes first, so that nothing after the record runs: a later run of
        the partition would commit past it. Not raised on: the loop must live on to
        settle the other lanes as the service stops.
        """
        # Mostly a handler's own: its text may quote the record, so class and frames.
        log.error(
            "event-loop lane crashed; stopping the service",
            extra={
                # Which service: a process may run several (one per topic).
                "service": lane.pipeline.spec.name,
                "topic": lane.pipeline.topic,
                "partition": lane.partition,
                "error": type(exc).__name__,
                "traceback": frames(exc),
            },
        )
        lane.close()
        if self.failure is None:
            self.failure = exc
        self._on_failure(exc)

    async def _run_in_order(self, run: _KeyRun) -> bool:
        """Partition order, the fast path: first attempts inline, a batch's bookkeeping
        folded into one update per ``_FOLD`` records.

        A record that needs more than one straight attempt (a retry, an unwritable
        DLQ, an open breaker) goes through ``_process`` (see ``_aside``), then the loop
        goes on with the next. After a batch's worth of records, and when its queue
        runs dry, the run lets the other partitions' runs take their turn, then fetches
        (``_next_turn``), as workers serve lanes round-robin. The run counts once in
        ``in_handlers`` for as long as it runs, not once per handler call: when it is
        suspended, it is in a handler, except where it takes itself out (waiting for a
        slot, aside, between turns). True if the run goes on through ``_process``.
        """
        lane, queue, pipe = run.lane, run.queue, self.pipeline
        next_record = queue.popleft
        decode, handle, tombstone = pipe.decode, self._handle, self._tombstone
        unfetched = pipe.unfetched
        inspect_drift, sample = pipe.inspect_drift, pipe.drift_sample
        clock, timed, slots = time.perf_counter, self._durations.append, self.slots
        waiters = slots.waiters
        breaker, publisher = pipe.breaker, pipe.publisher
        done = 0
        last: Record | None = None  # the last record handled since the last fold
        began = 0.0  # when its call started: the breaker times the successes by it
        seen = 0  # records decoded by this run: its first, then every sample-th, drift-checked
        held = False  # a slot kept from one record to the next while nobody waits
        # Slow handlers fold by time as well: _FOLD records of a 1 s handler kept the
        # metrics, the lag and the commits still for a minute. The clock read after
        # each call tells when; fast records fold by count first.
        end = 0.0
        fold_at = clock() + METRICS_EVERY
        run.in_handler = True
        lane.running += 1
        self.in_handlers += 1
        try:
            while not lane.closed:
                if not queue:
                    self._fold(lane, done, last, began)
                    done = 0
                    if held:  # the poll may settle revoked lanes: hold nothing
                        slots.give()
                        held = False
                    if await self._next_turn(run):
                        continue
                    return False
                # can_process() per record cost more than the handler call; while the
                # breaker is closed it is exactly the DLQ's writability.
                if not (breaker.closed and publisher.writable):
                    if not pipe.can_process():
                        return True  # _run goes on through _process, which waits
                    if not breaker.closed:  # the breaker decides call by call: slow path
                        self._fold(lane, done, last, began)
                        done = 0
                        if held:
                            slots.give()
                            held = False
                        if not await self._aside(run, next_record()):
                            return False  # see _aside
                        continue
                if not held and not slots.try_take():  # max_in_flight holds partition order
                    self._fold(lane, done, last, began)
                    done = 0
                    # Not in a handler while it waits: a revoke cancels the run at once
                    # (``_close``) rather than wait, up to revoke_timeout, for another
                    # partition's handler to free a slot. Its records are redelivered.
                    with self._outside_handlers(run):
                        await slots.take()
                    if lane.closed:
                        slots.give()
                        return False
                    if not (breaker.closed and publisher.writable):
                        # The breaker opened (or the DLQ failed) while it waited: looked
                        # at again above. Else each partition queued for a slot called
                        # the dependency the breaker had just found down.
                        slots.give()
                        continue
                held = True
                msg = next_record()
                value = msg.value()
                ctx = MessageContext(msg, 1)
                verdict: Failure | RetryState | None = None
                called = False  # the user's code ran: what it raises is its own
                try:
                    if value is None and tombstone is not None:
                        called = True
                        start = clock()
                        returned = await tombstone(ctx)
                        end = clock()
                        timed(end - start)  # a handled tombstone is a handler call too
                    else:
                        if unfetched is not None and (fetch := unfetched(value)) is not None:
                            await self._off_loop(fetch)
                        event = decode(value)
                        drift = None if seen % sample else inspect_drift(msg, value)
                        seen += 1
                        if drift is not None:
                            verdict = Failure("schema_drift", drift)
                        else:
                            called = True
                            start = clock()
                            returned = await handle(event, ctx)  # None, unless work handed back
                            end = clock()
                            timed(end - start)
                            event = None  # not held while the next decodes (see lane.py)
                except Exception as exc:
                    event = None  # see lane.py: the dead letter's error links back here
                    if called and done:  # the verdict weighs every success before it
                        self._fold(lane, done, last, began)
                        done = 0
                    # And the successes of retried records (``_process``), or one from
                    # before this failure was told after it, at this record's retry.
                    self._fold_successes()
                    verdict = pipe.judge(
                        exc,
                        1,
                        None,
                        self._clock(),
                        (lane.partition, msg.offset()),
                        called,
                        self._runs_until(lane),
                        start if called else None,  # see _fold
                    )
                    if isinstance(verdict, RetryState):
                        after_try(verdict, None, called)
                if waiters:
                    slots.give()
                    held = False
                if verdict is None:
                    if returned is not None:  # raises (the run crashes) if work went unrun
                        pipe.returned(returned, value is None)
                    done += 1
                    lane.last_handled = last = msg  # committable before the next fold
                    began = start
                    if done >= _FOLD or end >= fold_at:
                        fold_at = clock() + METRICS_EVERY
                        self._fold(lane, done, last, began)
                        done = 0
                        if self._since_poll >= _POLL_EVERY:  # a batch's worth: a turn
                            if held:
                                slots.give()
                                held = False
                            await self._next_turn(run)
                    continue
                self._fold(lane, done, last, began)
                done = 0
                if held:
                    slots.give()
                    held = False
                if isinstance(verdict, Failure):
                    lane.finished(msg, verdict)
                    continue
                if not await self._aside(run, msg, verdict):
                    return False  # see _aside
            return False
        finally:
            self.in_handlers -= 1
            if held:
                slots.give()
            self._fold(lane, done, last, began)
            run.in_handler = False
            lane.running -= 1

    async def _next_turn(self, run: _KeyRun) -> bool:
        """Between two batches' worth of an in-order run (or when its queue ran dry):
        let the other runs go first, then fetch, unless someone did meanwhile; True if
        the run has records.

        Round-robin, as workers serve lanes: when a run fetched as soon as its queue
        was empty and otherwise kept the loop, the other partitions' buffers filled up
        until flow control stopped fetching (polls that fetched nothing, hundreds a
        second).
        """
        polls = self._polls
        with self._outside_handlers():  # neither the others' turns nor the poll count it
            if len(self._runs) > 1:
                await asyncio.sleep(0)
            if self._polls == polls and not run.lane.closed:
                self._poll_here()
        return bool(run.queue)

    async def _aside(self, run: _KeyRun, msg: Record, retry: RetryState | None = None) -> bool:
        """Take a record of an in-order run to its outcome through ``_process`` (which
        counts its own handler calls), the run meanwhile counted as not in a handler.
        False as ``_process``: the record has no outcome (its lane closed, or the stop
        gave its retry up), so the run ends, or the next record's commit passed it."""
        with self._outside_handlers(run):
            return await self._process(run, msg, retry)

    @contextlib.contextmanager
    def _outside_handlers(self, run: _KeyRun | None = None) -> Iterator[None]:
        """An in-order run, which counts once in ``in_handlers`` while it runs, waits
        here for something other than a handler: meanwhile it does not count. Given the
        ``run``, it is also not in a handler for a revoke, which then cancels it at once
        (``_close``); if the wait raises, ``_run_in_order``'s finally clears that flag."""
        self.in_handlers -= 1
        if run is not None:
            run.in_handler = False
        try:
            yield
        finally:
            self.in_handlers += 1
        if run is not None:
            run.in_handler = True

    def _poll_here(self) -> None:
        """Poll on the loop thread, between records: leader/follower, as workers do.

        Handing the interpreter lock back and forth between a polling thread and the
        loop costs more than a handler that does not wait, so the loop fetches its
        next batch itself. Only while no handler is suspended mid-call: a rebalance
        callback run here settles revoked lanes, and must find none of them running.
        """
        self._since_poll = 0
        poller, stopping = self._poller, self._stopping
        if poller is None or stopping is None or self.in_handlers:
            return
        if not poller.lock.acquire(blocking=False):
            return  # another thread is polling
        try:
            if stopping.is_set():
                return
            claimed = poller.poll_once(0.0)
            self._polls += 1
        finally:
            poller.lock.release()
        for lane in claimed:
            lane.drain()  # on this thread: accepted at once

    def _fold(self, lane: LoopLane, done: int, last: Record | None, began: float) -> None:
        """Record ``done`` handled records of a lane, the last of them ``last``, whose
        call began at ``began`` (perf_counter): the breaker times the successes by it.
        Not by its end: a task resumed after its dependency answered, past another
        partition's first failure, made that failure look as if others succeeded since."""
        if done and last is not None:
            self._handled += done
            self._since_poll += done
            # Named by the last one: only the probe's success closes a half-open breaker.
            self.pipeline.breaker.succeeded(done, (lane.partition, last.offset()), began)
            with lane.lock:
                lane.offsets.advance(last.offset() + 1)
                if not lane.closed:
                    lane.buffered -= done
            self._schedule_flush()

    async def _process(self, run: _KeyRun, msg: Record, retry: RetryState | None = None) -> bool:
        """Take one record to its outcome; False if its lane closed first.

        ``retry``: the record already failed transiently; wait for it, then go on.
        """
        lane, pipe = run.lane, self.pipeline
        if retry is not None and not await self._wait_to_retry(lane, retry):
            return False
        breaker, publisher = pipe.breaker, pipe.publisher
        # A closed lane is seen where a handler would start (below), and by every wait.
        while True:
            # With the breaker closed and the DLQ writable, no coroutine is needed.
            ready = breaker.closed and publisher.writable
            if not ready and not await self._until_processing(lane):
                return False
            if retry is not None or not breaker.closed:
                self._fold_successes()  # the retry budget counts every success before it
                parked = gate(pipe.breaker, retry, self._clock(), (lane.partition, msg.offset()))
                if parked is not None:  # the breaker or the retry budget holds it
                    retry = parked
                    if not await self._wait_to_retry(lane, parked):
                        return False
                    continue
            attempt = 1 if retry is None else retry.attempt + 1
            if not self.slots.try_take():  # the common case needs no coroutine
                # Let through a breaker that was not closed: the probe, which goes on.
                # Not told by ``ready``: a record that waited for the DLQ was not ready
                # either, and its slot wait skipped the look below.
                probe = not breaker.closed
                waiting_since = self._clock()
                await self.slots.take(first=retry is not None)
                if retry is not None:
                    # Waiting for a slot is not the record's doing: like time parked by
                    # the breaker, it is not charged to its retry budget.
                    retry.first_failure_mono += self._clock() - waiting_since
                if not probe and not (breaker.closed and publisher.writable):
                    # The breaker opened (or the DLQ failed) while it waited: it waits as
                    # records not yet let through do. Else every record queued for a slot
                    # called the dependency the breaker had just found down.
                    self.slots.give()
                    continue
            run.in_handler = True
            lane.running += 1
            # Read after ``running`` is raised, never before: a revoke on another thread
            # sets ``closed``, then waits for ``running`` at zero. Read before it, a
            # revoke landing in between saw no handler, committed and handed the
            # partition over, and this record ran here and at its new owner.
            if lane.closed:  # its new owner runs it
                run.in_handler = False
                lane.running -= 1
                self.slots.give()
                return False
            verdict: Failure | RetryState | None
            self.in_handlers += 1
            try:
                ctx = MessageContext(msg, attempt)
                called = False  # the user's code ran: what it raises is its own
                try:
                    first = retry is None or not retry.drift_checked
                    unfetched = pipe.unfetched
                    if unfetched is not None and (fetch := unfetched(msg.value())) is not None:
                        await self._off_loop(fetch)
                    verdict, event = self._prepare(msg, first)
                    if verdict is None:
                        called = True
                        returned = await self._call(event, ctx)
                    else:  # schema drift: no call reached the dependency
                        breaker.release_probe((lane.partition, msg.offset()))
                except Exception as exc:
                    event = None  # not held while its dead letter waits, or its retry
                    self._fold_successes()  # the verdict weighs every success before it
                    verdict = pipe.judge(
                        exc,
                        attempt,
                        retry,
                        self._clock(),
                        (lane.partition, msg.offset()),
                        called,
                        self._runs_until(lane),
                        self._failed_began if called else None,
                    )
                    if isinstance(verdict, RetryState):
                        verdict = after_try(verdict, retry, called)
                if verdict is None and returned is not None:  # raises if work went unrun
                    pipe.returned(returned, event is _TOMBSTONE)
                # Final even if the lane closed meanwhile: revoke commits what finished.
                # Recorded before ``running`` drops, so that a revoke which sees no
                # handler running finds this outcome among the lane's offsets.
                if not isinstance(verdict, RetryState):
                    if verdict is None:
                        if retry is not None:  # it may have failed before: no longer
                            breaker.recovered((lane.partition, msg.offset()))
                        self._handled += 1
                        if breaker.closed:
                            self._succeeded += 1
                            if self._succeeded >= _FOLD:
                                self._fold_successes()
                        else:
                            # Named: only the probe's success closes it. Counted without
                            # the record, a call that started before the breaker opened
                            # and answered late closed it while the probe was still out.
                            # As of its call's start, as every success (see _fold).
                            self._fold_successes()
                            breaker.succeeded(1, (lane.partition, msg.offset()), self._began)
                    lane.finished(msg, verdict)
            finally:
                self.in_handlers -= 1
                run.in_handler = False
                lane.running -= 1
                self.slots.give()
            if isinstance(verdict, RetryState):
                retry = verdict
                if not await self._wait_to_retry(lane, retry):
                    return False
                continue
            self._schedule_flush()
            self._since_poll += 1
            if self._since_poll >= _POLL_EVERY:
                self._poll_here()
            return True

    async def _until_processing(self, lane: LoopLane) -> bool:
        """Wait while no work may start (DLQ unwritable, breaker open); False if the
        lane closed. Every waiting record shares one timer, so thousands of them cost
        no more than one while an outage lasts."""
        while not self.pipeline.can_process():
            if self._resumed is None:
                self._resumed = asyncio.Event()
                self.loop.call_later(DLQ_WAIT, self._check_resumed)
            await self._resumed.wait()
            if lane.closed:
                return False
        return not lane.closed

    def _check_resumed(self) -> None:
        if self._resumed is None:
            return
        if self.pipeline.can_process():
            self._resumed.set()
            self._resumed = None
        else:
            self.loop.call_later(DLQ_WAIT, self._check_resumed)

    async def _wait_to_retry(self, lane: LoopLane, retry: RetryState) -> bool:
        """Sleep until the retry is due; False if the lane closed. Under key or no
        ordering only this key waits; under partition order the whole partition does.

        Under partition order, when no other partition has records queued here, the loop
        polls before it sleeps. A poll tends to return one partition's records, so the
        others' next ones are often still in librdkafka's queue, and nothing else would
        poll before the retry. In a soak whose retries wait 0-1 ms, no other partition
        had records at the start of 56% of the waits, and its 10,000 retries added
        5.4-7.1 s to 200,000 records (3.8-4.3 s with this poll and flow control's
        short-wait rule together).

        A lane already closed is not waited for: closed during the handler call that
        failed, it was not cancelled (``_close`` leaves a run in a handler), and under
        partition order its run still counts in ``running``, so a revoke or stop slept
        through the whole backoff (up to its timeout, then warned of a handler).
        """
        if self._dropping(lane):
            return False
        task = None
        if not self.keyed:
            lane.retry = retry  # the whole partition waits (flow control may pause it)
            if not any(run.queue for run in self._runs.values() if run.lane is not lane):
                self._poll_here()
        elif (task := asyncio.current_task()) is not None:
            # A clean stop gives up those due too late, and those waiting for a dependency
            # (an outage suspected, the registry down): their record has no outcome before
            # it is back, and the stop waited out shutdown_timeout retrying them.
            due = retry.due if retry.waits_for is None else math.inf
            self._retrying[task] = due
            if self._finish_by is not None and due > self._finish_by:
                task.cancel()  # the stop ends first: uncommitted, as a closed lane's
        try:
            await self._sleep(max(0.0, retry.due - self._clock()))
        finally:
            lane.retry = None
            if task is not None:
                del self._retrying[task]
        return not lane.closed

    def _prepare(self, msg: Record, first: bool) -> tuple[Failure | None, Any]:
        """A try's steps before the handler: decode, drift check (on the ``first``).
        A dead letter's failure, or None and what ``_call`` passes to the handler (the
        event; ``_TOMBSTONE`` for a tombstone the service handles)."""
        pipe = self.pipeline
        value = msg.value()
        if value is None and self._tombstone is not None:
            return None, _TOMBSTONE
        event = pipe.decode(value)
        # A retry is the same record: its writer schema was looked at on its first try
        # (not told by ``attempt``, which a failed probe gives back).
        seen, self._seen = self._seen, self._seen + first
        if first and not seen % pipe.drift_sample:
            drift = pipe.inspect_drift(msg, value)
            if drift is not None:
                return Failure("schema_drift", drift), None
        return None, event

    async def _call(self, event: Any, ctx: MessageContext) -> object:
        """A try's handler call (or tombstone handler's), timed; what it returned."""
        start = time.perf_counter()
        try:
            if event is _TOMBSTONE:
                assert self._tombstone is not None
                returned = await self._tombstone(ctx)
            else:
                returned = await self._handle(event, ctx)
        except Exception:
            # Read by _process's judging before anything else runs on the loop: a
            # permanent failure counts as an answer of the dependency as of it.
            self._failed_began = start
            raise
        self._durations.append(time.perf_counter() - start)
        self._began = start  # the breaker times successes by it (see _fold)
        return returned

    def _fold_successes(self) -> None:
        """Tell the breaker of the successes ``_process`` counted. A call takes a lock
        and reads the clock three times (3.8 µs of CPU a key-ordered record, 21.5
        against 17.7), so they go ``_FOLD`` at a time, as an in-order run's do
        (``_fold``), and before ``_process`` judges a failure or gates a retry."""
        if self._succeeded:
            # Counted while the breaker was closed (a half-open one's successes go named):
            # none of them is a probe's, so none may close it.
            self.pipeline.breaker.succeeded(self._succeeded, _NO_PROBE, self._began)
            self._succeeded = 0

    def _schedule_flush(self) -> None:
        if len(self._durations) >= METRICS_MAX:
            self._report_metrics()
        if not self._flush_due:
            self._flush_due = True
            self.loop.call_later(METRICS_EVERY if self._runs else 0.0, self._flush)

    def _flush(self) -> None:
        self._flush_due = False
        self._report_metrics()

    def _report_metrics(self) -> None:
        self._fold_successes()
        self.pipeline.record_batch(self._handled, self._durations)
        self._handled = 0
        # The same list, emptied: a partition's run binds its append once, and a flush
        # can run while one of its handlers is suspended, or from within the run.
        self._durations.clear()

    def _close(self, lane: LoopLane, handlers: bool = False) -> None:
        for ident, run in list(self._runs.items()):
            # Waiting to retry or for a slot: give it up; in a handler, only when asked.
            if run.lane is lane and (handlers or not run.in_handler):
                self._cancel(ident, run)

    def _cancel_all(self) -> None:
        for ident, run in list(self._runs.items()):
            self._cancel(ident, run)

"""Workers: which thread processes which lane, and who polls when.

Leader/follower: workers poll between batches themselves and serve ready lanes
round-robin a batch at a time, so while handlers are fast one thread fetches and
processes and the interpreter lock never changes hands (a hand-off between threads
costs more here than the work it hands over). The supervisor (``run``) steps in when
that is not enough: it polls when no worker is active (waiting inside librdkafka,
without the GIL) or when all of them have been busy in handlers for
``FALLBACK_POLL_GAP`` (keeping the consumer in its group), and it adds a worker
when a lane has waited ``HANDOFF_AFTER`` for one, so a slow partition never holds the
others for longer than that.

An event loop whose handlers all wait on I/O cannot poll itself (see ``eventloop``):
while the supervisor's polls for it keep fetching, it polls again at once instead of
after ``FALLBACK_POLL_GAP``.

The supervisor also makes the lag gauge's broker requests (``Poller.refresh_lag``),
which may wait for the cluster up to their timeout: meanwhile the workers' and the event
loop's polls skip, and their handlers go on.

A worker with nothing to do parks until the supervisor needs one again, instead of
ending: at a low input rate every fetch needs a worker, and starting a thread for each
took a third of the service's CPU (at 1,000 records a second, 10 ms apart in batches).
Before it parks, the only active worker lingers: it polls on for ``LINGER`` after its
last work, so at such a rate it fetches and handles every batch itself, with no thread
switch between the two.

Locking: ``_ready_lock`` guards the ready queue, ``_active_lock`` the worker counts
(``active_workers``, parked workers, and hand-offs to them).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from streamguard.observe.logs import frames
from streamguard.runtime.lane import PartitionLane
from streamguard.runtime.poller import Poller

log = logging.getLogger("streamguard.runtime")

# How long every worker may be busy in handlers before the supervisor polls in their
# place. Far below max.poll.interval.ms; long enough that in steady state the
# supervisor stays asleep and the workers poll.
FALLBACK_POLL_GAP = 0.05
# How long a lane with work may wait for a worker before another thread is started for
# it. Below this, the busy worker serves it in turn (no thread hand-off); above it, a
# slow handler on one partition must not hold up the others.
HANDOFF_AFTER = 0.02
# How long the supervisor waits when it fetched nothing because a partition is full
# but draining, before it looks again.
THROTTLE_WAIT = 0.002
# The longest poll of an idle supervisor; shorter when a retry falls due sooner, since
# a retry is claimed only by the maintenance tick after a poll returns.
IDLE_POLL = 0.1
# The longest wait of a refill poll (see ``_supervise``) for a record: librdkafka's next
# fetch response, with the partitions the first one did not have, came 2-7 ms later.
# Below FALLBACK_POLL_GAP, so a refill never waits longer than the poll it replaces.
REFILL_WAIT = 0.025
# How long the only active worker keeps polling, in waits of up to LINGER_POLL, after
# its last work before it parks. At a low input rate (a fetch every 10 ms or so) it then
# handles each fetch itself: parking meant the supervisor polled and woke it again, a
# second thread switch per fetch that took 0.03-0.07 ms at p50 and 0.5-1.3 ms at p99 of
# a record's latency, and a sixth of the service's CPU at 1,000 records a second. The
# price is the tick of each lingering poll: up to 40 a second while records come 25 to
# 500 ms apart, where the supervisor polled about 10 times (at 20 records a second, 2.4%
# of a core instead of 2.0%).
LINGER = 0.5
LINGER_POLL = 0.025
# How often a parked worker looks whether the service is stopping (``stopping`` is an
# Event, which the parked worker's condition does not hear; ``run`` wakes them as it ends).
PARK_CHECK = 0.5
# How often the supervisor, waiting for the poll lock, looks whether the service stops.
STOP_CHECK = 0.1


class Scheduler:
    """Runs lanes on up to ``workers`` threads, polling through ``poller``."""

    def __init__(
        self,
        poller: Poller,
        workers: int,
        loop_busy: Callable[[], bool] | None = None,
        stopping: threading.Event | None = None,
        refill_below: int = 0,
        service: str = "",
    ) -> None:
        """Args:
        loop_busy: True while the event loop has records to run; it then polls
            between them itself (see ``eventloop``), like an active worker.
        stopping: the run's stop request, made before the scheduler (``stop()`` may
            set it while the service connects); set here too on a failure.
        refill_below: the supervisor polls on at once for a busy event loop only
            while the lanes hold fewer records than this (see ``_supervise``).
        service: the service's name, for the line of a worker's failure.
        """
        self._poller = poller
        self._service = service
        self._workers = workers
        self._loop_busy = loop_busy or (lambda: False)
        self._refill_below = refill_below
        self.stopping = stopping if stopping is not None else threading.Event()
        self.failure: BaseException | None = None
        self.active_workers = 0
        self._active_lock = threading.Lock()
        self._parked = 0  # workers waiting for work
        self._handed = 0  # of those, woken for work and not yet running
        self._unparked = threading.Condition(self._active_lock)
        self._ready: deque[tuple[float, PartitionLane]] = deque()
        self._ready_lock = threading.Lock()
        self._wake = threading.Event()  # set when the last active worker returns
        self._next_spawn = 0.0

    def run(self) -> None:
        """The supervisor: polls when no worker does, adds workers when lanes wait."""
        try:
            self._supervise()
        finally:
            # Also when the supervisor failed: no parked worker may wait for work again.
            self.stopping.set()
            with self._active_lock:
                self._unparked.notify_all()

    def _supervise(self) -> None:
        poller = self._poller
        refill = False  # poll again at once, for an event loop that cannot (see below)
        polled = -1  # the poller's poll count after the supervisor's last poll
        while not self.stopping.is_set():
            if self.failure is not None:
                raise self.failure
            if poller.lag_due:
                # Requests that may wait for the cluster: here, never in a worker's or
                # the event loop's poll. Theirs skip while this holds the lock.
                if not self._lock_unless_stopping():
                    break
                try:
                    if self.stopping.is_set():
                        break
                    poller.refresh_lag()
                finally:
                    poller.lock.release()
            now = time.monotonic()
            waited = self._oldest_ready_wait(now)
            active = self.active_workers + self._loop_busy()
            if (
                waited is not None
                and active < self._workers
                and (not active or (waited >= HANDOFF_AFTER and now >= self._next_spawn))
            ):
                # With workers running, one more per HANDOFF_AFTER at most: the one just
                # started has not taken its lane yet, and more would only contend.
                self._next_spawn = now + HANDOFF_AFTER
                self._add_worker()
                continue
            refill = refill and poller.polls == polled  # nobody else polled meanwhile
            if active and not refill and now - poller.last_poll < FALLBACK_POLL_GAP:
                pause = FALLBACK_POLL_GAP if waited is None else HANDOFF_AFTER - waited
                if waited is not None:
                    pause = max(pause, self._next_spawn - now)
                self._wake.wait(max(0.001, pause))
                self._wake.clear()
                continue
            if not self._lock_unless_stopping():
                break
            try:
                if self.stopping.is_set():
                    break
                if not active:
                    wait = self._idle_poll(now)
                else:
                    wait = min(REFILL_WAIT, self._idle_poll(now)) if refill else 0.0
                claimed = poller.poll_once(wait)
                polled = poller.polls
                self._make_ready(claimed)  # before a lingering worker can take the lock
            finally:
                poller.lock.release()
            # An event loop polls itself only while none of its handlers is suspended
            # (see eventloop), so one whose handlers all wait on I/O (key ordering) is
            # fed by these polls alone, and records come a partition after another, a
            # batch a poll: with FALLBACK_POLL_GAP between polls, its second and third
            # partitions started 100 and 150 ms after the first. While its polls fetch,
            # there is room, and nobody else polls, the supervisor polls on at once.
            # Room: fewer than ``refill_below`` records held across the lanes.
            # The lanes' own limit (max_buffered each) was the only one, and on many
            # partitions no lane nears it: on 128, a batch brings four records a lane,
            # and these polls ran ahead of a loop handling records as fast as they came
            # (up to 27,000 held, 30-50 MiB more RSS, against under 1,500 on 3-48).
            refill = (
                poller.last_fetched > 0
                and not poller.flow.throttled
                and poller.flow.buffered < self._refill_below
                and self._loop_busy()
            )
            if not claimed and poller.flow.throttled:
                # Nothing was fetched on purpose (a full partition is draining): let it
                # drain rather than spin on the maintenance tick.
                self._wake.wait(THROTTLE_WAIT)
                self._wake.clear()
        if self.failure is not None:
            raise self.failure

    def _lock_unless_stopping(self) -> bool:
        """Take the poll lock; False, without it, once the service is stopping.

        A worker inside a rebalance callback (a slow ``on_revoke`` hook) holds it for as
        long as the hook takes: waited for at once, the stop was never reached, and a
        second signal did not hurry it (the shutdown's own wait for it is bounded).
        """
        lock = self._poller.lock
        while not lock.acquire(timeout=STOP_CHECK):
            if self.stopping.is_set():
                return False
        return True

    def _idle_poll(self, now: float) -> float:
        """``IDLE_POLL``, or less when a lane's retry falls due sooner (poll lock held).

        Without this, a retry after a 1 ms backoff waited for the idle poll to time out
        (measured: 84 ms per retry on an otherwise idle partition).
        """
        wait = IDLE_POLL
        for lane in self._poller.assignment.lanes.values():
            retry = getattr(lane, "retry", None)
            # A lane that cannot start work (the DLQ is unwritable) must not turn the
            # idle poll into a spin.
            if retry is None or lane.scheduled or not lane.pipeline.can_process():
                continue
            wait = min(wait, max(0.001, retry.due - now))
        return wait

    def wake(self) -> None:
        """Look again now: the event loop ran out of work and stopped polling."""
        self._wake.set()

    def await_workers(self, timeout: float, hurry: threading.Event) -> None:
        """Wait, at most ``timeout`` and not once ``hurry`` is set, until no worker is
        active.

        After the shutdown: a worker whose handler crashed as the service stopped
        records it (``fail``) just after its lane turned idle, which is all the
        shutdown waits for. Only a handler stuck past the shutdown wait costs the
        whole ``timeout``; a hurried stop (a second signal) gives that crash up.
        """
        deadline = time.monotonic() + timeout
        while self.active_workers and time.monotonic() < deadline and not hurry.is_set():
            time.sleep(0.005)

    def fail(self, error: BaseException) -> None:
        """Stop the service; ``run()`` raises ``error`` (the first one, if several)."""
        if self.failure is None:
            self.failure = error
        self.stopping.set()
        self._wake.set()

    def _make_ready(self, lanes: list[PartitionLane]) -> None:
        if lanes and lanes[0].hands_off:
            # Event-loop lanes: draining only hands the batches over, with no
            # handler run here, so it is done at once, on this thread.
            for lane in lanes:
                lane.drain()
            return
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

    def _add_worker(self) -> None:
        """One more active worker: a parked one woken, else a new thread."""
        with self._active_lock:
            self.active_workers += 1
            if self._parked > self._handed:
                self._handed += 1
                self._unparked.notify()
                return
        # Daemon threads: a handler stuck past the shutdown timeout must not keep the
        # process alive; its message is uncommitted and delivered again after restart.
        threading.Thread(target=self._work, name="streamguard-worker", daemon=True).start()

    def _work(self) -> None:
        """A worker: serves until there is nothing to do, then parks until needed."""
        active = True
        try:
            while True:
                self._serve()
                active = False
                if not self._park():
                    return
                active = True
        except BaseException as exc:
            # Mostly a handler's crash out of its lane: class and frames, not the text.
            log.error(
                "worker failed; stopping the service",
                extra={
                    # Which service: a process may run several (one per topic).
                    "service": self._service,
                    "topic": self._poller.topic,
                    "error_class": type(exc).__name__,
                    "traceback": frames(exc),
                },
            )
            self.fail(exc)
        finally:
            if active:
                with self._active_lock:
                    self._leave()

    def _serve(self) -> None:
        """Serve ready lanes a batch at a time, polling when none is ready; return when
        nothing is ready and no poll gave this worker a lane, or someone else polls.

        The only active worker lingers first: while no partition is throttled and no
        lane is queued, it polls with a wait, until ``LINGER`` has passed since it ran
        out of work.
        """
        poller = self._poller
        idle_since: float | None = None  # the first poll since the last batch or claim
        while not self.stopping.is_set():
            lane = self._take_ready()
            if lane is not None:
                if lane.drain(max_batches=1):
                    self._make_ready([lane])  # more to do: back of the queue
                idle_since = None
                continue
            if not poller.lock.acquire(blocking=False):
                return  # someone else is polling; it will queue what it fetches
            try:
                if self.stopping.is_set():
                    return
                now = time.monotonic()
                if idle_since is None:
                    idle_since = now
                wait = 0.0
                # Not while a full partition drains: that poll skips the fetch and
                # returns at once, so lingering would spin on the maintenance tick.
                # The supervisor queues what it fetched before it lets go of the lock,
                # so a lane it just queued is seen here and is not left to wait.
                if (
                    now - idle_since < LINGER
                    and self.active_workers == 1
                    and not poller.flow.throttled
                    and not self._ready
                ):
                    wait = min(LINGER_POLL, self._idle_poll(now))
                claimed = poller.poll_once(wait)
            finally:
                poller.lock.release()
            if claimed:
                self._make_ready(claimed)
                idle_since = None
            elif not wait and not self._ready:
                return  # nothing fetched: the supervisor waits for more

    def _park(self) -> bool:
        """Wait, no longer active, until ``_add_worker`` hands this worker work (True:
        active again) or the service stops (False)."""
        with self._active_lock:
            self._leave()
            self._parked += 1
            try:
                while not self._handed and not self.stopping.is_set():
                    self._unparked.wait(PARK_CHECK)
            finally:
                self._parked -= 1
            if self._handed:
                self._handed -= 1
                return True
            return False

    def _leave(self) -> None:
        """One active worker fewer (``_active_lock`` held); the last one wakes the
        supervisor, which polls in its place."""
        self.active_workers -= 1
        if not self.active_workers:
            self._wake.set()

"""Workers: which thread processes which lane, and who polls when.

Leader/follower: workers poll between batches themselves and serve ready lanes
round-robin a batch at a time, so while handlers are fast one thread fetches and
processes and the interpreter lock never changes hands (a hand-off between threads
costs more here than the work it hands over). The supervisor (``run``) steps in when
that is not enough: it polls when no worker is active (waiting inside librdkafka,
without the GIL) or when all of them have been busy in handlers for
``FALLBACK_POLL_GAP`` (keeping the consumer in its group), and it starts another
worker when a lane has waited ``HANDOFF_AFTER`` for one, so a slow partition never
holds the others for longer than that.

Locking: ``_ready_lock`` guards the ready queue, ``_active_lock`` the worker count.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

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


class Scheduler:
    """Runs lanes on up to ``workers`` threads, polling through ``poller``."""

    def __init__(
        self, poller: Poller, workers: int, loop_busy: Callable[[], bool] | None = None
    ) -> None:
        """Args:
        loop_busy: True while the event loop has records to run; it then polls
            between them itself (see ``eventloop``), like an active worker.
        """
        self._poller = poller
        self._workers = workers
        self._loop_busy = loop_busy or (lambda: False)
        self.stopping = threading.Event()
        self.failure: BaseException | None = None
        self.active_workers = 0
        self._active_lock = threading.Lock()
        self._ready: deque[tuple[float, PartitionLane]] = deque()
        self._ready_lock = threading.Lock()
        self._wake = threading.Event()  # set when the last active worker returns
        self._next_spawn = 0.0

    def run(self) -> None:
        """The supervisor: polls when no worker does, adds workers when lanes wait."""
        poller = self._poller
        while not self.stopping.is_set():
            if self.failure is not None:
                raise self.failure
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
                self._spawn()
                continue
            if active and now - poller.last_poll < FALLBACK_POLL_GAP:
                pause = FALLBACK_POLL_GAP if waited is None else HANDOFF_AFTER - waited
                if waited is not None:
                    pause = max(pause, self._next_spawn - now)
                self._wake.wait(max(0.001, pause))
                self._wake.clear()
                continue
            with poller.lock:
                if self.stopping.is_set():
                    break
                claimed = poller.poll_once(0.0 if active else self._idle_poll(now))
            self._make_ready(claimed)
            if not claimed and poller.flow.throttled:
                # Nothing was fetched on purpose (a full partition is draining): let it
                # drain rather than spin on the maintenance tick.
                self._wake.wait(THROTTLE_WAIT)
                self._wake.clear()
        if self.failure is not None:
            raise self.failure

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

    def _spawn(self) -> None:
        with self._active_lock:
            self.active_workers += 1
        # Daemon threads: a handler stuck past the shutdown timeout must not keep the
        # process alive; its message is uncommitted and delivered again after restart.
        threading.Thread(target=self._work, name="streamguard-worker", daemon=True).start()

    def _work(self) -> None:
        """A worker: serve ready lanes a batch at a time, polling when none is ready."""
        poller = self._poller
        try:
            while not self.stopping.is_set():
                lane = self._take_ready()
                if lane is not None:
                    if lane.drain(max_batches=1):
                        self._make_ready([lane])  # more to do: back of the queue
                    continue
                if not poller.lock.acquire(blocking=False):
                    return  # someone else is polling; it will queue what it fetches
                try:
                    if self.stopping.is_set():
                        return
                    claimed = poller.poll_once(0.0)
                finally:
                    poller.lock.release()
                if not claimed:
                    return  # nothing fetched: the supervisor waits for more
                self._make_ready(claimed)
        except BaseException as exc:
            self.failure = exc
            self.stopping.set()
            log.exception("worker failed; stopping the service")
        finally:
            with self._active_lock:
                self.active_workers -= 1
                if not self.active_workers:
                    self._wake.set()

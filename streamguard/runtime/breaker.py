"""The running state of a service's ``CircuitBreaker``: a retry budget and a breaker.

One ``Breaker`` serves every lane of a service, on worker threads and the event loop
alike; ``_lock`` guards everything in it. The hot path reads ``closed`` (a plain
attribute) and records successes once per batch, so a healthy service pays nothing
per message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable

from streamguard.observe.metrics import ServiceMetrics
from streamguard.policy import CircuitBreaker

log = logging.getLogger("streamguard.runtime")

CLOSED, HALF_OPEN, OPEN = 0, 1, 2
_NAMES = {CLOSED: "closed", HALF_OPEN: "half_open", OPEN: "open"}
# The failure ratio is counted in buckets of this many seconds.
_BUCKET = 1.0
# The most retry tokens the bucket holds: a burst of retries after a quiet time.
_MAX_TOKENS = 100.0
# Distinct failing messages remembered (enough to tell one bad message from many).
_MAX_TRACKED = 64
# How long, once half-open, the message whose probe failed last waits for another to
# probe first: longer than a parked record's look (``outcomes.PARK_WAIT``), so that any
# other record waiting for the breaker asks in the meantime.
PROBE_TURN = 0.5


class Breaker:
    """Decides whether a handler call or a retry may start now."""

    def __init__(
        self,
        config: CircuitBreaker,
        metrics: ServiceMetrics,
        topic: str,
        clock: Callable[[], float] = time.monotonic,
        *,
        service: str,
        ages: bool = True,
    ) -> None:
        self.config = config
        # Every line says whose breaker it is: a process may run several services.
        self._names = {"service": service, "topic": topic}
        self._clock = clock
        # Whether ``succeeded``'s ``ago`` (real seconds) applies on ``clock``: not on the
        # test kit's virtual one, which stands still while handlers run and records go
        # one at a time, so that a success counts as of its telling there.
        self._ages = ages
        self._lock = threading.Lock()
        self.state = CLOSED
        self.closed = True  # read without the lock on the hot path
        self._opened_at = 0.0
        self._probing = False
        self._probe_started = 0.0
        self._probe: Hashable = None  # the message probing now (see _is_probe)
        self._failed_probe: Hashable = None  # the message whose probe failed last
        self._open_total = 0.0  # seconds spent not closed, before the current period
        self._last_success = float("-inf")  # no call has succeeded yet
        self._buckets: deque[list[float]] = deque()  # [start, calls, failures]
        self._failing: OrderedDict[Hashable, float] = OrderedDict()  # message -> last failure
        self._tokens = _MAX_TOKENS
        self._refilled = clock()
        self._gauge = metrics.breaker_state.labels(topic)
        self._gauge.set(CLOSED)
        self._opened = metrics.breaker_opened.labels(topic)
        self._deferred = metrics.retries_deferred.labels(topic)

    # -- handler calls -----------------------------------------------------------------

    def allow(self, message: Hashable = None) -> bool:
        """May a handler call of ``message`` start now? Half-open lets exactly one through.

        The message whose probe failed last lets others probe first for ``PROBE_TURN``:
        a message failing for a reason of its own would otherwise probe again and again,
        and keep the breaker open (every partition paused) after the dependency is back.
        """
        if self.closed or not self.config.enabled:
            return True
        with self._lock:
            now = self._clock()
            if self.state == OPEN and now >= self._half_open_at():
                self._set(HALF_OPEN)
                log.warning(
                    "circuit breaker half-open; probing with one message", extra=self._names
                )
            if self.state == HALF_OPEN and not self._probe_busy(now):
                if (
                    message is not None
                    and message == self._failed_probe
                    and now < self._half_open_at() + PROBE_TURN
                ):
                    return False
                self._probing = True
                self._probe_started = now
                self._probe = message
                return True
            return False

    def accepting(self) -> bool:
        """Whether a lane should start work (and partitions be fetched): closed, or a
        probe is due. A service holding no record when the breaker opened must fetch
        one again to probe with."""
        if self.closed or not self.config.enabled:
            return True
        with self._lock:
            now = self._clock()
            if self.state == HALF_OPEN:
                return not self._probe_busy(now)
            return now >= self._half_open_at()

    def half_open_at(self) -> float:
        """When the breaker lets a probe through, on its clock (while it is not closed);
        a later value than before means a probe failed and it opened again."""
        with self._lock:
            return self._half_open_at()

    def _half_open_at(self) -> float:
        # Every check of the cool-down compares the clock with this one sum, so that a
        # clock set to ``half_open_at()`` (the test kit's) is past it: ``now - opened``
        # fell a rounding error short of a cool-down such as 0.3 s.
        return self._opened_at + self.config.cool_down

    def release_probe(self, message: Hashable = None) -> None:
        """The probe (``message``) ended without calling the dependency (invalid input):
        another message may probe. Another record's release leaves the probe be."""
        if not self.closed:
            with self._lock:
                if self._is_probe(message):
                    self._probing = False

    def _is_probe(self, message: Hashable) -> bool:
        """Whether a result of ``message`` is the half-open probe's (lock held).

        Only the probe's result decides the half-open state: a call that started before
        the breaker went half-open (in the closed state, or a probe given up) belongs to
        an earlier state. Before, such a call's failure reopened the breaker, and cut
        short the probe in flight, as if the dependency had failed it. A caller that
        names no message cannot be told apart, and counts as the probe.
        """
        return self._probing and (message is None or self._probe is None or message == self._probe)

    def _probe_busy(self, now: float) -> bool:
        # A probe that never reported back (its lane was revoked, it was cancelled)
        # is given up after a cool-down, so that the breaker cannot stay half-open.
        return self._probing and now - self._probe_started < self.config.cool_down

    def open_total(self) -> float:
        """Seconds the breaker has spent open or half-open since the service started."""
        with self._lock:
            if self.closed:
                return self._open_total
            return self._open_total + self._clock() - self._opened_at

    def succeeded(
        self, calls: int = 1, message: Hashable = None, began: float | None = None
    ) -> None:
        """``calls`` handler calls ended without a transient failure (``message``'s, if
        given: it closes a half-open breaker only if it is the probe), the last of them
        started at ``began`` (``time.perf_counter``; None: now). Its start: the
        dependency may have answered any time after it.

        Lanes tell their successes a batch at a time. Timed by the telling, a lane's
        successes from before an outage, told when its own first record failed, came
        after another partition's first failure: that message then looked as if it
        failed while others succeeded, and was dead-lettered when its retries ran out.
        """
        if not calls or not self.config.enabled:
            return
        with self._lock:
            self._count(calls, 0)
            now = self._clock()
            if began is not None and self._ages:
                # Aged here, after ``now`` was read, never before: aged by the caller,
                # a wait for this lock or a thread switch in between (5 ms and more
                # under load) timed the success that much later than its start, past
                # another lane's first failure of an outage, which was dead-lettered.
                now -= time.perf_counter() - began
            self._last_success = max(self._last_success, now)
            if self.state == HALF_OPEN and self._is_probe(message):
                self._probing = False
                self._failed_probe = None
                self._open_total += self._clock() - self._opened_at
                self._set(CLOSED)
                self._buckets.clear()  # start counting afresh
                log.warning(
                    "circuit breaker closed; the dependency answers again", extra=self._names
                )

    def failed(self, message: Hashable = None, error: str = "") -> bool:
        """A handler call of ``message`` failed transiently (with an exception of class
        ``error``, which the log names when the breaker opens): maybe open the breaker.

        Returns True when ``message`` was the probe: the failure says the dependency is
        still down, not that the message is bad, so its attempt is not spent. A call that
        started before the breaker went half-open fails as if it were still open: it
        counts, but neither reopens the breaker nor ends the probe.
        """
        if not self.config.enabled:
            return False
        with self._lock:
            now = self._clock()
            self._count(1, 1)
            if message is not None:
                self._failing[message] = now
                self._failing.move_to_end(message)
                while len(self._failing) > _MAX_TRACKED:
                    self._failing.popitem(last=False)
            if self.state == HALF_OPEN and self._is_probe(message):
                self._probing = False
                self._failed_probe = message
                self._open(now, "the probe failed", error)
                return True
            if self.state == CLOSED:
                calls = sum(b[1] for b in self._buckets)
                failures = sum(b[2] for b in self._buckets)
                if (
                    calls >= self.config.min_calls
                    and failures >= self.config.failure_ratio * calls
                    and self._failing_messages(now) >= 2  # one bad message is no outage
                ):
                    self._open(now, f"{failures:.0f} of {calls:.0f} recent calls failed", error)
            return False

    def recovered(self, message: Hashable) -> None:
        """``message``, which may have failed transiently before, has now been handled,
        or failed permanently (the dependency answered): it no longer counts among the
        failing messages that tell an outage from one bad message. Without this, a
        message that failed once and then succeeded made the next message failing on
        its own look like an outage: it was held, and the breaker opened and never
        closed, since only that message was left to probe."""
        if message is None or not self.config.enabled:
            return
        with self._lock:
            self._failing.pop(message, None)

    def _failing_messages(
        self, now: float, besides: Hashable = None, after: float = float("-inf")
    ) -> int:
        """Messages failing within the window (and after ``after``), ``besides`` aside."""
        window = self.config.window
        return sum(
            1
            for key, at in self._failing.items()
            if key != besides and at > after and now - at <= window
        )

    def outage_suspected(self, message: Hashable, since: float) -> bool:
        """Would dead-lettering ``message`` as ``retries_exhausted`` be wrong?

        Yes when nothing succeeded since it first failed (``since``, monotonic) and
        other messages failed meanwhile too: a dependency is down, and the breaker is
        about to open (or is open). A message that fails while others succeed is the
        message's problem and is dead-lettered as always.
        """
        if not self.config.enabled:
            return False
        with self._lock:
            if not self.closed:
                return True
            if self._last_success >= since:
                return False
            # Other messages failing since the last success: one that failed before it
            # (dead-lettered when its retries ran out, say, with records handled after
            # it) says nothing about this failure.
            return self._failing_messages(self._clock(), message, after=self._last_success) > 0

    # -- retries -----------------------------------------------------------------------

    def may_retry(self, count: bool = True) -> bool:
        """Withdraw a retry token; False when the budget is spent, then counted as a
        deferred retry unless not ``count`` (a retry already counted, looking again)."""
        if not self.config.enabled:
            return True
        with self._lock:
            self._refill()
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
        if count:
            self._deferred.inc()
        return False

    # -- internals (lock held) ---------------------------------------------------------

    def _count(self, calls: int, failures: int) -> None:
        now = self._clock()
        buckets = self._buckets
        while buckets and now - buckets[0][0] > self.config.window:
            buckets.popleft()
        if buckets and now - buckets[-1][0] < _BUCKET:
            buckets[-1][1] += calls
            buckets[-1][2] += failures
        else:
            buckets.append([now, float(calls), float(failures)])
        self._refill()
        self._tokens = min(_MAX_TOKENS, self._tokens + calls * self.config.retry_ratio)

    def _refill(self) -> None:
        now = self._clock()
        elapsed, self._refilled = now - self._refilled, now
        self._tokens = min(_MAX_TOKENS, self._tokens + elapsed * self.config.min_retries_per_second)

    def _open(self, now: float, why: str, error: str) -> None:
        if self.state == HALF_OPEN:
            self._open_total += now - self._opened_at  # a new open period starts now
        self._opened_at = now
        self._set(OPEN)
        self._opened.inc()
        log.error(
            "circuit breaker open; pausing every partition and calling no handler",
            extra={
                **self._names,
                "why": why,
                "error": error,
                "cool_down": self.config.cool_down,
            },
        )

    def _set(self, state: int) -> None:
        self.state = state
        self.closed = state == CLOSED
        self._gauge.set(state)

    @property
    def state_name(self) -> str:
        return _NAMES[self.state]

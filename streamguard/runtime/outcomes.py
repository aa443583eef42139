"""What a failed attempt means: a dead letter now, or a retry after a delay.

Shared by the worker-thread lanes and the event-loop lanes, so that both apply the
same rules: invalid input is dead-lettered at once and never retried; a permanent
error is dead-lettered at once; a transient one is retried under the ``RetryPolicy``
until its attempts or time budget run out (``retries_exhausted``).
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import logging
import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType

from streamguard.deadletter import Failure
from streamguard.errors import (
    ContractViolation,
    DecodeError,
    RegistryUnavailable,
    RetriesExhausted,
)
from streamguard.observe.logs import LineBudget
from streamguard.policy import RetryPolicy, classify
from streamguard.runtime.breaker import Breaker

log = logging.getLogger("streamguard.runtime")
_NO_NAMES: Mapping[str, str] = MappingProxyType({})


@dataclass(slots=True)
class RetryState:
    """A message waits: when to try it again, and when it first failed.

    ``attempt`` counts real handler calls so far (0: parked before its first one).
    ``parked_at`` is set while it waits for the circuit breaker or a retry token: that
    time is not charged to the message's own time budget. ``drift_checked``: a try reached
    the handler, so its drift check (or the sample's decision to skip it) is done;
    not told by ``attempt``, which a failed probe gives back. ``deferred``: the retry
    already waits for a token, and is counted in ``streamguard_retries_deferred_total``.
    ``waits_for``: why ``judge`` gave the failed attempt back (``"outage_suspected"``,
    ``"probe_failed"``, ``"registry_unavailable"``), None for an ordinary retry: its log line
    says the message waits, instead of a retry of the same attempt again and again.
    ``registry_waits``: its waits for the schema registry since its last ordinary
    failure, the exponent of their backoff (a wait gives its attempt back, so
    ``attempt`` cannot grow it).
    """

    attempt: int
    first_failure_ms: int
    first_failure_mono: float
    due: float
    parked_at: float | None = None
    open_mark: float = 0.0  # the breaker's open_total() when it last failed
    drift_checked: bool = False
    deferred: bool = False
    waits_for: str | None = None
    registry_waits: int = 0


# Input that can never be handled: dead-lettered at once, never retried.
_INVALID_INPUT = (ContractViolation, DecodeError)

# How often a message parked by the breaker or the retry budget looks again.
PARK_WAIT = 0.1


def gate(
    breaker: Breaker, retry: RetryState | None, now: float, message: Hashable = None
) -> RetryState | None:
    """Whether the next handler call of ``message`` (its partition and offset) may start now.

    Returns None when it may (a retry has then spent a token of the budget, unless the
    breaker opened since its failure), else the state of the message parked for
    ``PARK_WAIT``, its attempts and budget untouched.
    """
    if breaker.closed:
        if retry is not None and retry.attempt:
            # A failure the breaker then caught as an outage (it was open since) was
            # the dependency's: the retry needs no token once the breaker closed.
            # Under key or no ordering every record in flight fails in an outage, and
            # at the budget's floor (about 12 retries a second) 2,360 of them took
            # three minutes to recover after the dependency was back.
            caught = breaker.open_total() > retry.open_mark
            # Counted as deferred once, not at each look every PARK_WAIT: a retry that
            # waited a second for a token counted ten times.
            if not caught and not breaker.may_retry(count=not retry.deferred):
                retry.deferred = True
                return _parked(retry, now, breaker)
    elif not breaker.allow(message):  # a probe is exempt from the retry budget
        return _parked(retry, now, breaker)
    if retry is not None:
        # Time parked, or while the breaker was open, is not charged to the budget.
        parked = now - retry.parked_at if retry.parked_at is not None else 0.0
        total = breaker.open_total()
        opened = total - retry.open_mark
        retry.first_failure_mono += max(parked, opened)
        retry.parked_at = None
        retry.open_mark = total
    return None


def unpark(retry: RetryState, now: float) -> None:
    """Give back the time ``retry`` waited with its attempt given back (``parked_at``):
    what ``gate`` does in a lane with a breaker. A guarded Faust agent has none, so a
    record that failed once and then waited out a registry outage had that outage
    charged to its time budget, and its next ordinary failure ended it
    ``retries_exhausted``, where a ``ConsumerService`` retried it."""
    if retry.parked_at is not None:
        retry.first_failure_mono += now - retry.parked_at
        retry.parked_at = None


def _parked(retry: RetryState | None, now: float, breaker: Breaker) -> RetryState:
    # The mark carries over: without it, the next gate() would credit the message with
    # every second the breaker was ever open, and its budget would stop applying.
    if retry is None:
        return RetryState(0, 0, now, now + PARK_WAIT, now, breaker.open_total())
    parked_at = retry.parked_at if retry.parked_at is not None else now
    return RetryState(
        retry.attempt,
        retry.first_failure_ms,
        retry.first_failure_mono,
        now + PARK_WAIT,
        parked_at,
        retry.open_mark,
        retry.drift_checked,
        retry.deferred,
        registry_waits=retry.registry_waits,
    )


def after_try(verdict: RetryState, retry: RetryState | None, called: bool) -> RetryState:
    """Mark a retry's state with whether its record's drift was dealt with: a try that
    reached the handler (``called``) got past decoding and the drift check. One that
    failed before (the registry, or a contract's validator raising a transient error,
    which pydantic passes on) did not: its retry checks drift, which it skipped before,
    so a drifting record was handled under ``drift="dead_letter"``."""
    verdict.drift_checked = (retry is not None and retry.drift_checked) or called
    return verdict


def judge(
    exc: Exception,
    attempt: int,
    retry: RetryState | None,
    policy: RetryPolicy,
    transient: tuple[type[BaseException], ...],
    now: float,
    breaker: Breaker | None = None,
    message: Hashable = None,
    *,
    by_handler: bool = False,
    began: float | None = None,
    names: Mapping[str, str] = _NO_NAMES,
) -> Failure | RetryState:
    """The verdict on attempt ``attempt`` of a message that raised ``exc``.

    Args:
        retry: the message's retry state from earlier attempts, if any.
        now: monotonic seconds, from the caller's clock.
        breaker: told of every transient failure of a handler call; it keeps a
            message whose retries ran out during an outage from the DLQ.
        message: the message's identity (partition and offset), for the breaker.
        by_handler: ``exc`` came out of the user's handler (or tombstone handler), not
            out of decoding the record. A ``ContractViolation`` or ``DecodeError`` it
            raises (an invalid event it tried to send with a ``GuardedProducer``, say)
            says nothing about the record's own validity: it is judged like any other
            exception of the handler, with the attempts made so far.
        began: when the failed call started (``time.perf_counter``). A permanent
            failure of the handler tells the breaker the dependency answered, as of
            then, as a success does (``Breaker.succeeded``): timed by its judging, a
            call answered before an outage and judged after its first failure
            dead-lettered that message. One out of decoding (a validator raising
            something other than ``ValueError``) tells it nothing: no call was made.
        names: the service's (or agent's) ``service`` and ``topic``, for the line of
            a message that waits for the schema registry: a process may run several.

    The frames ``exc`` went through are cleared of their locals (``release_frames``):
    called where the failed attempt was caught, before anything holds ``exc``.
    """
    if not by_handler and isinstance(exc, _INVALID_INPUT):  # a poison flood's path
        if breaker is not None and not breaker.closed:
            breaker.release_probe(message)  # no call reached the dependency
        # Held until the DLQ acknowledges: without the codec's frames and pydantic's
        # error (which holds the input), a poison flood keeps a few small objects per
        # record alive instead of object graphs the garbage collector walks again and
        # again (measured: 36 against 22 µs of CPU per dead letter).
        exc.__traceback__ = exc.__context__ = None
        if isinstance(exc, DecodeError):
            return Failure(exc.reason, exc)  # type: ignore[arg-type]  # a DecodeError reason
        return Failure("contract_violation", exc)
    release_frames(exc)
    failed_before = retry is not None and retry.attempt > 0
    # The time of its first failure (sg-dlq-first-failure-ms) survives a failed probe
    # or a registry wait, which give their attempt back; a state parked before any
    # failure has none (0).
    first_ms = (
        retry.first_failure_ms if retry and retry.first_failure_ms else int(time.time() * 1000)
    )
    if isinstance(exc, RegistryUnavailable):
        if breaker is not None:
            breaker.release_probe(message)
        mark = breaker.open_total() if breaker is not None else 0.0
        return _wait_for_registry(exc, attempt, retry, policy, now, first_ms, mark, names)
    if classify(exc, transient) == "permanent":
        if breaker is not None:
            if by_handler:  # the dependency answered; the message is at fault
                breaker.succeeded(1, message, began)
            else:  # decoding failed (a validator's own error): no call reached it
                breaker.release_probe(message)
            breaker.recovered(message)
        return Failure("permanent_error", exc, attempt, first_ms)
    if breaker is not None and breaker.failed(message, type(exc).__name__):
        # The breaker's probe: the dependency is still down. Parked again, with this
        # attempt given back, so that probing never exhausts a message.
        first_mono = retry.first_failure_mono if retry and failed_before else now
        mark = breaker.open_total()
        return RetryState(
            attempt - 1, first_ms, first_mono, now + PARK_WAIT, now, mark, waits_for="probe_failed"
        )
    first_mono = retry.first_failure_mono if retry and failed_before else now
    elapsed_ms = (now - first_mono) * 1000.0
    delay = policy.next_delay(attempt, elapsed_ms)
    if delay is None and breaker is not None and breaker.outage_suspected(message, first_mono):
        # Not this message's fault: wait for the dependency, the attempt given back.
        mark = breaker.open_total()
        return RetryState(
            attempt - 1,
            first_ms,
            first_mono,
            now + PARK_WAIT,
            now,
            mark,
            waits_for="outage_suspected",
        )
    if delay is None:
        error = RetriesExhausted(attempt, int(elapsed_ms), exc)
        error.__cause__ = exc
        return Failure("retries_exhausted", error, attempt, first_ms)
    mark = breaker.open_total() if breaker is not None else 0.0
    return RetryState(attempt, first_ms, first_mono, now + delay, open_mark=mark)


def release_frames(exc: BaseException) -> None:
    """Clear the local variables of the finished frames ``exc`` went through, and of
    those of its causes, contexts and (in a group) members; the frames stay.

    A dead letter's ``Failure.error`` is held until the DLQ acknowledges it (up to
    ``max_buffered`` of them a lane), a retry's error for as long as a Faust lane
    backs off inside its ``except``. Their handler frames held the decoded event and
    all the handler built: alive that long, and walked by every young collection of the
    cyclic collector. What is kept: the exception, its class and text, and a traceback
    that still formats with each frame's file, line and function.

    A running frame is skipped: the runtime's own, which caught ``exc``. The handler's
    frame keeps that one as its ``f_back``, and with it, once it returns, its last
    locals: the runtimes drop the event from theirs on a failure. So is a suspended
    generator's or coroutine's, which clearing would close before Python 3.13: an
    error can hold the frame of one that caught it and went on (a client's own task
    that hands a failed request's error to the caller waiting on a future).
    """
    seen: set[int] = set()
    pending = [exc]
    while pending:
        err = pending.pop()
        if id(err) in seen:  # a cycle of contexts
            continue
        seen.add(id(err))
        _clear_finished(err.__traceback__)
        if err.__cause__ is not None:
            pending.append(err.__cause__)
        if err.__context__ is not None:
            pending.append(err.__context__)
        if isinstance(err, BaseExceptionGroup):
            pending.extend(err.exceptions)


# The code of generators and coroutines, whose frame may be suspended, not finished.
_SUSPENDABLE = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


def _clear_finished(tb: TracebackType | None) -> None:
    """``traceback.clear_frames``, but for a generator's or coroutine's frame only once it
    finished: ``frame.clear()`` closes a suspended one before Python 3.13. A finished
    frame owns its locals, which the collector then sees through it (CPython); a
    suspended one's are its generator's, so it shows the collector none."""
    while tb is not None:
        frame = tb.tb_frame
        if not frame.f_code.co_flags & _SUSPENDABLE or frame.f_code in gc.get_referents(frame):
            with contextlib.suppress(RuntimeError):  # a running frame
                frame.clear()
        tb = tb.tb_next


def _wait_for_registry(
    exc: RegistryUnavailable,
    attempt: int,
    retry: RetryState | None,
    policy: RetryPolicy,
    now: float,
    first_ms: int,
    open_mark: float,
    names: Mapping[str, str],
) -> RetryState:
    """Back off as the retry policy does, but without its limits: an outage of the
    schema registry is not the message's fault, so it holds the message (like an
    unwritable DLQ) and spends none of its attempts or budget; never a dead letter."""
    if retry is None:  # once per waiting message, not per attempt
        log.warning(
            "schema registry unavailable; the message waits",
            extra={**names, "error": str(exc)},
        )
    first_mono = retry.first_failure_mono if retry and retry.attempt else now
    # Backed off by the waits, not the attempt, which each wait gives back: the cap
    # stayed at base_delay, and each waiting partition asked the registry about nine
    # times a second (default policy) for as long as it was down.
    waits = (retry.registry_waits if retry is not None else 0) + 1
    delay = max(0.05, policy.rng.uniform(0.0, policy.backoff_cap(waits)))  # never a spin
    parked_at = retry.parked_at if retry is not None and retry.parked_at is not None else now
    return RetryState(
        attempt - 1,
        first_ms,
        first_mono,
        now + delay,
        parked_at,
        open_mark,
        waits_for="registry_unavailable",
        registry_waits=waits,
    )


class RetryLog(LineBudget):
    """The lines of a record that failed transiently and waits for its next try:
    ``retrying message`` for an ordinary retry, ``message waits for a dependency`` when
    ``judge`` gave the attempt back (an outage is suspected, the breaker's probe failed,
    the schema registry is down), ``retry dropped ...`` when its lane closes first.
    Before, a parked record repeated ``retrying message`` with the same ``attempt``
    every ``PARK_WAIT``, which read as a retry loop past the policy. At most
    ``per_second`` lines a second, all kinds together (an outage fails every record in
    flight); a line written after skipped ones says how many
    (``not_logged``), and ``streamguard_retries_total`` counts them all, but for the
    dropped retries (``Pipeline.judge`` counts). No value, no key, no error text. Its
    arguments are ``LineBudget``'s: the service and the topic every line names."""

    def __call__(
        self,
        message: Hashable,
        attempt: int,
        error: BaseException,
        verdict: RetryState,
        now: float,
        attempts: int,
        dropped: bool = False,
    ) -> None:
        """Log the ``verdict`` on try ``attempt`` of ``message`` (``now``: the clock the
        verdict's ``due`` is on; ``attempts``: the retry policy's). ``dropped``: its lane
        closes (a revoke, a stop) before the retry: there is none, it is redelivered."""
        skipped = self._take()
        if skipped is None:
            return
        partition, offset = message if isinstance(message, tuple) else (None, None)
        where = {**self._names, "partition": partition, "offset": offset}
        error_class = f"{type(error).__module__}.{type(error).__qualname__}"
        if dropped:
            self._log.info(
                "retry dropped as its partition closes; the message will be delivered again",
                extra={
                    **where,
                    "attempt": attempt,
                    "error_class": error_class,
                    "not_logged": skipped,
                },
            )
            return
        wait = round(max(0.0, verdict.due - now), 3)
        why = verdict.waits_for
        if why is None:
            self._log.info(
                "retrying message",
                extra={
                    **where,
                    "attempt": attempt,
                    "error_class": error_class,
                    "retry_in_s": wait,
                    "not_logged": skipped,
                },
            )
            return
        registry = why == "registry_unavailable"
        self._log.info(
            "message waits for a dependency",
            extra={
                **where,
                "waiting_for": "schema_registry" if registry else "dependency",
                "why": why,
                # Handler calls its policy counted: the failed one too, unless the
                # registry stopped its decode before any call.
                "attempts_used": verdict.attempt if registry else attempt,
                "attempts": attempts,
                "error_class": error_class,
                "look_again_in_s": wait,
                "not_logged": skipped,
            },
        )

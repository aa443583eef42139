"""What a failed attempt means: a dead letter now, or a retry after a delay.

Shared by the worker-thread lanes and the event-loop lanes, so that both apply the
same rules: invalid input is dead-lettered at once and never retried; a permanent
error is dead-lettered at once; a transient one is retried under the ``RetryPolicy``
until its attempts or time budget run out (``retries_exhausted``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from streamguard.deadletter import Failure
from streamguard.errors import (
    ContractViolation,
    DecodeError,
    RegistryUnavailable,
    RetriesExhausted,
)
from streamguard.policy import RetryPolicy, classify

log = logging.getLogger("streamguard.runtime")


@dataclass(slots=True)
class RetryState:
    """A message failed transiently: when to try it again, and when it first failed."""

    attempt: int
    first_failure_ms: int
    first_failure_mono: float
    due: float


def judge(
    exc: Exception,
    attempt: int,
    retry: RetryState | None,
    policy: RetryPolicy,
    transient: tuple[type[BaseException], ...],
    now: float,
) -> Failure | RetryState:
    """The verdict on attempt ``attempt`` of a message that raised ``exc``.

    Args:
        retry: the message's retry state from earlier attempts, if any.
        now: monotonic seconds, from the caller's clock.
    """
    first_ms = retry.first_failure_ms if retry else int(time.time() * 1000)
    if isinstance(exc, RegistryUnavailable):
        return _wait_for_registry(exc, attempt, retry, policy, now, first_ms)
    if isinstance(exc, DecodeError):
        return Failure(exc.reason, exc)  # type: ignore[arg-type]  # a DecodeError reason
    if isinstance(exc, ContractViolation):
        return Failure("contract_violation", exc)
    if classify(exc, transient) == "permanent":
        return Failure("permanent_error", exc, attempt, first_ms)
    first_mono = retry.first_failure_mono if retry else now
    elapsed_ms = (now - first_mono) * 1000.0
    delay = policy.next_delay(attempt, elapsed_ms)
    if delay is None:
        error = RetriesExhausted(attempt, int(elapsed_ms), exc)
        error.__cause__ = exc
        return Failure("retries_exhausted", error, attempt, first_ms)
    return RetryState(attempt, first_ms, first_mono, now + delay)


def _wait_for_registry(
    exc: RegistryUnavailable,
    attempt: int,
    retry: RetryState | None,
    policy: RetryPolicy,
    now: float,
    first_ms: int,
) -> RetryState:
    """Back off as the retry policy does, but without its limits: an outage of the
    schema registry is not the message's fault, so it holds the message (like an
    unwritable DLQ) and spends none of its attempts or budget; never a dead letter."""
    if retry is None:  # once per waiting message, not per attempt
        log.warning("schema registry unavailable; the message waits", extra={"error": str(exc)})
    first_mono = retry.first_failure_mono if retry else now
    delay = max(0.05, policy.rng.uniform(0.0, policy.backoff_cap(attempt)))  # never a spin
    return RetryState(attempt, first_ms, first_mono, now + delay)

"""Retry policy: which failures are retried, how often, how long, with what backoff.

A ``RetryPolicy`` is a plain value. The runtime asks it two questions about a failed
message: is this failure transient (``classify``), and if so, when to try again
(``next_delay``, or None when attempts or the time budget are spent).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, fields
from typing import Literal

from streamguard.errors import ConfigurationError, PermanentError, TransientError

DEFAULT_TRANSIENT: tuple[type[BaseException], ...] = (TransientError, TimeoutError, ConnectionError)

Verdict = Literal["transient", "permanent"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded retry with exponential backoff and full jitter.

    The delay before attempt ``n + 1`` is drawn uniformly from
    ``[0, min(max_delay, base_delay * 2 ** (n - 1))]`` ("full jitter", as in the AWS
    architecture blog), so that many consumers failing together do not retry together.

    Args:
        attempts: total tries including the first; 1 means never retry.
        base_delay: seconds; the backoff cap of the first retry.
        max_delay: seconds; no single wait is longer.
        max_budget_ms: time since the first failure after which no retry starts, so a
            message never holds its partition longer than this (plus one handler run).
    """

    attempts: int = 3
    base_delay: float = 0.2
    max_delay: float = 5.0
    max_budget_ms: int = 30_000
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        _refuse_wrong_types(self)
        if not self.attempts >= 1:  # NaN too: no attempt would ever be the last
            raise ConfigurationError(
                f"RetryPolicy(attempts={self.attempts}): attempts counts the first try, "
                "so it must be at least 1 (use 1 to never retry)"
            )
        # Written as "not >=" so that NaN, which compares false to everything, is
        # refused too: a NaN delay would schedule a retry that never falls due.
        if not (self.base_delay >= 0 and self.max_delay >= 0):
            raise ConfigurationError("RetryPolicy delays must not be negative (nor NaN)")
        if math.isinf(self.base_delay):
            # Every wait drawn from [0, inf) is infinite: no retry within a budget, and
            # without one a record that holds its partition for good.
            raise ConfigurationError(
                "RetryPolicy.base_delay must be finite seconds (use attempts=1 to never retry)"
            )
        if self.max_delay < self.base_delay:
            raise ConfigurationError(
                f"RetryPolicy(max_delay={self.max_delay}) is below base_delay="
                f"{self.base_delay}; raise max_delay or lower base_delay"
            )
        if not self.max_budget_ms >= 0:
            raise ConfigurationError("RetryPolicy.max_budget_ms must not be negative (nor NaN)")

    def backoff_cap(self, attempt: int) -> float:
        """The upper bound of the wait after failed attempt ``attempt`` (1-based)."""
        # The exponent capped: past 2**1023 the product overflows a float, and a
        # policy of thousands of attempts crashed its service mid-retry.
        return float(min(self.max_delay, self.base_delay * 2.0 ** min(attempt - 1, 62)))

    def next_delay(self, attempt: int, elapsed_ms: float) -> float | None:
        """Seconds to wait before the next try after ``attempt`` failed, or None to stop.

        Args:
            attempt: the attempt that just failed, 1-based.
            elapsed_ms: time since the message first failed.
        """
        if attempt >= self.attempts:
            return None
        delay = self.rng.uniform(0.0, self.backoff_cap(attempt))
        if elapsed_ms + delay * 1000.0 > self.max_budget_ms:
            return None
        return delay


@dataclass(frozen=True, slots=True)
class CircuitBreaker:
    """Service-wide protection of a failing dependency: a retry budget and a breaker.

    Retry policies are per message; an outage is not. When the database behind a
    handler is down, every message would exhaust its retries and the topic would empty
    into the DLQ. Instead:

    - **Retry budget** (a token bucket, as gRPC and Finagle throttle retries): each
      handler call deposits ``retry_ratio`` tokens, plus ``min_retries_per_second``
      over time; each retry withdraws one. A retry without a token waits for one,
      so a failing dependency sees at most about ``retry_ratio`` extra load.
    - **Breaker**: when at least ``failure_ratio`` of the handler calls of the last
      ``window`` seconds (and at least ``min_calls`` of them) failed transiently, it
      *opens*: the service pauses all its partitions, stays in its group, stops
      calling the handler and reports unready. After ``cool_down`` seconds it lets one
      message through (*half-open*); success closes it, failure opens it again.

    A message's own attempts and time budget are not spent while it waits for the
    breaker or for a retry token: only real handler calls count. Messages that fail
    while the dependency is healthy (below the ratio) still end ``retries_exhausted``.
    Only transient failures count: invalid input and permanent errors are the
    message's fault, not the dependency's.

    Defaults follow Finagle's retry budget (20% of calls, 10 retries/s floor) and open
    the breaker when half the calls of 10 s fail: an outage, not a few bad messages.

    Args:
        enabled: False turns off both the budget and the breaker.
    """

    failure_ratio: float = 0.5
    min_calls: int = 20
    window: float = 10.0
    cool_down: float = 5.0
    retry_ratio: float = 0.2
    min_retries_per_second: float = 10.0
    enabled: bool = True

    def __post_init__(self) -> None:
        _refuse_wrong_types(self)
        if not 0 < self.failure_ratio <= 1:
            raise ConfigurationError(
                f"CircuitBreaker(failure_ratio={self.failure_ratio}) must be in (0, 1]: "
                "the share of recent handler calls that failed transiently"
            )
        if not self.min_calls >= 1:  # NaN too: the breaker could never open
            raise ConfigurationError("CircuitBreaker.min_calls must be at least 1")
        if not (self.window > 0 and self.cool_down > 0):  # NaN too
            raise ConfigurationError("CircuitBreaker window and cool_down are positive seconds")
        if math.isinf(self.window) or math.isinf(self.cool_down):
            raise ConfigurationError(
                "CircuitBreaker window and cool_down must be finite seconds: an open breaker "
                "probes after cool_down, so an infinite one would pause the service until "
                "it is restarted"
            )
        if not (self.retry_ratio >= 0 and self.min_retries_per_second >= 0):
            raise ConfigurationError(
                "CircuitBreaker retry_ratio and min_retries_per_second must not be negative "
                "(nor NaN)"
            )
        if self.enabled and self.retry_ratio == 0 and self.min_retries_per_second == 0:
            raise ConfigurationError(
                "CircuitBreaker(retry_ratio=0, min_retries_per_second=0): the retry budget "
                "never refills, so once its first tokens are spent every retry waits for "
                "good and holds its partition; give either a value above 0, lower "
                "RetryPolicy.attempts to retry less, or CircuitBreaker(enabled=False) to "
                "turn the budget and the breaker off"
            )


def _refuse_wrong_types(policy: RetryPolicy | CircuitBreaker) -> None:
    """A setting of the wrong type is a ConfigurationError naming it, not a TypeError
    later or a silent misreading: ``enabled="false"`` read from a config file would
    count as true, ``attempts="3"`` fail in a comparison, ``attempts=True`` be 1."""
    for option in fields(policy):
        if option.name == "rng":
            continue
        value = getattr(policy, option.name)
        if option.type == "bool":
            if not isinstance(value, bool):
                raise ConfigurationError(
                    f"{type(policy).__name__}.{option.name} must be True or False, "
                    f"not {type(value).__name__}"
                )
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigurationError(
                f"{type(policy).__name__}.{option.name} must be a number, "
                f"not {type(value).__name__}"
            )


def classify(exc: BaseException, transient: tuple[type[BaseException], ...]) -> Verdict:
    """Transient if ``exc`` is an instance of ``transient`` (or a group of such errors
    only); otherwise permanent.

    ``PermanentError`` always wins, even if it also inherits from a transient type, so
    a handler's explicit "never retry" is never second-guessed; and ``TransientError``,
    its explicit "retry", is transient whatever ``transient`` lists: a service that
    named only its own types (``transient = (BankDown,)``) dead-lettered it at once.
    """
    if isinstance(exc, PermanentError):
        return "permanent"
    if isinstance(exc, (TransientError, *transient)):
        return "transient"
    # What ``asyncio.TaskGroup`` raises: transient when every error in it is, so a
    # timeout of a handler that fans out is retried as it is when it does not.
    if isinstance(exc, BaseExceptionGroup) and all(
        classify(e, transient) == "transient" for e in exc.exceptions
    ):
        return "transient"
    return "permanent"


def check_transient(transient: tuple[type[BaseException], ...], name: str) -> None:
    """Refuse a ``transient`` type that is not an ``Exception``.

    What a handler raises that is not an ``Exception`` (``KeyboardInterrupt``,
    ``SystemExit``, ``asyncio.CancelledError``, a ``BaseException`` of one's own) is no
    outcome: it stops the service, and no ``transient`` tuple retries it. Accepted, such
    a declaration promised retries that never came.
    """
    for kind in transient:
        if not issubclass(kind, Exception):
            raise ConfigurationError(
                f"{name} names {kind.__qualname__}, which is not an Exception: what a "
                "handler raises that is not an Exception stops the service and is never "
                "retried. Catch it in the handler and raise sg.TransientError from it"
            )

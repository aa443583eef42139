"""Retry policy: which failures are retried, how often, how long, with what backoff.

A ``RetryPolicy`` is a plain value. The runtime asks it two questions about a failed
message: is this failure transient (``classify``), and if so, when to try again
(``next_delay``, or None when attempts or the time budget are spent).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
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
        if self.attempts < 1:
            raise ConfigurationError(
                f"RetryPolicy(attempts={self.attempts}): attempts counts the first try, "
                "so it must be at least 1 (use 1 to never retry)"
            )
        if self.base_delay < 0 or self.max_delay < 0:
            raise ConfigurationError("RetryPolicy delays must not be negative")
        if self.max_delay < self.base_delay:
            raise ConfigurationError(
                f"RetryPolicy(max_delay={self.max_delay}) is below base_delay="
                f"{self.base_delay}; raise max_delay or lower base_delay"
            )
        if self.max_budget_ms < 0:
            raise ConfigurationError("RetryPolicy.max_budget_ms must not be negative")

    def backoff_cap(self, attempt: int) -> float:
        """The upper bound of the wait after failed attempt ``attempt`` (1-based)."""
        return float(min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))

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


def classify(exc: BaseException, transient: tuple[type[BaseException], ...]) -> Verdict:
    """Transient if ``exc`` is an instance of ``transient``; otherwise permanent.

    ``PermanentError`` always wins, even if it also inherits from a transient type, so
    a handler's explicit "never retry" is never second-guessed.
    """
    if isinstance(exc, PermanentError):
        return "permanent"
    return "transient" if isinstance(exc, transient) else "permanent"

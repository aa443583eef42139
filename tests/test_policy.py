"""RetryPolicy bounds retries by attempts and budget; classify splits transient from permanent."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

import streamguard as sg
from streamguard.errors import ConfigurationError
from streamguard.policy import DEFAULT_TRANSIENT, classify


def seeded(**kwargs: Any) -> sg.RetryPolicy:
    return sg.RetryPolicy(rng=random.Random(1234), **kwargs)


def test_backoff_cap_doubles_up_to_max_delay() -> None:
    """The cap after attempt n is base_delay * 2**(n-1), never above max_delay."""
    policy = sg.RetryPolicy(attempts=10, base_delay=0.5, max_delay=3.0)
    assert [policy.backoff_cap(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_many_attempts_never_overflow_the_backoff() -> None:
    """A policy of thousands of attempts: the doubling stops at max_delay instead of
    overflowing a float (which crashed the service around attempt 1,025)."""
    policy = sg.RetryPolicy(attempts=10_000, base_delay=0.1, max_delay=2.0, max_budget_ms=10**9)
    assert policy.backoff_cap(1_100) == 2.0
    delay = policy.next_delay(5_000, 0.0)
    assert delay is not None
    assert 0.0 <= delay <= 2.0


def test_delays_are_full_jitter_within_the_cap() -> None:
    """Each delay is drawn from [0, cap], and the draws actually vary."""
    policy = seeded(attempts=100, base_delay=0.1, max_delay=1.0, max_budget_ms=10**9)
    for attempt in range(1, 99):
        delays = [policy.next_delay(attempt, 0) for _ in range(20)]
        cap = policy.backoff_cap(attempt)
        assert all(d is not None and 0.0 <= d <= cap for d in delays)
        assert len(set(delays)) > 1


def test_same_seed_gives_same_delays() -> None:
    """Two policies with equally seeded generators wait the same times."""
    first, second = seeded(attempts=5), seeded(attempts=5)
    assert [first.next_delay(n, 0) for n in range(1, 5)] == [
        second.next_delay(n, 0) for n in range(1, 5)
    ]


def test_attempts_bound_retries() -> None:
    """After the last allowed attempt fails, next_delay says stop."""
    policy = seeded(attempts=3)
    assert policy.next_delay(1, 0) is not None
    assert policy.next_delay(2, 0) is not None
    assert policy.next_delay(3, 0) is None
    assert policy.next_delay(4, 0) is None


def test_one_attempt_never_retries() -> None:
    """attempts=1 means the first failure is final."""
    assert seeded(attempts=1).next_delay(1, 0) is None


def test_budget_bounds_retries() -> None:
    """No retry starts if waiting would pass max_budget_ms since the first failure."""
    policy = seeded(attempts=10, base_delay=1.0, max_delay=1.0, max_budget_ms=5_000)
    assert policy.next_delay(1, 5_001) is None
    assert seeded(attempts=10, max_budget_ms=0, base_delay=0.0, max_delay=0.0).next_delay(1, 0) == 0
    # Whatever the jitter draws, a delay returned never overruns the budget; longer
    # draws mean stop.
    delays = [policy.next_delay(1, 4_500) for _ in range(200)]
    allowed = [d for d in delays if d is not None]
    assert all(4_500 + d * 1000 <= 5_000 for d in allowed)
    assert 0 < len(allowed) < len(delays)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"attempts": 0}, "at least 1"),
        ({"base_delay": -0.1}, "must not be negative"),
        ({"max_delay": -1.0, "base_delay": 0.0}, "must not be negative"),
        ({"base_delay": 2.0, "max_delay": 1.0}, "raise max_delay or lower base_delay"),
        ({"max_budget_ms": -1}, "max_budget_ms must not be negative"),
        ({"base_delay": float("nan")}, "must not be negative \\(nor NaN\\)"),
        ({"max_delay": float("nan")}, "must not be negative \\(nor NaN\\)"),
        ({"max_budget_ms": float("nan")}, "max_budget_ms must not be negative"),
        # NaN passed "attempts < 1", and "attempt >= NaN" never held: no attempt limit.
        ({"attempts": float("nan")}, "at least 1"),
        # An infinite first wait: with a budget, never a retry; without, a record that
        # holds its partition for good.
        ({"base_delay": float("inf"), "max_delay": float("inf")}, "base_delay must be finite"),
    ],
)
def test_invalid_values_are_refused(kwargs: dict[str, Any], match: str) -> None:
    """A policy with impossible values fails when it is created, saying what to change."""
    with pytest.raises(ConfigurationError, match=match):
        sg.RetryPolicy(**kwargs)


def test_policies_compare_by_value() -> None:
    """Policies are plain values: equal settings are equal, whatever their generators."""
    assert seeded(attempts=4) == sg.RetryPolicy(attempts=4, rng=random.Random(99))
    assert "rng" not in repr(seeded())


def test_permanent_error_is_always_permanent() -> None:
    """PermanentError is permanent even when it also inherits from a transient type."""

    class NeverRetry(sg.PermanentError, TimeoutError):
        pass

    assert classify(NeverRetry(), DEFAULT_TRANSIENT) == "permanent"
    assert classify(sg.PermanentError("no"), (Exception,)) == "permanent"


@pytest.mark.parametrize(
    "exc", [sg.TransientError("later"), TimeoutError(), ConnectionResetError()]
)
def test_default_transient_types(exc: BaseException) -> None:
    """By default TransientError, TimeoutError and ConnectionError (and subclasses) are retried."""
    assert classify(exc, DEFAULT_TRANSIENT) == "transient"


def test_other_exceptions_are_permanent_by_default() -> None:
    """An exception outside the transient tuple is permanent."""
    assert classify(KeyError("x"), DEFAULT_TRANSIENT) == "permanent"
    assert classify(sg.ContractViolation("s", []), DEFAULT_TRANSIENT) == "permanent"


def test_transient_error_is_always_transient() -> None:
    """sg.TransientError is a handler's explicit "retry": a service whose transient
    tuple names only its own types still retries it (it was dead-lettered at once as a
    permanent error), and so does a group of it, as asyncio.TaskGroup raises."""

    class BankDown(Exception):
        pass

    assert classify(sg.TransientError("later"), (BankDown,)) == "transient"
    assert classify(sg.TransientError("later"), ()) == "transient"
    group = ExceptionGroup("fan-out", [sg.TransientError("a"), BankDown()])
    assert classify(group, (BankDown,)) == "transient"


def test_custom_transient_tuple_is_honoured() -> None:
    """A service's own transient tuple decides, and replaces the default one."""
    transient = (KeyError,)
    assert classify(KeyError("x"), transient) == "transient"
    assert classify(TimeoutError(), transient) == "permanent"
    assert classify(TimeoutError(), ()) == "permanent"


def test_a_retry_budget_that_never_refills_is_refused() -> None:
    """``retry_ratio=0`` with ``min_retries_per_second=0`` refills nothing: once the
    bucket's first 100 tokens were spent, every retry waited for a token that never
    came, and its record, whose attempts a wait does not spend, held its partition for
    good. Either alone is fine; the breaker off (``enabled=False``) takes both."""
    with pytest.raises(ConfigurationError, match="never refills"):
        sg.CircuitBreaker(retry_ratio=0, min_retries_per_second=0)
    sg.CircuitBreaker(retry_ratio=0)
    sg.CircuitBreaker(min_retries_per_second=0)
    sg.CircuitBreaker(retry_ratio=0, min_retries_per_second=0, enabled=False)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window": float("nan")},
        {"cool_down": float("nan")},
        {"retry_ratio": float("nan")},
        {"min_retries_per_second": float("nan")},
        # Accepted, "calls >= NaN" never held: the breaker could never open.
        {"min_calls": float("nan")},
    ],
)
def test_a_breaker_with_nan_is_refused(kwargs: dict[str, Any]) -> None:
    """NaN compares false to every bound, so each bound is checked as a positive claim:
    a NaN window or cool-down would leave the breaker's clock comparisons always false."""
    with pytest.raises(ConfigurationError, match="CircuitBreaker"):
        sg.CircuitBreaker(**kwargs)


@pytest.mark.parametrize(
    ("policy", "kwargs", "match"),
    [
        (sg.CircuitBreaker, {"enabled": "false"}, "CircuitBreaker.enabled must be True or False"),
        (sg.CircuitBreaker, {"enabled": 0}, "CircuitBreaker.enabled must be True or False"),
        (sg.CircuitBreaker, {"window": "10"}, "CircuitBreaker.window must be a number"),
        (sg.RetryPolicy, {"attempts": "3"}, "RetryPolicy.attempts must be a number"),
        (sg.RetryPolicy, {"attempts": True}, "RetryPolicy.attempts must be a number"),
        (sg.RetryPolicy, {"max_budget_ms": None}, "RetryPolicy.max_budget_ms must be a number"),
    ],
)
def test_a_setting_of_the_wrong_type_is_refused(
    policy: type[Any], kwargs: dict[str, Any], match: str
) -> None:
    """A value read from a config file or the environment as text (``enabled="false"``,
    which would count as true) is a ConfigurationError naming the setting, as for
    ServiceOptions, not a TypeError later or a silent misreading."""
    with pytest.raises(ConfigurationError, match=match):
        policy(**kwargs)


@pytest.mark.parametrize("setting", ["cool_down", "window"])
def test_breaker_refuses_an_infinite_cool_down_or_window(setting: str) -> None:
    """An infinite cool-down never lets a probe in: the service would stay paused."""
    with pytest.raises(ConfigurationError, match="finite"):
        sg.CircuitBreaker(**{setting: math.inf})

"""The failure decision both runtimes share: what a failed message's exception means."""

from __future__ import annotations

import random

import streamguard as sg
from streamguard.deadletter import Failure
from streamguard.errors import ContractViolation, SchemaDrift
from streamguard.guard import RetryState, immediate_failure, next_retry
from streamguard.policy import DEFAULT_TRANSIENT


def test_input_errors_fail_at_once_with_their_reason() -> None:
    """Decode, oversize, contract and drift errors are dead-lettered at once, as attempt 1."""
    cases = [
        (sg.DecodeError("bad"), "decode_error"),
        (sg.DecodeError("big", reason="oversize"), "oversize"),
        (ContractViolation("s", []), "contract_violation"),
        (SchemaDrift(["newer_version"], "s"), "schema_drift"),
    ]
    for error, reason in cases:
        failure = immediate_failure(error, 3, DEFAULT_TRANSIENT)
        assert failure is not None
        assert (failure.reason, failure.attempts) == (reason, 1)


def test_transient_errors_are_retried_and_permanent_ones_keep_the_first_failure() -> None:
    """A transient type gives no failure (retry); a permanent one after earlier attempts
    keeps their attempt number and first failure time."""
    assert immediate_failure(TimeoutError(), 1, DEFAULT_TRANSIENT) is None
    earlier = RetryState(attempt=2, first_failure_ms=1234, first_failure_mono=0.0)
    failure = immediate_failure(KeyError("x"), 3, DEFAULT_TRANSIENT, earlier)
    assert failure is not None
    assert (failure.reason, failure.attempts, failure.first_failure_ms) == (
        "permanent_error",
        3,
        1234,
    )
    never = immediate_failure(sg.PermanentError("no"), 1, (sg.PermanentError,))
    assert never is not None
    assert never.reason == "permanent_error"


def test_next_retry_waits_then_gives_up_with_the_last_error() -> None:
    """Within the policy the next try gets a delay; at the last attempt the failure is
    retries_exhausted, caused by the last error and dated from the first failure."""
    policy = sg.RetryPolicy(attempts=2, base_delay=0.1, max_delay=0.1, rng=random.Random(7))
    error = TimeoutError("slow")
    step = next_retry(error, 1, policy, None)
    assert not isinstance(step, Failure)
    delay, state = step
    assert 0.0 <= delay <= 0.1
    assert state.attempt == 1
    exhausted = next_retry(error, 2, policy, state)
    assert isinstance(exhausted, Failure)
    assert exhausted.reason == "retries_exhausted"
    assert exhausted.attempts == 2
    assert exhausted.first_failure_ms == state.first_failure_ms
    assert exhausted.error.__cause__ is error
    assert exhausted.error_class == "builtins.TimeoutError"

"""The circuit breaker and retry budget, on a fake clock (no broker)."""

from __future__ import annotations

import logging
import random
import time

import pytest
from prometheus_client import CollectorRegistry

import streamguard as sg
from streamguard.observe.metrics import ServiceMetrics
from streamguard.runtime.breaker import CLOSED, HALF_OPEN, OPEN, Breaker
from streamguard.runtime.outcomes import RetryLog, RetryState, gate, judge


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(**config: float) -> tuple[Breaker, Clock, CollectorRegistry]:
    clock, registry = Clock(), CollectorRegistry()
    made = Breaker(
        sg.CircuitBreaker(**config),  # type: ignore[arg-type]
        ServiceMetrics(registry),
        "t",
        clock,
        service="billing",
    )
    return made, clock, registry


def test_opens_when_most_recent_calls_fail() -> None:
    """Half of at least min_calls recent calls failing opens the breaker."""
    b, _, registry = breaker(min_calls=10, failure_ratio=0.5)
    b.succeeded(5)
    for i in range(4):
        b.failed((0, i))
    assert b.state == CLOSED  # 9 calls: below min_calls
    b.failed((1, 0))
    assert b.state == OPEN
    assert not b.allow()
    assert (
        registry.get_sample_value(
            "streamguard_breaker_state", {"runtime": "consumer", "topic": "t"}
        )
        == OPEN
    )
    assert (
        registry.get_sample_value(
            "streamguard_breaker_opened_total", {"runtime": "consumer", "topic": "t"}
        )
        == 1
    )


def test_a_few_failures_among_many_successes_keep_it_closed() -> None:
    """Failures of a few messages while the dependency is healthy do not open it."""
    b, _, _ = breaker(min_calls=10)
    b.succeeded(100)
    for i in range(20):
        b.failed((0, i))
    assert b.state == CLOSED


def test_old_calls_leave_the_window() -> None:
    """Only the calls of the last `window` seconds count."""
    b, clock, _ = breaker(min_calls=10, window=5.0)
    b.succeeded(1000)
    clock.now += 6
    for i in range(10):
        b.failed((0, i))
    assert b.state == OPEN


def test_half_open_lets_one_probe_through_and_closes_on_success(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After cool_down exactly one call may start; its success closes the breaker.
    Each of its lines names the service and topic: a process may run several."""
    b, clock, _ = breaker(min_calls=2, cool_down=3.0)
    caplog.set_level(logging.WARNING, logger="streamguard.runtime")
    b.failed((0, 1))
    b.failed((1, 1))
    assert not b.accepting()
    clock.now += 3
    assert b.accepting()
    assert b.allow()
    assert b.state == HALF_OPEN
    assert not b.allow()  # one probe at a time
    assert not b.accepting()
    b.succeeded()
    assert b.state == CLOSED
    assert b.allow()
    lines = [r for r in caplog.records if r.getMessage().startswith("circuit breaker")]
    assert [r.getMessage().split(";")[0] for r in lines] == [
        "circuit breaker open",
        "circuit breaker half-open",
        "circuit breaker closed",
    ]
    assert [(r.service, r.topic) for r in lines] == [("billing", "t")] * 3  # type: ignore[attr-defined]


def test_a_failed_probe_opens_it_again() -> None:
    """A probe that fails starts a new cool-down."""
    b, clock, _ = breaker(min_calls=2, cool_down=3.0)
    b.failed((0, 1))
    b.failed((1, 1))
    clock.now += 3
    assert b.allow()
    b.failed((0, 1))
    assert b.state == OPEN
    clock.now += 1
    assert not b.allow()


def test_retry_budget_is_a_share_of_calls() -> None:
    """Retries withdraw tokens that calls deposit; an empty bucket defers the retry."""
    b, _, registry = breaker(retry_ratio=0.1, min_retries_per_second=0, min_calls=10**6)
    while b.may_retry():  # spend the initial burst
        pass
    b.succeeded(30)  # deposits 3 tokens
    assert [b.may_retry() for _ in range(4)] == [True, True, True, False]
    assert (
        registry.get_sample_value(
            "streamguard_retries_deferred_total", {"runtime": "consumer", "topic": "t"}
        )
        >= 2
    )


def test_gate_parks_without_spending_attempts_or_budget() -> None:
    """While the breaker is open a message is parked: its attempt count stays, and the
    parked time is not charged to its time budget when it runs again."""
    b, clock, _ = breaker(min_calls=2, cool_down=10.0)
    b.failed((0, 1))
    b.failed((1, 1))
    retry = RetryState(attempt=2, first_failure_ms=5, first_failure_mono=90.0, due=100.0)
    parked = gate(b, retry, clock.now)
    assert parked is not None
    assert parked.attempt == 2
    clock.now += 10
    again = gate(b, parked, clock.now)
    assert again is None  # the probe
    assert parked.first_failure_mono == pytest.approx(100.0)  # shifted by the 10 s parked


def test_disabled_breaker_never_holds() -> None:
    """CircuitBreaker(enabled=False) neither opens nor limits retries."""
    b, _, _ = breaker(min_calls=1, enabled=False)  # type: ignore[arg-type]
    for i in range(100):
        b.failed((0, i))
        assert b.may_retry()
    assert b.allow()


def test_bad_settings_fail_with_a_hint() -> None:
    """Nonsense settings are refused when the policy is built."""
    with pytest.raises(sg.ConfigurationError, match="failure_ratio"):
        sg.CircuitBreaker(failure_ratio=0)
    with pytest.raises(sg.ConfigurationError, match="min_calls"):
        sg.CircuitBreaker(min_calls=0)


def test_a_lone_failing_message_is_not_an_outage() -> None:
    """One message failing again and again is its own problem and never opens the
    breaker; others failing too with nothing succeeding since is an outage."""
    b, clock, _ = breaker(min_calls=3)
    since = clock.now
    clock.now += 1
    for _ in range(50):
        b.failed((0, 7))
    assert b.state == CLOSED  # 50 failures, all of one message
    b = Breaker(
        sg.CircuitBreaker(min_calls=1000),
        ServiceMetrics(CollectorRegistry()),
        "t",
        clock,
        service="s",
    )
    for _ in range(5):
        b.failed((0, 7))
    assert not b.outage_suspected((0, 7), since)
    b.failed((1, 3))
    assert b.outage_suspected((0, 7), since)
    clock.now += 1
    b.succeeded(1)  # something succeeded after it first failed: not an outage
    assert not b.outage_suspected((0, 7), since)


def test_successes_told_late_count_when_they_happened() -> None:
    """A lane tells its successes a batch at a time: those that ended before a message
    first failed, told after, do not say that something succeeded since."""
    b, clock, _ = breaker(min_calls=1000)
    clock.now += 1
    since = clock.now  # (0, 7) fails first; the other lane's successes ended 0.3 s before
    b.failed((0, 7))
    clock.now += 0.2
    # Told now, when its own next record fails; its last call started 0.5 s before.
    b.succeeded(40, (1, 39), began=time.perf_counter() - 0.5)
    b.failed((1, 40))
    assert b.outage_suspected((0, 7), since)
    b.succeeded(1, (2, 0), began=time.perf_counter() - 0.1)  # 0.1 s after (0, 7) first failed
    assert not b.outage_suspected((0, 7), since)
    b.succeeded(5, (1, 45), began=time.perf_counter() - 10.0)  # an older one keeps the latest
    assert not b.outage_suspected((0, 7), since)


def test_a_probe_that_never_reports_back_is_given_up() -> None:
    """A probe that ends without a verdict (revoked, invalid input) does not keep the
    breaker half-open: after a cool-down another message may probe."""
    b, clock, _ = breaker(min_calls=2, cool_down=3.0)
    b.failed((0, 1))
    b.failed((1, 1))
    clock.now += 3
    assert b.allow()
    assert not b.allow()
    clock.now += 3
    assert b.accepting()
    assert b.allow()
    b.release_probe()
    assert b.allow()


def test_time_open_is_not_charged_to_a_retry() -> None:
    """A retry that waited while the breaker was open keeps its whole time budget."""
    b, clock, _ = breaker(min_calls=2, cool_down=5.0)
    retry = RetryState(1, 5, clock.now, clock.now + 0.1, open_mark=b.open_total())
    b.failed((0, 1))
    b.failed((1, 1))
    clock.now += 5
    assert gate(b, retry, clock.now) is None  # the probe, after 5 s open
    assert retry.first_failure_mono == pytest.approx(105.0)


def test_an_invalid_record_keeps_no_frames_or_input_alive() -> None:
    """A dead letter waits for its acknowledgement holding its Failure: a codec error
    in it keeps neither the decoder's frames nor pydantic's error (which holds the
    input), so a flood of them leaves the garbage collector little to walk."""
    from streamguard.codecs import JsonCodec
    from streamguard.demo.contracts import OrderPlaced
    from streamguard.runtime.outcomes import judge

    decode = JsonCodec().decoder(OrderPlaced)
    for value in (b'{"order_id": 1}', b"{not json"):
        try:
            decode(value)
        except (sg.ContractViolation, sg.DecodeError) as exc:
            verdict = judge(exc, 1, None, sg.RetryPolicy(), (), 0.0)
        assert not isinstance(verdict, RetryState)
        assert verdict.error.__traceback__ is None
        assert verdict.error.__context__ is None


@pytest.mark.parametrize("history_open", [0.0, 600.0])
def test_a_retry_parked_by_the_budget_keeps_its_time_budget(history_open: float) -> None:
    """A message parked for want of a retry token is credited only the time the breaker
    was open since it failed: not every second the breaker was ever open, which made
    ``max_budget_ms`` stop applying (a 2 s budget ran for 100 s)."""
    b, clock, _ = breaker(min_calls=2, cool_down=5.0, retry_ratio=0.0, min_retries_per_second=10.0)
    if history_open:  # an outage long ago: open, then closed by a probe
        b.failed((0, 1))
        b.failed((1, 1))
        clock.now += history_open
        assert b.allow()
        b.succeeded()
        clock.now += 3600
    while b.may_retry():  # a burst of retries elsewhere spent the budget
        pass
    policy = sg.RetryPolicy(attempts=1000, base_delay=0.05, max_delay=0.05, max_budget_ms=2_000)
    start, retry, verdict = clock.now, None, None
    for _ in range(10_000):  # bounded: each pass moves the clock on
        if retry is not None:
            clock.now = max(clock.now, retry.due)
            parked = gate(b, retry, clock.now)
            if parked is not None:
                retry = parked
                continue
        attempt = 1 if retry is None else retry.attempt + 1
        verdict = judge(
            sg.TransientError("flaky"), attempt, retry, policy, (sg.TransientError,), clock.now, b
        )
        if not isinstance(verdict, RetryState):
            break
        retry = verdict
    assert verdict is not None
    assert not isinstance(verdict, RetryState)
    assert verdict.reason == "retries_exhausted"
    assert clock.now - start < 15  # 2 s of budget, plus the waits for retry tokens


def test_the_message_whose_probe_failed_lets_another_probe_first() -> None:
    """Half-open, the message whose probe failed last waits ``PROBE_TURN`` for another
    to probe: a message failing for a reason of its own no longer probes on and on while
    the dependency is healthy. With no other message asking, it probes again."""
    from streamguard.runtime.breaker import PROBE_TURN

    b, clock, _ = breaker(min_calls=2, cool_down=5.0)
    b.failed((0, 1))
    b.failed((1, 1))
    clock.now += 5
    assert b.allow((0, 0))  # the probe
    assert b.failed((0, 0))  # its own failure: the attempt is given back, it opens again
    clock.now += 5
    assert not b.allow((0, 0))  # its turn is given to others
    assert b.allow((1, 0))
    b.succeeded()
    assert b.state == CLOSED

    b.failed((0, 1))
    b.failed((1, 1))
    clock.now += 5
    assert b.allow((0, 0))
    b.failed((0, 0))
    clock.now += 5 + PROBE_TURN
    assert b.allow((0, 0))  # nobody else asked: it probes again


def test_the_open_log_names_the_exception_class(caplog: pytest.LogCaptureFixture) -> None:
    """On-call finds what the dependency raised in the breaker's own log line."""
    b, _, _ = breaker(min_calls=2, cool_down=5.0)
    policy = sg.RetryPolicy(attempts=3)
    with caplog.at_level("ERROR", logger="streamguard.runtime"):
        for partition in (0, 1):
            judge(
                ConnectionRefusedError("down"),
                1,
                None,
                policy,
                (ConnectionError,),
                100.0,
                b,
                (partition, 1),
            )
    (line,) = [r for r in caplog.records if r.getMessage().startswith("circuit breaker open")]
    assert line.error == "ConnectionRefusedError"  # type: ignore[attr-defined]
    assert (line.service, line.topic) == ("billing", "t")  # type: ignore[attr-defined]


def test_a_message_that_recovered_no_longer_counts_as_failing() -> None:
    """A message that failed and was then handled (or failed permanently) is no sign of
    an outage: another message failing alone neither opens the breaker nor is held."""
    b, clock, _ = breaker(min_calls=5)
    b.failed((0, 0))
    b.recovered((0, 0))
    b.succeeded()
    clock.now += 0.5
    since = clock.now
    for _ in range(10):
        b.failed((0, 1))
    assert b.state == CLOSED
    assert not b.outage_suspected((0, 1), since)
    b.failed((1, 0))  # a second message failing now: maybe an outage after all
    assert b.outage_suspected((0, 1), since)


def test_a_failed_probe_keeps_the_time_of_the_first_failure() -> None:
    """A probe that fails gives its attempt back (attempt 0) but not the epoch time of
    the message's first failure: its dead letter's sg-dlq-first-failure-ms says when it
    first failed, not when it last probed."""
    b, clock, _ = breaker(min_calls=2, cool_down=10.0)
    policy = sg.RetryPolicy(attempts=3)
    b.failed((0, 1))
    b.failed((1, 1))  # open
    clock.now += 10
    assert gate(b, None, clock.now, (0, 5)) is None  # (0, 5) probes
    probed = judge(TimeoutError(), 1, None, policy, (TimeoutError,), clock.now, b, (0, 5))
    assert isinstance(probed, RetryState)
    assert probed.attempt == 0
    probed.first_failure_ms = 5  # as if it first failed long ago
    clock.now += 11  # past the cool-down and the other messages' turn to probe
    assert gate(b, probed, clock.now, (0, 5)) is None  # probes again
    failed = judge(TimeoutError(), 1, probed, policy, (TimeoutError,), clock.now, b, (0, 5))
    assert isinstance(failed, RetryState)
    assert failed.first_failure_ms == 5
    b.succeeded(10)  # the dependency is back: the breaker closes
    last = judge(ValueError(), 1, failed, policy, (TimeoutError,), clock.now, b, (0, 5))
    assert isinstance(last, sg.Failure)
    assert last.first_failure_ms == 5


def test_a_retry_whose_failure_the_breaker_caught_needs_no_token() -> None:
    """A message that failed before the breaker opened retries without a token once
    the breaker closed: the outage was the dependency's, and under key or no ordering
    every record in flight fails in one, which at the budget's floor of 10 retries a
    second took minutes to recover. One that failed while the breaker stayed closed
    still needs a token."""
    b, clock, _ = breaker(min_calls=2, cool_down=5.0, retry_ratio=0.0, min_retries_per_second=10.0)
    caught = RetryState(1, 5, clock.now, clock.now + 0.1, open_mark=b.open_total())
    b.failed((0, 1))
    b.failed((1, 1))
    assert b.state == OPEN
    clock.now += 5
    assert b.allow()
    b.succeeded()  # the probe: the dependency is back
    assert b.state == CLOSED
    while b.may_retry():  # other retries spent the budget
        pass
    assert gate(b, caught, clock.now) is None
    assert gate(b, caught, clock.now) is not None  # its next retry needs a token again
    alone = RetryState(1, 5, clock.now, clock.now + 0.1, open_mark=b.open_total())
    assert gate(b, alone, clock.now) is not None


def test_a_failure_before_the_last_success_is_no_sign_of_an_outage() -> None:
    """A message dead-lettered when its retries ran out, then records handled, then
    another message failing on its own: the first says nothing about the second, which
    is dead-lettered too (it was held for the breaker's window). With nothing handled
    between them, two messages failing one after the other do look like an outage."""
    b, clock, _ = breaker(min_calls=1000)
    b.failed((0, 7))  # dead-lettered later; it stays among the failing messages
    clock.now += 0.1
    b.succeeded(49)
    clock.now += 0.1
    since = clock.now
    b.failed((0, 57))
    clock.now += 0.1
    assert not b.outage_suspected((0, 57), since)
    b.failed((0, 58))  # no success since (0, 57) first failed
    assert b.outage_suspected((0, 57), since)


def test_a_parked_wait_is_logged_as_waiting_not_as_a_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An ordinary retry logs ``retrying message`` with its attempt; a record whose
    retries ran out during a suspected outage, or whose probe failed, gets its attempt
    back and waits: logged as ``message waits for a dependency`` with the attempts used
    of the policy's. Before, it repeated ``retrying message`` with ``attempt: 3`` under
    ``RetryPolicy(attempts=3)`` every PARK_WAIT, which read as a retry loop."""
    b, clock, _ = breaker(min_calls=3, cool_down=5.0)
    retry_log = RetryLog(logging.getLogger("streamguard.runtime"), service="billing", topic="t")
    policy = sg.RetryPolicy(attempts=3, base_delay=0.02, max_delay=0.05, max_budget_ms=60_000)

    def fail(attempt: int, retry: RetryState | None, message: tuple[int, int]) -> RetryState:
        verdict = judge(
            TimeoutError("secret"), attempt, retry, policy, (TimeoutError,), clock.now, b, message
        )
        assert isinstance(verdict, RetryState)
        retry_log(message, attempt, TimeoutError("secret"), verdict, clock.now, 3)
        return verdict

    with caplog.at_level("INFO", logger="streamguard.runtime"):
        b.failed((0, 1))  # another message failed, and nothing succeeded since
        first = fail(1, None, (0, 2))
        later = fail(3, RetryState(2, 5, clock.now, clock.now), (0, 2))
        assert b.state == OPEN
        clock.now += 5.0
        assert b.allow((0, 2))  # the probe
        fail(1, None, (0, 2))
    assert first.waits_for is None
    assert later.attempt == 2
    retry, outage, probe = [r for r in caplog.records if r.levelname == "INFO"]
    assert retry.getMessage() == "retrying message"
    assert (retry.offset, retry.attempt, retry.error_class) == (2, 1, "builtins.TimeoutError")  # type: ignore[attr-defined]
    assert 0 <= retry.retry_in_s <= 0.02  # type: ignore[attr-defined]
    for line, why, used in ((outage, "outage_suspected", 3), (probe, "probe_failed", 1)):
        assert line.getMessage() == "message waits for a dependency"
        fields = ("waiting_for", "why", "attempts_used", "attempts", "look_again_in_s")
        assert [getattr(line, f) for f in fields] == ["dependency", why, used, 3, 0.1]
        assert not hasattr(line, "attempt")
        assert not hasattr(line, "retry_in_s")
    assert "secret" not in caplog.text


def test_a_wait_for_the_schema_registry_is_logged_as_waiting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A decode stopped by an unreachable registry gives its attempt back (the guarded
    Faust agent's path: no breaker): each look logs a wait for the registry with the
    handler calls made, not ``retrying message`` with ``attempt: 1`` over and over."""
    retry_log = RetryLog(logging.getLogger("streamguard.runtime"), service="billing", topic="t")
    policy = sg.RetryPolicy(attempts=3, base_delay=0.02, max_delay=0.05)
    waiting: RetryState | None = None
    with caplog.at_level("INFO", logger="streamguard.runtime"):
        for _ in range(2):
            attempt = 1 if waiting is None else waiting.attempt + 1
            error = sg.RegistryUnavailable("registry down")
            verdict = judge(error, attempt, waiting, policy, (), 100.0)
            assert isinstance(verdict, RetryState)
            retry_log((0, 4), attempt, error, verdict, 100.0, policy.attempts)
            waiting = verdict
    lines = [r for r in caplog.records if r.levelname == "INFO"]
    assert [r.getMessage() for r in lines] == ["message waits for a dependency"] * 2
    fields = ("offset", "waiting_for", "why", "attempts_used", "attempts", "error_class")
    assert {tuple(getattr(r, f) for f in fields) for r in lines} == {
        (
            4,
            "schema_registry",
            "registry_unavailable",
            0,
            3,
            "streamguard.errors.RegistryUnavailable",
        )
    }


def test_only_the_probe_decides_a_half_open_breaker() -> None:
    """A call that started before the breaker went half-open (here (0, 9), in the
    closed state) and fails or succeeds meanwhile neither reopens nor closes it, nor
    ends the probe; the probe's own failure reopens it. Before, the old call's failure
    reopened the breaker for another cool-down although the probe had not answered."""
    b, clock, registry = breaker(min_calls=2, cool_down=3.0)
    b.failed((0, 1))
    b.failed((1, 1))
    clock.now += 3
    assert b.allow((2, 1))  # the probe
    assert not b.failed((0, 9), "TimeoutError")  # its attempt is spent as usual
    assert b.state == HALF_OPEN
    assert (
        registry.get_sample_value(
            "streamguard_breaker_opened_total", {"runtime": "consumer", "topic": "t"}
        )
        == 1
    )
    b.release_probe((0, 8))  # another record's invalid input
    b.succeeded(1, (0, 7))  # another record's permanent error
    assert b.state == HALF_OPEN
    assert not b.allow((1, 2))  # the probe is still in flight
    assert b.failed((2, 1), "TimeoutError")
    assert b.state == OPEN


def test_an_old_calls_permanent_error_does_not_close_a_half_open_breaker() -> None:
    """judge() tells the breaker of a permanent error as a success of that message:
    one that is not the probe leaves the breaker half-open."""
    b, clock, _ = breaker(min_calls=2, cool_down=3.0)
    b.failed((0, 1))
    b.failed((1, 1))
    clock.now += 3
    assert b.allow((2, 1))
    policy = sg.RetryPolicy(attempts=3)
    for message in ((0, 9), (2, 1)):
        judge(
            ValueError("bad"),
            1,
            None,
            policy,
            (TimeoutError,),
            clock.now,
            b,
            message,
            by_handler=True,
        )
        assert b.state == (HALF_OPEN if message == (0, 9) else CLOSED)


def test_a_permanent_error_out_of_decoding_is_no_answer_of_the_dependency() -> None:
    """A validator raising something pydantic does not wrap (a ``KeyError``, say) is a
    permanent error before any handler call: it neither closes a half-open breaker nor
    counts as a success (which, during an outage, made the first failing message look
    as if it failed alone). It lets another message probe."""
    policy = sg.RetryPolicy(attempts=3)
    b, clock, _ = breaker(min_calls=100)
    b.failed((0, 1))
    b.failed((1, 1))
    since = clock.now
    clock.now += 1
    verdict = judge(KeyError("x"), 1, None, policy, (TimeoutError,), clock.now, b, (2, 1))
    assert isinstance(verdict, sg.Failure)
    assert verdict.reason == "permanent_error"
    assert b.outage_suspected((0, 1), since)  # nothing answered since (0, 1) failed
    judge(KeyError("x"), 1, None, policy, (TimeoutError,), clock.now, b, (2, 2), by_handler=True)
    assert not b.outage_suspected((0, 1), since)  # a handler's own error is an answer

    b, clock, _ = breaker(min_calls=2, cool_down=3.0)
    b.failed((0, 1))
    b.failed((1, 1))
    clock.now += 3
    assert b.allow((2, 1))  # (2, 1) probes
    judge(KeyError("x"), 1, None, policy, (TimeoutError,), clock.now, b, (2, 1))
    assert b.state == HALF_OPEN
    assert b.allow((2, 2))  # the probe was released: another message probes


class _Highest(random.Random):
    """Draws the top of each range: the backoff's cap."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_waits_for_the_schema_registry_back_off_exponentially_to_the_cap() -> None:
    """Each wait for an unreachable registry doubles the cap of the next, up to the
    policy's max_delay, with the policy's jitter; an ordinary failure starts it again.
    Before, a wait gave its attempt back and so kept the first retry's cap: every
    waiting partition asked the registry about nine times a second all outage long."""
    policy = sg.RetryPolicy(attempts=3, base_delay=0.2, max_delay=1.0, rng=_Highest())
    waiting: RetryState | None = None
    delays = []
    for _ in range(5):
        attempt = 1 if waiting is None else waiting.attempt + 1
        verdict = judge(sg.RegistryUnavailable("down"), attempt, waiting, policy, (), 100.0)
        assert isinstance(verdict, RetryState)
        delays.append(round(verdict.due - 100.0, 6))
        waiting = verdict
    assert delays == [0.2, 0.4, 0.8, 1.0, 1.0]
    assert waiting is not None
    assert waiting.attempt == 0  # still no attempt spent
    failed = judge(TimeoutError("slow"), 1, waiting, policy, (TimeoutError,), 100.0)
    assert isinstance(failed, RetryState)
    again = judge(sg.RegistryUnavailable("down"), 2, failed, policy, (), 100.0)
    assert isinstance(again, RetryState)
    assert round(again.due - 100.0, 6) == 0.2


def test_the_registry_wait_line_names_the_service_and_topic(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A process may run several services: the line of a message that waits for the
    schema registry says whose message it is (once per waiting message)."""
    caplog.set_level(logging.WARNING, logger="streamguard.runtime")
    names = {"service": "billing", "topic": "orders"}
    policy = sg.RetryPolicy()
    waiting = judge(sg.RegistryUnavailable("down"), 1, None, policy, (), 100.0, names=names)
    assert isinstance(waiting, RetryState)
    judge(sg.RegistryUnavailable("down"), 1, waiting, policy, (), 100.0, names=names)
    (line,) = [
        r
        for r in caplog.records
        if r.getMessage() == "schema registry unavailable; the message waits"
    ]
    assert (line.service, line.topic) == ("billing", "orders")  # type: ignore[attr-defined]

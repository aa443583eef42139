"""The test kit runs a service's real per-message logic in memory, without a broker."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import threading
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import streamguard as sg
from streamguard import headers as h
from streamguard.demo.contracts import OrderPlaced
from streamguard.testing import ServiceHarness, dead_letter_headers_of, message_context
from tests.runtime.conftest import order, order_v2

SECRET = "SECRET-4242"


class Billing(sg.ConsumerService):
    topic = "orders-kit"
    contract = OrderPlaced
    group_id = "billing-kit"
    retry = sg.RetryPolicy(attempts=4, base_delay=0.2, max_delay=1.0, max_budget_ms=60_000)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seen: list[str] = []
        self.failures_left: dict[str, int] = {}
        self.dead: list[tuple[int, str]] = []

    def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
        self.seen.append(f"{event}")  # formatting a contract works inside a handler
        customer = event.customer_id
        if customer.startswith("closed"):
            raise sg.PermanentError("customer account is closed")
        if customer.startswith("down"):
            raise TimeoutError("gateway timed out")
        left = self.failures_left.get(customer, 0)
        if left:
            self.failures_left[customer] = left - 1
            raise sg.TransientError("try again")

    def on_dead_letter(self, ctx: sg.MessageContext, failure: sg.Failure) -> None:
        self.dead.append((ctx.offset, failure.reason))


def test_a_valid_event_is_handled_once() -> None:
    """A valid event reaches the handler once and is handled."""
    with ServiceHarness(Billing) as kit:
        result = kit.send(order(1), key="customer-1")
    assert result.handled
    assert result.attempts == 1
    assert result.retry_delays == []
    assert isinstance(kit.service, Billing)
    assert len(kit.service.seen) == 1


def test_undecodable_bytes_are_dead_lettered_without_reaching_the_handler() -> None:
    """Bytes that are not JSON become a decode_error dead letter with full context."""
    with ServiceHarness(Billing) as kit:
        result = kit.send_raw(b"{not json", key="k", headers=[("trace", b"t1")])
    assert result.outcome == "dead_lettered"
    assert result.reason == "decode_error"
    assert result.attempts == 0
    headers = dead_letter_headers_of(result)
    assert headers[h.DLQ_ORIGINAL_TOPIC] == "orders-kit"
    assert headers[h.DLQ_EXPECTED_SUBJECT] == "orders.OrderPlaced"
    assert result.dead_letter_headers[0] == ("trace", b"t1")  # originals first, unchanged


def test_a_group_given_in_kafka_config_is_the_one_its_dead_letters_name() -> None:
    """The harness describes dead letters as the service would run: under the group
    ``kafka_config`` (or ``run -X group.id=``) puts it in, not the class's."""
    service = Billing(bootstrap_servers="unused:9092", kafka_config={"group.id": "billing-eu"})
    with ServiceHarness(service) as kit:
        result = kit.send_raw(b"{not json")
    assert dead_letter_headers_of(result)[h.DLQ_CONSUMER_GROUP] == "billing-eu"


def test_contract_violation_names_the_field_but_never_its_value() -> None:
    """A contract violation says which field broke, and no header carries the value."""
    bad = json.dumps({"order_id": SECRET, "customer_id": SECRET}).encode()
    with ServiceHarness(Billing) as kit:
        result = kit.send_raw(bad)
    assert result.reason == "contract_violation"
    errors = json.loads(result.header(h.DLQ_ERRORS) or "[]")
    assert {tuple(e["loc"]) for e in errors} >= {("order_id",)}
    assert all(SECRET.encode() not in (v or b"") for k, v in result.dead_letter_headers)


def test_transient_failures_are_retried_with_the_policys_delays_recorded() -> None:
    """Two transient failures, then success: three calls, two recorded backoff delays."""
    with ServiceHarness(Billing) as kit:
        assert isinstance(kit.service, Billing)
        kit.service.failures_left["flaky-1"] = 2
        result = kit.send(order(1, customer_id="flaky-1"))
    assert result.handled
    assert result.attempts == 3
    assert len(result.retry_delays) == 2
    assert 0 <= result.retry_delays[0] <= 0.2  # full jitter under the first cap
    assert 0 <= result.retry_delays[1] <= 0.4


def test_retries_are_bounded_by_attempts() -> None:
    """A dependency that stays down exhausts the attempts, then is dead-lettered."""
    with ServiceHarness(Billing) as kit:
        result = kit.send(order(1, customer_id="down-1"))
    assert result.reason == "retries_exhausted"
    assert result.attempts == 4
    assert len(result.retry_delays) == 3
    assert result.header(h.DLQ_ATTEMPTS) == "4"
    assert isinstance(result.error, sg.RetriesExhausted)


def test_the_time_budget_stops_retries_in_virtual_time() -> None:
    """With a budget shorter than the backoff, retries stop early; nothing is slept."""

    class Tight(Billing):
        retry = sg.RetryPolicy(attempts=50, base_delay=1.0, max_delay=1.0, max_budget_ms=2_500)

    with ServiceHarness(Tight) as kit:
        result = kit.send(order(1, customer_id="down-1"))
    assert result.reason == "retries_exhausted"
    assert sum(result.retry_delays) <= 2.5
    assert result.attempts < 50


def test_a_permanent_error_is_dead_lettered_at_once() -> None:
    """PermanentError is never retried."""
    with ServiceHarness(Billing) as kit:
        result = kit.send(order(1, customer_id="closed-1"))
    assert result.reason == "permanent_error"
    assert result.attempts == 1
    assert result.retry_delays == []
    assert result.header(h.DLQ_ERROR_MESSAGE) == "customer account is closed"


@pytest.mark.parametrize("attempts", [0, -1, 1.5])
def test_max_attempts_below_one_call_is_refused(attempts: Any) -> None:
    """Every record gets one handler call: max_attempts=0 was accepted and ignored."""
    with pytest.raises(sg.ConfigurationError, match="max_attempts"):
        ServiceHarness(Billing, max_attempts=attempts)


def test_max_attempts_reports_a_record_still_waiting() -> None:
    """max_attempts stops a retrying record and reports it as waiting."""
    with ServiceHarness(Billing, max_attempts=2) as kit:
        result = kit.send(order(1, customer_id="down-1"))
    assert result.outcome == "waiting"
    assert result.attempts == 2


def test_on_dead_letter_hears_each_dead_letter() -> None:
    """The on_dead_letter hook gets the context and the failure of each dead letter."""
    with ServiceHarness(Billing) as kit:
        kit.send(order(1))
        kit.send_raw(b"nope")
        kit.send(order(2, customer_id="closed-2"))
    assert isinstance(kit.service, Billing)
    assert kit.service.dead == [(1, "decode_error"), (2, "permanent_error")]


def test_on_start_and_on_stop_run_around_the_records() -> None:
    """The harness calls on_start before the first record and on_stop when it closes,
    as run() does: a handler that uses what on_start sets up (the SQLite ledger
    example's connections) was dead-lettered as an AttributeError on every record."""
    calls: list[str] = []

    class Ledger(Billing):
        def on_start(self) -> None:
            self.ready = True
            calls.append("start")

        def on_stop(self) -> None:
            calls.append("stop")

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            assert self.ready
            calls.append("handle")

    with ServiceHarness(Ledger) as kit:
        assert kit.send(order(1)).handled
    assert calls == ["start", "handle", "stop"]


def test_tombstones_are_dead_lettered_unless_handled() -> None:
    """A null value is a decode_error by default, and handled with handle_tombstone."""

    class Deletes(Billing):
        def handle_tombstone(self, ctx: sg.MessageContext) -> None:
            self.seen.append(f"delete {ctx.key!r}")

    with ServiceHarness(Billing) as kit:
        assert kit.send_raw(None, key="k").reason == "decode_error"
    with ServiceHarness(Deletes) as kit:
        assert kit.send_raw(None, key="k").handled


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_tombstone_handler_s_calls_are_its_attempts(kind: str) -> None:
    """``result.attempts`` counts handle_tombstone's calls as it counts handle's, and
    max_attempts stops a tombstone whose handler keeps failing (both saw 0 calls)."""

    class FailingDeletes(Billing):
        def handle_tombstone(self, ctx: sg.MessageContext) -> None:
            raise TimeoutError("the store did not answer")

    class AsyncFailingDeletes(Billing):
        async def handle_tombstone(self, ctx: sg.MessageContext) -> None:
            raise TimeoutError("the store did not answer")

    class NoDeletes(Billing):
        pass

    service = FailingDeletes if kind == "sync" else AsyncFailingDeletes
    with ServiceHarness(service) as kit:
        result = kit.send_raw(None, key="k")
    assert result.reason == "retries_exhausted"
    assert result.attempts == 4
    assert result.header("sg-dlq-attempts") == "4"
    with ServiceHarness(service, max_attempts=2) as kit:
        result = kit.send_raw(None, key="k")
    assert result.outcome == "waiting"
    assert result.attempts == 2
    with ServiceHarness(NoDeletes) as kit:  # no tombstone handler: never called
        assert kit.send_raw(None, key="k").attempts == 0


def test_drift_is_dead_lettered_under_the_dead_letter_policy() -> None:
    """A record stamped with another schema version is schema_drift under drift='dead_letter'."""

    class Strict(Billing):
        drift = "dead_letter"

    value = order(1).model_dump_json().encode()
    stamped = [(h.SUBJECT, b"orders.OrderPlaced"), (h.VERSION, b"7"), (h.FINGERPRINT, b"f")]
    with ServiceHarness(Strict) as kit:
        result = kit.send_raw(value, headers=stamped)
    assert result.reason == "schema_drift"


def test_async_handlers_run_in_the_harness() -> None:
    """An async def handler is awaited like in a running service."""

    class AsyncBilling(sg.ConsumerService):
        topic = "orders-kit"
        contract = OrderPlaced
        group_id = "billing-kit"

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            if event.customer_id == "closed":
                raise sg.PermanentError("closed")

    with ServiceHarness(AsyncBilling) as kit:
        assert kit.send(order(1)).handled
        assert kit.send(order(2, customer_id="closed")).reason == "permanent_error"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_handler_raising_no_outcome_raises_out_of_the_harness(kind: str) -> None:
    """A handler's ``KeyboardInterrupt`` (no ``Exception``: no outcome) comes out of
    ``send``, as it stops a running service, instead of a timeout."""

    class SyncStop(sg.ConsumerService):
        topic = "orders-kit"
        contract = OrderPlaced
        group_id = "billing-kit"

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            raise KeyboardInterrupt

    class AsyncStop(SyncStop):
        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:  # type: ignore[override]
            raise KeyboardInterrupt

    with (
        ServiceHarness(SyncStop if kind == "sync" else AsyncStop) as kit,
        pytest.raises(KeyboardInterrupt),
    ):
        kit.send(order(1))


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_metrics_go_to_the_registry_the_service_was_built_with(kind: str) -> None:
    """An instance built with ``registry=`` has its metrics there, as its ``run()`` would,
    unless the harness is given another: they went to a private registry of the
    harness's, and a test reading the service's own found no counts at all."""

    class AsyncBilling(sg.ConsumerService):
        topic = "orders-kit"
        contract = OrderPlaced
        group_id = "billing-kit"

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            pass

    registry = CollectorRegistry()
    service = (Billing if kind == "sync" else AsyncBilling)(
        bootstrap_servers="127.0.0.1:9", registry=registry
    )
    with ServiceHarness(service) as kit:
        kit.send(order(1))
        assert kit.registry is registry
    labels = {"runtime": "consumer", "topic": "orders-kit", "outcome": "handled"}
    assert registry.get_sample_value("streamguard_messages_total", labels) == 1


def test_metrics_are_counted() -> None:
    """The service's metrics count the outcomes the harness produced."""
    registry = CollectorRegistry()
    with ServiceHarness(Billing, registry=registry) as kit:
        kit.send(order(1))
        kit.send_raw(b"nope")
    labels = {"runtime": "consumer", "topic": "orders-kit"}
    assert registry.get_sample_value("streamguard_messages_total", {**labels, "outcome": "handled"})
    assert registry.get_sample_value(
        "streamguard_dead_letters_total", {**labels, "reason": "decode_error"}
    )


def test_message_context_for_direct_handler_calls() -> None:
    """message_context builds what a handler receives, from key, value and headers."""
    ctx = message_context(
        b"{}", key="k1", headers=[(h.VERSION, b"2")], offset=7, attempt=2, timestamp_ms=1234
    )
    assert (ctx.key, ctx.offset, ctx.attempt, ctx.timestamp_ms) == (b"k1", 7, 2, 1234)
    assert ctx.timestamp == 1234  # the same as timestamp_ms, under its shorter name
    assert ctx.writer_version == 2
    assert ctx.raw_value == b"{}"
    assert message_context(b"{}").timestamp is None  # a record without a timestamp


@pytest.mark.parametrize("name", ["name", "metrics", "registry", "health", "ready"])
def test_subclass_attributes_do_not_reach_the_runtime(name: str) -> None:
    """A subclass may set ordinary attributes the runtime once used; processing still works."""

    class Mine(Billing):
        def __init__(self, **kwargs: Any) -> None:
            setattr(self, name, object())
            super().__init__(**kwargs)
            setattr(self, name, object())

    with ServiceHarness(Mine) as kit:
        assert kit.send(order(1)).handled
        assert kit.send_raw(b"nope").reason == "decode_error"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_record_held_by_the_circuit_breaker_is_waiting_not_handled(kind: str) -> None:
    """When the dependency fails for every record, the second failing record opens the
    breaker and waits, as in a running service: the harness said ``handled`` (sync, after
    10,000 passes) or timed out after 30 s (async)."""
    registry = CollectorRegistry()

    class Down(sg.ConsumerService):
        topic = "orders-kit"
        contract = OrderPlaced
        group_id = "billing-kit"
        retry = sg.RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            raise TimeoutError("the dependency is down")

    class AsyncDown(Down):
        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:  # type: ignore[override]
            raise TimeoutError("the dependency is down")

    with ServiceHarness(Down if kind == "sync" else AsyncDown, registry=registry) as kit:
        first, second, third = (kit.send(order(i)) for i in range(3))
    assert (first.outcome, first.reason) == ("dead_lettered", "retries_exhausted")
    assert second.outcome == "waiting"
    assert third.outcome == "waiting"
    labels = {"runtime": "consumer", "topic": "orders-kit", "outcome": "handled"}
    assert not registry.get_sample_value("streamguard_messages_total", labels)


@pytest.mark.parametrize("ordering", ["partition", "key"])
def test_async_services_count_handled_records_at_once(ordering: str) -> None:
    """An event-loop service writes its counts on a timer; the harness writes them before
    it returns, so a test reads them right after ``send``, as it does for a sync one."""
    registry = CollectorRegistry()

    class AsyncBilling(sg.ConsumerService):
        topic = "orders-kit"
        contract = OrderPlaced
        group_id = "billing-kit"

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            pass

    AsyncBilling.ordering = ordering  # type: ignore[assignment]
    with ServiceHarness(AsyncBilling, registry=registry) as kit:
        for i in range(3):
            assert kit.send(order(i), key=f"k{i}").handled
        labels = {"runtime": "consumer", "topic": "orders-kit", "outcome": "handled"}
        assert registry.get_sample_value("streamguard_messages_total", labels) == 3


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_retried_record_counts_its_drift_once(kind: str) -> None:
    """A record without ``sg-*`` headers that is retried twice counts one drift, not one
    per attempt (sync counted 3, async 2: a retry restarted the batch at the record)."""
    registry = CollectorRegistry()
    calls = [0]

    class Flaky(sg.ConsumerService):
        topic = "orders-kit"
        contract = OrderPlaced
        group_id = "billing-kit"
        retry = sg.RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            calls[0] += 1
            if ctx.attempt < 3:
                raise TimeoutError("flaky")

    class AsyncFlaky(Flaky):
        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:  # type: ignore[override]
            Flaky.handle(self, event, ctx)

    with ServiceHarness(Flaky if kind == "sync" else AsyncFlaky, registry=registry) as kit:
        assert kit.send_raw(order(1).model_dump_json().encode()).handled
    labels = {"runtime": "consumer", "subject": "orders.OrderPlaced", "kind": "no_schema_headers"}
    drift = registry.get_sample_value("streamguard_schema_drift_total", labels)
    assert (calls[0], drift) == (3, 1.0)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_the_harness_probes_after_the_cool_down_and_recovers(kind: str) -> None:
    """With the breaker open, the next record waits out the cool-down (virtual time) and
    probes, as in a service: once the dependency answers, records are handled again
    (they stayed ``waiting`` for good)."""
    down = [True]

    class Db(sg.ConsumerService):
        topic = "orders-kit"
        contract = OrderPlaced
        group_id = "billing-kit"
        retry = sg.RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02)
        breaker = sg.CircuitBreaker(min_calls=2, cool_down=1.0)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            if down[0]:
                raise TimeoutError("the database is down")

    class AsyncDb(Db):
        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:  # type: ignore[override]
            Db.handle(self, event, ctx)

    with ServiceHarness(Db if kind == "sync" else AsyncDb) as kit:
        outcomes = [kit.send(order(i)).outcome for i in range(3)]
        assert outcomes[1:] == ["waiting", "waiting"]
        down[0] = False
        assert [kit.send(order(i)).outcome for i in range(3, 5)] == ["handled", "handled"]
        assert kit.pipeline.breaker.closed


class Invoice(sg.Contract):
    """What a handler derives from an order and sends on with a ``GuardedProducer``."""

    __subject__ = "tests.kit.Invoice"
    __version__ = 1
    order_id: str
    total: int


@pytest.mark.parametrize("kind", ["sync", "async", "key"])
@pytest.mark.parametrize("first_failure", [1, 2])
def test_a_contract_violation_raised_by_the_handler_is_its_own_error(
    kind: str, first_failure: int
) -> None:
    """A handler whose own ``GuardedProducer.send`` refuses an invalid derived event
    raises ``ContractViolation``: a permanent error of the handler, with the attempts it
    made. The record itself was valid: it was dead-lettered as ``contract_violation``
    under its own contract's subject, with ``attempts`` 1 after three calls."""
    calls = [0]

    class Invoicing(sg.ConsumerService):
        topic = "orders-kit"
        contract = OrderPlaced
        group_id = "billing-kit"
        retry = sg.RetryPolicy(attempts=5, base_delay=0.01, max_delay=0.02)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            calls[0] += 1
            if ctx.attempt < first_failure:
                raise TimeoutError("the invoice service is busy")
            producer = sg.GuardedProducer("127.0.0.1:9", kafka_config={"log_level": 0})
            # Refused before anything is sent: the derived event breaks its contract.
            producer.send("invoices", {"order_id": "o-1", "total": "n/a"}, contract=Invoice)

    class AsyncInvoicing(Invoicing):
        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:  # type: ignore[override]
            Invoicing.handle(self, event, ctx)

    service = Invoicing if kind == "sync" else AsyncInvoicing
    if kind == "key":
        service.ordering = "key"  # type: ignore[assignment]
    with ServiceHarness(service) as kit:
        result = kit.send(order(1), key="customer-1")
    headers = dead_letter_headers_of(result)
    assert (result.reason, result.attempts, calls[0]) == (
        "permanent_error",
        first_failure,
        first_failure,
    )
    assert headers["sg-dlq-attempts"] == str(first_failure)
    assert headers["sg-dlq-error-class"] == "streamguard.errors.ContractViolation"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_decode_error_raised_by_the_tombstone_handler_is_its_own_error(kind: str) -> None:
    """A tombstone handler's own ``DecodeError`` is a permanent error, not a
    ``decode_error`` of the record; a service without one still dead-letters a
    tombstone as ``decode_error``."""

    class Deleting(sg.ConsumerService):
        topic = "orders-kit"
        contract = OrderPlaced
        group_id = "billing-kit"

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            pass

        def handle_tombstone(self, ctx: sg.MessageContext) -> None:
            raise sg.DecodeError("the archived copy is corrupt")

    class AsyncDeleting(Deleting):
        async def handle_tombstone(self, ctx: sg.MessageContext) -> None:  # type: ignore[override]
            raise sg.DecodeError("the archived copy is corrupt")

    with ServiceHarness(Deleting if kind == "sync" else AsyncDeleting) as kit:
        assert kit.send_raw(None, key="k1").reason == "permanent_error"
    with ServiceHarness(Billing) as kit:
        assert kit.send_raw(None, key="k1").reason == "decode_error"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_probe_dead_lettered_for_drift_lets_the_next_record_probe(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``drift = "dead_letter"``, a half-open breaker's probe that is dead-lettered
    for drift never called the dependency: the next record probes at once and closes
    the breaker. The probe was never given back, so the next record waited out another
    cool-down (``waiting`` here, or no outcome at all on the event loop)."""
    monkeypatch.setattr("streamguard.testing._LOOP_TIMEOUT", 5.0)
    down = [True]

    class Db(sg.ConsumerService):
        topic = "orders-kit"
        contract = OrderPlaced
        group_id = "billing-kit"
        drift = "dead_letter"
        retry = sg.RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02)
        breaker = sg.CircuitBreaker(min_calls=2, cool_down=1.0)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            if down[0]:
                raise TimeoutError("the database is down")

    class AsyncDb(Db):
        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:  # type: ignore[override]
            Db.handle(self, event, ctx)

    with ServiceHarness(Db if kind == "sync" else AsyncDb) as kit:
        assert [kit.send(order(i)).outcome for i in range(3)][1:] == ["waiting", "waiting"]
        down[0] = False
        breaker = kit.pipeline.breaker
        kit._clock.now = breaker.half_open_at()  # the cool-down is over
        unstamped = kit.send_raw(order(3).model_dump_json().encode())  # no sg-* headers
        assert (unstamped.reason, breaker.state_name) == ("schema_drift", "half_open")
        assert kit.send(order(4)).handled
        assert breaker.closed


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_record_that_recovered_makes_no_later_failure_an_outage(kind: str) -> None:
    """A record that failed once and was then handled is not failing any more: a later
    record failing on its own is dead-lettered after its attempts, and the records
    behind it flow. It was held as if the dependency were down, the breaker opened,
    and since only that record probed, it never closed: the partition stalled for good."""

    class Orders(sg.ConsumerService):
        topic = "orders-kit"
        contract = OrderPlaced
        group_id = "billing-kit"
        retry = sg.RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            if event.customer_id == "flaky" and ctx.attempt == 1:
                raise TimeoutError("a blip")
            if event.customer_id == "bad":
                raise TimeoutError("fails for this record only")

    class AsyncOrders(Orders):
        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:  # type: ignore[override]
            Orders.handle(self, event, ctx)

    with ServiceHarness(Orders if kind == "sync" else AsyncOrders) as kit:
        assert kit.send(order(1, customer_id="flaky")).attempts == 2
        kit._clock.now += 0.5  # the next record comes a moment later
        bad = kit.send(order(2, customer_id="bad"))
        assert (bad.outcome, bad.reason, bad.attempts) == ("dead_lettered", "retries_exhausted", 3)
        assert kit.send(order(3)).handled
        assert kit.pipeline.breaker.closed


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_record_failing_alone_after_one_handled_is_dead_lettered(kind: str) -> None:
    """A record that fails on its own after another was handled is dead-lettered, even
    if one failed before that (no virtual time passing between the three). A success
    was timed by the real seconds since its call ended, on the virtual clock: the
    handled record looked older than the first failure, so the third record looked
    as if it failed during an outage and was held (``waiting``), the breaker open."""

    class Orders(sg.ConsumerService):
        topic = "orders-kit"
        contract = OrderPlaced
        group_id = "billing-kit"
        retry = sg.RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            if event.customer_id.startswith("bad"):
                raise TimeoutError("fails for this record only")

    class AsyncOrders(Orders):
        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:  # type: ignore[override]
            Orders.handle(self, event, ctx)

    with ServiceHarness(Orders if kind == "sync" else AsyncOrders) as kit:
        assert kit.send(order(1, customer_id="bad-1")).reason == "retries_exhausted"
        assert kit.send(order(2)).handled
        bad = kit.send(order(3, customer_id="bad-2"))
        assert (bad.outcome, bad.reason, bad.attempts) == ("dead_lettered", "retries_exhausted", 3)
        assert kit.pipeline.breaker.closed


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("cool_down", [0.3, 1.0])
def test_a_cool_down_of_any_length_lets_the_harness_probe(kind: str, cool_down: float) -> None:
    """The harness moves its clock to the end of the cool-down, and the breaker then lets
    a record probe, whatever the cool-down's length. With one that is no sum of powers of
    two (0.3 s), the clock ended a rounding error short of it: sync records stayed
    ``waiting`` for good, async ones raised ``TimeoutError`` after 30 s."""
    calls = [0]

    class Db(sg.ConsumerService):
        topic = "orders-kit"
        contract = OrderPlaced
        group_id = "billing-kit"
        retry = sg.RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02)
        breaker = sg.CircuitBreaker(min_calls=4, cool_down=cool_down)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            calls[0] += 1
            if calls[0] <= 5:
                raise TimeoutError("the database is down for five calls")

    class AsyncDb(Db):
        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:  # type: ignore[override]
            Db.handle(self, event, ctx)

    with ServiceHarness(Db if kind == "sync" else AsyncDb) as kit:
        first, second = kit.send(order(1)), kit.send(order(2))
        assert (first.reason, first.attempts) == ("retries_exhausted", 3)
        assert (second.outcome, second.attempts) == ("waiting", 2)  # opened, probed, failed
        assert [kit.send(order(i)).outcome for i in range(3, 5)] == ["handled", "handled"]
        assert kit.pipeline.breaker.closed


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_records_carry_a_timestamp_as_consumed_ones_do(kind: str) -> None:
    """Every record a consumer reads from Kafka has a timestamp, and so does every record
    the harness sends, unless the test gives its own: a handler reading
    ``ctx.timestamp_ms`` failed with a ``TypeError`` (``permanent_error``) in the
    harness only, and dead letters said ``sg-dlq-original-timestamp: -1``."""
    seen: list[int | None] = []

    class Aging(sg.ConsumerService):
        topic = "orders-kit"
        contract = OrderPlaced
        group_id = "billing-kit"

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            seen.append(ctx.timestamp_ms)
            assert ctx.timestamp_ms is not None
            if time.time() * 1000 - ctx.timestamp_ms > 86_400_000:
                raise sg.PermanentError("older than a day")

    class AsyncAging(Aging):
        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:  # type: ignore[override]
            Aging.handle(self, event, ctx)

    before = int(time.time() * 1000)
    with ServiceHarness(Aging if kind == "sync" else AsyncAging) as kit:
        assert kit.send(order(1)).handled
        old = kit.send(order(2), timestamp_ms=1_000)
        assert (old.reason, old.header(h.DLQ_ORIGINAL_TIMESTAMP)) == ("permanent_error", "1000")
        poison = kit.send_raw(b"{", key="k1")
    stamped = poison.header(h.DLQ_ORIGINAL_TIMESTAMP)
    assert stamped is not None
    assert before <= int(stamped) <= time.time() * 1000
    assert seen[0] is not None
    assert before <= seen[0]


@pytest.mark.parametrize("event_loop", ["auto", "asyncio"])
def test_a_closed_harness_leaves_no_event_loop_open(event_loop: str) -> None:
    """Closing a harness of an async service closes its event loop. uvloop's (the
    default where installed) was only stopped: never collected, each harness kept five
    descriptors for the life of the test process."""
    import asyncio
    import gc
    import os

    class Enrich(sg.ConsumerService):
        topic = "orders"
        contract = OrderPlaced
        group_id = "enrich"
        options = sg.ServiceOptions(event_loop=event_loop)  # type: ignore[arg-type]

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

    def open_loops() -> int:
        gc.collect()
        return sum(
            1
            for o in gc.get_objects()
            if isinstance(o, asyncio.AbstractEventLoop) and not o.is_closed()
        )

    loops_before = open_loops()
    descriptors: list[int] = []
    for i in range(3):
        with ServiceHarness(Enrich) as harness:
            assert harness.send(order(i)).handled
        del harness
        assert open_loops() == loops_before
        descriptors.append(len(os.listdir("/proc/self/fd")))
    assert descriptors[2] <= descriptors[0], descriptors


def test_send_stamps_the_event_s_own_contract_as_a_producer_does() -> None:
    """``send`` of another version's event stamps that version, as ``GuardedProducer``
    does: the drift a running service would see is seen (it was stamped with the
    service's version, and a newer producer looked like no drift at all)."""

    class Strict(Billing):
        drift = "dead_letter"

    newer = order_v2(1)
    registry = CollectorRegistry()
    with ServiceHarness(Billing, registry=registry) as kit:
        assert kit.send(newer).handled
    drift = {"runtime": "consumer", "subject": "orders.OrderPlaced", "kind": "newer_version"}
    assert registry.get_sample_value("streamguard_schema_drift_total", drift) == 1
    with ServiceHarness(Strict) as kit:
        result = kit.send(newer)
    assert result.reason == "schema_drift"
    assert result.dead_letter_headers[1] == (h.VERSION, b"2")


@pytest.mark.parametrize(
    "headers",
    [{"trace": "t1", "tenant": b"eu"}, [("trace", "t1"), ("tenant", b"eu")]],
    ids=["mapping", "text-values"],
)
def test_send_takes_the_headers_a_guarded_producer_takes(headers: Any) -> None:
    """``send`` takes ``headers`` as ``GuardedProducer.send`` does, a mapping or pairs
    with text values (sent as UTF-8); both crashed the kit's lane with a ValueError."""
    with ServiceHarness(Billing) as kit:
        result = kit.send(order(1, customer_id="closed-1"), headers=headers)
    assert result.reason == "permanent_error"
    assert result.dead_letter_headers[5:7] == [("trace", b"t1"), ("tenant", b"eu")]


def test_send_refuses_the_headers_a_guarded_producer_refuses() -> None:
    """``send`` refuses an ``sg-*`` header as ``GuardedProducer.send`` does (it would
    override the stamps); ``send_raw`` still feeds the service such a record."""
    with ServiceHarness(Billing) as kit:
        with pytest.raises(sg.ConfigurationError, match="header 'sg-subject'"):
            kit.send(order(1), headers=[("sg-subject", b"spoof")])
        stamped = kit.send(order(1, customer_id="closed-1"))
    assert stamped.reason == "permanent_error"  # the kit's lane still serves


def _traced(fn: Any) -> Any:
    """A decorator whose plain ``def`` wrapper returns what it wraps returns."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize("ordering", ["partition", "key"])
def test_a_decorated_async_handler_is_awaited(ordering: str) -> None:
    """An ``async def`` handler under a ``functools.wraps`` decorator is awaited, as an
    undecorated one is: run as a sync handler, its coroutine was never awaited, and the
    record counted as handled though the handler never ran."""

    class Traced(sg.ConsumerService):
        topic = "orders-kit"
        contract = OrderPlaced
        group_id = "billing-kit"

        @_traced
        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            raise sg.PermanentError("the handler ran")

    Traced.ordering = ordering  # type: ignore[assignment]
    with ServiceHarness(Traced) as kit:
        result = kit.send(order(1))
    assert result.reason == "permanent_error"
    assert result.attempts == 1


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_an_on_stop_error_does_not_hide_the_error_that_ended_the_block(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A block that fails (a handler's KeyboardInterrupt, a failed assertion) raises its
    own error, with on_stop's logged, as run() does: the test used to see on_stop's."""

    class Leaky(Billing):
        def on_stop(self) -> None:
            raise RuntimeError("pool already closed")

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            raise KeyboardInterrupt

    class AsyncLeaky(Leaky):
        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:  # type: ignore[override]
            raise KeyboardInterrupt

    service = Leaky if kind == "sync" else AsyncLeaky
    with pytest.raises(KeyboardInterrupt), ServiceHarness(service) as kit:
        kit.send(order(1))
    (logged,) = [r for r in caplog.records if r.getMessage().startswith("on_stop failed")]
    assert (logged.service, logged.topic) == (service.__name__, "orders-kit")  # type: ignore[attr-defined]
    assert "pool already closed" not in caplog.text
    with pytest.raises(RuntimeError, match="pool already closed"), ServiceHarness(service):
        pass  # a clean block still raises on_stop's error, as a clean stop does


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_closed_harness_refuses_records(kind: str) -> None:
    """After on_stop no handler runs, as in a service: a sync handler used to run
    anyway (on what on_stop released), an async one failed on a closed event loop."""

    class Async(Billing):
        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:  # type: ignore[override]
            self.seen.append("handled")

    with ServiceHarness(Billing if kind == "sync" else Async) as kit:
        assert kit.send(order(1)).handled
    with pytest.raises(RuntimeError, match=r"ServiceHarness of .* is closed"):
        kit.send(order(2))
    with pytest.raises(RuntimeError, match=r"ServiceHarness of .* is closed"):
        kit.send_raw(b"{")
    assert len(kit.service.seen) == 1


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_record_waiting_for_the_schema_registry_is_left_waiting(kind: str) -> None:
    """A handler whose own guarded producer finds the registry down holds its record
    without spending attempts, as a service does: the kit reports it waiting (an async
    service's record used to spin for 30 s, then raise TimeoutError), and handles a
    record once the registry answers again."""

    class Publishing(Billing):
        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            left = self.failures_left.get(event.customer_id, 10**9)
            if left:
                self.failures_left[event.customer_id] = left - 1
                raise sg.RegistryUnavailable("registry down")

    class AsyncPublishing(Publishing):
        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:  # type: ignore[override]
            Publishing.handle(self, event, ctx)

    started = time.monotonic()
    with ServiceHarness(Publishing if kind == "sync" else AsyncPublishing) as kit:
        held = kit.send(order(1, customer_id="down-for-good"))
        kit.service.failures_left["back-soon"] = 2
        back = kit.send(order(2, customer_id="back-soon"))
    assert held.outcome == "waiting"
    assert held.reason is None
    assert time.monotonic() - started < 15
    assert back.handled
    assert back.attempts == 3


@pytest.mark.parametrize("ordering", ["partition", "key", "sync-key"])
def test_on_dead_letter_never_runs_on_the_event_loop(ordering: str) -> None:
    """As in a service, on_dead_letter of a service on the event loop runs on the
    thread that polls (the test's, in the kit), never on the loop: it ran on the
    kit's loop, so a hook waiting on a coroutine it sends to the loop deadlocked."""

    class Hooked(Billing):
        loop: asyncio.AbstractEventLoop | None = None

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:  # type: ignore[override]
            self.loop = asyncio.get_running_loop()
            raise sg.PermanentError("no")

        async def note(self, offset: int) -> None:
            self.dead.append((offset, "noted on the loop"))

        def on_dead_letter(self, ctx: sg.MessageContext, failure: sg.Failure) -> None:
            assert self.loop is not None
            self.seen.append(f"{threading.get_ident()}")
            asyncio.run_coroutine_threadsafe(self.note(ctx.offset), self.loop).result(5)

    class SyncHooked(Billing):
        ordering = "key"

        def on_dead_letter(self, ctx: sg.MessageContext, failure: sg.Failure) -> None:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop()
                self.dead.append((ctx.offset, "on a running loop"))
            self.seen.append(f"{threading.get_ident()}")

    if ordering == "sync-key":
        service: type[Billing] = SyncHooked
    else:
        service = type("Ordered", (Hooked,), {"ordering": ordering})
    with ServiceHarness(service) as kit:
        result = kit.send(order(1, customer_id="closed-1"))
    assert result.reason == "permanent_error"
    assert kit.service.seen[-1] == f"{threading.get_ident()}"
    if ordering == "sync-key":
        assert kit.service.dead == []
    else:
        assert kit.service.dead == [(0, "noted on the loop")]


@pytest.mark.parametrize(
    "headers",
    [{"trace": b"t1", "n": None}, {"trace": "t1", "n": None}, [("trace", "t1"), ("n", None)]],
)
def test_raw_records_and_contexts_take_headers_as_send_does(headers: Any) -> None:
    """send_raw and message_context take a mapping or pairs with text or bytes values, as
    send does, and hand the handler bytes, as Kafka does: a dict crashed the lane (its
    keys iterated as pairs) and a text value reached ctx.headers as text."""
    with ServiceHarness(Billing) as kit:
        assert kit.send_raw(order(1).model_dump_json().encode(), headers=headers).handled
    ctx = message_context(b"{}", headers=headers)
    assert ctx.headers == [("trace", b"t1"), ("n", None)]
    assert ctx.header("trace") == "t1"


def test_a_key_or_value_kafka_cannot_carry_is_refused() -> None:
    """Kafka carries bytes: an int key reached the handler as ``ctx.key == 5`` and a text
    value was decoded as if it were bytes, records no running service ever gets (a
    ``GuardedProducer`` refuses such a key with ``TypeError`` too)."""
    with ServiceHarness(Billing) as kit:
        with pytest.raises(TypeError, match="key is bytes, str or None, not int"):
            kit.send(order(1), key=5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="value is bytes or None"):
            kit.send_raw(order(1).model_dump_json())  # type: ignore[arg-type]
        assert kit.service.seen == []
    with pytest.raises(TypeError, match="key is bytes"):
        message_context(b"{}", key=7)  # type: ignore[arg-type]


def test_sending_a_mapping_says_what_send_takes() -> None:
    """A dict given to ``send`` failed deep in the codec with ``AttributeError: 'dict'
    object has no attribute 'model_dump_json'``, naming neither the call nor the fix."""
    with (
        ServiceHarness(Billing) as kit,
        pytest.raises(TypeError, match=r"send\(\) takes an event .*OrderPlaced.* not dict"),
    ):
        kit.send(order(1).model_dump(mode="json"))  # type: ignore[arg-type]


def test_a_class_the_harness_cannot_build_says_how_to_pass_one() -> None:
    """A service whose constructor takes its own arguments failed with "got an unexpected
    keyword argument 'bootstrap_servers'", an argument the test never passed."""

    class Ledgered(Billing):
        def __init__(self, ledger: list[str]) -> None:
            super().__init__(bootstrap_servers="127.0.0.1:9")
            self.ledger = ledger

    with pytest.raises(TypeError, match=r"ServiceHarness\(Ledgered\) builds Ledgered\(") as e:
        ServiceHarness(Ledgered)
    assert "pass the instance: ServiceHarness(Ledgered(...))" in str(e.value)
    assert isinstance(e.value.__cause__, TypeError)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_slow_handler_uses_up_the_retry_budget_as_in_a_service(kind: str) -> None:
    """A handler's own time counts against ``max_budget_ms``, as in a running service
    (which gave up after 4 attempts of 0.2 s against a 0.5 s budget): the harness's
    clock moved only by skipped waits, and gave the record all 10 attempts."""

    class Slow(Billing):
        retry = sg.RetryPolicy(attempts=10, base_delay=0.001, max_delay=0.001, max_budget_ms=500)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            time.sleep(0.2)
            raise TimeoutError("bank API timed out")

    class AsyncSlow(Billing):
        retry = Slow.retry

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:  # type: ignore[override]
            await asyncio.sleep(0.2)
            raise TimeoutError("bank API timed out")

    with ServiceHarness(Slow if kind == "sync" else AsyncSlow) as kit:
        result = kit.send(order(1))
    assert result.reason == "retries_exhausted"
    # Retries start at 0.2, 0.4 and 0.6 s, and 0.8 is past the budget; fewer on a loaded
    # machine, whose sleeps overshoot. Never the 10 a clock of skipped waits alone gave.
    assert 2 <= result.attempts <= 4


@pytest.mark.parametrize("where", ["key", "header"])
def test_text_utf8_cannot_encode_is_refused_as_the_producer_refuses_it(where: str) -> None:
    """A str key or header value holding a lone surrogate is refused with the
    ConfigurationError GuardedProducer.send raises, naming no character of it (Python's
    own UnicodeEncodeError quotes it and holds the whole text)."""
    secret = "acct-\udc80-4711"
    key, headers = (secret, None) if where == "key" else (None, {"trace": secret})
    with ServiceHarness(Billing) as kit, pytest.raises(sg.ConfigurationError) as e:
        kit.send(order(1), key=key, headers=headers)
    assert "4711" not in str(e.value)
    assert "lone surrogate" in str(e.value)


class _Longest(random.Random):
    """Every backoff is its cap, so the delays the policy chose are known."""

    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_retry_delays_are_the_delays_the_policy_chose(kind: str) -> None:
    """``retry_delays`` are the policy's backoffs, not shortened by the harness's own
    time between a verdict and its reading (a clock running in real time gave
    0.1998 for a 0.2 s backoff)."""

    class Down(Billing):
        retry = sg.RetryPolicy(attempts=3, base_delay=0.2, max_delay=1.0, rng=_Longest())

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            raise TimeoutError("bank API timed out")

    class AsyncDown(Down):
        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:  # type: ignore[override]
            raise TimeoutError("bank API timed out")

    with ServiceHarness(Down if kind == "sync" else AsyncDown) as kit:
        result = kit.send(order(1))
    assert result.reason == "retries_exhausted"
    assert result.retry_delays == pytest.approx([0.2, 0.4], rel=1e-9)

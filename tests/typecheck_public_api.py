"""Typed use of the public API, checked by mypy --strict (see [tool.mypy] files).

Not a pytest module: it is here so that a change to a public signature that would break
users' type-checked code breaks the build.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal
from uuid import UUID

import faust
from prometheus_client import CollectorRegistry

import streamguard as sg
from streamguard.faust import GuardedAgent, guarded_agent
from streamguard.testing import Outcome, ServiceHarness, dead_letter_headers_of, message_context


class Payment(sg.Contract):
    __subject__ = "typing.Payment"
    __version__ = 1
    payment_id: UUID
    amount: Decimal
    currency: Literal["EUR", "USD"]


class Payments(sg.ConsumerService):
    topic = "payments"
    contract = Payment
    group_id = "ledger"
    retry = sg.RetryPolicy(attempts=5, base_delay=0.1, max_delay=2.0, max_budget_ms=10_000)
    transient = (sg.TransientError, TimeoutError)
    options = sg.ServiceOptions(max_buffered=500, workers=4)
    drift = "dead_letter"

    def handle(self, event: Payment, ctx: sg.MessageContext) -> None:
        attempt: int = ctx.attempt
        key: bytes | None = ctx.key
        version: int | None = ctx.writer_version
        if attempt > 1 and key is None and version is None:
            raise sg.PermanentError("no key")


class AsyncPayments(sg.ConsumerService):
    topic = "payments"
    contract = Payment
    group_id = "ledger-async"

    async def handle(self, event: Payment, ctx: sg.MessageContext) -> None:
        return None

    async def handle_tombstone(self, ctx: sg.MessageContext) -> None:
        return None


class CountingPayments(Payments):
    def __init__(self, bootstrap_servers: str | None = None) -> None:
        super().__init__(bootstrap_servers)
        self.handled: list[UUID] = []

    def handle(self, event: Payment, ctx: sg.MessageContext) -> None:
        self.handled.append(event.payment_id)


def unit_test(registry: CollectorRegistry) -> None:
    payment = Payment(payment_id=UUID(int=1), amount=Decimal(1), currency="EUR")
    with ServiceHarness(CountingPayments, registry=registry, max_attempts=2) as kit:
        result: Outcome = kit.send(payment, key="k", headers=[("trace", b"t1")])
        poison = kit.send_raw(b"{", key=b"k", timestamp_ms=1)
        handled: list[UUID] = kit.service.handled  # the harness keeps the class's type
    reason: str | None = poison.reason
    text: str | None = result.header("sg-dlq-error-message")
    delays: list[float] = result.retry_delays
    print(handled, reason, text, delays, dead_letter_headers_of(poison)["sg-dlq-reason"])
    with ServiceHarness(AsyncPayments(bootstrap_servers="127.0.0.1:9")) as async_kit:
        print(async_kit.send_raw(None).attempts)
    kit.service.handle(payment, message_context(b"{}", key="k", attempt=2))

    class OneTry(Payments):  # a variant defined in the test, as tests do
        retry = sg.RetryPolicy(attempts=1)

    with ServiceHarness(Payments) as each:
        print(each.send(payment).handled)
    with ServiceHarness(OneTry) as each:  # the name reused for a subclass's harness
        print(each.send(payment).handled)


def produce(producer: sg.GuardedProducer) -> None:
    producer.send("payments", Payment(payment_id=UUID(int=1), amount=Decimal(1), currency="EUR"))
    producer.send("payments", {"payment_id": str(UUID(int=2))}, contract=Payment, key=b"k")
    try:
        producer.flush(timeout=5.0)
    except sg.DeliveryFailed as exc:
        failures: list[tuple[str, str]] = exc.failures
        print(failures)


def run(service: Payments) -> None:
    service.run()
    service.stop()
    ready: bool = service.health()["ready"]
    print(ready, service.health()["checks"])


def decode(data: bytes) -> Payment:
    try:
        return sg.JsonCodec(max_bytes=1024).decode(data, Payment)
    except sg.ContractViolation as exc:
        print([e["loc"] for e in exc.errors])
        raise


def with_registry(url: str) -> sg.GuardedProducer:
    codec = sg.RegistryCodec({"url": url}, wire_format="json")
    try:
        print(codec.decode(b"\x00\x00\x00\x00\x01{}", Payment))
    except sg.RegistryUnavailable as exc:
        retry_later: sg.TransientError = exc
        print(retry_later)
    server = sg.RegistryServer(port=0)
    print(server.start())
    server.stop()
    with sg.DevBroker() as broker:  # lazy at run time, like RegistryServer
        print(broker.bootstrap_servers)
    return sg.GuardedProducer(
        schema_registry={"url": url},
        subject_name_strategy="RecordNameStrategy",
        auto_register=False,
    )


def guarded(app: faust.App) -> GuardedAgent:
    @guarded_agent(
        app,
        "payments",
        contract=Payment,
        retry=sg.RetryPolicy(attempts=3, base_delay=0.2, max_budget_ms=5_000),
        transient=(sg.TransientError, TimeoutError),
        drift="dead_letter",
        sink=[app.topic("ledger")],
    )
    async def ledger(event: Payment, ctx: sg.MessageContext) -> dict[str, str] | None:
        return {"payment_id": str(event.payment_id)} if ctx.attempt == 1 else None

    registry: CollectorRegistry = ledger.registry
    print(registry, ledger.dead_letter_topic, ledger.agent)
    return ledger


def unknown_names_stay_errors() -> None:
    # The package resolves DevBroker and RegistryServer lazily, at run time only: a
    # misspelt name must still fail type checking (strict mypy reports this ignore as
    # unused otherwise).
    print(sg.JsonCodek)  # type: ignore[attr-defined]

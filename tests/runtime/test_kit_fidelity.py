"""The test kit tells the truth: a record fed to ``ServiceHarness`` and the same record
consumed by the same service running on the broker end alike: the same outcome, the same
handler calls, the same dead-letter record (key, value, headers but the times) and the
same counts in the metrics."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import Consumer, Message, TopicPartition
from prometheus_client import CollectorRegistry

import streamguard as sg
from streamguard import headers as h
from streamguard.demo.contracts import OrderPlaced, PaymentCaptured
from streamguard.testing import Outcome, ServiceHarness
from tests.runtime.conftest import Running, committed, order, order_v2, wait_for

SECRET = "SECRET-7731"
PRODUCER = "fidelity-producer"
# Header values of a dead letter that differ between any two runs: when it happened.
RUN_SPECIFIC = {h.DLQ_FIRST_FAILURE_MS, h.DLQ_DEAD_LETTERED_MS}
# Counters compared between the two registries (gauges describe a run, not a record),
# and the number of handler times.
COUNTERS = {
    "streamguard_messages",
    "streamguard_dead_letters",
    "streamguard_retries",
    "streamguard_schema_drift",
    "streamguard_handler_seconds",
}


class _Longest(random.Random):
    """Every backoff is its cap: retries wait a known time, so a time budget ends the
    same attempt in real time as in the kit's virtual time."""

    def uniform(self, a: float, b: float) -> float:
        return b


class Both(sg.PermanentError, TimeoutError):
    """Permanent and transient at once: the permanent marker wins (docs/consumer.md)."""


class Fidelity(sg.ConsumerService):
    """A service whose handler does what the case says, counting its calls."""

    __abstract__ = True
    contract = OrderPlaced
    retry = sg.RetryPolicy(attempts=3, base_delay=0.05, max_delay=0.05, rng=_Longest())
    options = sg.ServiceOptions(commit_interval=0.1)
    ordering = "partition"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls = 0
        self.seen: list[tuple[object, ...]] = []

    def body(self, event: OrderPlaced, ctx: sg.MessageContext) -> object:
        return None

    def called(self, ctx: sg.MessageContext) -> None:
        """Count a call, and keep what its context said."""
        self.calls += 1
        self.seen.append(_context(ctx))

    def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> object:
        self.called(ctx)
        return self.body(event, ctx)

    def on_dead_letter(self, ctx: sg.MessageContext, failure: sg.Failure) -> None:
        self.seen.append((failure.reason, failure.attempts, failure.error_class, *_context(ctx)))


def _context(ctx: sg.MessageContext) -> tuple[object, ...]:
    return (
        ctx.topic,
        ctx.partition,
        ctx.offset,
        ctx.key,
        ctx.headers,
        ctx.timestamp_ms,
        ctx.attempt,
        ctx.writer_subject,
        ctx.writer_version,
        ctx.raw_value,
    )


class AsyncFidelity(Fidelity):
    __abstract__ = True

    async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> object:  # type: ignore[override]
        self.called(ctx)
        return self.body(event, ctx)


class KeyFidelity(AsyncFidelity):
    __abstract__ = True
    ordering = "key"


class SyncKeyFidelity(Fidelity):
    __abstract__ = True
    ordering = "key"


KINDS: dict[str, type[Fidelity]] = {
    "sync": Fidelity,
    "async": AsyncFidelity,
    "key": KeyFidelity,
    "sync-key": SyncKeyFidelity,
}


def _fail_twice(service: Fidelity, event: OrderPlaced, ctx: sg.MessageContext) -> object:
    if service.calls <= 2:
        raise sg.TransientError("try again")
    return None


def _raise(exc: BaseException) -> Callable[[Fidelity, OrderPlaced, sg.MessageContext], object]:
    def body(service: Fidelity, event: OrderPlaced, ctx: sg.MessageContext) -> object:
        raise exc

    return body


def _delete(service: Fidelity, ctx: sg.MessageContext) -> None:
    service.called(ctx)


def _delete_later(service: Fidelity, ctx: sg.MessageContext) -> None:
    service.called(ctx)
    if service.calls == 1:
        raise TimeoutError("the store did not answer")


async def _delete_async(service: Fidelity, ctx: sg.MessageContext) -> None:
    _delete_later(service, ctx)


@dataclass(frozen=True)
class Case:
    """One record and what the service's handler does with it.

    ``event`` is sent with a ``GuardedProducer`` (``kit.send``), else ``value`` as raw
    bytes (``kit.send_raw``).
    """

    name: str
    event: Any = None
    value: bytes | None = b""
    key: bytes | None = b"customer-1"
    headers: list[tuple[str, bytes | None]] = field(default_factory=lambda: [("trace", b"t1")])
    body: Callable[[Fidelity, OrderPlaced, sg.MessageContext], object] | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    kinds: tuple[str, ...] = ("sync", "async", "key")


# Records that never reach a handler take one of two paths: a worker's lane, or the
# event loop's (async handlers, key ordering).
INPUT_ONLY = ("sync", "key")


def _json(**fields: Any) -> bytes:
    return order(1).model_copy(update=fields).model_dump_json().encode()


_STAMPED_V7 = [
    (h.SUBJECT, b"orders.OrderPlaced"),
    (h.VERSION, b"7"),
    (h.FINGERPRINT, b"f" * 64),
    (h.PRODUCER, b"other-team"),
    (h.CONTENT_TYPE, b"application/json"),
]


def _payment() -> PaymentCaptured:
    return PaymentCaptured(payment_id="p-1", order_id="o-1", amount_cents=990, currency="EUR")


AVRO = {"contract": PaymentCaptured}

CASES = [
    Case("valid", event=order(1), kinds=(*KINDS,)),
    Case("undecodable", value=b"{not json" + SECRET.encode(), kinds=INPUT_ONLY),
    Case(
        "contract-violation",
        value=b'{"order_id": "' + SECRET.encode() + b'", "amount": -1}',
        kinds=INPUT_ONLY,
    ),
    Case("permanent", event=order(1), body=_raise(sg.PermanentError("customer is blocked"))),
    Case("transient-then-ok", event=order(1), body=_fail_twice, kinds=(*KINDS,)),
    Case("transient-exhausts-attempts", event=order(1), body=_raise(TimeoutError("down"))),
    Case(
        "transient-exhausts-budget",
        event=order(1),
        body=_raise(ConnectionRefusedError("down")),
        # Waits of 0.2 s: tries at 0, 0.2 and 0.4 s; a third wait would pass 0.5 s.
        attrs={
            "retry": sg.RetryPolicy(
                attempts=50, base_delay=0.2, max_delay=0.2, max_budget_ms=500, rng=_Longest()
            )
        },
    ),
    Case("tombstone", value=None, kinds=INPUT_ONLY),
    Case("tombstone-handled", value=None, attrs={"handle_tombstone": _delete}),
    Case("other-version-counted", value=_json(), headers=_STAMPED_V7),
    Case(
        "other-version-dead-lettered",
        value=_json(),
        headers=_STAMPED_V7,
        attrs={"drift": "dead_letter"},
        kinds=INPUT_ONLY,
    ),
    Case("unknown-fields", value=_json()[:-1] + b', "coupon": "' + SECRET.encode() + b'"}'),
    Case("keyless-headerless", value=b"[]", key=None, headers=[], kinds=INPUT_ONLY),
    Case("key-error-redacted", event=order(1), body=_raise(KeyError(SECRET))),
    Case(
        "key-error-with-text",
        event=order(1),
        body=_raise(KeyError("customer-9")),
        attrs={"include_error_text": True},
    ),
    Case(
        "contract-violation-by-handler",
        event=order(1),
        body=_raise(sg.ContractViolation("other.Subject", [])),
    ),
    Case("permanent-and-transient", event=order(1), body=_raise(Both("no"))),
    Case("odd-return", event=order(1), body=lambda service, event, ctx: "not None"),
    Case("newer-version-sent", event=order_v2(1)),
    Case("newer-version-sent-dead-lettered", event=order_v2(1), attrs={"drift": "dead_letter"}),
    Case("oversize", value=_json(), attrs={"codec": sg.JsonCodec(max_bytes=64)}, kinds=INPUT_ONLY),
    Case("keyless-tombstone", value=None, key=None, kinds=INPUT_ONLY),
    Case("tombstone-retried", value=None, attrs={"handle_tombstone": _delete_later}),
    Case("tombstone-async", value=None, attrs={"handle_tombstone": _delete_async}),
    Case(
        "repeated-and-null-headers",
        value=b"{",
        headers=[("trace", b"t1"), ("trace", b"t2"), ("empty", b""), ("null", None)],
        kinds=INPUT_ONLY,
    ),
    Case("decode-error-by-handler", event=order(1), body=_raise(sg.DecodeError("theirs"))),
    Case(
        "own-transient",
        event=order(1),
        body=_raise(KeyError("k")),
        attrs={"transient": (KeyError,)},
    ),
    Case("avro-valid", event=_payment(), attrs=AVRO),
    Case(
        "avro-undecodable", value=b"\xc3\x01" + b"\x00" * 8 + b"junk", attrs=AVRO, kinds=INPUT_ONLY
    ),
    Case("avro-permanent", event=_payment(), body=_raise(sg.PermanentError("no")), attrs=AVRO),
]


@dataclass
class Ending:
    """What became of the record, on either side."""

    outcome: str
    attempts: int
    seen: list[tuple[object, ...]]
    dead_letter: tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]] | None
    counters: dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _normal(headers: list[tuple[str, bytes | None]]) -> list[tuple[str, bytes | None]]:
    """Headers with the run-specific values blanked, and the time a retry took (real
    time on a broker, virtual time in the kit) taken out of its message."""
    out: list[tuple[str, bytes | None]] = []
    for name, value in headers:
        if name in RUN_SPECIFIC:
            value = b"<time>"
        elif name == h.DLQ_ERROR_MESSAGE and value is not None:
            value = re.sub(rb" in \d+ ms", b" in <n> ms", value)
        out.append((name, value))
    return out


def _counters(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (family.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        if family.name in COUNTERS
        for sample in family.samples
        if sample.name.endswith(("_total", "_count")) and sample.value
    }


def _service_class(kind: str, case: Case, topic: str, group: str) -> type[Fidelity]:
    attrs: dict[str, Any] = {"topic": topic, "group_id": group, "__module__": __name__}
    attrs.update(case.attrs)
    if case.body is not None:
        attrs["body"] = case.body
    return type(f"Fidelity_{kind}", (KINDS[kind],), attrs)


def _in_the_kit(service: type[Fidelity], case: Case, timestamp_ms: int) -> Ending:
    registry = CollectorRegistry()
    with ServiceHarness(service, registry=registry) as kit:
        result: Outcome
        if case.event is not None:
            result = kit.send(
                case.event,
                key=case.key,
                headers=case.headers,
                producer=PRODUCER,
                timestamp_ms=timestamp_ms,
            )
        else:
            result = kit.send_raw(
                case.value, key=case.key, headers=case.headers, timestamp_ms=timestamp_ms
            )
    letter = None
    if result.outcome == "dead_lettered":
        # A dead letter is the original record: its key and value, byte for byte.
        value = kit.spec.codec.encode(case.event) if case.event is not None else case.value
        letter = (case.key, value, _normal(result.dead_letter_headers))
    service_seen = kit.service.seen if isinstance(kit.service, Fidelity) else []
    return Ending(result.outcome, result.attempts, service_seen, letter, _counters(registry))


def _first_record(bootstrap: str, topic: str) -> Message:
    """The record at offset 0 of partition 0, read without joining a group (a join
    costs a second)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused"})
    consumer.assign([TopicPartition(topic, 0, 0)])
    deadline = time.monotonic() + 15
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                return msg
    finally:
        consumer.close()
    raise AssertionError(f"nothing arrived in {topic}")


def _on_the_broker(
    service: type[Fidelity],
    case: Case,
    bootstrap: str,
    producer: sg.GuardedProducer,
    start_service: Callable[..., Running],
) -> tuple[Ending, int]:
    # The record's CreateTime, which the kit is given too, is the one the service saw.
    timestamp_ms = -1
    if case.event is not None:
        producer.send(service.topic, case.event, key=case.key, headers=case.headers or None)
    else:
        producer.produce_raw(service.topic, case.value, key=case.key, headers=case.headers)
    producer.flush()
    registry = CollectorRegistry()
    running = start_service(service, registry=registry)
    final = wait_for(
        lambda: committed(bootstrap, service.group_id, service.topic) == {0: 1}, 30, 0.1
    )
    running.stop()
    assert final, f"the record found no outcome on the broker: {running.error}"
    assert not running.error
    real = running.service
    assert isinstance(real, Fidelity)
    dead = running.metric(
        "streamguard_messages_total", topic=service.topic, outcome="dead_lettered"
    )
    letter = None
    if dead:
        record = _first_record(bootstrap, f"{service.topic}.dlq")
        headers = record.headers() or []
        timestamp_ms = int(h.last(headers, h.DLQ_ORIGINAL_TIMESTAMP) or timestamp_ms)
        letter = (record.key(), record.value(), _normal(headers))
    if real.seen:  # the CreateTime the producer gave it
        timestamp_ms = int(str(real.seen[0][-5]))
    outcome = "dead_lettered" if dead else "handled"
    ending = Ending(outcome, real.calls, real.seen, letter, _counters(registry))
    return ending, timestamp_ms


@pytest.fixture(scope="module")
def producer(bootstrap: str) -> sg.GuardedProducer:
    """One producer for every case: a new one takes half a second to its first send."""
    return sg.GuardedProducer(bootstrap, service_name=PRODUCER)


@pytest.mark.parametrize(
    ("case", "kind"),
    [pytest.param(case, kind, id=f"{case.name}-{kind}") for case in CASES for kind in case.kinds],
)
def test_the_kit_ends_a_record_as_a_running_service_does(
    case: Case,
    kind: str,
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    producer: sg.GuardedProducer,
) -> None:
    """The record's outcome, handler calls, dead letter (headers but the times) and
    counters are the same in the kit as on a broker."""
    service = _service_class(kind, case, topic_factory("fidelity"), unique("fidelity"))
    real, timestamp_ms = _on_the_broker(service, case, bootstrap, producer, start_service)
    kit = _in_the_kit(service, case, timestamp_ms)
    assert kit.outcome == real.outcome
    assert kit.attempts == real.attempts
    assert kit.seen == real.seen
    assert kit.dead_letter == real.dead_letter
    assert kit.counters == real.counters
    if real.dead_letter is not None:
        added = [v for k, v in real.dead_letter[2] if k.startswith(h.DLQ_PREFIX)]
        assert all(SECRET.encode() not in (v or b"") for v in added)

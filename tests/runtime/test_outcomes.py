"""Every message reaches exactly one final outcome, and the DLQ says exactly why."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Producer

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from streamguard.observe.logs import JsonFormatter, TextFormatter
from tests.conftest import FAST_GROUP
from tests.runtime.conftest import Running, committed, dlq_headers, order, wait_for

SECRET = "SECRET-4242"


def test_poison_mix_reaches_one_outcome_each(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Producer,
    read_all: Callable[..., list[Any]],
) -> None:
    """A mix of valid and poison messages: valid ones are handled, each bad one is
    dead-lettered once with its reason, offsets commit to the end, metrics match."""
    src = topic_factory("orders")
    group = unique("billing")
    valid = order(1).model_dump_json().encode()
    mix: list[tuple[bytes, str]] = [
        (valid, "handled"),
        (b"{not json", "decode_error"),
        (b'{"customer_id": "\xff\xfe"}', "decode_error"),
        (json.dumps({"order_id": "nope", "customer_id": SECRET}).encode(), "contract_violation"),
        (b'{"pad": "' + b"x" * 3000 + b'"}', "oversize"),
        (order(2, customer_id="permanent").model_dump_json().encode(), "permanent_error"),
        (order(3, customer_id="flaky").model_dump_json().encode(), "retries_exhausted"),
        (order(4).model_dump_json().encode(), "handled"),
    ]
    for i, (value, _) in enumerate(mix):
        raw_producer.produce(src, value, key=f"k{i}".encode(), headers=[("trace", b"t%d" % i)])
    raw_producer.flush(10)

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        codec = sg.JsonCodec(max_bytes=2048)
        retry = sg.RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            if event.customer_id == "permanent":
                raise sg.PermanentError("customer is closed")
            if event.customer_id == "flaky":
                raise TimeoutError("upstream timed out")

    running = start_service(Billing)
    expected_dlq = [reason for _, reason in mix if reason != "handled"]
    dlq = read_all(f"{src}.dlq", len(expected_dlq), timeout=20)
    assert [dlq_headers(m)["sg-dlq-reason"] for m in dlq] == expected_dlq
    assert wait_for(lambda: committed(bootstrap, group, src).get(0) == len(mix))

    m = running.metric
    assert m("streamguard_messages_total", topic=src, outcome="handled") == 2
    assert m("streamguard_messages_total", topic=src, outcome="dead_lettered") == 6
    for reason in set(expected_dlq):
        assert m("streamguard_dead_letters_total", topic=src, reason=reason) == expected_dlq.count(
            reason
        )
    assert m("streamguard_retries_total", topic=src) == 2  # attempts=3: two retries
    assert m("streamguard_handler_seconds_count", topic=src) == 2
    assert m("streamguard_inflight", topic=src) == 0
    running.stop()
    assert not running.error


def test_a_record_without_a_valid_timestamp_has_none(
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Producer,
    read_all: Callable[..., list[Any]],
) -> None:
    """A record whose timestamp is Kafka's "none" (-1) or negative, which no clock
    wrote, gives the handler ``ctx.timestamp_ms`` None and its dead letter
    ``sg-dlq-original-timestamp: -1``, as a guarded Faust agent does (the service
    gave the handler -1 and -5, and wrote -5)."""
    src = topic_factory("orders")
    encoded = sg.JsonCodec().encode(order(1))
    for timestamp in (-1, -5):
        raw_producer.produce(src, encoded, key=b"ok", timestamp=timestamp)
        raw_producer.produce(src, b"poison", key=b"bad", timestamp=timestamp)
    raw_producer.produce(src, encoded, key=b"ok", timestamp=1)  # the oldest a clock writes
    raw_producer.flush(10)
    seen: list[int | None] = []

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = unique("g")

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            seen.append(ctx.timestamp_ms)

    start_service(Billing)
    dlq = read_all(f"{src}.dlq", 2)
    assert [dlq_headers(r)["sg-dlq-original-timestamp"] for r in dlq] == ["-1", "-1"]
    assert wait_for(lambda: len(seen) == 3)
    assert seen == [None, None, 1]


def test_dead_letter_keeps_record_byte_for_byte(
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Producer,
    read_all: Callable[..., list[Any]],
) -> None:
    """A DLQ record has the original key, value and headers unchanged, plus sg-dlq-*
    context, and no field value of the message in any header."""
    src = topic_factory("orders")
    value = json.dumps({"order_id": "not-a-uuid", "customer_id": SECRET}).encode()
    original_headers = [("trace", b"\x00\x01binary"), ("dup", b"a"), ("dup", b"b"), ("n", None)]
    raw_producer.produce(src, value, key=b"customer-7", headers=original_headers)
    raw_producer.flush(10)
    group = unique("g")

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        service_name = "billing-svc"

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            raise AssertionError("an invalid message must never reach the handler")

    start_service(Billing)
    (record,) = read_all(f"{src}.dlq", 1)
    assert record.key() == b"customer-7"
    assert record.value() == value
    headers = record.headers()
    assert headers[: len(original_headers)] == original_headers
    ctx = dlq_headers(record)
    assert ctx["sg-dlq-original-topic"] == src
    assert ctx["sg-dlq-original-partition"] == "0"
    assert ctx["sg-dlq-original-offset"] == "0"
    assert int(ctx["sg-dlq-original-timestamp"]) > 0
    assert ctx["sg-dlq-consumer-group"] == group
    assert ctx["sg-dlq-service"] == "billing-svc"
    assert ctx["sg-dlq-host"]
    assert ctx["sg-dlq-reason"] == "contract_violation"
    assert ctx["sg-dlq-error-class"] == "streamguard.errors.ContractViolation"
    assert ctx["sg-dlq-expected-subject"] == "orders.OrderPlaced"
    assert ctx["sg-dlq-expected-version"] == "1"
    assert ctx["sg-dlq-attempts"] == "1"
    assert int(ctx["sg-dlq-dead-lettered-ms"]) >= int(ctx["sg-dlq-first-failure-ms"])
    errors = json.loads(ctx["sg-dlq-errors"])
    assert {tuple(e["loc"]) for e in errors} >= {("order_id",)}
    assert all(set(e) == {"loc", "type", "msg"} for e in errors)
    assert SECRET not in json.dumps([v.decode("latin-1") for _, v in headers[4:] if v])


def test_a_group_id_given_in_kafka_config_is_the_one_dead_letters_and_logs_name(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Producer,
    read_all: Callable[..., list[Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``kafka_config={"group.id": ...}`` (or ``streamguard run -X group.id=...``)
    overrides the class's ``group_id``: the service consumes, commits, logs and
    dead-letters under the group it is really in."""
    src = topic_factory("orders")
    raw_producer.produce(src, b"{not json")
    raw_producer.flush(10)
    group = unique("override")

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = "declared-group"

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            pass

    caplog.set_level(logging.INFO, logger="streamguard")
    # The session timeout as text, as `streamguard run -X` gives every setting.
    config = {**FAST_GROUP, "group.id": group, "session.timeout.ms": "2000"}
    running = start_service(Billing, kafka_config=config)
    (record,) = read_all(f"{src}.dlq", 1)
    assert dlq_headers(record)["sg-dlq-consumer-group"] == group
    assert wait_for(lambda: committed(bootstrap, group, src).get(0) == 1)
    (started,) = [r for r in caplog.records if r.getMessage() == "service started"]
    assert started.group == group  # type: ignore[attr-defined]
    # Then what it waits for: the group's first rebalance took ~22 s in silence.
    messages = [r.getMessage() for r in caplog.records]
    waiting = caplog.records[messages.index("service started") + 1]
    assert waiting.getMessage() == "waiting for partitions from the group"
    assert waiting.group == group  # type: ignore[attr-defined]
    # Whose: a process may run several services, some on one topic.
    assert (waiting.service, waiting.topic) == ("Billing", src)  # type: ignore[attr-defined]
    # A number, however it was given: "2000" from -X, 45000 by default, in one JSON type.
    assert waiting.session_timeout_ms == 2000  # type: ignore[attr-defined]
    assert messages.index("partitions assigned") > messages.index(waiting.getMessage())
    running.stop()
    assert not running.error
    (stopped,) = [r for r in caplog.records if r.getMessage() == "service stopped"]
    assert (stopped.service, stopped.topic) == ("Billing", src)  # type: ignore[attr-defined]


def test_rebalance_log_lines_name_their_service_and_topic(
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two services of one process (one per topic) write one log: "partitions
    assigned" (and revoked, lost) carried only partition numbers, and "waiting for
    partitions from the group" no service, so a reader could not tell whose they were."""
    sources = topic_factory("payments"), topic_factory("refunds")

    def service(src: str, name: str) -> type[sg.ConsumerService]:
        class Ledger(sg.ConsumerService):
            topic = src
            contract = OrderPlaced
            group_id = unique("ledger")
            service_name = name

            def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

        return Ledger

    caplog.set_level(logging.INFO, logger="streamguard")
    running = [start_service(service(src, f"svc-{i}")) for i, src in enumerate(sources)]

    def lines(message: str) -> set[tuple[str, str]]:
        return {
            (getattr(r, "service", "?"), getattr(r, "topic", "?"))
            for r in caplog.records
            if r.getMessage() == message
        }

    expected = {(f"svc-{i}", src) for i, src in enumerate(sources)}
    assert wait_for(lambda: lines("partitions assigned") == expected), lines("partitions assigned")
    assert {
        r.service for r in caplog.records if r.getMessage().startswith("waiting for partitions")
    } == {  # type: ignore[attr-defined]
        "svc-0",
        "svc-1",
    }
    for each in running:
        each.stop()


def test_handler_exception_text_is_redacted_by_default(
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    read_all: Callable[..., list[Any]],
    bootstrap: str,
) -> None:
    """A non-streamguard exception's text (which may quote data) stays out of the DLQ,
    while a PermanentError's operator-facing text is kept."""
    src = topic_factory("orders")
    producer = sg.GuardedProducer(bootstrap)
    producer.send(src, order(1, customer_id="a"))
    producer.send(src, order(2, customer_id="b"))
    producer.flush()
    group = unique("g")

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            if event.customer_id == "a":
                raise KeyError(SECRET)
            raise sg.PermanentError("customer account is closed")

    start_service(Billing)
    first, second = read_all(f"{src}.dlq", 2)
    assert SECRET not in dlq_headers(first)["sg-dlq-error-message"]
    assert dlq_headers(first)["sg-dlq-error-class"] == "builtins.KeyError"
    assert dlq_headers(second)["sg-dlq-error-message"] == "customer account is closed"


class _TextRaises(sg.PermanentError):
    def __str__(self) -> str:
        raise AttributeError("no text")


def _surrogate(key: bytes) -> Exception:
    return sg.PermanentError(f"no customer {key.decode('utf-8', 'surrogateescape')}")


@pytest.mark.parametrize(
    ("refuse", "message"),
    [
        (_surrogate, "no customer bad\\udcff"),
        (lambda key: _TextRaises(), "_TextRaises (no text: its __str__ raised AttributeError)"),
    ],
    ids=["lone-surrogate", "str-raises"],
)
def test_an_error_text_that_cannot_be_encoded_is_dead_lettered_and_processing_goes_on(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Producer,
    read_all: Callable[..., list[Any]],
    refuse: Callable[[bytes], Exception],
    message: str,
) -> None:
    """A PermanentError quoting a key decoded with surrogateescape (a lone surrogate) is
    dead-lettered with the surrogate escaped, one whose __str__ raises with a message
    saying so; the records after it are handled and committed. Their headers could not
    be built before: the dead letter was refused and retried for good, the DLQ counted
    as unwritable, and every partition stayed paused."""
    src = topic_factory("orders")
    group = unique("billing")
    raw_producer.produce(src, order(1).model_dump_json().encode(), key=b"bad\xff")
    raw_producer.produce(src, order(2).model_dump_json().encode(), key=b"good")
    raw_producer.flush(10)
    handled: list[bytes] = []

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            key = ctx.key or b""
            if key.startswith(b"bad"):
                raise refuse(key)
            handled.append(key)

    running = start_service(Billing, kafka_config={**FAST_GROUP, "group.id": group})
    (letter,) = read_all(f"{src}.dlq", 1)
    assert dlq_headers(letter)["sg-dlq-error-message"] == message
    assert wait_for(lambda: committed(bootstrap, group, src).get(0) == 2)
    assert handled == [b"good"]
    running.stop()
    assert not running.error


def test_subclass_attribute_names_are_the_users_own(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Producer,
    read_all: Callable[..., list[Any]],
) -> None:
    """A subclass may set name, metrics, registry, health, ready and more in __init__;
    the service still runs, and on_dead_letter hears each acknowledged dead letter."""
    src = topic_factory("orders")
    group = unique("billing")
    raw_producer.produce(src, order(1).model_dump_json().encode(), key=b"a")
    raw_producer.produce(src, b"{broken", key=b"b")
    raw_producer.flush(10)
    names = ("name", "metrics", "registry", "health", "ready", "report_drift")

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            for name in names:
                setattr(self, name, f"user's own {name}")
            self.handles_tombstones = "user's own too"
            self.handled: list[int] = []
            self.dead: list[tuple[int, str, int]] = []

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            self.handled.append(ctx.offset)

        def on_dead_letter(self, ctx: sg.MessageContext, failure: sg.Failure) -> None:
            self.dead.append((ctx.offset, failure.reason, failure.attempts))

    running = start_service(Billing)
    service = running.service
    assert isinstance(service, Billing)
    assert read_all(f"{src}.dlq", 1, timeout=20)
    assert wait_for(lambda: committed(bootstrap, group, src).get(0) == 2)
    assert wait_for(lambda: service.dead == [(1, "decode_error", 1)])
    assert service.handled == [0]
    assert all(getattr(service, name) == f"user's own {name}" for name in names)
    running.stop()
    assert not running.error


@pytest.mark.parametrize(
    ("kind", "error", "when"),
    [
        ("sync", SystemExit, "running"),
        ("async", KeyboardInterrupt, "running"),
        ("sync", KeyboardInterrupt, "stopping"),
        ("async", SystemExit, "stopping"),
    ],
)
def test_an_on_dead_letter_hook_raising_no_exception_stops_the_service_cleanly(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Producer,
    kind: str,
    error: type[BaseException],
    when: str,
) -> None:
    """A ``SystemExit`` or ``KeyboardInterrupt`` of the hook stops the service as a
    handler's does: ``run()`` raises it, ``on_stop`` runs, and what is final is committed,
    the acknowledged dead letter's record too. Before, raised out of the delivery report
    that the stop's flush served ("stopping": the DLQ producer lingers until then), it
    skipped the final commit and ``on_stop``. The hook never runs on the event loop."""
    src = topic_factory("orders", partitions=1)
    group = unique("hook")
    raw_producer.produce(src, order(0).model_dump_json().encode(), key=b"a")
    raw_producer.produce(src, b"{broken", key=b"b")
    raw_producer.produce(src, order(2).model_dump_json().encode(), key=b"a")
    raw_producer.flush(10)
    handled: list[int] = []
    calls: list[str] = []

    class Sync(sg.ConsumerService):
        topic, contract, group_id = src, OrderPlaced, group

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            handled.append(ctx.offset)

        def on_dead_letter(self, ctx: sg.MessageContext, failure: sg.Failure) -> None:
            calls.append(threading.current_thread().name)
            raise error(3)

        def on_stop(self) -> None:
            calls.append("on_stop")

    class Async(Sync):
        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:  # type: ignore[override]
            handled.append(ctx.offset)

    linger = {"linger.ms": 20_000} if when == "stopping" else {}
    running = start_service(Sync if kind == "sync" else Async, dead_letter_config=linger)
    if when == "stopping":
        assert wait_for(lambda: handled == [0, 2], 30), (handled, running.error)
        assert not calls  # the dead letter waits in the producer for the stop's flush
        running.stop()
    else:
        running.thread.join(30)
        assert not running.thread.is_alive(), "the service went on after the hook's error"
    assert [type(e) for e in running.error] == [error]
    assert committed(bootstrap, group, src) == {0: 3}
    hook_thread, stopped = calls
    assert stopped == "on_stop"
    assert hook_thread != "streamguard-loop"


def flood(producer: Producer, topic: str, count: int) -> None:
    """``count`` orders in a currency the contract refuses, keyed over seven keys."""
    for i in range(count):
        bad = order(i).model_dump_json().replace('"EUR"', '"GBP"').encode()
        producer.produce(topic, bad, key=b"k%d" % (i % 7))
    producer.flush(10)


def flooded(src: str, group: str, log_rate: float) -> type[sg.ConsumerService]:
    """A service of ``src`` whose every record is invalid, its dead-letter lines
    limited to ``log_rate`` a second."""

    class Flooded(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        options = sg.ServiceOptions(dead_letter_log_rate=log_rate)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            raise AssertionError("no record of the flood is valid")

    return Flooded


def test_a_poison_flood_is_dead_lettered_whole_with_rate_limited_log_lines(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Producer,
    read_all: Callable[..., list[Any]],
    caplog: Any,
) -> None:
    """600 invalid records: every one is in the DLQ with its headers and counted, the
    offsets commit to the end, and the log holds a few lines that account for every
    dead letter (lines written plus the ``not_logged`` counts they report)."""
    src = topic_factory("orders")
    group = unique("flood")
    count = 600
    flood(raw_producer, src, count)
    caplog.set_level("WARNING", logger="streamguard.runtime")
    running = start_service(flooded(src, group, log_rate=5))
    dlq = read_all(f"{src}.dlq", count, timeout=30)
    assert len(dlq) >= count  # at least once: all of them, none lost
    assert {dlq_headers(m)["sg-dlq-original-offset"] for m in dlq} == {str(i) for i in range(count)}
    assert {dlq_headers(m)["sg-dlq-reason"] for m in dlq} == {"contract_violation"}
    assert wait_for(lambda: committed(bootstrap, group, src).get(0) == count)
    assert (
        running.metric("streamguard_dead_letters_total", topic=src, reason="contract_violation")
        >= count
    )

    def accounted() -> int:
        lines = [r for r in caplog.records if r.getMessage() == "dead-lettering message"]
        skipped = sum(
            r.not_logged  # type: ignore[attr-defined]
            for r in caplog.records
            if r.getMessage() in ("dead-lettering message", "dead-lettered messages not logged")
        )
        return len(lines) + skipped

    # The last skipped count is flushed by the maintenance tick once the rate allows.
    assert wait_for(lambda: accounted() >= count, timeout=10)
    lines = [r for r in caplog.records if r.getMessage() == "dead-lettering message"]
    assert 1 <= len(lines) < count // 4
    running.stop()
    assert not running.error


def test_the_dead_letter_lines_skipped_last_are_counted_when_the_service_stops(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Producer,
    read_all: Callable[..., list[Any]],
    caplog: Any,
) -> None:
    """The count of the lines skipped is written once the rate allows a line: a
    service that stopped before then never wrote it, and the log no longer accounted
    for the last dead letters of a flood (here the rate allows one line a 100 s)."""
    src = topic_factory("orders")
    group = unique("flood-stop")
    count = 40
    flood(raw_producer, src, count)
    caplog.set_level("WARNING", logger="streamguard.runtime")
    running = start_service(flooded(src, group, log_rate=0.01), kafka_config=FAST_GROUP)
    assert len(read_all(f"{src}.dlq", count, timeout=30)) >= count
    assert wait_for(lambda: committed(bootstrap, group, src).get(0) == count)
    running.stop()
    assert not running.error
    names = ("dead-lettering message", "dead-lettered messages not logged")
    ours = [r for r in caplog.records if r.getMessage() in names]
    lines = [r for r in ours if r.getMessage() == names[0]]
    assert len(lines) == 1
    assert len(lines) + sum(r.not_logged for r in ours) == count  # type: ignore[attr-defined]


class Invoice(sg.Contract):
    """What a handler derives from an order and sends on with a ``GuardedProducer``."""

    __subject__ = "tests.outcomes.Invoice"
    __version__ = 1
    order_id: str
    total: int


def test_a_contract_violation_raised_by_the_handler_is_a_permanent_error(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    read_all: Callable[..., list[Any]],
) -> None:
    """A handler whose ``GuardedProducer.send`` refuses the event it derived (on its
    second attempt, after a timeout) fails with ``ContractViolation``: the valid record
    is dead-lettered as the handler's ``permanent_error`` with ``attempts`` 2. It was a
    ``contract_violation`` of the record, under the record's own subject, with
    ``attempts`` 1 and the first failure's time reset."""
    src = topic_factory("orders")
    producer = sg.GuardedProducer(bootstrap)
    producer.send(src, order(1))
    producer.flush()

    class Invoicing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = unique("g")
        retry = sg.RetryPolicy(attempts=5, base_delay=0.02, max_delay=0.05)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            if ctx.attempt == 1:
                raise TimeoutError("the invoice service is busy")
            producer.send("invoices", {"order_id": "o-1", "total": "n/a"}, contract=Invoice)

    start_service(Invoicing)
    (record,) = read_all(f"{src}.dlq", 1)
    headers = dlq_headers(record)
    assert headers["sg-dlq-reason"] == "permanent_error"
    assert headers["sg-dlq-attempts"] == "2"
    assert headers["sg-dlq-error-class"] == "streamguard.errors.ContractViolation"
    assert int(headers["sg-dlq-first-failure-ms"]) < int(headers["sg-dlq-dead-lettered-ms"])


def test_a_failing_on_dead_letter_hook_is_logged_without_its_error_text(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Producer,
    caplog: Any,
) -> None:
    """The hook is the user's code, and its error's text may quote the record (a
    KeyError of a field value): the line names the error's class and the hook's frames,
    never that text."""
    src = topic_factory("orders")
    group = unique("hook")
    canary = "canary-4f1c9e"
    raw_producer.produce(src, b"{broken", key=b"b")
    raw_producer.flush(10)

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            pass

        def on_dead_letter(self, ctx: sg.MessageContext, failure: sg.Failure) -> None:
            raise KeyError(f"customer {canary}")

    caplog.set_level(logging.INFO)
    running = start_service(Billing)
    assert wait_for(
        lambda: any(r.getMessage() == "on_dead_letter hook failed" for r in caplog.records),
        timeout=30,
    )
    running.stop()
    assert not running.error
    (line,) = [r for r in caplog.records if r.getMessage() == "on_dead_letter hook failed"]
    assert line.error_class == "KeyError"  # type: ignore[attr-defined]
    assert (line.service, line.topic) == ("Billing", src)  # type: ignore[attr-defined]
    assert "on_dead_letter" in line.traceback  # type: ignore[attr-defined]
    for formatter in (JsonFormatter(), TextFormatter()):
        assert canary not in formatter.format(line)

"""What a guarded agent's lane does when decoding or a handler fails outside the rules:
a handler's ``BaseException`` stops the worker without acking, and an unreachable
schema registry makes the event wait, as in a ``ConsumerService``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import logging
import time
import traceback
import weakref
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Message, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from pydantic import field_validator

import streamguard as sg
from streamguard.deadletter import DeadLetterLog, Failure
from streamguard.demo.contracts import LineItem, OrderPlaced
from streamguard.faust import guarded_agent
from streamguard.observe.logs import JsonFormatter, TextFormatter
from streamguard.registry import RegistryServer
from tests.faust.conftest import run_app, until
from tests.registry.conftest import (  # noqa: F401 (fixtures)
    PaymentV1,
    SlowRegistryClient,
    avro,
    client,
    registry,
)
from tests.runtime.conftest import committed, dlq_headers, order, wait_for

pytestmark = pytest.mark.broker

FAST_RETRY = sg.RetryPolicy(attempts=3, base_delay=0.02, max_delay=0.05, max_budget_ms=1_000)


# Faust's mode thread may end with "Event loop is closed" as the crashed app is torn
# down: the crash is the outcome tested, and the test asserts what was committed.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_handlers_own_cancellation_stops_the_worker_and_loses_nothing(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    make_app: Callable[..., Any],
    send_orders: Callable[..., None],
) -> None:
    """A handler that raises ``CancelledError`` (it awaited a task cancelled elsewhere)
    is not an outcome: the worker crashes with nothing acked from that event on, and a
    restarted worker handles it. Before, the lane ended silently, the partition's next
    lane acked later events, and Faust committed past the lost one."""
    src = topic_factory("orders", partitions=1)
    send_orders(src, 4)
    group = unique("billing")
    first = make_app(group)
    seen: list[int] = []

    @guarded_agent(first, src, contract=OrderPlaced)
    async def cancelled(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        seen.append(ctx.offset)
        if ctx.offset == 1:
            elsewhere = asyncio.ensure_future(asyncio.sleep(10))
            elsewhere.cancel()
            await elsewhere

    async def until_crashed() -> None:
        assert await until(lambda: first.should_stop, 30)

    ended: list[BaseException] = []
    try:
        run_app(first, until_crashed)
    except (asyncio.CancelledError, RuntimeError) as exc:  # how a crashed app's run ends
        ended.append(exc)
    # A RuntimeError only as Faust's teardown of the crashed app, now and then.
    assert all(
        isinstance(e, asyncio.CancelledError) or "Event loop is closed" in str(e) for e in ended
    )
    assert seen == [0, 1]
    assert isinstance(first.crash_reason, asyncio.CancelledError)
    assert committed(bootstrap, group, src).get(0, 0) <= 1

    second = make_app(group)
    handled: list[int] = []

    @guarded_agent(second, src, contract=OrderPlaced)
    async def healthy(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        handled.append(ctx.offset)

    async def all_committed() -> None:
        assert await until(lambda: committed(bootstrap, group, src).get(0) == 4, 30)

    run_app(second, all_committed)
    assert handled[-3:] == [1, 2, 3]


class Abort(BaseException):
    """A handler's own BaseException, whose text quotes a field value."""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_handler_crash_is_logged_without_its_error_text(
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    make_app: Callable[..., Any],
    send_orders: Callable[..., None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The lane's crash line names the error's class and frames, never its text, which
    may quote the record (as a handler's errors are logged). Before, its ``exception``
    field ended with the text, and ``app.crash()``'s line quoted it."""
    src = topic_factory("orders", partitions=1)
    send_orders(src, 1)
    app = make_app(unique("billing"))
    canary = "canary-93e0aa"

    @guarded_agent(app, src, contract=OrderPlaced)
    async def crashing(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        raise Abort(f"customer {canary}")

    async def until_crashed() -> None:
        assert await until(lambda: app.should_stop, 30)

    caplog.set_level(logging.INFO)
    with contextlib.suppress(asyncio.CancelledError, RuntimeError):  # a crashed app's end
        run_app(app, until_crashed)
    assert isinstance(app.crash_reason, Abort)
    # Faust's and mode's lines too: the crash no longer goes through app.crash(), which
    # logged the error's repr, text and all.
    assert canary not in caplog.text
    ours = [r for r in caplog.records if r.name.startswith("streamguard")]
    for line in ours:
        for formatter in (JsonFormatter(), TextFormatter()):
            assert canary not in formatter.format(line)
    [line] = [r for r in ours if r.getMessage() == "guarded agent lane crashed"]
    assert line.error == "Abort"  # type: ignore[attr-defined]
    assert (line.service, line.topic) == (crashing.name, src)  # type: ignore[attr-defined]
    assert "crashing" in line.traceback  # type: ignore[attr-defined]


# The worker's thread ends with the TypeError on purpose: the crash is the outcome tested.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_handler_returning_an_unawaited_coroutine_stops_the_worker_unacked(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    make_app: Callable[..., Any],
    send_orders: Callable[..., None],
) -> None:
    """A handler that returns a coroutine it did not await (``return save(...)``) ran
    none of that work: the worker crashes with a ``TypeError`` naming it, and nothing
    from that event on is acked. Before, the event was acked as handled and committed,
    its work never done."""
    src = topic_factory("orders", partitions=1)
    send_orders(src, 3)
    group = unique("billing")
    app = make_app(group)
    saved: list[int] = []

    async def save(offset: int) -> None:
        saved.append(offset)

    @guarded_agent(app, src, contract=OrderPlaced)
    async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> Any:
        if ctx.offset == 1:
            return save(ctx.offset)  # the await forgotten
        await save(ctx.offset)
        return None

    async def until_crashed() -> None:
        assert await until(lambda: app.should_stop, 30)

    with contextlib.suppress(asyncio.CancelledError, RuntimeError):  # a crashed app's end
        run_app(app, until_crashed)
    assert isinstance(app.crash_reason, TypeError)
    assert "returned coroutine" in str(app.crash_reason)
    assert saved == [0]
    assert committed(bootstrap, group, src).get(0, 0) <= 1


def test_decorated_handlers_run_on_fausts_loop(
    bootstrap: str,
    topic_factory: Callable[..., str],
    make_app: Callable[..., Any],
    send_orders: Callable[..., None],
) -> None:
    """An async def under a functools.wraps decorator runs, whether the wrapper is
    async def or a plain def that returns the coroutine (awaited by the lane), and so
    does an object whose ``__call__`` is async def, as in a ConsumerService."""
    app = make_app()
    seen: dict[str, list[int]] = {"async": [], "plain": [], "object": []}

    def async_wrapper(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        async def wrapper(*args: Any) -> Any:
            return await fn(*args)

        return wrapper

    def plain_wrapper(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any) -> Any:
            return fn(*args)

        return wrapper

    class Handler:
        async def __call__(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            await asyncio.sleep(0)
            seen["object"].append(ctx.offset)

    topics = {shape: topic_factory(shape, partitions=1) for shape in seen}
    for topic in topics.values():
        send_orders(topic, 3)

    @guarded_agent(app, topics["async"], contract=OrderPlaced)
    @async_wrapper
    async def by_async(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        await asyncio.sleep(0)
        seen["async"].append(ctx.offset)

    @guarded_agent(app, topics["plain"], contract=OrderPlaced)
    @plain_wrapper
    async def by_plain(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        await asyncio.sleep(0)
        seen["plain"].append(ctx.offset)

    guarded_agent(app, topics["object"], contract=OrderPlaced)(Handler())

    def all_committed() -> bool:
        return all(committed(bootstrap, app.conf.id, t).get(0) == 3 for t in topics.values())

    async def scenario() -> None:
        assert await until(all_committed, 40)

    run_app(app, scenario)
    assert seen == {"async": [0, 1, 2], "plain": [0, 1, 2], "object": [0, 1, 2]}


def test_a_plain_wrapper_running_its_coroutine_itself_stops_the_worker_unacked(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    make_app: Callable[..., Any],
    send_orders: Callable[..., None],
) -> None:
    """A plain def wrapper that runs its async def itself (``asyncio.run``) cannot on
    Faust's running loop: the worker crashes with a ``TypeError`` naming that shape and
    the fix, nothing is acked or dead-lettered, rather than every event being
    dead-lettered as the wrapper's ``RuntimeError``."""
    src = topic_factory("orders", partitions=1)
    send_orders(src, 2)
    group = unique("billing")
    app = make_app(group)

    def run_to_end(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any) -> Any:
            coro = fn(*args)
            try:
                return asyncio.run(coro)
            finally:
                coro.close()  # asyncio.run refused it unstarted: no "never awaited" warning

        return wrapper

    @guarded_agent(app, src, contract=OrderPlaced)
    @run_to_end
    async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        return None

    async def until_crashed() -> None:
        assert await until(lambda: app.should_stop, 30)

    with contextlib.suppress(asyncio.CancelledError, RuntimeError):  # a crashed app's end
        run_app(app, until_crashed)
    assert isinstance(app.crash_reason, TypeError)
    text = str(app.crash_reason)
    assert "plain 'def' wrapper" in text
    assert "runs the coroutine itself" in text
    assert "Make the wrapper 'async def'" in text
    assert committed(bootstrap, group, src).get(0, 0) == 0
    assert bill.registry.get_sample_value(
        "streamguard_messages_total", {"runtime": "faust", "topic": src, "outcome": "dead_lettered"}
    ) in (None, 0.0)


def test_an_unreachable_registry_holds_the_event_until_it_answers(
    bootstrap: str,
    registry: RegistryServer,  # noqa: F811 (the fixtures imported above)
    client: SchemaRegistryClient,  # noqa: F811
    topic_factory: Callable[..., str],
    make_app: Callable[..., Any],
    read_all: Callable[..., list[Any]],
) -> None:
    """A registry outage is not the event's fault: the event waits (far past the retry
    budget), is never dead-lettered and never crashes the worker, and is handled once
    the registry is back."""
    src = topic_factory("payments", partitions=1)
    client.register_schema(f"{src}-value", avro(PaymentV1))
    url = registry.url  # read while it runs
    producer = sg.GuardedProducer(bootstrap_servers=bootstrap, schema_registry={"url": url})
    producer.send(src, PaymentV1(payment_id="p-1", amount_cents=990))
    producer.flush(10)
    registry.stop()  # the agent has never fetched the schema: it cannot decode the record

    app = make_app()
    handled: list[str] = []

    @guarded_agent(
        app,
        src,
        contract=PaymentV1,
        codec=sg.RegistryCodec({"url": url}, wire_format="avro"),
        retry=FAST_RETRY,
    )
    async def pay(event: PaymentV1, ctx: sg.MessageContext) -> None:
        handled.append(event.payment_id)

    def waits() -> float:
        labels = {"runtime": "faust", "topic": src}
        return pay.registry.get_sample_value("streamguard_retries_total", labels) or 0.0

    async def outage_then_recovery() -> None:
        assert await until(lambda: waits() >= 3, 30)
        await asyncio.sleep(1.5)  # past the retry policy's 1 s budget
        assert handled == []
        assert not app.should_stop
        registry.start()  # same port and directory: the same schema id
        assert await until(lambda: handled == ["p-1"], 30)

    started = time.monotonic()
    run_app(app, outage_then_recovery)
    assert time.monotonic() - started < 60
    assert read_all(f"{src}.dlq", 1, timeout=2) == []


def test_a_new_writer_schema_is_fetched_off_fausts_event_loop(
    bootstrap: str,
    registry: RegistryServer,  # noqa: F811 (the fixtures imported above)
    client: SchemaRegistryClient,  # noqa: F811
    topic_factory: Callable[..., str],
    make_app: Callable[..., Any],
) -> None:
    """The first event of a schema id not seen yet waits for the registry's answer, but
    Faust's event loop does not: the request runs in a thread, and the worker's other
    tasks (here, one ticking every 20 ms) go on meanwhile."""
    src = topic_factory("payments", partitions=1)
    client.register_schema(f"{src}-value", avro(PaymentV1))
    producer = sg.GuardedProducer(
        bootstrap_servers=bootstrap, schema_registry={"url": registry.url}
    )
    producer.send(src, PaymentV1(payment_id="p-1", amount_cents=990))
    producer.flush(10)
    slow = SlowRegistryClient({"url": registry.url, "max.retries": 0})

    app = make_app()
    handled: list[str] = []

    @guarded_agent(app, src, contract=PaymentV1, codec=sg.RegistryCodec(slow, wire_format="avro"))
    async def pay(event: PaymentV1, ctx: sg.MessageContext) -> None:
        handled.append(event.payment_id)

    gaps: list[float] = []

    async def ticking_until_handled() -> None:
        for _ in range(1500):  # bounded: 30 s
            if handled:
                return
            start = time.monotonic()
            await asyncio.sleep(0.02)
            gaps.append(time.monotonic() - start)

    run_app(app, ticking_until_handled)
    assert handled == ["p-1"]
    assert slow.fetches == 1
    assert len(gaps) > 10
    assert max(gaps) < slow.delay / 2, max(gaps)


def test_a_refused_dead_letter_keeps_the_worker_unready_while_others_are_written(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    make_app: Callable[..., Any],
    raw_producer: Any,
) -> None:
    """Partition 0's 4 kB poison is refused by the DLQ (the producer takes 2 kB at most)
    while small poison on partition 1 is written: readiness stays 0 and the held
    partition counts as paused. A success elsewhere made the worker ready again (the
    runbook's first cause: a DLQ whose max.message.bytes is too small)."""
    src = topic_factory("orders", partitions=2)
    raw_producer.produce(src, b'{"pad": "' + b"x" * 4000 + b'"}', partition=0)
    for _ in range(3):
        raw_producer.produce(src, b"small poison", partition=1)
    raw_producer.flush(10)
    app = make_app(unique("billing"), producer_max_request_size=2048)

    @guarded_agent(app, src, contract=OrderPlaced)
    async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        pass

    def sample(name: str, **labels: str) -> float:
        value = bill.registry.get_sample_value(name, {"runtime": "faust", **labels})
        return value or 0.0

    async def held() -> None:
        assert await until(
            lambda: sample("streamguard_dead_letters_total", topic=src, reason="decode_error") == 3,
            30,
        )
        assert await until(
            lambda: sample("streamguard_dead_letter_failures_total", topic=src) >= 2, 30
        )
        written = sample("streamguard_dead_letters_total", topic=src, reason="decode_error")
        for _ in range(12):  # dead letters written elsewhere meanwhile, retries here
            raw_producer.produce(src, b"small poison", partition=1)
            raw_producer.flush(5)
            await asyncio.sleep(0.25)
            assert sample("streamguard_ready") == 0.0
        later = sample("streamguard_dead_letters_total", topic=src, reason="decode_error")
        assert later > written  # the other partition's dead letters were written
        assert sample("streamguard_paused_partitions", topic=src) >= 1

    run_app(app, held)


def test_a_sink_that_cannot_take_results_is_refused_when_declared(
    make_app: Callable[..., Any],
) -> None:
    """A sink with no send() that is not callable (a guarded agent itself) is refused at
    declaration; it was accepted, and every event was dead-lettered at run time."""
    app = make_app()

    @guarded_agent(app, "invoices", contract=OrderPlaced)
    async def invoices(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        pass

    with pytest.raises(sg.ConfigurationError, match="has no send"):

        @guarded_agent(app, "orders", contract=OrderPlaced, sink=[invoices])
        async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> dict[str, str]:
            return {}


class Sku(sg.Contract):
    """A contract whose validator raises what pydantic does not wrap (not a ValueError)."""

    __subject__ = "tests.Sku"
    __version__ = 1
    sku: str

    @field_validator("sku")
    @classmethod
    def known(cls, value: str) -> str:
        if value != "a-1":
            raise LookupError(f"unknown sku {value}")
        return value


def test_a_validator_raising_another_exception_is_dead_lettered_not_a_crash(
    topic_factory: Callable[..., str],
    make_app: Callable[..., Any],
    raw_producer: Producer,
    read_all: Callable[..., list[Message]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A contract's validator that raises an exception pydantic passes on (LookupError)
    fails decoding like a handler's failure in a ConsumerService: a permanent error,
    dead-lettered with its text redacted. The lane crashed the worker instead, its log
    line's traceback quoting the value, and every restart crashed again on the record."""
    src = topic_factory("skus", partitions=1)
    for sku in ("a-1", "SECRET-4111111111111111", "a-1"):
        raw_producer.produce(src, json.dumps({"sku": sku}).encode())
    raw_producer.flush(10)
    app = make_app()
    handled: list[int] = []

    @guarded_agent(app, src, contract=Sku, retry=FAST_RETRY)
    async def stock(event: Sku, ctx: sg.MessageContext) -> None:
        handled.append(ctx.offset)

    async def scenario() -> None:
        assert await until(lambda: len(handled) == 2 or app.should_stop, 30)

    # Faust's and aiokafka's own lines at info and up; aiokafka's debug lines show
    # the records it sends (the dead letter's value among them), as a client's do.
    caplog.set_level(logging.DEBUG, logger="streamguard")
    with caplog.at_level(logging.INFO):
        run_app(app, scenario)
    assert app.crash_reason is None
    assert handled == [0, 2]
    [letter] = read_all(f"{src}.dlq", 1)
    headers = dlq_headers(letter)
    assert headers["sg-dlq-reason"] == "permanent_error"
    assert headers["sg-dlq-error-class"] == "builtins.LookupError"
    assert "SECRET" not in json.dumps(headers)
    assert "SECRET" not in caplog.text


class Scratch:
    """Something a handler builds, which nothing but its locals refers to."""


def test_a_failed_events_handler_frames_are_let_go(
    topic_factory: Callable[..., str],
    make_app: Callable[..., Any],
    raw_producer: Producer,
    read_all: Callable[..., list[Message]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lane holds a transient error while it backs off (inside its ``except``) and a
    dead letter's error until the broker confirms it. Their traceback's frames held the
    handler's locals (the decoded event, what the handler built) and, through them,
    the lane's: alive that long, for the collector to walk. With the collector off,
    only reference counting can have freed them; the error still formats with the
    handler's file, line and function."""
    src = topic_factory("orders", partitions=1)
    items = [LineItem(sku=f"sku-{n}", quantity=1) for n in range(300)]
    for i, customer in enumerate(("flaky", "refused")):
        value = order(i, customer_id=customer, items=items).model_dump_json().encode()
        raw_producer.produce(src, value)
    raw_producer.flush(10)
    app = make_app()
    refs: dict[str, list[weakref.ref[Any]]] = {}
    alive: dict[str, list[bool]] = {}  # the refs, looked at as the lane holds the error
    formatted: list[str] = []

    @guarded_agent(app, src, contract=OrderPlaced, retry=FAST_RETRY)
    async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        scratch = Scratch()
        if event.customer_id == "flaky" and ctx.attempt == 1:
            refs["retry"] = [weakref.ref(scratch)]  # the event itself is tried again
            raise TimeoutError("later")
        if event.customer_id == "refused":
            refs["dead letter"] = [weakref.ref(event), weakref.ref(scratch)]
            raise sg.PermanentError("refused")

    retried = bill.retried

    def retrying(msg: Any, attempt: int, error: BaseException, *verdict: Any) -> None:
        alive["retry"] = [ref() is not None for ref in refs["retry"]]
        retried(msg, attempt, error, *verdict)

    log_line = DeadLetterLog.__call__

    def dead_lettering(self: DeadLetterLog, record: Any, failure: Failure) -> None:
        alive["dead letter"] = [ref() is not None for ref in refs["dead letter"]]
        formatted.append("".join(traceback.format_exception(failure.error)))
        log_line(self, record, failure)

    monkeypatch.setattr(bill, "retried", retrying)
    monkeypatch.setattr(DeadLetterLog, "__call__", dead_lettering)

    async def scenario() -> None:
        assert await until(lambda: "dead letter" in alive or app.should_stop, 30)

    gc.disable()
    try:
        run_app(app, scenario)
    finally:
        gc.enable()
    assert app.crash_reason is None
    assert alive == {"retry": [False], "dead letter": [False, False]}
    [text] = formatted
    assert f'File "{__file__}"' in text
    assert 'in bill\n    raise sg.PermanentError("refused")' in text
    assert text.endswith("streamguard.errors.PermanentError: refused\n")
    assert len(read_all(f"{src}.dlq", 1)) == 1


# How many times Stock's validator has failed, per test: it fails the first try only.
_STOCK_FAILURES: dict[str, int] = {}


class Stock(sg.Contract):
    """A contract whose validator asks a dependency that times out once per record."""

    __subject__ = "tests.Stock"
    __version__ = 1
    sku: str
    run: str

    @field_validator("run")
    @classmethod
    def reachable(cls, value: str) -> str:
        if not _STOCK_FAILURES.get(value):
            _STOCK_FAILURES[value] = 1
            raise TimeoutError("stock service timed out")
        return value


def test_a_transient_decode_failure_spends_the_same_attempts_as_in_a_service(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    make_app: Callable[..., Any],
    raw_producer: Producer,
    read_all: Callable[..., list[Message]],
    start_service: Callable[..., Any],
) -> None:
    """A record whose first try fails transiently in decoding (a validator's timeout) and
    whose later tries fail in the handler gets the policy's attempts in all, as in a
    ``ConsumerService``: the handler sees attempts 2 and 3, and the dead letter says 3.
    Before, the agent started the handler's count afresh after the decode retry: the
    handler ran 3 times (4 tries, beyond the policy's attempts and its budget)."""
    policy = sg.RetryPolicy(attempts=3, base_delay=0.02, max_delay=0.05, max_budget_ms=5_000)
    by_service: list[int] = []
    by_agent: list[int] = []
    src_service, src_agent = topic_factory("stock", partitions=1), topic_factory("stock")
    for src in (src_service, src_agent):
        raw_producer.produce(src, json.dumps({"sku": "a-1", "run": unique(src)}).encode())
    raw_producer.flush(10)

    class Stocking(sg.ConsumerService):
        topic = src_service
        contract = Stock
        group_id = unique("stocking")
        retry = policy
        breaker = sg.CircuitBreaker(enabled=False)  # the agent has none

        def handle(self, event: Stock, ctx: sg.MessageContext) -> None:
            by_service.append(ctx.attempt)
            raise TimeoutError("warehouse timed out")

    running = start_service(Stocking)
    [from_service] = read_all(f"{src_service}.dlq", 1, timeout=30)
    running.stop()

    app = make_app()

    @guarded_agent(app, src_agent, contract=Stock, retry=policy)
    async def stock(event: Stock, ctx: sg.MessageContext) -> None:
        by_agent.append(ctx.attempt)
        raise TimeoutError("warehouse timed out")

    async def scenario() -> None:
        group = str(app.conf.id)
        assert await until(lambda: committed(bootstrap, group, src_agent).get(0) == 1, 30)

    run_app(app, scenario)
    [from_agent] = read_all(f"{src_agent}.dlq", 1)
    assert by_service == [2, 3]
    assert by_agent == by_service
    for letter in (from_service, from_agent):
        headers = dlq_headers(letter)
        assert headers["sg-dlq-reason"] == "retries_exhausted"
        assert headers["sg-dlq-attempts"] == "3"


class _OutageScript:
    """A handler's dependency: a timeout, then a registry outage of ``outage`` seconds
    (the handler's own GuardedProducer cannot reach the registry), one more timeout,
    then success. Keeps the attempt of each call."""

    def __init__(self, outage: float) -> None:
        self.outage = outage
        self.attempts: list[int] = []
        self.started = 0.0
        self.failed_after = False

    def __call__(self, attempt: int) -> None:
        self.attempts.append(attempt)
        if not self.started:
            self.started = time.monotonic()
            raise TimeoutError("warehouse timed out")
        if time.monotonic() - self.started < self.outage:
            raise sg.RegistryUnavailable("schema registry unavailable")
        if not self.failed_after:
            self.failed_after = True
            raise TimeoutError("warehouse timed out")


def test_a_registry_outage_after_a_failure_is_not_charged_to_the_budget_as_in_a_service(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    make_app: Callable[..., Any],
    read_all: Callable[..., list[Message]],
    start_service: Callable[..., Any],
) -> None:
    """A record that failed once, then waited out a registry outage longer than the
    policy's time budget, and then failed once more is retried and handled by a guarded
    agent as by a ``ConsumerService``: the outage is the registry's, not the record's.
    Before, the agent charged the wait to the record's budget, and dead-lettered the
    valid record as ``retries_exhausted`` when the registry was back."""
    by_service, by_agent = _OutageScript(1.5), _OutageScript(1.5)  # the budget is 1 s
    src_service, src_agent = topic_factory("stock", partitions=1), topic_factory("stock")
    producer = sg.GuardedProducer(bootstrap_servers=bootstrap)
    for src in (src_service, src_agent):
        producer.send(src, order(1))
    producer.flush(10)

    class Stocking(sg.ConsumerService):
        topic = src_service
        contract = OrderPlaced
        group_id = unique("stocking")
        retry = FAST_RETRY
        breaker = sg.CircuitBreaker(enabled=False)  # the agent has none

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            by_service(ctx.attempt)

    running = start_service(Stocking)
    assert wait_for(lambda: by_service.attempts[-1:] == [3], 30)
    running.stop()

    app = make_app()

    @guarded_agent(app, src_agent, contract=OrderPlaced, retry=FAST_RETRY)
    async def stock(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        by_agent(ctx.attempt)

    async def scenario() -> None:
        group = str(app.conf.id)
        assert await until(lambda: committed(bootstrap, group, src_agent).get(0) == 1, 30)

    run_app(app, scenario)
    assert read_all(f"{src_service}.dlq", 1, timeout=2) == []
    assert read_all(f"{src_agent}.dlq", 1, timeout=2) == []
    for script in (by_service, by_agent):
        assert script.attempts[0] == 1
        assert set(script.attempts[1:-2]) == {2}  # the waits gave their attempt back
        assert script.attempts[-2:] == [2, 3]


def test_a_crash_leaves_the_consumer_to_the_stop_which_commits_what_was_handled(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    make_app: Callable[..., Any],
    send_orders: Callable[..., None],
) -> None:
    """A handler's crash at offset 3 stops the app, and the stop commits 0-2 through a
    consumer still serving: nothing past 3 runs. Before, ``app.crash`` crashed the
    consumer and its thread too, and the run ended cancelled; the thread shut down
    under the stop's commit, which under load now and then never returned (a
    ``faust worker`` process that hung instead of exiting)."""
    src = topic_factory("orders", partitions=1)
    send_orders(src, 8)
    group = unique("billing")
    app = make_app(group, broker_commit_interval=60)  # only the stop commits
    seen: list[int] = []

    @guarded_agent(app, src, contract=OrderPlaced)
    async def crashing(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        seen.append(ctx.offset)
        if ctx.offset == 3:
            raise Abort("a bug")

    async def until_crashed() -> None:
        assert await until(lambda: app.should_stop, 30)
        assert not app.consumer._thread.crashed  # its thread is left to the stop

    started = time.monotonic()
    run_app(app, until_crashed)  # ends as a stop does, not cancelled with the consumer
    assert time.monotonic() - started < 30
    assert isinstance(app.crash_reason, Abort)
    assert seen == [0, 1, 2, 3]
    assert committed(bootstrap, group, src) == {0: 3}


def test_a_transient_failure_after_the_stop_began_is_a_dropped_retry_not_counted(
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    make_app: Callable[..., Any],
    send_orders: Callable[..., None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A handler that fails transiently once the app's stop has begun gets no retry
    (the lane gives the event up, unacked): the line says it is dropped and
    ``streamguard_retries_total`` does not count it, as in a ``ConsumerService``. It
    logged ``retrying message`` and counted a retry that never ran."""
    src = topic_factory("orders", partitions=1)
    send_orders(src, 1)
    app = make_app(unique("billing"))
    started = asyncio.Event()

    @guarded_agent(app, src, contract=OrderPlaced)
    async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        started.set()
        for _ in range(400):  # until the stop begins, 20 s at most
            if app.should_stop:
                break
            await asyncio.sleep(0.05)
        raise TimeoutError("no answer")

    async def until_called() -> None:
        await asyncio.wait_for(started.wait(), 30)

    with caplog.at_level("INFO", logger="streamguard"):
        run_app(app, until_called)
    events = [r.getMessage() for r in caplog.records]
    assert "retrying message" not in events
    assert any(e.startswith("retry dropped") for e in events)
    labels = {"runtime": "faust", "topic": src}
    assert (bill.registry.get_sample_value("streamguard_retries_total", labels) or 0.0) == 0


def test_a_crash_does_not_wait_for_a_handler_running_in_another_partition(
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    make_app: Callable[..., Any],
    send_orders: Callable[..., None],
) -> None:
    """One partition's crash stops the app at once, though another partition's handler
    runs for 30 s: a crash is not a stop that lets work finish. Before, the stop waited
    for that handler (``faust worker`` forever, for one that never returns)."""
    src = topic_factory("orders", partitions=2)
    send_orders(src, 10, key=str)
    app = make_app(unique("billing"))
    slow: list[int] = []  # the partition whose first event is slow

    @guarded_agent(app, src, contract=OrderPlaced)
    async def crashing(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        if not slow:
            slow.append(ctx.partition)
            await asyncio.sleep(30)
        elif ctx.partition != slow[0]:
            raise Abort("a bug")

    async def until_crashed() -> None:
        assert await until(lambda: app.should_stop, 30)

    started = time.monotonic()
    run_app(app, until_crashed)
    assert isinstance(app.crash_reason, Abort)
    assert time.monotonic() - started < 15

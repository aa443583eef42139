"""Handlers of every shape either run, or the service refuses them: a record never
counts as handled when its handler's body did not run."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Producer

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from tests.runtime.conftest import Running, committed, wait_for

ran: list[int] = []


class AsyncCallable:
    """An object whose ``__call__`` is an ``async def``, assigned as a handler."""

    async def __call__(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
        await asyncio.sleep(0)
        ran.append(ctx.offset)


def without_wraps(fn: Any) -> Any:
    """A decorator whose plain ``def`` wrapper keeps no ``__wrapped__``."""

    def wrapper(*args: Any) -> Any:
        return fn(*args)

    return wrapper


async def _record(ctx: sg.MessageContext) -> None:
    await asyncio.sleep(0)
    ran.append(ctx.offset)


@pytest.mark.parametrize("ordering", ["partition", "key"])
def test_an_object_with_an_async_call_is_awaited(
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    send_orders: Callable[..., None],
    ordering: str,
) -> None:
    """A callable object whose ``__call__`` is ``async def`` runs on the event loop and is
    awaited. Before, it was taken for a sync handler: its coroutine was never awaited and
    the record was counted handled and committed."""
    src = topic_factory("orders")
    send_orders(src, 2)
    ran.clear()

    class Billing(sg.ConsumerService):
        topic, contract, group_id = src, OrderPlaced, unique("billing")
        handle = AsyncCallable()  # type: ignore[assignment]

    Billing.ordering = ordering  # type: ignore[assignment]
    running = start_service(Billing)
    assert wait_for(
        lambda: running.metric("streamguard_messages_total", topic=src, outcome="handled") == 2
    )
    assert sorted(ran) == [0, 1]


@pytest.mark.parametrize(
    ("ordering", "shape"),
    [
        ("partition", "no wraps"),
        ("key", "no wraps"),
        ("partition", "returns a coroutine"),
        ("key", "returns a coroutine"),
        ("partition", "async, returns a coroutine"),
        ("partition", "tombstone, no wraps"),
        ("key", "tombstone, no wraps"),
    ],
)
def test_a_handler_returning_its_work_unrun_stops_the_service_and_loses_nothing(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    send_orders: Callable[..., None],
    raw_producer: Producer,
    ordering: str,
    shape: str,
) -> None:
    """A plain ``def`` that returns a coroutine (an ``async def`` under a decorator
    without ``functools.wraps``, or a call it forgot to await) cannot be told from a
    sync handler until it returns: ``run()`` then raises a ``TypeError`` naming it, and
    nothing is committed. Before, the coroutine was dropped unawaited and the record
    counted handled and committed: lost."""
    src = topic_factory("orders")
    group = unique("billing")
    tombstone = shape.startswith("tombstone")
    if tombstone:
        raw_producer.produce(src, key=b"k", value=None)
        raw_producer.flush(10)
    else:
        send_orders(src, 1, key=lambda i: "k")
    ran.clear()

    class Billing(sg.ConsumerService):
        topic, contract, group_id = src, OrderPlaced, group

        if shape == "no wraps":

            @without_wraps
            async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
                await _record(ctx)

        elif shape == "returns a coroutine":

            def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> Any:
                return _record(ctx)  # not awaited

        elif shape == "async, returns a coroutine":

            async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> Any:
                return _record(ctx)  # the await forgotten

        else:

            def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

            @without_wraps
            async def handle_tombstone(self, ctx: sg.MessageContext) -> None:
                await _record(ctx)

    Billing.ordering = ordering  # type: ignore[assignment]
    crashed = start_service(Billing)
    crashed.thread.join(30)
    assert not crashed.thread.is_alive(), "the service went on"
    assert [type(e) for e in crashed.error] == [TypeError]
    which = "handle_tombstone" if tombstone else "handle"
    assert f"Billing.{which} returned coroutine" in str(crashed.error[0])
    assert ran == []
    assert crashed.metric("streamguard_messages_total", topic=src, outcome="handled") == 0
    assert committed(bootstrap, group, src).get(0, 0) == 0


@pytest.mark.parametrize("method", ["handle", "handle_tombstone"])
@pytest.mark.parametrize("kind", ["def", "async def"])
def test_a_generator_handler_is_refused_when_the_class_is_defined(method: str, kind: str) -> None:
    """A handler with a ``yield`` runs none of its body when called: the class is refused
    at import, naming it. Before, every record counted as handled, unrun."""

    def gen(self: Any, *args: Any) -> Any:
        yield

    async def agen(self: Any, *args: Any) -> Any:
        yield

    attrs: dict[str, Any] = {
        "topic": "orders",
        "contract": OrderPlaced,
        "group_id": "billing",
        "handle": lambda self, event, ctx: None,
        method: gen if kind == "def" else agen,
    }
    with pytest.raises(sg.ConfigurationError, match=f"Billing.{method} is a generator"):
        type("Billing", (sg.ConsumerService,), attrs)


@pytest.mark.parametrize(
    "hook", ["on_start", "on_stop", "on_assign", "on_revoke", "on_dead_letter"]
)
def test_an_async_hook_is_refused_when_the_class_is_defined(hook: str) -> None:
    """Hooks are called on the runtime's threads and never awaited: an ``async def``
    one returned its coroutine unrun, so it silently never ran (no alert for a dead
    letter, nothing set up in ``on_start``). The class is refused at import, naming it."""

    async def coro_hook(self: Any, *args: Any) -> None:
        pass

    attrs: dict[str, Any] = {
        "topic": "orders",
        "contract": OrderPlaced,
        "group_id": "billing",
        "handle": lambda self, event, ctx: None,
        hook: coro_hook,
    }
    with pytest.raises(sg.ConfigurationError, match=f"Billing.{hook} is 'async def'"):
        type("Billing", (sg.ConsumerService,), attrs)


@pytest.mark.parametrize("ordering", ["key", "none"])
def test_a_sync_handler_raising_stop_iteration_on_the_loop_gets_an_outcome(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    send_orders: Callable[..., None],
    ordering: str,
) -> None:
    """A sync handler run by the event loop's thread pool that raises ``StopIteration``
    (``next()`` on an empty iterator) is dead-lettered as a permanent error, as on a
    worker thread. Before, asyncio refused the exception into the awaited future, the
    call never finished, and its key stalled uncommitted while ``/readyz`` said ready."""
    src = topic_factory("orders")
    group = unique("billing")
    send_orders(src, 3, key=lambda i: "k")

    class Billing(sg.ConsumerService):
        topic, contract, group_id = src, OrderPlaced, group

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            if ctx.offset == 1:
                next(iter(()))

    Billing.ordering = ordering  # type: ignore[assignment]
    running = start_service(Billing)
    assert wait_for(lambda: committed(bootstrap, group, src).get(0) == 3, 20)
    assert (
        running.metric("streamguard_dead_letters_total", topic=src, reason="permanent_error") == 1
    )
    assert running.metric("streamguard_messages_total", topic=src, outcome="handled") == 2


@pytest.mark.parametrize("ordering", ["partition", "key"])
def test_a_handler_returning_a_future_is_handled(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    send_orders: Callable[..., None],
    ordering: str,
) -> None:
    """An ``async def`` handler that returns an asyncio future (``return await
    producer.send(...)`` with aiokafka, a Faust ``topic.send``) ran: its records are
    handled and committed. Before, the future was taken for work handed back unrun and
    the service stopped on the first record, and on it again after every restart."""
    src = topic_factory("orders")
    group = unique("billing")
    send_orders(src, 2)
    ran.clear()

    class Billing(sg.ConsumerService):
        topic, contract, group_id = src, OrderPlaced, group

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> Any:
            ran.append(ctx.offset)
            sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            sent.set_result(None)  # a send's metadata, say
            return sent

    Billing.ordering = ordering  # type: ignore[assignment]
    running = start_service(Billing)
    assert wait_for(lambda: committed(bootstrap, group, src).get(0) == 2, 20)
    assert sorted(ran) == [0, 1]
    assert running.metric("streamguard_messages_total", topic=src, outcome="handled") == 2
    assert not running.error


def run_to_the_end(fn: Any) -> Any:
    """A decorator whose plain ``def`` wrapper (``functools.wraps``) runs the ``async def``
    itself, as asgiref's ``async_to_sync`` does."""

    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        return asyncio.run(fn(*args))

    return wrapper


@pytest.mark.parametrize("ordering", ["partition", "key"])
def test_a_wrapper_that_runs_its_async_def_itself_is_handled(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    send_orders: Callable[..., None],
    ordering: str,
) -> None:
    """A plain ``def`` wrapper that keeps ``__wrapped__`` and runs its ``async def`` to
    the end itself is called off the loop: its records are handled, once. Before, it was
    called on the loop's thread, where ``asyncio.run`` refuses to start, and every
    record was dead-lettered as a permanent error, its handler never run."""
    src = topic_factory("orders")
    group = unique("billing")
    send_orders(src, 2)
    ran.clear()

    class Billing(sg.ConsumerService):
        topic, contract, group_id = src, OrderPlaced, group

        @run_to_the_end
        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            await _record(ctx)

    Billing.ordering = ordering  # type: ignore[assignment]
    running = start_service(Billing)
    assert wait_for(lambda: committed(bootstrap, group, src).get(0) == 2, 20)
    assert sorted(ran) == [0, 1]
    assert running.metric("streamguard_messages_total", topic=src, outcome="handled") == 2
    assert (
        running.metric("streamguard_dead_letters_total", topic=src, reason="permanent_error") == 0
    )

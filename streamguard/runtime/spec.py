"""``ServiceSpec``: a service's declaration, frozen, plus the callables the runtime calls.

The runtime never reads the user's service object: it is built from this value once,
when the service is constructed. A subclass may then use any attribute name of its
own (``self.metrics``, ``self.name``, ...) without reaching into the runtime, and the
runtime's pieces can be built and tested from a spec alone.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from streamguard.codecs import Codec
from streamguard.contracts import Contract
from streamguard.deadletter import Failure
from streamguard.errors import ConfigurationError
from streamguard.policy import CircuitBreaker, RetryPolicy
from streamguard.runtime.context import MessageContext
from streamguard.runtime.options import ServiceOptions

DriftPolicy = Literal["count", "dead_letter"]
Ordering = Literal["partition", "key", "none"]
Handler = Callable[[Any, MessageContext], Awaitable[None] | None]
TombstoneHandler = Callable[[MessageContext], Awaitable[None] | None]
DeadLetterHook = Callable[[MessageContext, Failure], None]


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """What a service consumes and how; see ``ConsumerService`` for each field."""

    name: str
    topic: str
    contract: type[Contract]
    group_id: str
    dead_letter_topic: str
    retry: RetryPolicy
    transient: tuple[type[BaseException], ...]
    codec: Codec
    drift: DriftPolicy
    include_error_text: bool
    options: ServiceOptions
    handle: Handler
    handle_tombstone: TombstoneHandler | None = None
    on_dead_letter: DeadLetterHook | None = None
    ordering: Ordering = "partition"
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)

    def names(self) -> dict[str, str]:
        """Its service and topic, for the log lines of one service: a process may run
        several (one per topic), and each line must say whose it is."""
        return {"service": self.name, "topic": self.topic}

    def dead_letter_names(self) -> dict[str, str]:
        """``names()`` and its DLQ, for the lines about the service's dead letters."""
        return {**self.names(), "dlq": self.dead_letter_topic}

    @property
    def on_event_loop(self) -> bool:
        """True when handlers run on the event loop: an ``async def`` handler, or
        ordering by key or none (see ``eventloop``); else on worker threads."""
        return (
            self.ordering != "partition"
            or is_async(self.handle)
            or (self.handle_tombstone is not None and is_async(self.handle_tombstone))
        )


def is_async(fn: Callable[..., Any]) -> bool:
    """Whether calling ``fn`` gives a coroutine to await: an ``async def`` (a
    ``functools.partial`` of one too), one wrapped by a decorator that keeps
    ``__wrapped__`` (``functools.wraps``), whose plain ``def`` wrapper returns the
    coroutine, or an object whose ``__call__`` is an ``async def``. Run as a sync
    handler, that coroutine was never awaited and its record counted as handled."""
    return inspect.iscoroutinefunction(_code_of(fn))


def async_only_inside(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` is async (``is_async``) only through ``__wrapped__``: its outer
    callable is a plain ``def``. That wrapper may return the coroutine (a decorator
    that just passes the call on), or run it to the end itself (``asyncio.run``,
    asgiref's ``async_to_sync``), which it cannot do on the event loop's own thread;
    nothing tells the two apart before the call."""
    return is_async(fn) and not inspect.iscoroutinefunction(_called(fn))


def check_handler(fn: Callable[..., Any], name: str) -> None:
    """Refuse a handler whose call returns a generator: a ``def`` with ``yield`` (or an
    ``async def`` with one) runs none of its body when called, so each record would
    count as handled though nothing ran. ``name`` names it in the error."""
    code = _code_of(fn)
    if inspect.isgeneratorfunction(code) or inspect.isasyncgenfunction(code):
        raise ConfigurationError(
            f"{name} is a generator (it has a yield): calling it runs none of its body. "
            "Remove the yield, or make it 'async def' and await what it waits for"
        )


def check_hook(fn: Callable[..., Any], name: str) -> None:
    """Refuse a hook that is ``async def`` (or a generator): hooks are called on the
    runtime's threads and never awaited, so its body would never run. ``name`` names
    it in the error."""
    code = _code_of(fn)
    if is_async(fn) or inspect.isgeneratorfunction(code) or inspect.isasyncgenfunction(code):
        raise ConfigurationError(
            f"{name} is 'async def' (or has a yield): hooks are called, never awaited, "
            "so its body would never run. Make it a plain def"
        )


def check_returned(result: object, name: str) -> None:
    """A handler returned ``result``, not None: refuse work it handed back unrun.

    A coroutine or a generator means the handler's work did not happen (a plain ``def``
    wrapper of an ``async def`` without ``functools.wraps``, or a forgotten ``await`` in
    a ``return``). The record must not count as handled: a
    ``TypeError`` out of the lane stops the service as a bug does, and the record stays
    uncommitted. Any other value is ignored, as it always was. Called only for a result
    that is not None, never for the usual ``return``.
    """
    if returned_unrun(result):
        raise unrun_error(result, name)


def unrun_error(result: object, name: str) -> TypeError:
    """The error for unrun work ``result`` that handler ``name`` returned; a coroutine
    or generator is closed, rather than warned about when it is collected."""
    what = getattr(result, "__qualname__", None) or type(result).__name__
    if inspect.iscoroutine(result) or inspect.isgenerator(result):
        result.close()
    return TypeError(
        f"{name} returned {type(result).__name__} {what} instead of running it, so its "
        "record was not handled. Make it 'async def' (a decorator around an async def "
        "must keep __wrapped__: functools.wraps), or await the work inside it"
    )


def returned_unrun(result: object) -> bool:
    """Whether a handler's ``result`` is work it handed back unrun: a coroutine or other
    awaitable, or a generator (see ``check_returned``).

    Not an asyncio future or task: it stands for work already under way or done, which
    a handler may well return, e.g. ``return await producer.send(...)`` with aiokafka,
    or ``return await topic.send(...)`` in a Faust agent (both a future of the record's
    metadata). Refused, such a handler stopped the service on its first record, and
    again on that record after every restart.
    """
    # asyncio.isfuture's own test, without importing asyncio, which a sync service
    # never loads (1.5 MiB and 12 ms of import; tests/test_public_api.py).
    if (
        hasattr(type(result), "_asyncio_future_blocking")
        and getattr(result, "_asyncio_future_blocking", None) is not None
    ):
        return False
    return inspect.isawaitable(result) or inspect.isgenerator(result) or inspect.isasyncgen(result)


def _code_of(fn: Callable[..., Any]) -> Callable[..., Any]:
    """What runs when ``fn`` is called: through ``__wrapped__``, and to the ``__call__``
    of a callable object (``inspect`` looks through partials and methods itself)."""
    code: Callable[..., Any] = inspect.unwrap(_called(inspect.unwrap(fn)))
    return code


def _called(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, or for a callable object (not a function, method, partial or class) its
    class's ``__call__``."""
    if callable(fn) and not inspect.isroutine(fn) and not isinstance(fn, functools.partial | type):
        return type(fn).__call__
    return fn

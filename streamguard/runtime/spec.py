"""``ServiceSpec``: a service's declaration, frozen, plus the callables the runtime calls.

The runtime never reads the user's service object: it is built from this value once,
when the service is constructed. A subclass may then use any attribute name of its
own (``self.metrics``, ``self.name``, ...) without reaching into the runtime, and the
runtime's pieces can be built and tested from a spec alone.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from streamguard.codecs import Codec
from streamguard.contracts import Contract
from streamguard.deadletter import Failure
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
    """Whether calling ``fn`` gives a coroutine to await: an ``async def``, or one
    wrapped by a decorator that keeps ``__wrapped__`` (``functools.wraps``), whose
    plain ``def`` wrapper returns the coroutine. Run as a sync handler, that coroutine
    was never awaited and its record counted as handled."""
    return inspect.iscoroutinefunction(inspect.unwrap(fn))

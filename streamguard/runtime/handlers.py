"""Calling the user's handler from a worker thread, sync or async.

Sync handlers are called directly on the worker. An async handler runs on the
service's event-loop thread while the worker waits for it, which keeps per-partition
order; handlers of different partitions interleave on the loop while they await.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from collections.abc import Callable
from typing import Any

from streamguard.errors import HandlerAbandoned

# How often a worker waiting for an async handler checks whether shutdown gave up.
_ABANDON_CHECK = 0.2


def invoker(
    fn: Callable[..., Any],
    loop: asyncio.AbstractEventLoop | None,
    abandon: threading.Event,
) -> Callable[..., None]:
    """A plain callable that runs ``fn`` to completion on the calling thread's behalf.

    Raises ``HandlerAbandoned`` when ``abandon`` is set while an async handler still
    runs: shutdown stopped waiting, the coroutine is cancelled and its message stays
    uncommitted.
    """
    if not inspect.iscoroutinefunction(fn):
        return fn
    if loop is None:
        raise RuntimeError("an async handler needs the service's event loop")
    running_loop = loop

    def run_async(*args: Any) -> None:
        future = asyncio.run_coroutine_threadsafe(fn(*args), running_loop)
        while True:
            try:
                future.result(timeout=_ABANDON_CHECK)
                return
            except concurrent.futures.TimeoutError:
                if abandon.is_set():
                    future.cancel()
                    raise HandlerAbandoned from None

    return run_async

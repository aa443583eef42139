"""``max_in_flight``: how many handlers may run at once on the event loop, service-wide.

A counting semaphore of the loop thread's own, cheaper than ``asyncio.Semaphore`` on
the hot path: ``try_take`` costs two integer operations when a slot is free, and only
a handler that must wait creates a future. Loop thread only.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Slots:
    """Handler slots; ``running`` is the gauge of handlers holding one."""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        self.limit = limit
        self._free = limit
        self._loop = loop
        # Read by a holder that keeps its slot between records: non-empty means someone
        # wants one, and the holder gives it back rather than keep it.
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.running = 0

    def try_take(self) -> bool:
        """Take a free slot now, without waiting; False if none is free."""
        if self._free > 0:
            self._free -= 1
            self.running += 1
            return True
        return False

    async def take(self, *, first: bool = False) -> None:
        """Take a slot, waiting in arrival order for one to be given back, or ahead of
        every waiter with ``first`` (a retry: older than anything queued behind it)."""
        if self.try_take():
            return
        waiter: asyncio.Future[None] = self._loop.create_future()
        if first:
            self.waiters.appendleft(waiter)
        else:
            self.waiters.append(waiter)
        try:
            await waiter  # the slot is handed over by _pass
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._pass()  # handed a slot while being cancelled: pass it on
            raise
        self.running += 1

    def give(self) -> None:
        """Give a slot back: to the first waiter, else to the free count."""
        self.running -= 1
        self._pass()

    def _pass(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to the waiter
                return
        self._free += 1

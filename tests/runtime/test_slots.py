"""Handler slots: at most `limit` at once, waiters served in order, none leaked on cancel."""

from __future__ import annotations

import asyncio

from streamguard.runtime.slots import Slots


def test_slots_bound_running_handlers_and_serve_waiters_in_order() -> None:
    """Taking past the limit waits; each give hands the slot to the oldest waiter."""

    async def scenario() -> list[str]:
        slots = Slots(2, asyncio.get_running_loop())
        order: list[str] = []
        assert slots.try_take()
        assert slots.try_take()
        assert not slots.try_take()

        async def waiter(name: str) -> None:
            await slots.take()
            order.append(name)

        first = asyncio.create_task(waiter("first"))
        second = asyncio.create_task(waiter("second"))
        await asyncio.sleep(0)
        assert slots.running == 2
        slots.give()
        await first
        slots.give()
        await second
        assert slots.running == 2
        return order

    assert asyncio.run(scenario()) == ["first", "second"]


def test_a_cancelled_waiter_leaks_no_slot() -> None:
    """A waiter cancelled after a slot was handed to it passes the slot on."""

    async def scenario() -> int:
        slots = Slots(1, asyncio.get_running_loop())
        assert slots.try_take()
        task = asyncio.create_task(slots.take())
        await asyncio.sleep(0)
        slots.give()  # handed to the waiter ...
        task.cancel()  # ... which is cancelled before it runs
        await asyncio.gather(task, return_exceptions=True)
        assert slots.try_take()  # the slot came back
        return slots.running

    assert asyncio.run(scenario()) == 1


def test_a_holder_sees_when_someone_wants_its_slot() -> None:
    """A partition run keeps its slot from one record to the next only while nobody
    waits: ``waiters`` fills with the first waiter and empties once it is served."""

    async def scenario() -> None:
        slots = Slots(1, asyncio.get_running_loop())
        assert slots.try_take()
        assert not slots.waiters
        waiter = asyncio.create_task(slots.take())
        await asyncio.sleep(0)
        assert slots.waiters
        slots.give()
        await waiter
        assert not slots.waiters
        assert slots.running == 1

    asyncio.run(scenario())


def test_a_retry_waits_ahead_of_every_waiter() -> None:
    """``take(first=True)`` (a retry) is served before waiters that came earlier."""

    async def scenario() -> list[str]:
        slots = Slots(1, asyncio.get_running_loop())
        order: list[str] = []
        assert slots.try_take()

        async def waiter(name: str, first: bool) -> None:
            await slots.take(first=first)
            order.append(name)
            slots.give()

        tasks = [asyncio.create_task(waiter(f"new-{i}", False)) for i in range(3)]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(waiter("retry", True)))
        await asyncio.sleep(0)
        slots.give()
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(scenario()) == ["retry", "new-0", "new-1", "new-2"]

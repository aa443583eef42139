"""Services run as separate processes by the crash and signal tests.

Configured by environment variables because ``streamguard run`` imports them by name.
"""

from __future__ import annotations

import os
import time

from confluent_kafka import KafkaError, KafkaException

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced


class Recorder(sg.ConsumerService):
    """Appends ``partition:offset`` of each handled message to $SG_TEST_OUT, slowly."""

    topic = os.environ.get("SG_TEST_TOPIC", "sg-test-unset")
    contract = OrderPlaced
    group_id = os.environ.get("SG_TEST_GROUP", "sg-test-unset")
    options = sg.ServiceOptions(
        commit_interval=0.2,
        batch_size=20,
        startup_timeout=float(os.environ.get("SG_TEST_STARTUP_TIMEOUT", "30")),
    )

    def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
        time.sleep(float(os.environ.get("SG_TEST_DELAY", "0")))
        with open(os.environ["SG_TEST_OUT"], "a") as out:
            out.write(f"{ctx.partition}:{ctx.offset}\n")
            out.flush()


class StuckAsync(sg.ConsumerService):
    """An async handler that outlives any shutdown timeout (it awaits for a minute)."""

    topic = os.environ.get("SG_TEST_TOPIC", "sg-test-unset")
    contract = OrderPlaced
    group_id = os.environ.get("SG_TEST_GROUP", "sg-test-unset")
    options = sg.ServiceOptions(shutdown_timeout=1.0, revoke_timeout=1.0)

    async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
        import asyncio

        with open(os.environ["SG_TEST_OUT"], "a") as out:
            out.write("started\n")
        await asyncio.sleep(60)


class KeyedRecorder(sg.ConsumerService):
    """Like Recorder, with ordering by key and an async handler that awaits its delay."""

    topic = os.environ.get("SG_TEST_TOPIC", "sg-test-unset")
    contract = OrderPlaced
    group_id = os.environ.get("SG_TEST_GROUP", "sg-test-unset")
    ordering = "key"
    options = sg.ServiceOptions(commit_interval=0.2, batch_size=50, max_in_flight=32)

    async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
        import asyncio

        await asyncio.sleep(float(os.environ.get("SG_TEST_DELAY", "0")))
        with open(os.environ["SG_TEST_OUT"], "a") as out:
            out.write(f"{ctx.partition}:{ctx.offset}\n")
            out.flush()


class ExitsWithTheRecord(sg.ConsumerService):
    """Raises ``SystemExit`` quoting the record's customer: no outcome, a crash."""

    topic = os.environ.get("SG_TEST_TOPIC", "sg-test-unset")
    contract = OrderPlaced
    group_id = os.environ.get("SG_TEST_GROUP", "sg-test-unset")

    def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
        raise SystemExit(f"exit {event.customer_id}")


class CancelledWithTheRecord(sg.ConsumerService):
    """An async handler raising its own ``CancelledError`` quoting the record's customer."""

    topic = os.environ.get("SG_TEST_TOPIC", "sg-test-unset")
    contract = OrderPlaced
    group_id = os.environ.get("SG_TEST_GROUP", "sg-test-unset")

    async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
        import asyncio

        raise asyncio.CancelledError(f"cancelled for {event.customer_id}")


class StartFails(sg.ConsumerService):
    """An ``on_start`` that raises a plain exception quoting $SG_TEST_SECRET."""

    topic = os.environ.get("SG_TEST_TOPIC", "sg-test-unset")
    contract = OrderPlaced
    group_id = os.environ.get("SG_TEST_GROUP", "sg-test-unset")

    def on_start(self) -> None:
        raise RuntimeError(f"cannot open the ledger with {os.environ.get('SG_TEST_SECRET')}")

    def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...


class StartKafkaFails(StartFails):
    """An ``on_start`` that raises a ``KafkaException`` quoting $SG_TEST_SECRET."""

    def on_start(self) -> None:
        secret = os.environ.get("SG_TEST_SECRET")
        raise KafkaException(KafkaError(KafkaError._FAIL, f"cannot reach {secret}"))


class StartExits(StartFails):
    """An ``on_start`` that calls ``sys.exit($SG_TEST_EXIT_CODE)``."""

    def on_start(self) -> None:
        raise SystemExit(int(os.environ["SG_TEST_EXIT_CODE"]))


class AssignExits(StartFails):
    """An ``on_assign`` that calls ``sys.exit($SG_TEST_EXIT_CODE)``."""

    def on_start(self) -> None: ...

    def on_assign(self, partitions: list[int]) -> None:
        raise SystemExit(int(os.environ["SG_TEST_EXIT_CODE"]))


class StopExits(sg.ConsumerService):
    """Records each record's offset in $SG_TEST_OUT; ``on_stop`` calls
    ``sys.exit($SG_TEST_EXIT_CODE)``."""

    topic = os.environ.get("SG_TEST_TOPIC", "sg-test-unset")
    contract = OrderPlaced
    group_id = os.environ.get("SG_TEST_GROUP", "sg-test-unset")

    def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
        with open(os.environ["SG_TEST_OUT"], "a") as out:
            out.write(f"{ctx.offset}\n")

    def on_stop(self) -> None:
        raise SystemExit(int(os.environ["SG_TEST_EXIT_CODE"]))


def _holds(offset: int) -> bool:
    """Whether the record at ``offset`` is the one $SG_TEST_HOLD names: its handler
    writes ``held`` and then waits (a minute at most) for the file $SG_TEST_RELEASE."""
    if offset != int(os.environ.get("SG_TEST_HOLD", "-1")):
        return False
    with open(os.environ["SG_TEST_OUT"], "a") as out:
        out.write("held\n")
    return True


def _released() -> bool:
    return os.path.exists(os.environ.get("SG_TEST_RELEASE", "/nonexistent"))


def _record(ctx: sg.MessageContext) -> None:
    with open(os.environ["SG_TEST_OUT"], "a") as out:
        out.write(f"{ctx.partition}:{ctx.offset}\n")


_HOLDING_OPTIONS = sg.ServiceOptions(
    commit_interval=0.2,
    shutdown_timeout=float(os.environ.get("SG_TEST_SHUTDOWN", "20")),
    revoke_timeout=1.0,
)


class Holding(sg.ConsumerService):
    """Records each handled message as Recorder does; the one at $SG_TEST_HOLD waits
    first (see ``_holds``). Ordered as $SG_TEST_ORDERING says."""

    topic = os.environ.get("SG_TEST_TOPIC", "sg-test-unset")
    contract = OrderPlaced
    group_id = os.environ.get("SG_TEST_GROUP", "sg-test-unset")
    ordering = os.environ.get("SG_TEST_ORDERING", "partition")  # type: ignore[assignment]
    options = _HOLDING_OPTIONS

    def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
        if _holds(ctx.offset):
            deadline = time.monotonic() + 60
            while not _released() and time.monotonic() < deadline:
                time.sleep(0.05)
        _record(ctx)


class HoldingAsync(sg.ConsumerService):
    """Holding, with an ``async def`` handler that awaits while it waits."""

    topic = os.environ.get("SG_TEST_TOPIC", "sg-test-unset")
    contract = OrderPlaced
    group_id = os.environ.get("SG_TEST_GROUP", "sg-test-unset")
    ordering = os.environ.get("SG_TEST_ORDERING", "partition")  # type: ignore[assignment]
    options = _HOLDING_OPTIONS

    async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
        import asyncio

        if _holds(ctx.offset):
            deadline = time.monotonic() + 60
            while not _released() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        _record(ctx)

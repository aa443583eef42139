"""The service the randomized crash test kills: ``python -m tests.faults.crashapp``.

Configured by environment variables (its handler kind, ordering and ``max_in_flight``
among them). Each record's fate is written in the record (``customer_id`` is
``kind:fails:delay_ms``): ``ok``, ``transient`` (fails ``fails`` times, then succeeds)
or ``permanent``. Everything the handlers and hooks do is appended to a log, one line
per write, fsynced before the handler goes on, so that a SIGKILL loses nothing of it:

    RUN EVENT PARTITION OFFSET ATTEMPT KEY

with EVENT ``start`` (a handler call began), ``handled`` (it is about to return),
``transient`` and ``permanent`` (it is about to raise), ``dead`` (``on_dead_letter``:
the DLQ acknowledged it; ATTEMPT holds the reason) and ``assign`` (OFFSET holds the
partitions, comma-separated).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import streamguard as sg
from streamguard.deadletter import Failure
from streamguard.demo.contracts import OrderPlaced

RUN = os.environ.get("SG_TEST_RUN", "0")
HANDLER = os.environ.get("SG_TEST_HANDLER", "sync")
ORDERING = os.environ.get("SG_TEST_ORDERING", "partition")
MAX_IN_FLIGHT = int(os.environ.get("SG_TEST_MAX_IN_FLIGHT", "256"))
DLQ_LINGER_MS = int(os.environ.get("SG_TEST_DLQ_LINGER_MS", "0"))


class Log:
    """An append-only file; every line is on disk before ``write`` returns."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, event: str, partition: int, offset: object, attempt: object, key: Any) -> None:
        text = key.decode() if isinstance(key, bytes) else "-"
        os.write(self._fd, f"{RUN} {event} {partition} {offset} {attempt} {text}\n".encode())
        os.fsync(self._fd)


def fate(event: OrderPlaced) -> tuple[str, int, float]:
    """What the record asks of its handler: its kind, failures before success, delay."""
    kind, fails, delay_ms = event.customer_id.split(":")
    return kind, int(fails), int(delay_ms) / 1000


class Chaos(sg.ConsumerService):
    __abstract__ = True
    topic = os.environ.get("SG_TEST_TOPIC", "sg-test-unset")
    contract = OrderPlaced
    group_id = os.environ.get("SG_TEST_GROUP", "sg-test-unset")
    ordering = ORDERING  # type: ignore[assignment]
    # Enough attempts and budget that a transient record always succeeds in the end;
    # waits long enough (up to 0.3 s) for a kill to land in one.
    retry = sg.RetryPolicy(attempts=5, base_delay=0.1, max_delay=0.3, max_budget_ms=120_000)
    options = sg.ServiceOptions(
        commit_interval=0.2,
        batch_size=20,
        max_in_flight=MAX_IN_FLIGHT,
        shutdown_timeout=5.0,
        revoke_timeout=5.0,
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log = Log(os.environ["SG_TEST_OUT"])

    def _before(self, event: OrderPlaced, ctx: sg.MessageContext) -> tuple[str, int, float]:
        self.log.write("start", ctx.partition, ctx.offset, ctx.attempt, ctx.key)
        return fate(event)

    def _after(self, kind: str, fails: int, ctx: sg.MessageContext) -> None:
        if kind == "permanent":
            self.log.write("permanent", ctx.partition, ctx.offset, ctx.attempt, ctx.key)
            raise sg.PermanentError("refused for good")
        if kind == "transient" and ctx.attempt <= fails:
            self.log.write("transient", ctx.partition, ctx.offset, ctx.attempt, ctx.key)
            raise sg.TransientError("not yet")
        self.log.write("handled", ctx.partition, ctx.offset, ctx.attempt, ctx.key)

    def on_dead_letter(self, ctx: sg.MessageContext, failure: Failure) -> None:
        self.log.write("dead", ctx.partition, ctx.offset, failure.reason, ctx.key)

    def on_assign(self, partitions: list[int]) -> None:
        self.log.write("assign", -1, ",".join(map(str, partitions)) or "-", 0, None)


class SyncChaos(Chaos):
    def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
        kind, fails, delay = self._before(event, ctx)
        time.sleep(delay)
        self._after(kind, fails, ctx)


class AsyncChaos(Chaos):
    async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
        kind, fails, delay = self._before(event, ctx)
        await asyncio.sleep(delay)
        self._after(kind, fails, ctx)


def main() -> None:
    from streamguard.observe.logs import configure_logging

    configure_logging("json", "WARNING")
    cls = SyncChaos if HANDLER == "sync" else AsyncChaos
    service = cls(
        os.environ["SG_TEST_BOOTSTRAP"],
        kafka_config={"session.timeout.ms": 2000, "heartbeat.interval.ms": 500},
        dead_letter_config={"linger.ms": DLQ_LINGER_MS},
    )
    service.run()


if __name__ == "__main__":
    main()

"""A record whose header key is not UTF-8 goes on without its headers, never crashing.

confluent-kafka cannot read such a header (any producer may write one): its first
``headers()`` call fails, and later calls return a list that crashes the process when
touched. Before ``headers.read``, the runtime read the headers again while writing the
record's dead letter, took the failure for an unwritable DLQ, and crashed (SIGSEGV) on
the retry, on every restart.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from tests.runtime.conftest import Running, committed, dlq_headers, order, wait_for

pytestmark = pytest.mark.broker

# confluent-kafka's producer encodes every header key as UTF-8; aiokafka's pure-Python
# record builder calls the key's own encode(), so a str subclass puts any bytes on the wire.
PRODUCE = textwrap.dedent(
    """
    import asyncio, sys
    from aiokafka import AIOKafkaProducer

    class Key(str):
        def encode(self, *args, **kwargs):
            return b"\\xff\\xfe-trace"

    async def main(bootstrap, topic, values):
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
        await producer.start()
        try:
            for value in values:
                await producer.send_and_wait(topic, value, headers=[(Key("k"), b"v")])
        finally:
            await producer.stop()

    asyncio.run(main(sys.argv[1], sys.argv[2], [v.encode() for v in sys.argv[3:]]))
    """
)


def produce_with_a_bad_header_key(bootstrap: str, topic: str, values: list[str]) -> None:
    env = {**os.environ, "AIOKAFKA_NO_EXTENSIONS": "1"}
    subprocess.run(
        [sys.executable, "-c", PRODUCE, bootstrap, topic, *values],
        env=env,
        check=True,
        timeout=60,
    )


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_header_key_that_is_not_utf8_neither_crashes_nor_loops(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    send_orders: Callable[..., None],
    read_all: Callable[..., list[Any]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    """Invalid input is dead-lettered (without the headers nobody can read), a valid
    event is handled, and the service goes on to the next record. The warning names
    the record's topic, as a process may run several services."""
    from streamguard import headers as h
    from streamguard.observe.untrusted import LogBudget

    # A budget of this test's own: another test's lines must not have spent it.
    monkeypatch.setattr(h, "_unreadable_lines", LogBudget())
    caplog.set_level(logging.WARNING, logger="streamguard")
    src = topic_factory("orders")
    produce_with_a_bad_header_key(
        bootstrap, src, ["not json", order(1).model_dump_json(), order(2).model_dump_json()]
    )
    send_orders(src, 1)
    handled: list[int] = []

    class SyncBilling(sg.ConsumerService):
        topic, contract, group_id = src, OrderPlaced, unique("billing")
        options = sg.ServiceOptions(drift_sample=1)  # every record's headers are read

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            assert ctx.headers == [] or ctx.offset == 3
            handled.append(ctx.offset)

    class AsyncBilling(SyncBilling):
        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:  # type: ignore[override]
            assert ctx.headers == [] or ctx.offset == 3
            handled.append(ctx.offset)

    running = start_service(SyncBilling if kind == "sync" else AsyncBilling)
    assert wait_for(lambda: committed(bootstrap, SyncBilling.group_id, src).get(0) == 4, 30)
    assert handled == [1, 2, 3]
    (dead,) = read_all(f"{src}.dlq", 1)
    assert dead.value() == b"not json"
    assert dlq_headers(dead)["sg-dlq-reason"] == "decode_error"
    assert [k for k, _ in dead.headers() if not k.startswith("sg-dlq-")] == []
    assert running.thread.is_alive()
    assert running.error == []
    lines = [r for r in caplog.records if r.getMessage().startswith("record headers unreadable")]
    assert lines
    assert {(r.__dict__["topic"], r.__dict__["partition"]) for r in lines} == {(src, 0)}


def test_the_dlq_tools_read_a_record_whose_header_key_is_not_utf8(
    bootstrap: str,
    topic_factory: Callable[..., str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A DLQ holding such a record (written by another tool) is inspected, not crashed on."""
    from streamguard.cli import main

    dlq = topic_factory("orders.dlq")
    produce_with_a_bad_header_key(bootstrap, dlq, ["not json"])
    assert main(["dlq", "inspect", dlq, "--bootstrap-servers", bootstrap]) == 0
    assert f"{dlq}: 1 dead-lettered record(s)" in capsys.readouterr().out


class _Unreadable:
    """A consumed record whose headers() fails as confluent-kafka's does on such a key."""

    def __init__(self, offset: int) -> None:
        self._offset = offset

    def headers(self) -> Any:
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    def set_headers(self, headers: list[Any]) -> None: ...

    def topic(self) -> str:
        return "orders"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


def test_a_flood_of_unreadable_headers_logs_a_few_lines(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Any producer may write such a key on every record: at most LogBudget's rate of
    warnings, the later ones counting the lines skipped, not one line per record (a
    flood of 4,000 records logged 2,016)."""
    from streamguard import headers as h
    from streamguard.observe.untrusted import LogBudget

    now = [0.0]
    monkeypatch.setattr(h, "_unreadable_lines", LogBudget(clock=lambda: now[0]), raising=False)
    caplog.set_level(logging.WARNING, logger="streamguard")
    for offset in range(500):
        assert h.read(_Unreadable(offset)) == []
    lines = [r for r in caplog.records if r.getMessage().startswith("record headers unreadable")]
    assert len(lines) == 10
    assert [r.not_logged for r in lines] == [0] * 10
    assert {r.__dict__["topic"] for r in lines} == {"orders"}
    now[0] = 60.0  # the next window
    assert h.read(_Unreadable(500)) == []
    last = [r for r in caplog.records if r.getMessage().startswith("record headers unreadable")]
    assert len(last) == 11
    assert last[-1].not_logged == 490

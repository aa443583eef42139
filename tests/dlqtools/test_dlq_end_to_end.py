"""The incident the tools exist for: a service dead-letters, the contract is fixed, and a
replay brings every fixable message back to the fixed service exactly once."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Message, Producer

import streamguard as sg
from streamguard import headers as h
from streamguard.dlqtools.reader import DlqReader
from streamguard.dlqtools.replay import Replayer, ReplayOptions, ReplayReport, default_group
from streamguard.dlqtools.revalidate import Revalidator
from tests.dlqtools.dlqcases import FIXABLE, HOPELESS, OrderV1, OrderV2
from tests.runtime.conftest import Running, committed, start_service, wait_for

__all__ = ["start_service"]  # a fixture, imported so this module can use it

pytestmark = pytest.mark.broker


def replay(bootstrap: str, dlq: str, **opts: Any) -> ReplayReport:
    with DlqReader(bootstrap, dlq, group_id=default_group(dlq), idle_timeout=5) as reader:
        return Replayer(reader, ReplayOptions(**opts), out=io.StringIO()).run()


def test_fixed_service_handles_every_replayed_message(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    read_all: Callable[..., list[Message]],
) -> None:
    """Dead-lettered by the old contract, replayed after the fix, each handled once."""
    src = topic_factory("orders")
    dlq = f"{src}.dlq"
    group = unique("billing")
    values = [
        {**FIXABLE, "order_id": "gbp-1"},
        {"order_id": "eur-1", "amount": 5, "currency": "EUR"},
        {**FIXABLE, "order_id": "gbp-2"},
        HOPELESS,
        {**FIXABLE, "order_id": "gbp-3"},
    ]
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for i, value in enumerate(values):
        producer.produce(src, json.dumps(value).encode(), key=f"k{i}".encode())
    assert producer.flush(10) == 0

    handled_v1: list[str] = []

    class BillingV1(sg.ConsumerService):
        topic = src
        contract = OrderV1
        group_id = group

        def handle(self, event: OrderV1, ctx: sg.MessageContext) -> None:
            handled_v1.append(event.order_id)

    old = start_service(BillingV1)
    assert len(read_all(dlq, 4, timeout=20)) == 4
    assert wait_for(lambda: committed(bootstrap, group, src).get(0) == len(values))
    old.stop()
    assert handled_v1 == ["eur-1"]

    dry = replay(
        bootstrap, dlq, dry_run=True, revalidator=Revalidator({OrderV2.__subject__: OrderV2})
    )
    assert (dry.replayed, dry.still_invalid) == (3, 1)
    report = replay(bootstrap, dlq, revalidator=Revalidator({OrderV2.__subject__: OrderV2}))
    assert (report.replayed, report.still_invalid, report.failed) == (3, 1, 0)
    assert replay(bootstrap, dlq).read == 0  # a second replay resumes past all 4: sends nothing

    handled_v2: list[tuple[str, str | None]] = []

    class BillingV2(sg.ConsumerService):
        topic = src
        contract = OrderV2
        group_id = group

        def handle(self, event: OrderV2, ctx: sg.MessageContext) -> None:
            handled_v2.append((event.order_id, h.last(ctx.headers, h.REPLAY_COUNT)))

    fixed = start_service(BillingV2)
    assert wait_for(lambda: len(handled_v2) >= 3)
    assert wait_for(lambda: committed(bootstrap, group, src).get(0) == len(values) + 3)
    fixed.stop()
    assert not fixed.error
    assert handled_v2 == [("gbp-1", "1"), ("gbp-2", "1"), ("gbp-3", "1")]
    assert len(read_all(dlq, 5, timeout=3)) == 4  # nothing came back to the DLQ

"""Fixtures for running consumer services against the real broker."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, Producer
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from tests.conftest import FAST_GROUP


def order(i: int = 0, **overrides: Any) -> OrderPlaced:
    """A valid order event; ``i`` makes it distinct."""
    fields: dict[str, Any] = {
        "order_id": uuid.UUID(int=i + 1),
        "customer_id": f"customer-{i}",
        "amount": Decimal("12.50"),
        "currency": "EUR",
        "placed_at": dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC),
    }
    fields.update(overrides)
    return OrderPlaced(**fields)


class OrderPlacedV2(sg.Contract):
    """The next version of the orders contract, as a newer producer sends it: a field
    v1 does not know."""

    __subject__ = "orders.OrderPlaced"
    __version__ = 2
    order_id: str
    customer_id: str
    amount: str
    currency: str
    placed_at: str
    coupon: str | None = None


def order_v2(i: int = 0) -> OrderPlacedV2:
    """``order(i)`` as version 2 writes it, with a coupon."""
    return OrderPlacedV2(**order(i).model_dump(mode="json"), coupon="SPRING")


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes (bounded in time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@dataclass
class Running:
    """A service running on a background thread."""

    service: sg.ConsumerService
    thread: threading.Thread
    error: list[BaseException]
    registry: CollectorRegistry

    def stop(self, timeout: float = 30.0) -> None:
        self.service.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "service did not stop in time"

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, {"runtime": "consumer", **labels})
        return 0.0 if value is None else value


@pytest.fixture
def start_service(bootstrap: str) -> Iterator[Callable[..., Running]]:
    """Start a service class on a thread; every started service is stopped at the end."""
    started: list[Running] = []

    def start(cls: type[sg.ConsumerService], **kwargs: Any) -> Running:
        kwargs.setdefault("kafka_config", dict(FAST_GROUP))
        kwargs.setdefault("bootstrap_servers", bootstrap)
        registry = kwargs.setdefault("registry", CollectorRegistry())
        service = cls(**kwargs)
        errors: list[BaseException] = []

        def target() -> None:
            try:
                service.run()
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        running = Running(service, thread, errors, registry)
        started.append(running)
        return running

    yield start
    for running in started:
        if running.thread.is_alive():
            running.stop()


@pytest.fixture
def send_orders(bootstrap: str) -> Callable[..., None]:
    """Send ``count`` valid orders (``order(0)`` ...) to a topic, and flush."""

    def send(topic: str, count: int, *, key: Callable[[int], str] | None = None) -> None:
        producer = sg.GuardedProducer(bootstrap)
        for i in range(count):
            producer.send(topic, order(i), key=None if key is None else key(i))
        producer.flush()

    return send


@pytest.fixture
def raw_producer(bootstrap: str) -> Producer:
    """A plain producer for bytes a guarded producer would refuse (poison input)."""
    return Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offsets for ``topic`` (the broker's answer, not ours)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])
    result = next(iter(futures.values())).result(timeout=10)
    return {
        tp.partition: tp.offset
        for tp in result.topic_partitions
        if tp.topic == topic and tp.offset >= 0
    }


def dlq_headers(msg: Any) -> dict[str, str]:
    """The ``sg-dlq-*`` headers of a DLQ record, decoded."""
    return {k: v.decode() for k, v in (msg.headers() or []) if k.startswith("sg-dlq-") and v}


def check_dead_letter_size_warning(
    records: list[logging.LogRecord],
    bootstrap: str,
    src: str,
    dlq_size: int,
    needed: int | None,
) -> None:
    """The ``dead-letter topic smaller ...`` warning a service named Billing on ``src``
    (or a guarded agent) writes: once, with the sizes and the command that raises the
    DLQ's, when ``needed`` is more than ``dlq_size``; none when ``needed`` is None."""
    warned = [
        r.__dict__
        for r in records
        if r.getMessage() == "dead-letter topic smaller than the dead letters it may get"
    ]
    if needed is None:
        assert warned == []
        return
    assert len(warned) == 1
    assert warned[0]["levelname"] == "WARNING"
    fields = ("service", "topic", "dlq", "max_message_bytes", "needed")
    assert tuple(warned[0][field] for field in fields) == (
        "Billing",
        src,
        f"{src}.dlq",
        dlq_size,
        needed,
    )
    assert warned[0]["command"] == (
        f"kafka-configs.sh --bootstrap-server {bootstrap} --alter --entity-type topics "
        f"--entity-name {src}.dlq --add-config max.message.bytes={needed}"
    )

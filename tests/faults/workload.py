"""A service and a workload for fault tests: valid orders, poison records, what happened."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, Producer
from prometheus_client import CollectorRegistry

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from streamguard.producer import stamp_headers
from streamguard.topics import create_topics
from tests.conftest import FAST_GROUP
from tests.runtime.conftest import Running, committed, order

POISON = b'{"order_id": "not-a-uuid"}'


@dataclass
class Seen:
    """What a service did: handled offsets, thread-safe."""

    handled: set[tuple[int, int]] = field(default_factory=set)
    calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, partition: int, offset: int) -> None:
        with self.lock:
            self.handled.add((partition, offset))
            self.calls += 1


def recording_service(
    topic: str,
    group: str,
    seen: Seen,
    delay: float = 0.0,
    before: Callable[[int, int], None] | None = None,
    **options: Any,
) -> type[sg.ConsumerService]:
    """A service class that records each handled record (and sleeps ``delay``; calls
    ``before(partition, offset)`` first, if given)."""

    source, opts = topic, sg.ServiceOptions(commit_interval=0.2, batch_size=20, **options)

    class Recorder(sg.ConsumerService):
        topic = source
        contract = OrderPlaced
        group_id = group
        options = opts

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            if before is not None:
                before(ctx.partition, ctx.offset)
            if delay:
                time.sleep(delay)
            seen.add(ctx.partition, ctx.offset)

    return Recorder


@dataclass
class Workload:
    """Records sent to a topic: which are valid, which are poison, where each went."""

    topic: str
    valid: set[tuple[int, int]] = field(default_factory=set)
    poison: set[tuple[int, int]] = field(default_factory=set)

    def ends(self) -> dict[int, int]:
        """The end offset of each partition (one past its last record)."""
        ends: dict[int, int] = {}
        for p, o in self.valid | self.poison:
            ends[p] = max(ends.get(p, 0), o + 1)
        return ends


def send_workload(
    bootstrap: str, topic: str, valid: int, poison_every: int = 10, partitions: int = 2
) -> Workload:
    """Send ``valid`` orders and a poison record after every ``poison_every``-th, and
    note each record's partition and offset from its delivery report."""
    work = Workload(topic)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    codec = sg.JsonCodec()
    stamp = stamp_headers(OrderPlaced, codec, "fault-test")
    errors: list[str] = []

    def noted(into: set[tuple[int, int]]) -> Callable[[Any, Any], None]:
        def report(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                into.add((msg.partition(), msg.offset()))

        return report

    for i in range(valid):
        value = codec.encode(order(i))
        producer.produce(
            topic, value, key=f"k{i}", partition=i % partitions, headers=stamp,
            on_delivery=noted(work.valid),
        )  # fmt: skip
        if poison_every and i % poison_every == 0:
            producer.produce(
                topic, POISON, key=f"p{i}", partition=i % partitions,
                on_delivery=noted(work.poison),
            )  # fmt: skip
        producer.poll(0)
    assert producer.flush(30) == 0, "records were not acknowledged"
    assert not errors, errors
    return work


def new_topic(bootstrap: str, partitions: int = 2) -> str:
    name = f"faults-{uuid.uuid4().hex[:10]}"
    create_topics(bootstrap, [name], partitions=partitions)
    return name


def dead_lettered(bootstrap: str, dlq: str, expected: int, timeout: float = 20.0) -> int:
    """How many records the DLQ holds, read until ``expected`` arrived or time is up."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"dlq-reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **FAST_GROUP,
        }
    )
    consumer.subscribe([dlq])
    seen: set[tuple[int, int]] = set()
    deadline = time.monotonic() + timeout
    try:
        while len(seen) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.2):
                if msg.error() is None:
                    seen.add((msg.partition(), msg.offset()))
    finally:
        consumer.close()
    return len(seen)


def dead_lettered_originals(
    bootstrap: str, dlq: str, expected: set[tuple[int, int]], timeout: float = 20.0
) -> set[tuple[int, int]]:
    """The (partition, offset) of the original records the DLQ holds, read until all of
    ``expected`` arrived or time is up. A dead letter whose acknowledgement was lost to a
    broken connection is written again, so the DLQ may hold one twice: at least once."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"dlq-reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **FAST_GROUP,
        }
    )
    consumer.subscribe([dlq])
    originals: set[tuple[int, int]] = set()
    deadline = time.monotonic() + timeout
    try:
        while not expected <= originals and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.2):
                if msg.error() is None:
                    found = dict(msg.headers() or [])
                    partition = found.get("sg-dlq-original-partition")
                    offset = found.get("sg-dlq-original-offset")
                    if partition is not None and offset is not None:
                        originals.add((int(partition), int(offset)))
    finally:
        consumer.close()
    return originals


def commits_at_end(bootstrap: str, group: str, work: Workload) -> bool:
    return committed(bootstrap, group, work.topic) == work.ends()


def start(cls: type[sg.ConsumerService], bootstrap: str, **kwargs: Any) -> Running:
    """Run a service on a thread (stop it with ``running.stop()``)."""
    registry = kwargs.pop("registry", None) or CollectorRegistry()
    service = cls(
        bootstrap_servers=bootstrap,
        kafka_config={**FAST_GROUP, **kwargs.pop("kafka_config", {})},
        registry=registry,
        **kwargs,
    )
    errors: list[BaseException] = []

    def target() -> None:
        try:
            service.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return Running(service, thread, errors, registry)

"""Throughput of a ConsumerService against a hand-written consume-and-validate loop.

Both read the same topic on the same embedded broker in the same run, alternating, so
the ratio is what counts (absolute numbers depend on the machine). The baseline is
the loop a careful engineer writes by hand: ``consume(500)`` and
``model_validate_json`` per message, no dead letters, no retries, no metrics. The
service does all of those, with a trivial handler: sync, and ``async def`` (which runs on the
service's event loop, its batches handed over one at a time).

    python benchmarks/consume.py [--messages 200000] [--rounds 3] [--handlers sync,async]
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from confluent_kafka import Consumer, Producer

import streamguard as sg
from streamguard import headers as h
from streamguard.demo.contracts import OrderPlaced
from streamguard.devbroker import DevBroker
from streamguard.runtime.service import CONSUMER_DEFAULTS
from streamguard.topics import create_topics

PARTITIONS = int(os.environ.get("BENCH_PARTITIONS", "4"))


def sample_event(i: int) -> bytes:
    event = OrderPlaced(
        order_id=uuid.UUID(int=i + 1),
        customer_id=f"customer-{i % 5000:06d}-eu-west",
        amount=Decimal("1234.56"),
        currency="EUR",
        placed_at=dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC),
        items=[{"sku": f"SKU-{(i + k) % 99999:08d}", "quantity": k + 1} for k in range(4)],
    )
    return event.model_dump_json().encode()


def produce(bootstrap: str, topic: str, count: int, keys: int = 997) -> int:
    """Fill the topic with stamped events, as a GuardedProducer would send them."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    stamp = [
        (h.SUBJECT, OrderPlaced.__subject__.encode()),
        (h.VERSION, str(OrderPlaced.__version__).encode()),
        (h.FINGERPRINT, OrderPlaced.fingerprint().encode()),
        (h.PRODUCER, b"benchmark"),
        (h.CONTENT_TYPE, b"application/json"),
    ]
    values = [sample_event(i) for i in range(1000)]
    for i in range(count):
        while True:
            try:
                producer.produce(topic, values[i % 1000], key=b"k%d" % (i % keys), headers=stamp)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)
    return len(values[0])


def consumer_config(bootstrap: str, group: str) -> dict[str, Any]:
    # The baseline gets the same librdkafka tuning as the service, so the ratio
    # measures streamguard's own overhead rather than a setting.
    return {
        **CONSUMER_DEFAULTS,
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "session.timeout.ms": 2000,
        "heartbeat.interval.ms": 500,
    }


def run_baseline(bootstrap: str, topic: str, count: int) -> float:
    consumer = Consumer(consumer_config(bootstrap, f"baseline-{uuid.uuid4().hex}"))
    consumer.subscribe([topic])
    validate = OrderPlaced.model_validate_json
    seen = 0
    start = 0.0
    deadline = time.monotonic() + 300
    while seen < count and time.monotonic() < deadline:
        for msg in consumer.consume(500, 1.0):
            if msg.error() is not None:
                continue
            if not seen:
                start = time.perf_counter()
            validate(msg.value())
            seen += 1
    elapsed = time.perf_counter() - start
    consumer.close()
    return seen / elapsed


class Stopwatch:
    """Times ``count`` records from the first one marked to the last, marked from any
    thread (handlers call ``mark``); the other benchmarks time their services with it."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.done = threading.Event()
        self.marked = 0
        self._tick = itertools.count(1).__next__  # the cheapest thread-safe counter
        self._start = self._end = 0.0

    def mark(self) -> None:
        n = self.marked = self._tick()
        if n == self.count:
            self._end = time.perf_counter()
            self.done.set()
        elif n == 1:
            self._start = time.perf_counter()

    def rate(self) -> float:
        """Records a second, first to last."""
        return self.count / (self._end - self._start)


def serve_until_done(service: sg.ConsumerService, watch: Stopwatch, timeout: float) -> bool:
    """Run ``service`` on a thread until ``watch`` saw every record (or ``timeout``
    passed), then stop it; whether every record was seen."""
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    finished = watch.done.wait(timeout)
    service.stop()
    thread.join(60)
    return finished


def service_class(
    topic: str, mark: Callable[[], None], kind: str = "sync"
) -> type[sg.ConsumerService]:
    """A service on ``topic``, in a group of its own, whose trivial handler (``def`` or,
    for ``kind="async"``, ``async def``) calls ``mark`` per record."""

    class SyncBench(sg.ConsumerService):
        __abstract__ = True
        contract = OrderPlaced
        group_id = "unset"

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            mark()

    class AsyncBench(sg.ConsumerService):
        __abstract__ = True
        contract = OrderPlaced
        group_id = "unset"

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            mark()

    return type(
        "BenchService",
        (AsyncBench if kind == "async" else SyncBench,),
        {"topic": topic, "group_id": f"service-{uuid.uuid4().hex}"},
    )


def run_service(bootstrap: str, topic: str, count: int, kind: str = "sync") -> float:
    watch = Stopwatch(count)
    config = consumer_config(bootstrap, "unused")
    config.pop("group.id")
    service = service_class(topic, watch.mark, kind)(
        bootstrap_servers=bootstrap, kafka_config=config
    )
    serve_until_done(service, watch, 300)
    return watch.rate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--handlers", default="sync,async", help="handler kinds to measure: sync, async"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()
    kinds = [k for k in args.handlers.split(",") if k]
    with DevBroker() as broker:
        bootstrap = broker.bootstrap_servers
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        create_topics(bootstrap, [topic], partitions=PARTITIONS)
        size = produce(bootstrap, topic, args.messages)
        baseline: list[float] = []
        services: dict[str, list[float]] = {kind: [] for kind in kinds}
        for _ in range(args.rounds):
            baseline.append(run_baseline(bootstrap, topic, args.messages))
            for kind in kinds:
                services[kind].append(run_service(bootstrap, topic, args.messages, kind))
    base = statistics.median(baseline)
    result: dict[str, Any] = {
        "messages": args.messages,
        "message_bytes": size,
        "partitions": PARTITIONS,
        "baseline_msg_per_s": round(base),
        "baseline_rounds": [round(x) for x in baseline],
    }
    for kind, rates in services.items():
        result[f"{kind}_msg_per_s"] = round(statistics.median(rates))
        result[f"{kind}_rounds"] = [round(x) for x in rates]
        result[f"{kind}_ratio"] = round(statistics.median(rates) / base, 3)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.messages} messages of {size} B on {PARTITIONS} partitions, {args.rounds} rounds")
    print(f"  {'hand-written loop':<22}: {round(base):>9,} msg/s {result['baseline_rounds']}")
    for kind in kinds:
        label = f"ConsumerService {kind}"
        rate, rounds = result[f"{kind}_msg_per_s"], result[f"{kind}_rounds"]
        print(f"  {label:<22}: {rate:>9,} msg/s {rounds}")
    for kind in kinds:
        # The peer table's bars: 0.95x the loop with the service's settings for sync
        # handlers (what this loop is), 0.80x the untuned loop for async ones.
        target = 0.95 if kind == "sync" else 0.80
        print(f"  ratio {kind:<16}: {result[f'{kind}_ratio']:.3f}  (target >= {target:.2f})")


if __name__ == "__main__":
    main()

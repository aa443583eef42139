"""A flood of 100 % invalid input: every record dead-lettered, none retried, how fast.

A hostile or broken producer can fill a topic with records that fail their contract.
The service must dead-letter each one once (no retries: invalid input is permanent)
and keep up. This benchmark sends ``--messages`` invalid records (near-valid orders
with a wrong currency or a negative amount, and undecodable bytes, in turn) and the
same number of valid ones to separate topics of one embedded broker, and runs the same
service over each in the same run: the ratio of invalid to valid throughput is the
cost of a dead letter (a durable, acknowledged DLQ write) against a trivial handler.
Throughput counts a dead letter when the broker acknowledged it (``on_dead_letter``).

    python benchmarks/invalid_flood.py [--messages 50000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

import streamguard as sg
from streamguard.deadletter import Failure
from streamguard.demo.contracts import OrderPlaced
from streamguard.devbroker import DevBroker
from streamguard.topics import create_topics

sys.path.insert(0, str(Path(__file__).parent))
from consume import Stopwatch, consumer_config, sample_event, serve_until_done

PARTITIONS = 4


def invalid_event(i: int) -> bytes:
    """A near-valid order (the contract rejects it) or bytes that are not JSON."""
    kind = i % 3
    if kind == 2:
        return b"\x00\xffnot json " + str(i).encode()
    doc = json.loads(sample_event(i))
    if kind == 0:
        doc["currency"] = "GBP"
    else:
        doc["amount"] = "-1.00"
    return json.dumps(doc).encode()


def produce(bootstrap: str, topic: str, count: int, make: Any) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for i in range(count):
        while True:
            try:
                producer.produce(topic, make(i), key=f"k{i % 997}")
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)


def run(bootstrap: str, topic: str, count: int) -> dict[str, float]:
    """Consume ``count`` records; return throughput and what the metrics counted."""
    watch = Stopwatch(count)
    mark = watch.mark

    class Flood(sg.ConsumerService):
        __abstract__ = True
        contract = OrderPlaced
        group_id = "unset"

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            mark()

        def on_dead_letter(self, ctx: sg.MessageContext, failure: Failure) -> None:
            mark()

    cls = type("FloodService", (Flood,), {"topic": topic, "group_id": f"g-{uuid.uuid4().hex}"})
    config = consumer_config(bootstrap, "unused")
    config.pop("group.id")
    registry = CollectorRegistry()
    service = cls(bootstrap_servers=bootstrap, kafka_config=config, registry=registry)
    if not serve_until_done(service, watch, 600):
        raise SystemExit(f"only {watch.marked} of {count} records reached an outcome")

    def sample(name: str, **labels: str) -> float:
        labels = {"runtime": "consumer", "topic": topic, **labels}
        return registry.get_sample_value(name, labels) or 0.0

    return {
        "rate": watch.rate(),
        "dead_lettered": sample("streamguard_messages_total", outcome="dead_lettered"),
        "handled": sample("streamguard_messages_total", outcome="handled"),
        "retries": sample("streamguard_retries_total"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    n = args.messages
    valid: list[float] = []
    invalid: list[float] = []
    with DevBroker() as broker:
        bootstrap = broker.bootstrap_servers
        for _ in range(args.rounds):
            good, bad = f"flood-ok-{uuid.uuid4().hex[:8]}", f"flood-bad-{uuid.uuid4().hex[:8]}"
            create_topics(bootstrap, [good, bad, f"{bad}.dlq"], partitions=PARTITIONS)
            produce(bootstrap, good, n, sample_event)
            produce(bootstrap, bad, n, invalid_event)
            ok = run(bootstrap, good, n)
            flood = run(bootstrap, bad, n)
            if flood["dead_lettered"] != n or flood["retries"] or flood["handled"]:
                raise SystemExit(f"invalid flood: expected {n} dead letters, no retry: {flood}")
            if ok["handled"] != n:
                raise SystemExit(f"valid run: expected {n} handled: {ok}")
            valid.append(ok["rate"])
            invalid.append(flood["rate"])
    v, i = statistics.median(valid), statistics.median(invalid)
    print(f"{n} records per run on {PARTITIONS} partitions, {args.rounds} rounds")
    print(f"  valid, handled      : {round(v):>9,} msg/s {[round(x) for x in valid]}")
    print(f"  invalid, dead-letter: {round(i):>9,} msg/s {[round(x) for x in invalid]}")
    print(f"  all {n} invalid records dead-lettered, 0 retries, 0 handled")
    print(f"  ratio invalid / valid: {i / v:.3f}")


if __name__ == "__main__":
    main()

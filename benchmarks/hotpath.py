"""Where a ConsumerService's time per message goes, measured in one thread, no polling.

The end-to-end numbers of ``peers.py`` move with the load of a shared machine; these
do not: each part of the per-message path runs over the same fetched records (the
peers data set, or ``--stamped`` for records with a guarded producer's headers), and
the best of many short repeats (in thread CPU time) is reported in microseconds per
message: short repeats, because the best of a few long ones still moved by 30% on a
loaded machine.

A record parses its headers on the first ``headers()`` call and keeps them, so a repeat
over the same records reads them for free: header reads and drift checks are measured
once, on records fetched for that alone, and the whole-path lines (which repeat) leave
out the first read of the sampled records' headers; the drift line adds it back.

    python benchmarks/hotpath.py [--records 4000] [--repeats 60] [--stamped]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import timeit
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from confluent_kafka import Consumer, Producer
from peerbench import dataset
from prometheus_client import CollectorRegistry

import streamguard as sg
from streamguard import headers as h
from streamguard.demo.contracts import OrderPlaced
from streamguard.devbroker import DevBroker
from streamguard.observe.metrics import ServiceMetrics
from streamguard.runtime.context import MessageContext
from streamguard.runtime.deadletters import DeadLetterPublisher
from streamguard.runtime.eventloop import LoopLane, LoopRunner
from streamguard.runtime.lane import PartitionLane
from streamguard.runtime.pipeline import Pipeline
from streamguard.schema.drift import DriftDetector
from streamguard.topics import create_topics

UNREAD = 15_000  # records for the measurements that must read headers the first time

STAMP = [
    (h.SUBJECT, OrderPlaced.__subject__.encode()),
    (h.VERSION, str(OrderPlaced.__version__).encode()),
    (h.FINGERPRINT, OrderPlaced.fingerprint().encode()),
    (h.PRODUCER, b"benchmark"),
    (h.CONTENT_TYPE, b"application/json"),
]


def fetch(
    bootstrap: str, count: int, stamped: bool, encode: Callable[[int], bytes] = dataset.json_value
) -> list[Any]:
    """Write the data set's first ``count`` records (JSON by default) and read them back."""
    topic = f"hotpath-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, [topic], partitions=1)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for i in range(count):
        producer.produce(
            topic, encode(i), key=b"k%d" % (i % dataset.KEYS),
            headers=STAMP if stamped else None,
        )  # fmt: skip
        if i % 10_000 == 0:
            producer.flush()
    producer.flush()
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": topic,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 2000,  # the embedded broker's fast join (docs/local-broker.md)
            "heartbeat.interval.ms": 500,
        }
    )
    consumer.subscribe([topic])
    records: list[Any] = []
    deadline = time.monotonic() + 60
    while len(records) < count and time.monotonic() < deadline:
        records += [m for m in consumer.consume(500, 1.0) if m.error() is None]
    consumer.close()
    return records


def pipeline(bootstrap: str, asynchronous: bool = False) -> Pipeline:
    class Bench(sg.ConsumerService):
        topic = "hotpath"
        group_id = "hotpath"
        contract = OrderPlaced

        def handle(self, event: Any, ctx: sg.MessageContext) -> None:
            pass

    class AsyncBench(Bench):
        async def handle(self, event: Any, ctx: sg.MessageContext) -> None:
            pass

    service = AsyncBench if asynchronous else Bench
    spec = service(bootstrap_servers=bootstrap)._spec()
    metrics = ServiceMetrics(CollectorRegistry())
    publisher = DeadLetterPublisher(
        spec, lambda: Producer({"bootstrap.servers": bootstrap}), metrics
    )
    return Pipeline(spec, publisher, metrics)


def loop_lane_run(
    batches: list[list[Any]], pipe: Pipeline, loop: asyncio.AbstractEventLoop
) -> Callable[[], None]:
    """The async path: a partition's batches run by a LoopRunner on ``loop``, in this
    thread, without polling (the runner has no poller attached)."""
    runner = LoopRunner(pipe, loop, "partition", pipe.spec.options.max_in_flight)

    async def until_idle() -> None:
        while runner.busy:
            await asyncio.sleep(0)

    def run() -> None:
        lane = LoopLane(0, pipe, runner)
        lane.queue.extend(batches)
        lane.buffered = sum(map(len, batches))
        runner._accept(lane)
        loop.run_until_complete(until_idle())

    return run


def each(fn: Callable[[Any], object], items: list[Any]) -> Callable[[], None]:
    """Call ``fn`` on every item, keeping no result (as a consume loop keeps none)."""

    def run() -> None:
        for item in items:
            fn(item)

    return run


def measure(
    records: list[Any], unread: list[Any], pipe: Pipeline, async_pipe: Pipeline, repeats: int
) -> dict[str, float]:
    """Best of ``repeats`` per part in this thread's CPU time, the parts interleaved so
    that the load of a shared machine hits them alike; header reads once, on ``unread``."""
    values = [m.value() for m in records]
    validate = OrderPlaced.model_validate_json
    drift = DriftDetector(OrderPlaced)
    batches = [records[i : i + 500] for i in range(0, len(records), 500)]

    def lane_run() -> None:
        lane = PartitionLane(0, pipe)
        for batch in batches:
            lane._process(batch)

    durations = [2e-6] * 500

    def lane_first_only() -> None:
        sample, pipe.drift_sample = pipe.drift_sample, 1 << 30
        try:
            lane_run()
        finally:
            pipe.drift_sample = sample

    def metrics_run() -> None:
        for batch in batches:
            pipe.record_batch(len(batch), durations[: len(batch)])

    ctx = MessageContext(records[0], 1)
    parts: dict[str, Callable[[], None]] = {
        "hand-written loop body (msg.value() + model_validate_json)": each(
            lambda m: validate(m.value()), records
        ),
        "PartitionLane._process, whole path (no-op handler)": lane_run,
        "the same, drift checked on each batch's first record only": lane_first_only,
        "LoopRunner, partition order, whole path (no-op async handler)": loop_lane_run(
            batches, async_pipe, asyncio.new_event_loop()
        ),
        "model_validate_json": each(validate, values),
        "streamguard decoder (JsonCodec)": each(pipe.decode, values),
        "msg.value()": each(lambda m: m.value(), records),
        "MessageContext(msg, 1)": each(lambda m: MessageContext(m, 1), records),
        "handler call through the pipeline (no-op handler)": each(
            lambda m: pipe.invoke(m, ctx), records
        ),
        "metrics: record_batch per message (500-record batches)": metrics_run,
    }
    found = dict.fromkeys(parts, float("inf"))
    for _ in range(repeats):
        for name, run in parts.items():
            took = timeit.timeit(run, timer=time.thread_time, number=1) / len(records) * 1e6
            found[name] = min(found[name], took)
    # Once each, on records whose headers were never read (see the module doc).
    third = len(unread) // 3
    once: dict[str, tuple[Callable[[Any], object], list[Any]]] = {
        "msg.headers(), first read": (lambda m: m.headers(), unread[:third]),
        "DriftDetector.inspect, per inspected message": (
            lambda m: drift.inspect(m.headers(), m.value()),
            unread[third : 2 * third],
        ),
        "pipeline.inspect_drift with its report, per inspected message": (
            lambda m: pipe.inspect_drift(m, m.value()),
            unread[2 * third :],
        ),
    }
    for name, (fn, items) in once.items():
        took = timeit.timeit(each(fn, items), timer=time.thread_time, number=1)
        found[name] = took / len(items) * 1e6
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=60, help="best of this many")
    parser.add_argument("--stamped", action="store_true", help="records carry sg-* headers")
    args = parser.parse_args()
    with DevBroker() as broker:
        fetched = fetch(broker.bootstrap_servers, args.records + UNREAD, args.stamped)
        records, unread = fetched[: args.records], fetched[args.records :]
        pipe = pipeline(broker.bootstrap_servers)
        async_pipe = pipeline(broker.bootstrap_servers, asynchronous=True)
        results = measure(records, unread, pipe, async_pipe, args.repeats)
    for name, us in results.items():
        print(f"{us:8.2f} µs  {name}")
    sampled = 1 / pipe.drift_sample + 1 / 500
    share = results["pipeline.inspect_drift with its report, per inspected message"] * sampled
    print(f"{share:8.2f} µs  drift checks per message (1/{pipe.drift_sample} + 1/500 inspected)")
    # The repeats read the sampled records' headers for free after the first (module doc).
    unread_headers = results["msg.headers(), first read"] * sampled
    body = results["hand-written loop body (msg.value() + model_validate_json)"]
    overhead = results["PartitionLane._process, whole path (no-op handler)"] - body
    print(
        f"{overhead + unread_headers:8.2f} µs  streamguard's path minus the loop body, "
        "per message (with the sampled records' first header reads)"
    )
    overhead = results["LoopRunner, partition order, whole path (no-op async handler)"] - body
    print(f"{overhead + unread_headers:8.2f} µs  the same, async handler")


if __name__ == "__main__":
    main()

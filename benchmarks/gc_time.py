"""Time in Python's cyclic garbage collector per record: a service against the loop.

On large events the collector is a large part of a record's cost: a 300-line-item order
(11.5 KB of JSON) allocates some 600 tracked objects while it validates, so a young
collection runs about twice a record, whoever validates. What it walks depends on what
the consumer keeps alive meanwhile, which is where a framework can cost more than the
hand-written loop. Each run consumes the peers' data set (``--line-items`` sets the size)
from the embedded broker in this process, with ``gc.callbacks`` timing every collection
(in its thread's CPU) from the first record to the last, and prints msg/s, process CPU
and collector time per record, with the collections by generation. Runs are one sample
each on a shared VM: alternate them.

    python benchmarks/gc_time.py [--line-items 300] [--records 10000] [--runs loop sync async]
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

RUNS = ("loop", "sync", "async")


class Collections:
    """Every collection's duration and generation, through ``gc.callbacks``."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.by_generation = [0, 0, 0]
        self._started = 0.0
        gc.callbacks.append(self._note)

    def _note(self, phase: str, info: dict[str, Any]) -> None:
        # CPU time of the collecting thread (a collection runs in the thread whose
        # allocation triggered it, holding the GIL): wall time counted the moments the
        # VM gave the core to another process, and exceeded the process's CPU under load.
        if phase == "start":
            self._started = time.thread_time()
            return
        self.seconds += time.thread_time() - self._started
        self.by_generation[info["generation"]] += 1

    def reset(self) -> None:
        self.seconds = 0.0
        self.by_generation = [0, 0, 0]


def consume(run: str, bootstrap: str, source: str, count: int) -> str:
    """Consume ``count`` records with ``run``; its line of figures."""
    from confluent_kafka import Consumer
    from peerbench import events

    import streamguard as sg
    from streamguard.demo.contracts import OrderPlaced

    collections = Collections()
    seen = 0
    started = (0.0, 0.0)
    done = threading.Event()

    def hit() -> None:
        nonlocal seen, started
        if not seen:
            started = (time.process_time(), time.perf_counter())
            collections.reset()
        seen += 1
        if seen == count:
            done.set()

    # A group of its own each run: a run repeated on the same topic would otherwise
    # resume from what the run before it committed, and see only the rest.
    group = f"gc-{run}-{uuid.uuid4().hex[:8]}"
    if run == "loop":  # the peers' untuned loop: consume(500), validate, hand it on
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 2000,
                "heartbeat.interval.ms": 500,
            }
        )
        consumer.subscribe([source])
        validate = events.OrderPlaced.model_validate_json
        deadline = time.monotonic() + 300
        while not done.is_set() and time.monotonic() < deadline:
            for msg in consumer.consume(500, 1.0):
                if msg.error() is None:
                    validate(msg.value())
                    hit()
    else:

        class Orders(sg.ConsumerService):
            topic = source
            contract = OrderPlaced
            group_id = group

            def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
                hit()

        class AsyncOrders(Orders):
            async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:  # type: ignore[override]
                hit()

        service = AsyncOrders if run == "async" else Orders
        running = service(
            bootstrap_servers=bootstrap,
            kafka_config={"session.timeout.ms": 2000, "heartbeat.interval.ms": 500},
            metrics_port=0,
        )
        threading.Thread(target=running.run, daemon=True).start()
        done.wait(300)
    if not seen:
        return f"{run:6} no record within 300 s"
    cpu = time.process_time() - started[0]
    wall = time.perf_counter() - started[1]
    young, middle, full = collections.by_generation
    return (
        f"{run:6} {seen / wall:9,.0f} msg/s  cpu {cpu / seen * 1e6:6.1f} µs/record  "
        f"gc {collections.seconds / seen * 1e6:6.1f} µs/record  "
        f"collections {young} young, {middle} middle, {full} full"
        + ("" if seen == count else f" (timed out after {seen:,} of {count:,} records)")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--line-items", type=int, default=300, help="line items per event")
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS))
    parser.add_argument("--worker", nargs=3, metavar=("RUN", "BOOTSTRAP", "TOPIC"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    os.environ["PEERBENCH_LINE_ITEMS"] = str(args.line_items)
    if args.worker:  # one run in a fresh process: its heap is its own
        run, bootstrap, topic = args.worker
        print(consume(run, bootstrap, topic, args.records), flush=True)
        os._exit(0)  # the service's threads are daemons; no shutdown is measured

    from peerbench import dataset

    from streamguard.devbroker import DevBroker
    from streamguard.topics import create_topics

    with DevBroker() as broker:
        topic = f"gc-{uuid.uuid4().hex[:8]}"
        create_topics(broker.bootstrap_servers, [topic, f"{topic}.dlq"], partitions=3)
        size = dataset.produce(broker.bootstrap_servers, topic, "json", args.records)
        print(
            f"{args.records:,} records of {size:,} B ({args.line_items} line items), 3 partitions"
        )
        for run in args.runs:
            done = subprocess.run(
                [sys.executable, __file__, "--line-items", str(args.line_items),
                 "--records", str(args.records), "--worker", run,
                 broker.bootstrap_servers, topic],
                capture_output=True, text=True, timeout=600, check=False,
            )  # fmt: skip
            lines = [line for line in done.stdout.splitlines() if line.startswith(run)]
            print(lines[-1] if lines else f"{run}: failed\n{done.stderr[-2000:]}")


if __name__ == "__main__":
    main()

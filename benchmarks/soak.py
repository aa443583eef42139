"""Soak: a long mixed workload, with the service's memory and file descriptors sampled.

Not a CI test: it runs ``--messages`` records (a million by default) through one
service on the embedded broker: 90 % valid orders, 5 % invalid (dead-lettered), 5 %
that fail once with a transient error and succeed on the retry. Every ``--every``
seconds it samples the process's resident memory (VmRSS) and open file descriptors.
After the warm-up (the first fifth of the records: buffers, librdkafka's queues and
the interpreter's pools fill), both must stay flat. RSS swings by tens of MiB as the
per-partition buffers and librdkafka's fetch queue fill and drain, so flat means no
trend: the peak of the second half of the samples may exceed the peak of the first half
by at most ``--max-growth-mib``. The descriptor count may not grow at all. It exits 1
otherwise, or if any record ends without its expected outcome.

``--handler async`` runs the same workload through an ``async def`` handler (the event
loop's lanes), and ``--ordering`` picks the service's ordering (``key`` and ``none`` run
every handler on the event loop, which holds each record's offset open until it ends).

    python benchmarks/soak.py [--messages 1000000] [--every 2]
    python benchmarks/soak.py --handler async --ordering key
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

import streamguard as sg
from streamguard.deadletter import Failure
from streamguard.demo.contracts import OrderPlaced
from streamguard.devbroker import DevBroker
from streamguard.topics import create_topics

sys.path.insert(0, str(Path(__file__).parent))
from consume import consumer_config, sample_event
from invalid_flood import invalid_event

PARTITIONS = 4


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def kind_of(i: int) -> str:
    """The record's part of the workload: 18 of 20 valid, 1 invalid, 1 transient."""
    return {0: "invalid", 1: "transient"}.get(i % 20, "valid")


def produce(bootstrap: str, topic: str, count: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for i in range(count):
        value = invalid_event(i) if kind_of(i) == "invalid" else sample_event(i)
        headers = [("soak-kind", kind_of(i).encode())]
        while True:
            try:
                producer.produce(topic, value, key=f"k{i % 997}", headers=headers)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--every", type=float, default=2.0, help="seconds between samples")
    parser.add_argument("--max-growth-mib", type=float, default=20.0)
    parser.add_argument("--handler", choices=("sync", "async"), default="sync")
    parser.add_argument("--ordering", choices=("partition", "key", "none"), default="partition")
    args = parser.parse_args()
    n = args.messages
    lock = threading.Lock()
    counts = {"handled": 0, "dead_lettered": 0, "transient_failures": 0}
    done = threading.Event()

    def settle(outcome: str) -> None:
        with lock:
            counts[outcome] += 1
            if counts["handled"] + counts["dead_lettered"] == n:
                done.set()

    with DevBroker() as broker:
        bootstrap = broker.bootstrap_servers
        topic = f"soak-{uuid.uuid4().hex[:8]}"
        create_topics(bootstrap, [topic, f"{topic}.dlq"], partitions=PARTITIONS)
        started = time.monotonic()
        produce(bootstrap, topic, n)
        print(f"produced {n} records in {time.monotonic() - started:.1f}s", flush=True)

        class Soak(sg.ConsumerService):
            __abstract__ = True
            contract = OrderPlaced
            group_id = "unset"
            retry = sg.RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.005)

            def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
                if ctx.attempt == 1 and ctx.header("soak-kind") == "transient":
                    with lock:
                        counts["transient_failures"] += 1
                    raise sg.TransientError("fails once")
                settle("handled")

            def on_dead_letter(self, ctx: sg.MessageContext, failure: Failure) -> None:
                settle("dead_lettered")

        class AsyncSoak(Soak):
            __abstract__ = True

            async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:  # type: ignore[override]
                Soak.handle(self, event, ctx)

        base = AsyncSoak if args.handler == "async" else Soak
        attrs = {"topic": topic, "group_id": f"g-{topic}", "ordering": args.ordering}
        cls = type("SoakService", (base,), attrs)
        print(f"handler {args.handler}, ordering {args.ordering}", flush=True)
        config = consumer_config(bootstrap, "unused")
        config.pop("group.id")
        service = cls(
            bootstrap_servers=bootstrap, kafka_config=config, registry=CollectorRegistry()
        )
        thread = threading.Thread(target=service.run, daemon=True)
        samples: list[tuple[float, int, float, int]] = []
        start = time.monotonic()
        thread.start()
        deadline = start + max(600.0, n / 500)
        while not done.wait(args.every) and time.monotonic() < deadline:
            with lock:
                progress = counts["handled"] + counts["dead_lettered"]
            samples.append((time.monotonic() - start, progress, rss_mib(), open_fds()))
            print(f"  {samples[-1][0]:7.1f}s {progress:>9,} records  RSS {samples[-1][2]:7.1f} MiB"
                  f"  fds {samples[-1][3]}", flush=True)  # fmt: skip
        elapsed = time.monotonic() - start
        samples.append((elapsed, n, rss_mib(), open_fds()))
        service.stop()
        thread.join(60)
    expected_dead = sum(1 for i in range(n) if kind_of(i) == "invalid")
    expected_transient = sum(1 for i in range(n) if kind_of(i) == "transient")
    warm = [s for s in samples if s[1] >= n // 5] or samples[-1:]
    half = max(1, len(warm) // 2)
    early, late = warm[:half], warm[half:] or warm[-1:]
    base_rss, base_fds = max(s[2] for s in early), warm[0][3]
    growth = max(s[2] for s in late) - base_rss
    fd_growth = max(s[3] for s in warm) - base_fds
    print(f"{n} records in {elapsed:.1f}s ({n / elapsed:,.0f} msg/s): {counts}")
    low = min(s[2] for s in warm)
    print(f"  RSS after warm-up: {low:.1f} to {max(s[2] for s in warm):.1f} MiB; peak of the "
          f"first half {base_rss:.1f}, of the second {base_rss + growth:.1f} "
          f"(growth {growth:+.1f} MiB, limit {args.max_growth_mib})")  # fmt: skip
    print(f"  open fds after warm-up {base_fds}, max {base_fds + fd_growth}")
    failed = []
    if counts["dead_lettered"] != expected_dead or counts["handled"] != n - expected_dead:
        failed.append("outcomes")
    if counts["transient_failures"] < expected_transient:
        failed.append("transient failures")
    if growth > args.max_growth_mib:
        failed.append("RSS growth")
    if fd_growth > 0:
        failed.append("fd growth")
    if failed:
        raise SystemExit(f"soak failed: {', '.join(failed)}")
    print("  flat: yes")


if __name__ == "__main__":
    main()

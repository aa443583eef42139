"""I/O-bound handlers: what ``ordering`` buys when a handler waits.

3 partitions, about 1,000 distinct keys, and a handler that waits 2 ms (``await
asyncio.sleep`` or a sync ``time.sleep``). Reports msg/s for ``ordering = "partition"``,
``"key"`` and ``"none"`` with ``max_in_flight=256``, next to the same service with a
handler that does not wait (the CPU bound: same ordering, same kind of handler, same
run, same data).

    python benchmarks/concurrency.py [--wait-ms 2] [--records 20000] [--json]

The issue's target: with key ordering the wait is mostly hidden, at least half the
no-wait rate, or at least 40x the partition-ordering rate, whichever is lower.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from typing import Any

import streamguard as sg
from benchmarks.consume import Stopwatch, consumer_config, produce, serve_until_done
from streamguard.demo.contracts import OrderPlaced
from streamguard.devbroker import DevBroker
from streamguard.topics import create_topics

PARTITIONS = 3
KEYS = 997


def run(bootstrap: str, topic: str, count: int, ordering: str, kind: str, wait: float) -> float:
    """msg/s from the first handled record to the ``count``-th."""
    watch = Stopwatch(count)
    mark = watch.mark

    namespace: dict[str, Any] = {
        "topic": topic,
        "contract": OrderPlaced,
        "group_id": f"bench-{uuid.uuid4().hex}",
        "ordering": ordering,
        "options": sg.ServiceOptions(max_in_flight=256),
    }
    if kind == "async":

        async def handle(self: Any, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            if wait:
                await asyncio.sleep(wait)
            mark()

    else:

        def handle(self: Any, event: OrderPlaced, ctx: sg.MessageContext) -> None:  # type: ignore[misc]
            if wait:
                time.sleep(wait)
            mark()

    namespace["handle"] = handle
    cls = type("Bench", (sg.ConsumerService,), namespace)
    config = consumer_config(bootstrap, "unused")
    config.pop("group.id")
    service = cls(bootstrap_servers=bootstrap, kafka_config=config)
    if not serve_until_done(service, watch, 300):
        raise RuntimeError(f"{ordering}/{kind}: {count} records not handled in 300 s")
    return watch.rate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wait-ms", type=float, default=2.0)
    parser.add_argument("--records", type=int, default=20_000, help="per key/none run")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    wait = args.wait_ms / 1000
    results: dict[str, list[float]] = {}
    with DevBroker() as broker:
        bootstrap = broker.bootstrap_servers
        topic = f"bench-io-{uuid.uuid4().hex[:8]}"
        create_topics(bootstrap, [topic], partitions=PARTITIONS)
        produce(bootstrap, topic, args.records, keys=KEYS)
        # Partition ordering is ~1/wait per partition: a shorter run says as much.
        slow = min(args.records, max(1000, int(PARTITIONS / max(wait, 1e-4) * 2)))
        plan = [
            ("no wait", "partition", "sync", 0.0, args.records),
            ("no wait", "key", "async", 0.0, args.records),
            ("no wait", "key", "sync", 0.0, args.records),
            ("partition", "partition", "async", wait, slow),
            ("partition", "partition", "sync", wait, slow),
            ("key", "key", "async", wait, args.records),
            ("key", "key", "sync", wait, args.records),
            ("none", "none", "async", wait, args.records),
            ("none", "none", "sync", wait, args.records),
        ]
        for _ in range(args.rounds):
            for label, ordering, kind, w, count in plan:
                rate = run(bootstrap, topic, count, ordering, kind, w)
                results.setdefault(f"{label} / {ordering} / {kind}", []).append(rate)
    medians = {name: round(statistics.median(rates)) for name, rates in results.items()}
    if args.json:
        print(json.dumps({"wait_ms": args.wait_ms, "msg_per_s": medians}))
        return
    print(f"{PARTITIONS} partitions, {KEYS} keys, handler wait {args.wait_ms:g} ms")
    for name, rate in medians.items():
        print(f"  {name:<32} {rate:>9,} msg/s")
    for kind in ("async", "sync"):
        key = medians[f"key / key / {kind}"]
        part = medians[f"partition / partition / {kind}"]
        cpu = medians[f"no wait / key / {kind}"]
        target = min(cpu / 2, 40 * part)
        verdict = "met" if key >= target else "MISSED"
        print(
            f"  key/{kind}: {key / part:.1f}x partition ordering, {key / cpu:.2f} of the "
            f"no-wait rate (target {target:,.0f} msg/s: {verdict})"
        )


if __name__ == "__main__":
    main()

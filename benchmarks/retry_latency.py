"""How long a retry really waits, against the backoff the policy chose.

A handler fails each of ``--messages`` records once with a transient error; the retry
policy waits about 1 ms (full jitter under a 1-2 ms cap) before the second attempt,
which succeeds. On an otherwise idle partition, the time from the first failure to the
last success, per record, is the real cost of one retry; it should be close to the
backoff, not to the supervisor's idle poll (100 ms), which it once was (84 ms).

    python benchmarks/retry_latency.py [--messages 200]
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import threading
import time
import uuid
from decimal import Decimal

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from streamguard.devbroker import DevBroker
from streamguard.topics import create_topics

FAST_GROUP = {"session.timeout.ms": 2000, "heartbeat.interval.ms": 500}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200)
    args = parser.parse_args()
    n = args.messages
    logging.disable(logging.CRITICAL)  # the per-retry warnings are not what is measured
    with DevBroker() as broker:
        bootstrap = broker.bootstrap_servers
        topic = f"retry-{uuid.uuid4().hex[:8]}"
        create_topics(bootstrap, [topic], partitions=1)
        producer = sg.GuardedProducer(bootstrap)
        for i in range(n):
            producer.send(
                topic,
                OrderPlaced(
                    order_id=uuid.UUID(int=i + 1), customer_id=f"c{i}", amount=Decimal("1"),
                    currency="EUR", placed_at=dt.datetime(2026, 12, 2, tzinfo=dt.UTC),
                ),
            )  # fmt: skip
        producer.flush()
        done = threading.Event()
        first: list[float] = []
        handled: set[int] = set()

        source = topic

        class Flaky(sg.ConsumerService):
            topic = source
            contract = OrderPlaced
            group_id = f"g-{source}"
            retry = sg.RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.002)

            def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
                if ctx.attempt == 1:
                    if not first:
                        first.append(time.monotonic())
                    raise sg.TransientError("fails once")
                handled.add(ctx.offset)
                if len(handled) == n:
                    done.set()

        service = Flaky(bootstrap_servers=bootstrap, kafka_config=FAST_GROUP)
        thread = threading.Thread(target=service.run, daemon=True)
        thread.start()
        finished = done.wait(120)
        elapsed = time.monotonic() - first[0] if first else 0.0
        service.stop()
        thread.join(30)
    if not finished:
        raise SystemExit(f"only {len(handled)} of {n} records were retried and handled")
    print(f"{n} records, each failing once, retried after a backoff of at most 1 ms")
    print(f"  {elapsed:.2f}s in all: {elapsed / n * 1000:.1f} ms per retry")


if __name__ == "__main__":
    main()

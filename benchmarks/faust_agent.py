"""Throughput of a guarded Faust agent against a plain Faust agent on the same data.

The baseline is the agent a careful engineer writes with Faust alone: raw value
serializer and ``OrderPlaced.model_validate_json`` per event, no dead letters, no
retries, no metrics, Faust's own acking. The guarded agent does all of those with a
trivial async handler. Each round runs both, alternating, from the start of the same
topic on the same embedded broker, each with a fresh consumer group; the clock starts
at the first event, so Faust's start-up and group join are not counted. The ratio of
medians is what counts.

    python benchmarks/faust_agent.py [--messages 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

import faust
from consume import PARTITIONS, produce  # benchmarks/ is on the path when run as a script
from faust.contrib.asgi import faust_app_running

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from streamguard.devbroker import DevBroker
from streamguard.faust import guarded_agent
from streamguard.topics import create_topics

SETTINGS = {
    "broker_session_timeout": 2,
    "broker_heartbeat_interval": 0.5,
    "web_enabled": False,
    "topic_replication_factor": 1,
}


def new_app(bootstrap: str, datadir: str) -> Any:
    group = f"bench-{uuid.uuid4().hex[:8]}"
    return faust.App(group, broker=f"kafka://{bootstrap}", datadir=f"{datadir}/{group}", **SETTINGS)


def run(app: Any, count: int, done: Callable[[], int], first: list[float]) -> float:
    """Run ``app`` until ``done()`` reaches ``count``; events per second since the first."""

    async def main() -> float:
        async with faust_app_running(app, stop_timeout=30):
            deadline = time.monotonic() + 300
            while done() < count and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            end = time.perf_counter()
        if done() < count:
            raise RuntimeError(f"only {done()} of {count} events in 300 s")
        return (count - 1) / (end - first[0])

    return asyncio.run(main())


def plain(bootstrap: str, topic: str, count: int, datadir: str) -> float:
    app = new_app(bootstrap, datadir)
    seen = [0]
    first: list[float] = []
    source = app.topic(topic, key_serializer="raw", value_serializer="raw")

    @app.agent(source)
    async def bill(stream: Any) -> None:
        async for value in stream:
            OrderPlaced.model_validate_json(value)
            if not first:
                first.append(time.perf_counter())
            seen[0] += 1

    return run(app, count, lambda: seen[0], first)


def guarded(bootstrap: str, topic: str, count: int, datadir: str) -> float:
    app = new_app(bootstrap, datadir)
    seen = [0]
    first: list[float] = []

    @guarded_agent(app, topic, contract=OrderPlaced)
    async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        if not first:
            first.append(time.perf_counter())
        seen[0] += 1

    return run(app, count, lambda: seen[0], first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    broker = DevBroker()
    broker.start()
    try:
        bootstrap = broker.bootstrap_servers
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        create_topics(bootstrap, [topic], partitions=PARTITIONS)
        size = produce(bootstrap, topic, args.messages)
        results: dict[str, list[float]] = {"plain": [], "guarded": []}
        with tempfile.TemporaryDirectory() as datadir:
            for _ in range(args.rounds):
                results["plain"].append(plain(bootstrap, topic, args.messages, datadir))
                results["guarded"].append(guarded(bootstrap, topic, args.messages, datadir))
        base = statistics.median(results["plain"])
        mine = statistics.median(results["guarded"])
        print(
            f"{args.messages} messages of {size} B on {PARTITIONS} partitions, {args.rounds} rounds"
        )
        for name, label in (("plain", "plain Faust agent"), ("guarded", "guarded agent   ")):
            runs = ", ".join(f"{r:.0f}" for r in results[name])
            print(f"  {label} : {statistics.median(results[name]):>9,.0f} msg/s [{runs}]")
        print(f"  ratio             : {mine / base:.3f}")
    finally:
        broker.stop()


if __name__ == "__main__":
    main()

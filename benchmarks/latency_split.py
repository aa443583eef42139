"""Where a record's latency goes at a low rate: the broker's part, and the runtime's.

``peers.py``'s latency pass gives one figure per record, from the producer's send to
the handler's call. This splits it at the moment ``consume()`` handed the record to the
runtime: before it, the producer, the broker and librdkafka's fetch; after it, the
runtime (hand-off to a worker or to the event loop, decoding, the handler call).
The runtime's part is cut three times more: *tick*, from ``consume()`` to the end of
the poll (the maintenance tick: delivery reports, flow control, commits); *wake*, from
there until a worker takes the record's batch (for async handlers, until the event
loop takes it); *in batch*, from there to the handler's call (decoding, and the records
ahead of it in its batch). The event loop may take a batch while the poll that fetched
it still runs its tick, so for async handlers the cuts can overlap.

A producer process sends records at a fixed rate, each carrying its send time, as in
the latency pass (same producer, fetch wait capped at 10 ms); the service runs in
this process with its dispatch step timed. Runs of sync and async handlers alternate.

    python benchmarks/latency_split.py [--records 8000] [--rate 1000] [--runs 2]
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peerbench.dataset import produce_paced
from peerbench.events import MEASURED_AFTER
from peerbench.kafka import FAST_JOIN
from peerbench.runner import Settings

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from streamguard.devbroker import DevBroker, free_port
from streamguard.headers import Record
from streamguard.runtime.eventloop import LoopLane
from streamguard.runtime.lane import PartitionLane
from streamguard.runtime.poller import Poller
from streamguard.topics import create_topics


def run(bootstrap: str, name: str, kind: str, records: int, rate: float) -> dict[str, float]:
    """One run: p50/p99 in ms of send->consume and consume->handler, and in all."""
    dispatched: dict[tuple[int, int], int] = {}
    # time_ns of: sent, consumed, its poll returned, its batch's drain started, handled
    samples: list[tuple[int, int, int, int, int]] = []
    scratch = tempfile.TemporaryDirectory(prefix="latency-split-")
    ready = Path(scratch.name, "ready")  # the producer starts once it exists
    original = Poller._dispatch
    original_poll = Poller.poll_once
    polled: dict[tuple[int, int], int] = {}  # when the poll that fetched it returned
    fetched: list[tuple[int, int]] = []  # the records of the poll under way
    original_drain, original_take = PartitionLane.drain, LoopLane.take
    drained: dict[tuple[int, int], int] = {}  # when a worker or the loop took its batch

    def poll_once(self: Poller, timeout: float) -> list[PartitionLane]:
        fetched.clear()
        claimed = original_poll(self, timeout)
        now = time.time_ns()
        for key in fetched:
            polled[key] = now
        return claimed

    def taken(lane: PartitionLane, batches: int) -> None:
        now = time.time_ns()
        with lane.lock:
            for batch in list(lane.queue)[:batches]:
                for msg in batch:
                    drained[(msg.partition() or 0, msg.offset() or 0)] = now

    def drain(self: PartitionLane, max_batches: int = 1 << 30) -> bool:
        if not self.hands_off:  # a worker's drain runs the first batch's handlers
            taken(self, 1)
        return original_drain(self, max_batches)

    def take(self: LoopLane) -> list[list[Record]]:
        taken(self, len(self.queue))
        return original_take(self)

    def dispatch(self: Poller, msgs: list[Record]) -> list[PartitionLane]:
        now = time.time_ns()
        for msg in msgs:
            key = (msg.partition() or 0, msg.offset() or 0)
            dispatched[key] = now
            fetched.append(key)
        return original(self, msgs)

    def note(event: Any, ctx: sg.MessageContext) -> None:
        now, sent = time.time_ns(), event.order_id.int
        if sent < MEASURED_AFTER:  # a warm-up record: the producer may start
            ready.touch()
            return
        key = (ctx.partition, ctx.offset)
        samples.append((sent, dispatched[key], polled.get(key, now), drained.get(key, now), now))
        if len(samples) == records:
            service.stop()

    if kind == "async":

        class Service(sg.ConsumerService):
            topic = group_id = name
            contract = OrderPlaced

            async def handle(self, event: Any, ctx: sg.MessageContext) -> None:
                note(event, ctx)

    else:

        class Service(sg.ConsumerService):  # type: ignore[no-redef]
            topic = group_id = name
            contract = OrderPlaced

            def handle(self, event: Any, ctx: sg.MessageContext) -> None:
                note(event, ctx)

    config = {**FAST_JOIN, "fetch.wait.max.ms": Settings.fetch_wait_ms}  # as in the pass
    service = Service(bootstrap_servers=bootstrap, kafka_config=config, metrics_port=free_port())
    producer = multiprocessing.get_context("spawn").Process(
        target=produce_paced, args=(bootstrap, name, rate, records, str(ready))
    )
    Poller._dispatch = dispatch  # type: ignore[method-assign]
    Poller.poll_once = poll_once  # type: ignore[method-assign]
    PartitionLane.drain = drain  # type: ignore[method-assign]
    LoopLane.take = take  # type: ignore[method-assign]
    try:
        producer.start()
        service.run()
    finally:
        Poller._dispatch = original  # type: ignore[method-assign]
        Poller.poll_once = original_poll  # type: ignore[method-assign]
        PartitionLane.drain = original_drain  # type: ignore[method-assign]
        LoopLane.take = original_take  # type: ignore[method-assign]
        producer.join(30)
        scratch.cleanup()

    def cuts(values: list[float]) -> tuple[float, float]:
        q = statistics.quantiles(values, n=100)
        return q[49], q[98]

    out: dict[str, float] = {}
    for part, values in (
        ("broker", [(c - s) / 1e6 for s, c, _, _, _ in samples]),
        ("runtime", [(h - c) / 1e6 for _, c, _, _, h in samples]),
        ("total", [(h - s) / 1e6 for s, _, _, _, h in samples]),
        ("tick", [(p - c) / 1e6 for _, c, p, _, _ in samples]),
        ("wake", [(d - p) / 1e6 for _, _, p, d, _ in samples]),
        ("batch", [(h - d) / 1e6 for _, _, _, d, h in samples]),
    ):
        out[f"{part}_p50"], out[f"{part}_p99"] = cuts(values)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=8000)
    parser.add_argument("--rate", type=float, default=1000.0, help="records a second")
    parser.add_argument("--runs", type=int, default=2, help="runs of each handler kind")
    args = parser.parse_args()
    logging.getLogger("streamguard").setLevel(logging.ERROR)  # records lack sg-* headers
    print("ms, p50/p99: send->consume (broker) | consume->handler (runtime) | in all")
    with DevBroker() as broker:
        for n in range(args.runs):
            for kind in ("sync", "async"):
                topic = f"latency-split-{kind}-{n}"
                create_topics(broker.bootstrap_servers, [topic], partitions=3)
                r = run(broker.bootstrap_servers, topic, kind, args.records, args.rate)
                print(
                    f"{kind:5s}  {r['broker_p50']:5.2f}/{r['broker_p99']:6.2f} | "
                    f"{r['runtime_p50']:5.3f}/{r['runtime_p99']:6.3f} | "
                    f"{r['total_p50']:5.2f}/{r['total_p99']:6.2f}  (runtime: tick "
                    f"{r['tick_p50']:5.3f}/{r['tick_p99']:5.3f} | wake "
                    f"{r['wake_p50']:5.3f}/{r['wake_p99']:5.3f} | in batch "
                    f"{r['batch_p50']:5.3f}/{r['batch_p99']:5.3f})",
                    flush=True,
                )


if __name__ == "__main__":
    main()

"""Where a dead letter's time goes, measured in one thread against the embedded broker.

``peers.py``'s ``sg-dlq`` row (every record invalid) moves with the load of a shared
machine; this does not: the same fetched invalid records run through each part of the
dead-letter path, and the best of several repeats (in this thread's CPU time, delivery
reports included) is reported in microseconds per record, next to a hand-written
dead-letter loop: validate, and on failure produce the record with one reason header.

    python benchmarks/dlq_path.py [--records 4000] [--repeats 15] [--part lane]

Times move by a third between runs on a shared VM; instruction counts do not. Run one
part under callgrind twice and take the difference per record (docs/benchmark-notes.md):

    valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file=cg.1 \
        python benchmarks/dlq_path.py --records 2000 --repeats 1 --part PartitionLane
    (the same with --repeats 3 and cg.3); then
    (totals of cg.3-01 - totals of cg.1-01) / (2 * 2000)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from confluent_kafka import Producer
from hotpath import fetch
from peerbench import dataset
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

import streamguard as sg
from streamguard.deadletter import DeadLetterLog, Failure
from streamguard.demo.contracts import OrderPlaced
from streamguard.devbroker import DevBroker
from streamguard.observe.metrics import ServiceMetrics
from streamguard.runtime.deadletters import DeadLetterPublisher, headers_for
from streamguard.runtime.lane import PartitionLane
from streamguard.runtime.pipeline import Pipeline
from streamguard.topics import create_topics


def dead_letter_producer(bootstrap: str) -> Producer:
    # The service's DLQ producer settings, without idempotence: the embedded broker
    # fences idempotent producers now and then, which would stall a repeat.
    return Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})


def pipeline(bootstrap: str) -> tuple[Pipeline, DeadLetterPublisher]:
    class Bench(sg.ConsumerService):
        topic = "dlqpath"
        group_id = "dlqpath"
        contract = OrderPlaced

        def handle(self, event: Any, ctx: sg.MessageContext) -> None:
            pass

    spec = Bench(bootstrap_servers=bootstrap)._spec()
    create_topics(bootstrap, [spec.dead_letter_topic], partitions=3)
    metrics = ServiceMetrics(CollectorRegistry())
    publisher = DeadLetterPublisher(spec, lambda: dead_letter_producer(bootstrap), metrics)
    return Pipeline(spec, publisher, metrics), publisher


def measure(
    records: list[Any],
    pipe: Pipeline,
    publisher: DeadLetterPublisher,
    bootstrap: str,
    repeats: int,
    part: str = "",
) -> dict[str, float]:
    """Best of ``repeats`` per part (those whose name holds ``part``), in this thread's
    CPU time, parts interleaved."""
    values = [m.value() for m in records]
    validate = OrderPlaced.model_validate_json
    batches = [records[i : i + 500] for i in range(0, len(records), 500)]
    loop_producer = dead_letter_producer(bootstrap)
    dlq = pipe.spec.dead_letter_topic
    acked = [0]

    def counted(err: Any, msg: Any) -> None:
        acked[0] += 1

    def settle(producer: Producer, expected: int) -> None:
        # Delivery reports run in this thread, as the service's poller serves them.
        deadline = time.monotonic() + 30
        while acked[0] < expected and time.monotonic() < deadline:
            producer.poll(0.001)

    def hand_written() -> None:
        acked[0] = 0
        for msg in records:
            try:
                validate(msg.value())
            except ValidationError:
                headers = list(msg.headers() or ())
                headers.append(("sg-dlq-reason", b"contract_violation"))
                loop_producer.produce(
                    dlq, msg.value(), key=msg.key(), headers=headers, on_delivery=counted
                )
                loop_producer.poll(0)
        settle(loop_producer, len(records))

    def lane_run() -> None:
        lane = PartitionLane(0, pipe)
        for batch in batches:
            lane._process(batch)
            publisher.serve_reports()
        publisher.flush(30)  # serves the last reports here, blocking instead of spinning

    failures = []
    for v in values:
        try:
            pipe.decode(v)
        except sg.ContractViolation as exc:
            failures.append(Failure("contract_violation", exc))
    build = headers_for(pipe.spec)
    quiet = DeadLetterLog(logging.getLogger("dlqpath"), **pipe.spec.names())

    def decode_all() -> None:
        for v in values:
            try:  # noqa: SIM105 (measured: contextlib.suppress costs more than the try)
                pipe.decode(v)
            except sg.ContractViolation:
                pass

    parts: dict[str, Callable[[], None]] = {
        "hand-written DLQ loop (validate, produce with a reason header, reports)": hand_written,
        "PartitionLane._process with the DLQ publisher, reports served": lane_run,
        "model_validate_json, failing": lambda: [_fail(validate, v) for v in values] and None,
        "streamguard decoder, failing (ContractViolation built)": decode_all,
        "dead-letter headers": lambda: (
            [build.for_record(m, f) for m, f in zip(records, failures, strict=True)] and None
        ),
        "the dead-lettering log line (rate-limited)": lambda: (
            [quiet(m, f) for m, f in zip(records, failures, strict=True)] and None
        ),
    }
    parts = {name: run for name, run in parts.items() if part in name}
    found = dict.fromkeys(parts, float("inf"))
    for _ in range(repeats):
        for name, run in parts.items():
            start = time.thread_time()
            run()
            took = (time.thread_time() - start) / len(records) * 1e6
            found[name] = min(found[name], took)
    return found


def _fail(validate: Callable[[bytes], Any], value: bytes) -> None:
    try:  # noqa: SIM105 (measured: contextlib.suppress costs more than the try)
        validate(value)
    except ValidationError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=15, help="best of this many")
    parser.add_argument("--part", default="", help="only the parts whose name holds this")
    args = parser.parse_args()
    # The measured log lines are written (their cost counts) but not shown.
    quiet = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 (for the process's life)
    for name in ("streamguard", "dlqpath"):
        logging.getLogger(name).addHandler(quiet)
        logging.getLogger(name).propagate = False
    with DevBroker() as broker:
        bootstrap = broker.bootstrap_servers
        records = fetch(bootstrap, args.records, False, dataset.invalid_value)
        pipe, publisher = pipeline(bootstrap)
        results = measure(records, pipe, publisher, bootstrap, args.repeats, args.part)
    for name, us in results.items():
        print(f"{us:8.2f} µs  {name}")
    base = results.get("hand-written DLQ loop (validate, produce with a reason header, reports)")
    ours = results.get("PartitionLane._process with the DLQ publisher, reports served")
    if base and ours:
        print(f"{base / ours:8.2f}     hand-written loop's µs over streamguard's (1.0: as cheap)")


if __name__ == "__main__":
    main()

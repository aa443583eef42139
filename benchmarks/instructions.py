"""Instructions per consumed record, whole process, counted with callgrind.

On a shared VM the CPU time of one row moves by a third or more between rounds;
instruction counts do not. Each row runs twice under callgrind, consuming 4,000 and then
12,000 records of one 3-partition topic (the peers' events, no ``sg-*`` headers), and
the difference per record is reported for the busiest thread and the rest, so start-up,
group join and shutdown cancel out. The busiest thread is the one that polls, validates
and handles: compare rows by it. The others' share is not really per record: librdkafka
prefetches up to its queue's size whatever is consumed, and the service asks it for
statistics once a second of a run that valgrind slows fiftyfold. Needs ``valgrind``
(``apt-get install valgrind``); about a minute a row on 2 cores. From the project's
``.venv`` (``make test`` creates it), every row by default:

    .venv/bin/python benchmarks/instructions.py
    .venv/bin/python benchmarks/instructions.py --rows loop-tuned sg-sync

What callgrind cannot see (cache misses, scheduling, time in the kernel) is the part of
a CPU-time gap these counts leave unexplained (docs/benchmark-notes.md).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from confluent_kafka import Consumer, Producer
from peerbench import dataset
from peerbench.kafka import FAST_JOIN, POLL_TIMEOUT

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from streamguard.devbroker import DevBroker
from streamguard.runtime.service import CONSUMER_DEFAULTS
from streamguard.topics import create_topics

ROWS = ("loop-untuned", "loop-tuned", "sg-sync")
FEW, MANY = 4_000, 12_000


def consume(row: str, records: int) -> int:
    """Write MANY records, consume ``records`` of them as ``row`` does; the count seen."""
    with DevBroker() as broker:
        bootstrap = broker.bootstrap_servers
        create_topics(bootstrap, ["orders"], partitions=3)
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
        for i in range(MANY):
            producer.produce("orders", dataset.json_value(i), key=b"k%d" % (i % dataset.KEYS))
        producer.flush()
        if row == "sg-sync":
            return consume_with_service(bootstrap, records)
        tuned = CONSUMER_DEFAULTS if row == "loop-tuned" else {}
        consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "count", "auto.offset.reset": "earliest"}
            | FAST_JOIN
            | dict(tuned)
        )
        consumer.subscribe(["orders"])
        seen, deadline = 0, time.monotonic() + 600
        while seen < records and time.monotonic() < deadline:
            for msg in consumer.consume(min(500, records - seen), POLL_TIMEOUT):
                if msg.error() is None:
                    OrderPlaced.model_validate_json(msg.value())
                    seen += 1
        consumer.close()
        return seen


def consume_with_service(bootstrap: str, records: int) -> int:
    seen = 0

    class Count(sg.ConsumerService):
        topic = "orders"
        group_id = "count"
        contract = OrderPlaced

        def handle(self, event: Any, ctx: sg.MessageContext) -> None:
            nonlocal seen
            seen += 1
            if seen == records:
                self.stop()

    Count(bootstrap_servers=bootstrap, kafka_config=FAST_JOIN).run()
    return seen


def totals(prefix: Path) -> list[int]:
    """Instructions of each thread's callgrind file (``prefix-01``, ``prefix-02``, ...)."""
    counts = []
    for path in sorted(prefix.parent.glob(prefix.name + "-*")):
        for line in path.read_text().splitlines():
            if line.startswith(("totals:", "summary:")):
                counts.append(int(line.split()[1]))
                break
    return counts


def count(valgrind: str, row: str, workdir: Path) -> tuple[float, float]:
    """Instructions per record on the busiest thread and on all the others."""
    runs = {}
    for records in (FEW, MANY):
        out = workdir / f"{row}.{records}"
        done = subprocess.run(
            [valgrind, "--tool=callgrind", "--separate-threads=yes",
             f"--callgrind-out-file={out}", sys.executable, __file__,
             "--consume", row, str(records)],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"{row} under callgrind failed:\n{done.stderr[-2000:]}")
        runs[records] = totals(out)
    few, many = runs[FEW], runs[MANY]
    if len(few) != len(many):  # threads are matched by creation order
        raise SystemExit(f"{row}: {len(few)} threads in one run, {len(many)} in the other")
    per_thread = [(b - a) / (MANY - FEW) for a, b in zip(few, many, strict=True)]
    busiest = max(per_thread)
    return busiest, sum(per_thread) - busiest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--consume", nargs=2, metavar=("ROW", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.consume:
        row, records = args.consume[0], int(args.consume[1])
        seen = consume(row, records)
        return 0 if seen >= records else 1
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    print(f"instructions per record (consuming {MANY:,} records minus consuming {FEW:,})")
    with tempfile.TemporaryDirectory() as workdir:
        for row in args.rows:
            busiest, rest = count(valgrind, row, Path(workdir))
            print(
                f"  {row:14} busiest thread {busiest / 1e3:5.1f}k   "
                f"other threads {rest / 1e3:4.1f}k   all {(busiest + rest) / 1e3:5.1f}k",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

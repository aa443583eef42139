"""librdkafka's fetch queue settings, compared on events of different sizes.

``queued.max.messages.kbytes`` caps what librdkafka prefetches; once the queue is over
the cap, fetching backs off for ``fetch.queue.backoff.ms``. A small cap keeps the RSS
down, since the runtime buffers per partition itself; a long backoff starves a consumer
that drains the queue faster than one backoff. Which settings suit depends on the bytes a
second the handler path can take, so each setting runs on three data sets:

- ``small``: 318-byte orders with four line items (validation-bound, about 40 MB/s);
- ``items``: 4.6 KB orders with 120 line items (validation-bound, about 40 MB/s);
- ``blob``: 20 KB orders whose size is one long string (validation is nearly a copy,
  several hundred MB/s).

Each round runs every setting once, alternating, on the same topic with a fresh group
(a sync ``ConsumerService``, trivial handler, as in ``consume.py``); a rate is timed from
the first record to the last, the group join excluded, and each line gives the median
and, in brackets, every round. The events carry no ``sg-*`` headers (as in the peers'
data set), so the service's sampled drift check parses values and logs what it finds
(``schema drift`` on stderr). ``--slow-ms`` runs a handler that sleeps instead, so the
queue stays full, and reports the CPU of librdkafka's threads: the price of a short
backoff is its wake-ups while a consumer is behind. A setting without a backoff gets
streamguard's (``CONSUMER_DEFAULTS``); the line of streamguard's own settings is marked.

    python benchmarks/fetch_queue.py [--settings 4096:10,2048:1] [--data small,items,blob]
        [--rounds 3] [--partitions 3] [--records N] [--slow-ms 1]

RSS is not measured here (one process runs every setting); the peers' memory pass does
it, from the bench venv, writing its results aside (without ``--out`` and
``--no-render`` it would overwrite the published table):

    PEERBENCH_SG_KAFKA_CONFIG='{"queued.max.messages.kbytes": 4096, "fetch.queue.backoff.ms": 10}' \
        .venv-bench/bin/python benchmarks/peers.py --only sg-sync --modes rss \
        --out /tmp/rss.json --no-render
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from decimal import Decimal

from confluent_kafka import Producer
from consume import (  # benchmarks/ is on the path as a script
    Stopwatch,
    consumer_config,
    serve_until_done,
    service_class,
)

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from streamguard.devbroker import DevBroker
from streamguard.runtime.service import CONSUMER_DEFAULTS
from streamguard.topics import create_topics

# Records per data set: a second or more of consuming each (64, 92 and 400 MB).
RECORDS = {"small": 200_000, "items": 20_000, "blob": 20_000}


def event(data: str, i: int) -> bytes:
    """One order event of the data set's shape."""
    customer, items = f"customer-{i % 5000:06d}-eu-west-1", 4
    if data == "items":
        items = 120
    elif data == "blob":
        customer, items = f"customer-{i:06d}-" + "x" * 20_000, 0
    return (
        OrderPlaced(
            order_id=uuid.UUID(int=i + 1),
            customer_id=customer,
            amount=Decimal("1234.56"),
            currency="EUR",
            placed_at=dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC),
            items=[{"sku": f"SKU-{(i + k) % 99999:08d}", "quantity": k + 1} for k in range(items)],
        )
        .model_dump_json()
        .encode()
    )


def produce(bootstrap: str, topic: str, data: str, count: int) -> int:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "message.max.bytes": 2_000_000}
    )
    values = [event(data, i) for i in range(200)]
    for i in range(count):
        while True:
            try:
                producer.produce(topic, values[i % 200], key=b"k%d" % (i % 997))
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(120)
    return len(values[0])


def parse_setting(text: str) -> dict[str, int]:
    """``4096:10`` -> the cap in KiB and the backoff in ms (streamguard's when left out)."""
    cap, _, backoff = text.partition(":")
    default = int(CONSUMER_DEFAULTS["fetch.queue.backoff.ms"])
    return {
        "queued.max.messages.kbytes": int(cap),
        "fetch.queue.backoff.ms": int(backoff) if backoff else default,
    }


def label(setting: str) -> str:
    """The setting as printed: marked when it is streamguard's own."""
    ours = all(CONSUMER_DEFAULTS[k] == v for k, v in parse_setting(setting).items())
    return f"{setting:>9}{' (default)' if ours else ''}"


def service(
    bootstrap: str, topic: str, setting: str, handle: Callable[[], None]
) -> sg.ConsumerService:
    """consume.py's sync service and settings, with the fetch queue of ``setting``."""
    config = {**consumer_config(bootstrap, "unused"), **parse_setting(setting)}
    config.pop("group.id")
    return service_class(topic, handle)(bootstrap_servers=bootstrap, kafka_config=config)


def rate(bootstrap: str, topic: str, setting: str, count: int) -> float:
    watch = Stopwatch(count)
    if not serve_until_done(service(bootstrap, topic, setting, watch.mark), watch, 300):
        raise SystemExit(f"{setting}: {watch.marked} of {count} records in 300 s")
    return watch.rate()


def thread_cpu() -> dict[str, tuple[str, float]]:
    """CPU seconds so far of each of this process's threads, with its name."""
    tick = os.sysconf("SC_CLK_TCK")
    seen = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with (
                open(f"/proc/self/task/{tid}/comm") as comm,
                open(f"/proc/self/task/{tid}/stat") as stat,
            ):
                fields = stat.read().rsplit(")", 1)[1].split()
                seen[tid] = (comm.read().strip(), (int(fields[11]) + int(fields[12])) / tick)
        except OSError:  # the thread ended
            pass
    return seen


def slow_cost(
    bootstrap: str, topic: str, setting: str, sleep_s: float, count: int
) -> tuple[int, float, float]:
    """librdkafka's threads: how many, their CPU (cores); records a second. The handler
    sleeps, so the fetch queue stays full."""
    handled = Stopwatch(10**9)

    def handle() -> None:
        handled.mark()
        time.sleep(sleep_s)

    svc = service(bootstrap, topic, setting, handle)
    thread = threading.Thread(target=svc.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while handled.marked < 200 and time.monotonic() < deadline:  # joined and filled
        time.sleep(0.05)
    time.sleep(1)
    before, n0, t0 = thread_cpu(), handled.marked, time.monotonic()
    time.sleep(8)
    after, n1, t1 = thread_cpu(), handled.marked, time.monotonic()
    svc.stop()
    thread.join(60)
    if n1 >= count:  # the queue ran dry inside the window: the figure is not a full one
        raise SystemExit(f"{setting}: all {count} records handled in the window; use more")
    rdk = [cpu - before[tid][1] for tid, (name, cpu) in after.items()
           if tid in before and name.startswith("rdk:")]  # fmt: skip
    return len(rdk), sum(rdk) / (t1 - t0), (n1 - n0) / (t1 - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--settings", default="4096:10,2048:1", help="CAP_KIB[:BACKOFF_MS],... (4096:10,2048:1)"
    )
    parser.add_argument("--data", default="small,items,blob", help="small,items,blob (all)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every setting (3)")
    parser.add_argument("--partitions", type=int, default=3, help="partitions of each topic (3)")
    parser.add_argument(
        "--records",
        type=int,
        help="records per data set (a second or more of each; fewer make shorter, noisier runs)",
    )
    parser.add_argument(
        "--slow-ms",
        type=float,
        help="instead: a handler sleeping this long (ms); report librdkafka's threads' CPU",
    )
    args = parser.parse_args()
    settings = args.settings.split(",")
    for setting in settings:
        parse_setting(setting)  # refuse a malformed one before the broker starts
    with DevBroker() as broker:
        bootstrap = broker.bootstrap_servers
        for data in args.data.split(","):
            count = args.records or RECORDS[data]
            topic = f"fq-{data}-{uuid.uuid4().hex[:6]}"
            create_topics(bootstrap, [topic], partitions=args.partitions)
            size = produce(bootstrap, topic, data, count)
            print(
                f"{data}: {count} records of {size} B on {args.partitions} partitions", flush=True
            )
            if args.slow_ms is not None:
                report_slow(bootstrap, topic, settings, args.rounds, args.slow_ms / 1000, count)
            else:
                report_rates(bootstrap, topic, settings, args.rounds, count)


def report_rates(bootstrap: str, topic: str, settings: list[str], rounds: int, count: int) -> None:
    rates: dict[str, list[float]] = {s: [] for s in settings}
    for _ in range(rounds):
        for setting in settings:  # alternating, so the machine's drift hits each alike
            rates[setting].append(rate(bootstrap, topic, setting, count))
    for setting, runs in rates.items():
        listed = ", ".join(f"{r:,.0f}" for r in runs)
        print(f"  {label(setting)}: {statistics.median(runs):>9,.0f} msg/s [{listed}]")


def report_slow(
    bootstrap: str, topic: str, settings: list[str], rounds: int, sleep_s: float, count: int
) -> None:
    costs: dict[str, list[tuple[int, float, float]]] = {s: [] for s in settings}
    for _ in range(rounds):
        for setting in settings:  # alternating, as for the rates
            costs[setting].append(slow_cost(bootstrap, topic, setting, sleep_s, count))
    for setting, runs in costs.items():
        threads = max(n for n, _, _ in runs)
        cores = statistics.median(c for _, c, _ in runs)
        per_s = statistics.median(r for _, _, r in runs)
        print(
            f"  {label(setting)}: {threads} librdkafka threads, {cores:.2%} of a core, "
            f"{per_s:,.0f} msg/s"
        )


if __name__ == "__main__":
    main()

"""Every metric a service exposes matches an account kept without it: a seeded random
mix of valid and poison records, transient and permanent failures, run through the real
broker, then the registry compared with the DLQ and its headers, the group's committed
offsets and the handler's own log."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

import streamguard as sg
from streamguard.deadletter import REASONS
from streamguard.demo.contracts import OrderPlaced
from streamguard.producer import stamp_headers
from streamguard.schema.drift import KINDS
from tests.runtime.conftest import Running, committed, dlq_headers, order, wait_for

PARTITIONS = 3
RECORDS = 60
ATTEMPTS = 3  # RetryPolicy(attempts=...): a doomed record is called this many times
SLOW = 0.03  # a handler call that sleeps this long lands above the 0.025 bucket
SUBJECT = OrderPlaced.__subject__

# kind -> weight. "flaky<k>" fails transiently k times, then succeeds.
MIX = {
    "ok": 5,
    "violation": 2,
    "garbage": 2,
    "tombstone": 2,
    "flaky1": 2,
    "flaky2": 2,
    "doomed": 1,
    "permanent": 2,
}


@dataclass(frozen=True)
class Variant:
    name: str
    async_handler: bool
    ordering: str
    max_in_flight: int = 256
    tombstones: bool = False  # the service overrides handle_tombstone
    breaker: bool = False  # the circuit breaker on (and no doomed records, see below)
    max_buffered: int = 2000  # small: partitions fill up, and are throttled or paused


VARIANTS = [
    Variant("sync-partition", async_handler=False, ordering="partition", tombstones=True),
    Variant("async-partition", async_handler=True, ordering="partition", tombstones=True),
    Variant("async-key", async_handler=True, ordering="key", max_in_flight=3, tombstones=True),
    Variant("sync-key-breaker", async_handler=False, ordering="key", max_in_flight=2, breaker=True),
    Variant("sync-partition-full", async_handler=False, ordering="partition", max_buffered=4),
    Variant(
        "async-none-full", async_handler=True, ordering="none", max_in_flight=4, max_buffered=4
    ),
]


@dataclass
class Planned:
    kind: str
    partition: int
    key: bytes | None
    stamped: bool  # produced with a guarded producer's sg-* headers
    sleep: float  # seconds a successful handler call takes at least


@dataclass
class HandlerLog:
    """What the handler saw, from any thread: calls per record and how each ended."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    calls: Counter[tuple[int, int]] = field(default_factory=Counter)
    transient: int = 0  # calls that raised a transient error
    succeeded: list[tuple[int, int]] = field(default_factory=list)  # records handled
    timed: list[float] = field(default_factory=list)  # sleeps of timed successful calls

    def call(self, ctx: sg.MessageContext) -> int:
        with self.lock:
            self.calls[(ctx.partition, ctx.offset)] += 1
            return self.calls[(ctx.partition, ctx.offset)]


def plan(seed: int, variant: Variant) -> list[Planned]:
    kinds = {k: w for k, w in MIX.items() if not (variant.breaker and k == "doomed")}
    return plan_records(random.Random(seed), kinds, RECORDS)


def plan_records(rng: random.Random, mix: dict[str, int], records: int) -> list[Planned]:
    """``records`` records of the kinds of ``mix`` (kind -> weight), drawn from ``rng``
    (also the Faust agent's twin's plan)."""
    kinds, weights = list(mix), list(mix.values())
    planned = []
    for i in range(records):
        kind = rng.choices(kinds, weights)[0]
        # Every partition gets records, so that each has a lag series to read.
        partition = i if i < PARTITIONS else rng.randrange(PARTITIONS)
        key = None if rng.random() < 0.1 else f"k{rng.randrange(6)}".encode()
        sleep = rng.choice([0.0, 0.0, 0.001, SLOW])
        planned.append(Planned(kind, partition, key, rng.random() < 0.5, sleep))
    return planned


def value_of(i: int, p: Planned) -> bytes | None:
    if p.kind == "tombstone":
        return None
    if p.kind == "garbage":
        return b"\xff\x00 not json %d" % i
    if p.kind == "violation":
        return json.dumps({"order_id": "not-a-uuid", "customer_id": f"v-{i}"}).encode()
    return order(i, customer_id=f"{p.kind}-{i}").model_dump_json().encode()


def produce(bootstrap: str, topic: str, planned: list[Planned]) -> dict[tuple[int, int], int]:
    """Send the plan; return each record's index by its (partition, offset)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    stamp = stamp_headers(OrderPlaced, sg.JsonCodec(), "differential")
    where: dict[tuple[int, int], int] = {}

    def delivered(i: int) -> Callable[[Any, Any], None]:
        def report(err: Any, msg: Any) -> None:
            assert err is None, err
            where[(msg.partition(), msg.offset())] = i

        return report

    for i, p in enumerate(planned):
        producer.produce(
            topic,
            value_of(i, p),
            key=p.key,
            partition=p.partition,
            headers=list(stamp) if p.stamped else None,
            on_delivery=delivered(i),
        )
    assert producer.flush(10) == 0
    assert len(where) == len(planned)
    return where


def expected_drift(planned: list[Planned]) -> dict[str, int]:
    """With drift_sample=1 every decoded record is checked once (retries are not)."""
    counts = dict.fromkeys(KINDS, 0)
    decodes = ("ok", "flaky1", "flaky2", "doomed", "permanent")
    counts["no_schema_headers"] = sum(1 for p in planned if p.kind in decodes and not p.stamped)
    return counts


# What a planned record of each kind ends as, unless "handled" (a tombstone's depends on
# whether the service handles tombstones, and the Faust agent never plans one).
PLANNED_REASONS = {
    "violation": "contract_violation",
    "garbage": "decode_error",
    "doomed": "retries_exhausted",
    "permanent": "permanent_error",
}


def expected_counts(
    *,
    handled: int,
    reasons: Counter[str],
    transient: int,
    timed: int,
    planned: list[Planned],
    breaker_opened: int,
) -> dict[tuple[str, str], float]:
    """The metrics a service and a guarded Faust agent must both show once every record
    is final, from the account of the broker and the handler's log alone."""
    return {
        ("streamguard_messages_total", "handled"): handled,
        ("streamguard_messages_total", "dead_lettered"): sum(reasons.values()),
        **{("streamguard_dead_letters_total", r): reasons[r] for r in REASONS},
        # Every transient failure was retried, but the last call of a doomed record.
        ("streamguard_retries_total", ""): transient - reasons["retries_exhausted"],
        # The handler's calls that returned, a tombstone handler's included.
        ("streamguard_handler_seconds_count", ""): timed,
        **{("streamguard_schema_drift_total", k): n for k, n in expected_drift(planned).items()},
        ("streamguard_commit_failures_total", ""): 0,
        ("streamguard_dead_letter_failures_total", ""): 0,
        ("streamguard_inflight", ""): 0,
        ("streamguard_paused_partitions", ""): 0,
        ("streamguard_breaker_state", ""): 0,
        ("streamguard_breaker_opened_total", ""): breaker_opened,
        ("streamguard_retries_deferred_total", ""): 0,  # 100 tokens, fewer retries
        ("streamguard_ready", ""): 1,
    }


def service_class(
    src: str, group: str, variant: Variant, planned: list[Planned], log: HandlerLog
) -> type[sg.ConsumerService]:
    sleeps = {f"{p.kind}-{i}": p.sleep for i, p in enumerate(planned)}

    def decide(event: OrderPlaced, ctx: sg.MessageContext) -> float:
        """Raise as the record's kind says, by the calls made so far (a failed probe
        gives its attempt back, so ``ctx.attempt`` does not count calls); else the
        seconds to sleep."""
        calls = log.call(ctx)
        kind = event.customer_id.split("-")[0]
        if kind == "permanent":
            raise sg.PermanentError("closed account")
        failures = {"flaky1": 1, "flaky2": 2, "doomed": 1 << 30}.get(kind, 0)
        if calls <= failures:
            with log.lock:
                log.transient += 1
            raise TimeoutError("upstream timed out")
        return sleeps[event.customer_id]

    def succeeded(ctx: sg.MessageContext, slept: float | None) -> None:
        with log.lock:
            log.succeeded.append((ctx.partition, ctx.offset))
            if slept is not None:
                log.timed.append(slept)

    options = sg.ServiceOptions(
        commit_interval=0.2,
        batch_size=16,
        drift_sample=1,
        max_in_flight=variant.max_in_flight,
        max_buffered=variant.max_buffered,
        pause_after=0.05,
    )
    retry = sg.RetryPolicy(attempts=ATTEMPTS, base_delay=0.01, max_delay=0.03)
    breaker = (
        sg.CircuitBreaker(min_calls=6, failure_ratio=0.3, window=2.0, cool_down=0.2)
        if variant.breaker
        else sg.CircuitBreaker(enabled=False)
    )
    attrs: dict[str, Any] = {
        "topic": src,
        "contract": OrderPlaced,
        "group_id": group,
        "ordering": variant.ordering,
        "options": options,
        "retry": retry,
        "breaker": breaker,
    }
    if variant.async_handler:

        async def handle(self: Any, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            slept = decide(event, ctx)
            if slept:
                await asyncio.sleep(slept)
            succeeded(ctx, slept)

        async def handle_tombstone(self: Any, ctx: sg.MessageContext) -> None:
            log.call(ctx)
            succeeded(ctx, 0.0)

    else:

        def handle(self: Any, event: OrderPlaced, ctx: sg.MessageContext) -> None:  # type: ignore[misc]
            slept = decide(event, ctx)
            if slept:
                time.sleep(slept)
            succeeded(ctx, slept)

        def handle_tombstone(self: Any, ctx: sg.MessageContext) -> None:  # type: ignore[misc]
            log.call(ctx)
            succeeded(ctx, 0.0)

    attrs["handle"] = handle
    if variant.tombstones:
        attrs["handle_tombstone"] = handle_tombstone
    return type(f"Differential_{variant.name.replace('-', '_')}", (sg.ConsumerService,), attrs)


class LogLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.events.append(record.getMessage())


@pytest.fixture
def runtime_log() -> Iterator[LogLines]:
    lines = LogLines()
    logger = logging.getLogger("streamguard.runtime")
    logger.addHandler(lines)
    try:
        yield lines
    finally:
        logger.removeHandler(lines)


def read_to_end(bootstrap: str, topic: str) -> list[Any]:
    """Every record of a topic, read until each partition reports its end (a fetch's
    partition EOF: the embedded broker's ListOffsets is low after batched writes, see
    docs/local-broker.md), bounded in time."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "sg-to-end", "enable.partition.eof": True}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    got: list[Any] = []
    ended: set[int] = set()
    deadline = time.monotonic() + 15
    try:
        while len(ended) < PARTITIONS and time.monotonic() < deadline:
            for msg in consumer.consume(100, 0.2):
                error = msg.error()
                if error is None:
                    got.append(msg)
                elif error.code() == KafkaError._PARTITION_EOF:
                    ended.add(msg.partition())
    finally:
        consumer.close()
    assert len(ended) == PARTITIONS, f"no end seen on {topic}"
    return got


def metric_labels(name: str, extra: str, src: str) -> dict[str, str]:
    """The labels of one expected figure: ``extra`` is its outcome, reason, drift kind
    or partition, by the metric's family (also read by the Faust agent's twin)."""
    if name == "streamguard_messages_total":
        return {"topic": src, "outcome": extra}
    if name == "streamguard_dead_letters_total":
        return {"topic": src, "reason": extra}
    if name == "streamguard_schema_drift_total":
        return {"subject": SUBJECT, "kind": extra}
    if name == "streamguard_consumer_lag":
        return {"topic": src, "partition": extra}
    if name in ("streamguard_commit_failures_total", "streamguard_ready"):
        return {}
    return {"topic": src}


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_metrics_match_an_independent_account(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    runtime_log: LogLines,
    variant: Variant,
) -> None:
    """Counters, histogram and gauges against the broker's and the handler's account.

    The breaker is off where records are doomed: two doomed records with nothing
    handled between look like an outage and wait for good (docs/consumer.md, *Outages*).
    The breaker variant has none, so its breaker may open and close on the flaky ones.
    """
    seed = int(os.environ.get("SG_DIFFERENTIAL_SEED", "0")) + VARIANTS.index(variant) + 1
    planned = plan(seed, variant)
    src = topic_factory("orders", partitions=PARTITIONS)
    group = unique("differential")
    where = produce(bootstrap, src, planned)
    log = HandlerLog()
    running = start_service(service_class(src, group, variant, planned, log))
    m = running.metric

    # All final: the group's committed offsets reach the end of every partition.
    ends = {p: max(o for q, o in where if q == p) + 1 for p in range(PARTITIONS)}
    assert wait_for(lambda: committed(bootstrap, group, src) == ends, timeout=25), (
        f"seed {seed}: committed {committed(bootstrap, group, src)}, ends {ends}"
    )
    assert not running.error

    # The account, from the broker and the handler's log only.
    dead = read_to_end(bootstrap, f"{src}.dlq")
    reasons = Counter(dlq_headers(d)["sg-dlq-reason"] for d in dead)
    origins = [dlq_headers(d) for d in dead]
    dead_at = {
        (int(o["sg-dlq-original-partition"]), int(o["sg-dlq-original-offset"])) for o in origins
    }
    with log.lock:
        handled = list(log.succeeded)
        timed = list(log.timed)
        transient = log.transient
    assert len(set(handled)) == len(handled), f"seed {seed}: a record handled twice"
    assert len(dead_at) == len(dead), f"seed {seed}: a record dead-lettered twice"
    assert not dead_at & set(handled)
    assert dead_at | set(handled) == set(where), f"seed {seed}: a record without an outcome"

    # The outcomes are the plan's (the account above does not depend on it).
    def planned_outcome(p: Planned) -> str:
        tombstone = "handled" if variant.tombstones else "decode_error"
        return {**PLANNED_REASONS, "tombstone": tombstone}.get(p.kind, "handled")

    outcome = {pos: planned_outcome(planned[i]) for pos, i in where.items()}
    assert {pos for pos, o in outcome.items() if o == "handled"} == set(handled)
    assert Counter(o for o in outcome.values() if o != "handled") == reasons

    expected = expected_counts(
        handled=len(handled),
        reasons=reasons,
        transient=transient,
        timed=len(timed),
        planned=planned,
        breaker_opened=runtime_log.events.count(
            "circuit breaker open; pausing every partition and calling no handler"
        ),
    ) | {("streamguard_consumer_lag", str(p)): 0 for p in range(PARTITIONS)}
    if variant.async_handler or variant.ordering != "partition":
        expected |= {
            ("streamguard_handlers_in_flight", ""): 0,
            ("streamguard_waiting_for_key", ""): 0,
            ("streamguard_handlers_limit", ""): variant.max_in_flight,
        }

    def exposed() -> dict[tuple[str, str], float | None]:
        return {
            (name, extra): running.registry.get_sample_value(
                name, {"runtime": "consumer", **metric_labels(name, extra, src)}
            )
            for name, extra in expected
        }

    def differences() -> dict[tuple[str, str], tuple[float | None, float]]:
        return {k: (v, expected[k]) for k, v in exposed().items() if v != expected[k]}

    # Counts reach the registry once per batch or half second: give them a moment.
    wait_for(lambda: not differences(), timeout=5)
    assert not differences(), f"seed {seed} (exposed, expected): {differences()}"

    # Buckets: a call that slept SLOW seconds took longer than 0.025.
    below = running.registry.get_sample_value(
        "streamguard_handler_seconds_bucket", {"runtime": "consumer", "topic": src, "le": "0.025"}
    )
    assert below is not None
    assert below <= sum(1 for s in timed if s < SLOW)
    # uvloop's timers may fire up to a millisecond early (their clock is in ms).
    assert m("streamguard_handler_seconds_sum", topic=src) >= sum(timed) - 0.001 * len(timed)

    before = exposed()
    running.stop()
    assert not running.error
    # The run's gauges leave the registry with it (docs/consumer.md, *Metrics and
    # health*); its counters stay as they were, and it is no longer ready.
    after = exposed()
    ready = ("streamguard_ready", "")
    gauges = [k for k in before if not k[0].endswith(("_total", "_count")) and k != ready]
    assert {k: after[k] for k in gauges if after[k] is not None} == {}, "gauges left behind"
    kept = [k for k in before if k not in gauges and k != ready]
    assert {k: after[k] for k in kept} == {k: before[k] for k in kept}
    assert after[ready] == 0

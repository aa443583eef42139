"""Nothing is lost under SIGKILL, for every ordering: a seeded, randomized crash test.

``tests.faults.crashapp`` runs in a subprocess over three partitions of records with
a few hot keys: handlers of random short times, transient failures that succeed on a
retry, permanent failures and contract violations. It is killed at random moments,
in a retry's backoff, or with dead letters unacknowledged (its DLQ producer lingers),
and restarted, a few times; then a last run finishes. From the handlers' own fsynced
log and the DLQ: every record reached its one right outcome (handled, or dead-lettered
for its reason; never the other in any run), under key and partition ordering each
key's (partition's) handler calls started in offset order within a run, and the
group's committed offsets are the partitions' ends.

``test_crashes.py`` kills the sync recorder and bounds duplicates; this one varies the
ordering and the outcomes. The seed is printed (and named in every failure): set
``SG_CRASH_SEED`` to run one again, ``SG_CRASH_KILLS`` for more kills than 4. What is
sent, what each handler does and how each kill is chosen come from the seed; the
timing of the kills is the machine's.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from streamguard.producer import stamp_headers
from tests.faults.workload import POISON, dead_lettered_originals
from tests.runtime.conftest import committed, order, wait_for

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 3
PER_PARTITION = 150
KILLS = int(os.environ.get("SG_CRASH_KILLS", "4"))
HOT_KEYS = ("hot-a", "hot-b", "hot-c")

Position = tuple[int, int]


@dataclass
class Sent:
    """The records sent: each one's fate (``ok``, ``transient``, ``permanent`` or
    ``invalid``) by (partition, offset)."""

    fate: dict[Position, str] = field(default_factory=dict)

    def ends(self) -> dict[int, int]:
        ends: dict[int, int] = {}
        for p, o in self.fate:
            ends[p] = max(ends.get(p, 0), o + 1)
        return ends

    def of(self, *fates: str) -> set[Position]:
        return {pos for pos, f in self.fate.items() if f in fates}


def send(bootstrap: str, topic: str, rng: random.Random, delay_ms: int) -> Sent:
    """PER_PARTITION records to each partition, each one's fate drawn from ``rng``."""
    sent = Sent()
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    codec = sg.JsonCodec()
    stamp = stamp_headers(OrderPlaced, codec, "crash-test")
    errors: list[str] = []

    def noted(fate: str) -> Callable[[Any, Any], None]:
        def report(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                sent.fate[(msg.partition(), msg.offset())] = fate

        return report

    for i in range(PARTITIONS * PER_PARTITION):
        roll = rng.random()
        fate = (
            "invalid" if roll < 0.06 else "permanent" if roll < 0.12 else
            "transient" if roll < 0.24 else "ok"
        )  # fmt: skip
        roll = rng.random()
        key = (
            rng.choice(HOT_KEYS) if roll < 0.6 else None if roll < 0.65 else f"k{rng.randrange(30)}"
        )
        fails = rng.randint(1, 2) if fate == "transient" else 0
        customer = f"{fate}:{fails}:{rng.randint(0, delay_ms)}"
        headers: list[Any] = [] if fate == "invalid" else stamp
        value = POISON if fate == "invalid" else codec.encode(order(i, customer_id=customer))
        producer.produce(
            topic, value, key=key, partition=i % PARTITIONS, headers=headers,
            on_delivery=noted(fate),
        )  # fmt: skip
        producer.poll(0)
    assert producer.flush(30) == 0, "records were not acknowledged"
    assert not errors, errors
    return sent


@dataclass
class Line:
    run: int
    event: str
    partition: int
    offset: str
    attempt: str
    key: str | None


def read_log(path: Path) -> list[Line]:
    """The lines written whole so far (a read can catch an append half-done)."""
    if not path.exists():
        return []
    lines = []
    for text in path.read_text().split("\n")[:-1]:
        run, event, partition, offset, attempt, key = text.split(" ")
        lines.append(
            Line(int(run), event, int(partition), offset, attempt, None if key == "-" else key)
        )
    return lines


def launch(env: dict[str, str], run: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.faults.crashapp"],
        env={**os.environ, **env, "SG_TEST_RUN": str(run)},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def kill_at_a_random_moment(
    proc: subprocess.Popen[bytes], out: Path, run: int, rng: random.Random
) -> str:
    """Wait for the run's first handler call, then SIGKILL it at a moment drawn from
    ``rng``: after a random time, right after a transient failure (its retry waits in
    backoff), or right after a permanent failure (its dead letter lingers in the DLQ
    producer). Returns what the kill waited for."""
    assert wait_for(
        lambda: any(line.run == run and line.event == "start" for line in read_log(out)),
        timeout=30,
    ), f"run {run} never called a handler"
    moment = rng.choice(["time", "backoff", "unacknowledged"])
    if moment == "time":
        time.sleep(rng.uniform(0.05, 0.8))
    else:
        event = "transient" if moment == "backoff" else "permanent"
        seen = sum(1 for line in read_log(out) if line.run == run and line.event == event)
        skip = rng.randrange(3)  # not always the first one
        if not wait_for(
            lambda: (
                sum(1 for ln in read_log(out) if ln.run == run and ln.event == event) > seen + skip
            ),
            timeout=3,
            interval=0.005,
        ):
            moment = "time (no " + event + " came)"
        time.sleep(rng.uniform(0, 0.03))
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    return moment


# (handler, ordering, max_in_flight) of each case: each ordering's path once (about 25 s
# a case), the key order with a small limit, where records wait for slots.
CASES = {
    "sync": ("sync", "partition", 256),
    "sync-key-8": ("sync", "key", 8),
    "async-partition": ("async", "partition", 256),
    "async-key-4": ("async", "key", 4),
    "async-none-256": ("async", "none", 256),
}


@pytest.mark.parametrize("case", list(CASES))
def test_sigkill_at_random_moments_loses_nothing_under_every_ordering(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    tmp_path: Path,
    case: str,
) -> None:
    """Killed with SIGKILL at random moments and restarted, then run to the end: every
    record reaches its outcome, none the wrong one, ordered keys start in order within
    a run, and the commits reach the partitions' ends."""
    seed = int(os.environ.get("SG_CRASH_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"SG_CRASH_SEED={seed} case={case}")
    rng = random.Random(f"{seed}:{case}")
    said = f"(SG_CRASH_SEED={seed}, case {case})"
    handler, ordering, max_in_flight = CASES[case]
    src = topic_factory("crash", partitions=PARTITIONS)
    group = unique("g")
    sent = send(bootstrap, src, rng, delay_ms=6 if handler == "sync" else 25)
    out = tmp_path / "log.txt"
    env = {
        "SG_TEST_HANDLER": handler,
        "SG_TEST_ORDERING": ordering,
        "SG_TEST_MAX_IN_FLIGHT": str(max_in_flight),
        "SG_TEST_TOPIC": src,
        "SG_TEST_GROUP": group,
        "SG_TEST_OUT": str(out),
        "SG_TEST_BOOTSTRAP": bootstrap,
        "SG_TEST_DLQ_LINGER_MS": str(rng.choice([20, 50, 100])),
    }
    moments = []
    runs = 0
    for run in range(KILLS):
        proc = launch(env, run)
        runs += 1
        try:
            moments.append(kill_at_a_random_moment(proc, out, run, rng))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        if committed(bootstrap, group, src) == sent.ends():
            break  # all done before this kill: the last run below checks the end state
    final = launch(env, runs)
    try:
        # Running (its signal handlers installed) before it may be told to stop.
        assert wait_for(
            lambda: any(ln.run == runs and ln.event == "assign" for ln in read_log(out)),
            timeout=30,
        ), (said, "the last run was never assigned partitions")
        done = wait_for(lambda: committed(bootstrap, group, src) == sent.ends(), timeout=60)
    finally:
        final.send_signal(signal.SIGTERM)
        code = final.wait(30)
    stderr = final.stderr.read().decode() if final.stderr else ""
    assert done, (said, moments, committed(bootstrap, group, src), sent.ends())
    assert code == 0, (said, stderr[-2000:])
    print(f"kills: {moments}")

    lines = read_log(out)
    handled = {(ln.partition, int(ln.offset)) for ln in lines if ln.event == "handled"}
    dead_in_log = {(ln.partition, int(ln.offset)): ln.attempt for ln in lines if ln.event == "dead"}
    dead = sent.of("permanent", "invalid")
    in_dlq = dead_lettered_originals(bootstrap, f"{src}.dlq", dead, timeout=20)
    # Every record reached a final outcome, and only its own.
    valid = sent.of("ok", "transient")
    assert valid <= handled, (said, sorted(valid - handled))
    assert dead <= in_dlq, (said, sorted(dead - in_dlq))
    assert not handled & dead, (said, sorted(handled & dead))
    assert not in_dlq & valid, (said, sorted(in_dlq & valid))
    assert not set(dead_in_log) & valid, (said, sorted(set(dead_in_log) & valid))
    wrong = {
        pos: reason
        for pos, reason in dead_in_log.items()
        if reason
        != {"permanent": "permanent_error", "invalid": "contract_violation"}[sent.fate[pos]]
    }
    assert not wrong, (said, wrong)
    # Ordered keys: within a run (and an assignment of the partition), handler calls of
    # one key start in offset order. A retry starts its record again.
    if ordering != "none":
        last: dict[tuple[int, int, str | None], int] = {}
        epoch: dict[tuple[int, int], int] = defaultdict(int)
        for ln in lines:
            if ln.event == "assign":
                for part in ln.offset.split(","):
                    if part != "-":
                        epoch[(ln.run, int(part))] += 1
            elif ln.event == "start":
                key = ln.key if ordering == "key" else None
                if ordering == "key" and key is None:
                    continue  # keyless: nothing to be ordered with
                ident = (ln.run * 1000 + epoch[(ln.run, ln.partition)], ln.partition, key)
                offset = int(ln.offset)
                assert offset >= last.get(ident, -1), (
                    said,
                    "out of order",
                    ident,
                    offset,
                    last[ident],
                )
                last[ident] = offset
    summary = {
        "runs": runs + 1,
        "kills": moments,
        "handler calls": sum(1 for ln in lines if ln.event == "start"),
        "records": len(sent.fate),
    }
    print(json.dumps(summary))

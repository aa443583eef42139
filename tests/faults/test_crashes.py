"""Crash consistency, repeated: SIGKILL at random moments, restart, again.

A service process (``tests.runtime.apps:Recorder``: a slow handler, commits every
0.2 s) works through valid orders and poison records on two partitions, so a kill
lands in a handler, between a dead letter's write and its acknowledgement, or around
a commit. After every kill the broker's committed offsets say exactly what the next
process will redeliver; at the end every valid record has been handled, every poison
record dead-lettered, the commits reach the end, and the duplicates are no more than
what each killed process had handled beyond its last commit.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.workload import send_workload
from tests.runtime.conftest import committed, wait_for
from tests.runtime.test_commits import _handled, _run_recorder

pytestmark = pytest.mark.broker

KILLS = 4


def test_repeated_sigkill_loses_nothing_and_bounds_duplicates(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    read_all: Callable[..., list[object]],
    tmp_path: Path,
) -> None:
    """Killed with SIGKILL at four random moments and restarted each time, the
    service handles every valid record and dead-letters every poison record at least
    once; duplicates never exceed what was handled but uncommitted at the kills."""
    rng = random.Random()
    src = topic_factory("crash", partitions=2)
    group = unique("g")
    work = send_workload(bootstrap, src, valid=800, poison_every=10)
    out = tmp_path / "handled.txt"
    in_flight_at_kills = 0
    kills = 0
    for _ in range(KILLS):
        before = len(_handled(out))
        proc = _run_recorder(bootstrap, src, group, out, delay="0.004")
        try:
            # Let it make some progress, then kill it at a random moment.
            assert wait_for(lambda b=before: len(_handled(out)) > b, timeout=30), "no progress"
            time.sleep(rng.uniform(0.05, 0.6))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            kills += 1
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        # The dead process's commits are final now: everything it handled at or past
        # them will be delivered again.
        offsets = committed(bootstrap, group, src)
        in_flight_at_kills += sum(
            1 for p, o in set(_handled(out)) if o >= offsets.get(p, 0) and (p, o) in work.valid
        )
        if work.valid <= set(_handled(out)):
            break  # finished before this kill; the last run below checks the end state
    assert kills >= 2, "the work finished before the service could be killed twice"
    final = _run_recorder(bootstrap, src, group, out, delay="0")
    try:
        assert wait_for(lambda: work.valid <= set(_handled(out)), timeout=60)
        assert wait_for(lambda: committed(bootstrap, group, src) == work.ends(), timeout=30)
    finally:
        final.send_signal(signal.SIGTERM)
        assert final.wait(30) == 0
    handled = [r for r in _handled(out) if r in work.valid]
    duplicates = len(handled) - len(set(handled))
    assert duplicates <= in_flight_at_kills, (duplicates, in_flight_at_kills)
    dead = read_all(f"{src}.dlq", len(work.poison), timeout=20)
    originals = {
        (int(dict(m.headers())["sg-dlq-original-partition"]),  # type: ignore[attr-defined]
         int(dict(m.headers())["sg-dlq-original-offset"]))  # type: ignore[attr-defined]
        for m in dead
    }  # fmt: skip
    assert work.poison <= originals

"""Client settings every contender shares: a fast group join, the loops' poll timeout,
and the latency pass's fetch wait. Imports nothing of streamguard (see ``events``)."""

from __future__ import annotations

from typing import Any

from peerbench.registry import Run

FAST_JOIN = {"session.timeout.ms": 2000, "heartbeat.interval.ms": 500}
# consume(n, timeout) returns when n records arrived or the timeout passed, so at a low
# input rate the timeout is the loop's latency; 0.1 s is streamguard's idle poll.
POLL_TIMEOUT = 0.1


def fetch_wait(run: Run) -> dict[str, Any]:
    """librdkafka's fetch wait cap in the latency pass (the embedded broker holds a
    fetch for its whole wait even when records arrive: see docs/benchmarks.md)."""
    return {"fetch.wait.max.ms": run.fetch_wait_ms} if run.fetch_wait_ms else {}

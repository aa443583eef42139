"""A rebalance while a message waits in backoff: the retry is not lost, and it is not
run twice.

The old owner holds a failed message for its backoff (never in a handler meanwhile);
when its partition is revoked, the message has no outcome, so it is not committed, and
the new owner reads it from the committed offset. The old owner must not run the
retry after the revoke.
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from typing import Any

import pytest

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from tests.faults.workload import commits_at_end, new_topic, send_workload, start
from tests.runtime.conftest import wait_for

pytestmark = pytest.mark.broker

BACKOFF = 4.0  # longer than a second member needs to join (about 1-3 s here)


class LongestWait(random.Random):
    """Full jitter that always draws the cap: a backoff of exactly ``BACKOFF``."""

    def uniform(self, a: float, b: float) -> float:
        return b


class Journal:
    """Who called the handler for which record, when, and how it ended."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, int, int, float, str]] = []
        self.failed_once: set[tuple[int, int]] = set()
        self.revoked: dict[str, dict[int, float]] = defaultdict(dict)

    def call(self, who: str, ctx: sg.MessageContext) -> None:
        """Fail the first call for the first record of each partition, once, anywhere."""
        key = (ctx.partition, ctx.offset)
        with self.lock:
            fail = ctx.offset == 0 and key not in self.failed_once
            if fail:
                self.failed_once.add(key)
            self.calls.append(
                (who, ctx.partition, ctx.offset, time.monotonic(), "failed" if fail else "ok")
            )
        if fail:
            raise sg.TransientError("dependency busy")

    def successes(self, partition: int, offset: int) -> list[str]:
        with self.lock:
            return [
                w for w, p, o, _, r in self.calls if (p, o) == (partition, offset) and r == "ok"
            ]


def _member(
    name: str, topic: str, group: str, journal: Journal, handler: str
) -> type[sg.ConsumerService]:
    source = topic

    class Member(sg.ConsumerService):
        topic = source
        contract = OrderPlaced
        group_id = group
        retry = sg.RetryPolicy(attempts=3, base_delay=BACKOFF, max_delay=BACKOFF, rng=LongestWait())
        options = sg.ServiceOptions(commit_interval=0.2, revoke_timeout=2.0)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            journal.call(name, ctx)

        if handler == "async":  # the event loop's lanes: the wait is a sleep on the loop

            async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:  # type: ignore[override]
                journal.call(name, ctx)

        def on_revoke(self, partitions: list[int]) -> None:
            now = time.monotonic()
            with journal.lock:
                for p in partitions:
                    journal.revoked[name][p] = now

    return Member


@pytest.mark.parametrize("handler", ["sync", "async"])
def test_a_message_in_backoff_survives_a_rebalance_and_runs_once(
    bootstrap: str, handler: str
) -> None:
    """A second member joins while both partitions' first records wait 4 s in backoff:
    the moved partition's record is handled by the new owner (the old one never
    retries it after the revoke), the kept one by the old owner, each exactly once,
    and every record is handled and committed."""
    topic = new_topic(bootstrap, partitions=2)
    group = f"g-{topic}"
    work = send_workload(bootstrap, topic, valid=40, poison_every=0)
    journal = Journal()
    first = start(_member("A", topic, group, journal, handler), bootstrap)
    second: Any = None
    try:
        assert wait_for(lambda: len(journal.failed_once) == 2, timeout=20)
        second = start(_member("B", topic, group, journal, handler), bootstrap)
        assert wait_for(lambda: bool(journal.revoked["A"]), timeout=BACKOFF), (
            "the rebalance came after the backoff; the test proves nothing"
        )
        assert wait_for(lambda: all(journal.successes(p, 0) for p in (0, 1)), timeout=30)
        handled = {(p, o) for _, p, o, _, r in journal.calls if r == "ok"}
        assert wait_for(lambda: work.valid <= handled, timeout=30)
        assert wait_for(lambda: commits_at_end(bootstrap, group, work), timeout=30)
    finally:
        first.stop()
        if second is not None:
            second.stop()
    moved = set(journal.revoked["A"])
    for p in (0, 1):
        owners = journal.successes(p, 0)
        assert len(owners) == 1, f"partition {p}'s retried record ran {owners}"
        assert owners == (["B"] if p in moved else ["A"])
    for who, p, _, at, _ in journal.calls:
        if who == "A" and p in moved:
            assert at <= journal.revoked["A"][p], "the old owner ran a record after the revoke"
    assert not first.error
    assert not second.error

"""The DLQ reader's idle stop counts the time it waited for records, not the time its
caller spent on the records it was given."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Message

from streamguard.dlqtools.reader import DlqReader, PartitionRange


class Trickle:
    """A consumer's answers, scripted: one batch, two empty polls, then the rest.

    The embedded broker prefetches a whole DLQ at once, so an empty poll between two
    batches cannot be had from it on demand; the reader's timing logic is what is
    tested here, against its real constructor and cluster."""

    def __init__(self, topic: str) -> None:
        records = [Message(topic=topic, partition=0, offset=i, value=b"{}") for i in range(4)]
        self.answers: list[list[Any]] = [records[:2], [], [], records[2:]]

    def assign(self, partitions: Any) -> None: ...

    def unassign(self) -> None: ...

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        return self.answers.pop(0) if self.answers else []


def test_slow_work_on_a_batch_is_not_taken_for_an_idle_cluster(
    bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    """With a replay paced by --rate (or slow revalidation), a batch could take longer
    than the idle timeout to work through; the first empty poll after it then stopped
    the run as idle, though the reader had waited 0.2 s."""
    dlq = topic_factory("orders.dlq")
    reader = DlqReader(bootstrap, dlq, group_id="idle-test", idle_timeout=0.5)
    reader._consumer = Trickle(dlq)  # type: ignore[assignment]
    seen = []
    for letter in reader.read([PartitionRange(0, 0, 4)]):
        seen.append(letter)
        time.sleep(0.3)  # the caller's own work: two records outlast the idle timeout
    assert len(seen) == 4
    assert not reader.stopped_idle

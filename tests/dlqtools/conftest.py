"""DLQ fixtures: realistic dead letters, built the way the runtime builds them.

A value is decoded against the contract a service expects; the real ``ContractViolation``
becomes a ``Failure`` and ``dead_letter_headers`` wraps it, so the envelope under test is
the one production writes, not a hand-made imitation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Producer

import streamguard as sg
from streamguard import headers as h
from streamguard.codecs import JsonCodec
from streamguard.deadletter import Failure, dead_letter_headers
from streamguard.dlqtools.reader import DlqReader, PartitionRange
from tests.dlqtools.dlqcases import OrderV1, Sent, encode


@pytest.fixture
def dead_letters(bootstrap: str) -> Callable[..., list[Sent]]:
    """Write dead letters to a DLQ with a raw producer that batches (as a service does).

    Batching matters: it is what makes the local broker's ListOffsets wrong (docs/local-broker.md
    item 1), so every test also checks that the tools find the true end anyway.
    """

    def write(
        dlq: str,
        values: list[dict[str, Any] | bytes],
        *,
        original_topic: str,
        replay_count: int | str | None = None,
        key_prefix: str = "customer",
        original_partition: int = 0,
        reason: str | None = None,
    ) -> list[Sent]:
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50})
        decode = JsonCodec().decoder(OrderV1)
        sent: list[Sent] = []
        for i, item in enumerate(values):
            value = item if isinstance(item, bytes) else encode(item)
            original: list[tuple[str, bytes | None]] = [
                (h.SUBJECT, b"dlqtest.Order"),
                (h.VERSION, b"1"),
                (h.CONTENT_TYPE, b"application/json"),
                ("trace-id", bytes([0, 255, i % 256])),  # binary header must survive
            ]
            if replay_count is not None:
                original.append((h.REPLAY_COUNT, str(replay_count).encode()))
            try:
                decode(value)
                failure = Failure("permanent_error", sg.PermanentError("handler refused it"))
            except (sg.ContractViolation, sg.DecodeError) as exc:
                kind = (
                    "contract_violation"
                    if isinstance(exc, sg.ContractViolation)
                    else "decode_error"
                )
                failure = Failure(kind, exc)
            if reason is not None:
                failure = Failure(reason, failure.error)  # type: ignore[arg-type]
            key = f"{key_prefix}-{i}".encode()
            headers = dead_letter_headers(
                original_headers=original,
                topic=original_topic,
                partition=original_partition,
                offset=100 + i,
                timestamp_ms=1_795_000_000_000 + i,
                failure=failure,
                group_id="billing",
                service="billing-svc",
                expected_subject=OrderV1.__subject__,
                expected_version=OrderV1.__version__,
            )
            producer.produce(dlq, value, key=key, headers=headers)
            sent.append(Sent(key, value, original))
        assert producer.flush(10) == 0
        return sent

    return write


class _GoesQuiet:
    """The reader's consumer, passing on the first ``after`` records and then nothing:
    a cluster that stops answering mid-read, as the reader sees it."""

    def __init__(self, consumer: Any, after: int) -> None:
        self._consumer, self._left = consumer, after

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        if self._left <= 0:
            time.sleep(timeout)
            return []
        batch = self._consumer.consume(num_messages=min(num_messages, self._left), timeout=timeout)
        self._left -= sum(1 for m in batch if m.error() is None)
        return batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


@pytest.fixture
def cluster_goes_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    """After planning, a DLQ reader receives 2 records and then nothing, and gives up
    after 0.5 s of silence instead of the 10 s default."""
    plan = DlqReader.plan

    def then_quiet(self: DlqReader, start: Any = None) -> list[PartitionRange]:
        ranges = plan(self, start)
        self.idle_timeout = 0.5
        self._consumer = _GoesQuiet(self._consumer, after=2)  # type: ignore[assignment]
        return ranges

    monkeypatch.setattr(DlqReader, "plan", then_quiet)

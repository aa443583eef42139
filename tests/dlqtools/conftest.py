"""DLQ fixtures: realistic dead letters, built the way the runtime builds them.

A value is decoded against the contract a service expects; the real ``ContractViolation``
becomes a ``Failure`` and ``dead_letter_headers`` wraps it, so the envelope under test is
the one production writes, not a hand-made imitation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Producer

import streamguard as sg
from streamguard import headers as h
from streamguard.codecs import JsonCodec
from streamguard.deadletter import Failure, dead_letter_headers
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

"""Contracts and values shared by the DLQ tests (imported by conftest and tests)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import pytest
from confluent_kafka import Producer
from pydantic import ConfigDict, Field

import streamguard as sg
from streamguard.deadletter import Failure, dead_letter_headers


class OrderV1(sg.Contract):
    """The contract the service had: no GBP yet."""

    __subject__ = "dlqtest.Order"
    __version__ = 1
    order_id: str
    amount: int = Field(gt=0)
    currency: Literal["EUR", "USD"]


class OrderV2(sg.Contract):
    """The fixed contract: GBP is allowed now; amounts must still be positive."""

    __subject__ = "dlqtest.Order"
    __version__ = 2
    order_id: str
    amount: int = Field(gt=0)
    currency: Literal["EUR", "USD", "GBP"]


FIXABLE = {"order_id": "o-1", "amount": 10, "currency": "GBP"}
HOPELESS = {"order_id": "o-2", "amount": -5, "currency": "EUR"}


def encode(value: dict[str, Any]) -> bytes:
    return json.dumps(value).encode()


@dataclass
class Sent:
    """What went into the DLQ for one record, to compare replays byte for byte."""

    key: bytes | None
    value: bytes | None
    original_headers: list[tuple[str, bytes | None]]


class Closed(sg.Contract):
    """A contract that names undeclared fields in its errors (extra="forbid")."""

    model_config = ConfigDict(extra="forbid")
    __subject__ = "dlqtest.Closed"
    __version__ = 1
    order_id: str


FORGING_FIELD = "evil\nFORGED 9 orders decode_error \x1b[2J\u2028"


def closed_dead_letter(bootstrap: str, dlq: str, original_topic: str) -> None:
    """One dead letter of a record with an undeclared field whose name forges output."""
    value = json.dumps({"order_id": "o", FORGING_FIELD: 1}).encode()
    with pytest.raises(sg.ContractViolation) as info:
        sg.JsonCodec().decode(value, Closed)
    headers = dead_letter_headers(
        original_headers=[],
        topic=original_topic,
        partition=0,
        offset=0,
        timestamp_ms=None,
        failure=Failure("contract_violation", info.value),
        group_id="billing",
        service="billing-svc",
        expected_subject=Closed.__subject__,
        expected_version=Closed.__version__,
    )
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(dlq, value, key=b"k", headers=headers)
    assert producer.flush(10) == 0

"""Contracts and values shared by the DLQ tests (imported by conftest and tests)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

import streamguard as sg


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

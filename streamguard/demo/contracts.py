"""The contracts of the example shop: what the demo and the examples send and consume."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, Field

import streamguard as sg


class LineItem(BaseModel):
    sku: str = Field(min_length=1, max_length=64)
    quantity: int = Field(ge=1)


class OrderPlaced(sg.Contract):
    """An order was placed and must be billed."""

    __subject__ = "orders.OrderPlaced"
    __version__ = 1

    order_id: UUID
    customer_id: str
    amount: Decimal = Field(gt=0)
    currency: Literal["EUR", "USD"]
    placed_at: datetime
    items: list[LineItem] = Field(default_factory=list)


class PaymentCaptured(sg.Contract):
    """A payment was captured (an Avro contract: the demo's Confluent-framed topic)."""

    __subject__ = "payments.PaymentCaptured"
    __version__ = 1
    __wire_format__ = "avro"

    payment_id: str
    order_id: str
    amount_cents: int = Field(gt=0)
    currency: Literal["EUR", "USD"]

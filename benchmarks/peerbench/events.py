"""The order event as a plain pydantic model, and the data set's shape.

A contender's process loads only what its row is about, since the CPU and RSS it
reports are its own: the peers and the hand-written JSON loops validate with this
model, which has the fields and constraints of ``streamguard.demo.contracts.OrderPlaced``
(tests/test_bench_peers.py checks that both give one JSON Schema and the same verdicts on
the data set) without importing streamguard, whose modules
would otherwise count in every row's memory.
"""

from __future__ import annotations

import os
from datetime import datetime
from decimal import Decimal
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

KEYS = 997
IO_KEYS = 16  # the io topic's keys are few, so a framework that reorders a key shows it
# The published table's data set has 3; `peers.py --partitions N` (which sets this variable
# for every contender's process) measures the rows on more.
PARTITIONS = int(os.environ.get("PEERBENCH_PARTITIONS", "3"))
# Line items per event: 6 (about 390 bytes of JSON) in the published table; `peers.py
# --line-items N` measures the rows on larger events.
LINE_ITEMS = int(os.environ.get("PEERBENCH_LINE_ITEMS", "6"))
# Latency records carry UUID(int=time.time_ns() at send) as order id; warm-up ones are below.
MEASURED_AFTER = 10**18


class LineItem(BaseModel):
    sku: str = Field(min_length=1, max_length=64)
    quantity: int = Field(ge=1)


class OrderPlaced(BaseModel):
    """An order was placed and must be billed."""

    order_id: UUID
    customer_id: str
    amount: Decimal = Field(gt=0)
    currency: Literal["EUR", "USD"]
    placed_at: datetime
    items: list[LineItem] = Field(default_factory=list)


class TunedOrderPlaced(OrderPlaced):
    """The twin with the parse setting streamguard's ``Contract`` sets: the tuned loop
    validates with it, so that it has every setting streamguard applies, not only
    librdkafka's, and the table's tuned ratio measures the runtime alone."""

    model_config = ConfigDict(cache_strings="keys")

"""Send the example's orders, one per outcome in its README, and nothing else.

``streamguard demo`` is no producer: it runs its own Billing service on ``orders``, so
every order would be billed twice. Run this instead, from the checkout's root, to
``$STREAMGUARD_BOOTSTRAP_SERVERS``, else 127.0.0.1:9092::

    python -m examples.faust_billing.send_orders
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from decimal import Decimal

from confluent_kafka import Producer

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced

CUSTOMERS = ("alice", "flaky-1", "down-1", "closed-1")


def send_orders(bootstrap: str, topic: str = "orders") -> None:
    """One valid order per customer in ``CUSTOMERS``, then two poison records: a value
    that is not JSON, and JSON that is not an ``OrderPlaced``."""
    producer = sg.GuardedProducer(bootstrap)
    for customer in CUSTOMERS:
        order = OrderPlaced(
            order_id=uuid.uuid4(),
            customer_id=customer,
            amount=Decimal("9.90"),
            currency="EUR",
            placed_at=datetime.now(UTC),
        )
        producer.send(topic, order, key=customer)
    producer.flush()
    # A GuardedProducer refuses poison, so it goes through a plain producer.
    raw = Producer({"bootstrap.servers": bootstrap})
    raw.produce(topic, b"not json")
    raw.produce(topic, b'{"order_id": "not-a-uuid"}')
    if raw.flush(10):
        raise SystemExit("the broker did not confirm the poison records within 10 s")


if __name__ == "__main__":
    bootstrap = os.environ.get("STREAMGUARD_BOOTSTRAP_SERVERS") or "127.0.0.1:9092"
    send_orders(bootstrap)
    print(f"sent {len(CUSTOMERS)} orders and 2 poison records to orders on {bootstrap}")

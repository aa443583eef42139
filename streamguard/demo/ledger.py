"""A ledger service reading Avro in the Confluent wire format, with a schema registry.

Producers that use Confluent's serializers (or ``GuardedProducer`` with a registry)
write ``00`` + a 4-byte schema id + Avro; this service fetches each writer schema once
by id and validates every record against ``PaymentCaptured``::

    streamguard registry &        # development only: production uses a real registry
    streamguard run streamguard.demo.ledger:Ledger --bootstrap-servers 127.0.0.1:9092 \\
        --schema-registry http://127.0.0.1:8081
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import ClassVar

import streamguard as sg
from streamguard.demo.contracts import PaymentCaptured


class Ledger(sg.ConsumerService):
    """Books each captured payment once, per currency."""

    topic = "payments"
    contract = PaymentCaptured
    group_id = "ledger"
    dead_letter_topic = "payments.dlq"

    booked: ClassVar[Counter[str]] = Counter()
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def handle(self, event: PaymentCaptured, ctx: sg.MessageContext) -> None:
        with self._lock:
            self.booked[event.currency] += event.amount_cents

"""A billing service: the demo's service and the runnable example of the README.

Run it against any cluster (``streamguard broker`` starts a local one). Create its
topics first: a topic created after the service started is seen only at librdkafka's
next metadata refresh (5 minutes by default), and a DLQ the service creates meanwhile
gets one partition::

    >>> from streamguard.topics import create_topics
    >>> create_topics("127.0.0.1:9092", ["orders", "orders.dlq"], partitions=3)

then (``--metrics-port`` serves ``/metrics``, ``/healthz`` and ``/readyz``)::

    export STREAMGUARD_BOOTSTRAP_SERVERS=127.0.0.1:9092
    streamguard run streamguard.demo.billing:Billing --metrics-port 9102

The payment gateway is simulated so the example shows every outcome: customers named
``closed-*`` are refused for good (dead-lettered at once), ``flaky-*`` time out twice
and then succeed (retried), ``down-*`` always time out (retried, then dead-lettered).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced

log = logging.getLogger("streamguard.demo.billing")


class PaymentGateway:
    """A stand-in for a remote payment API with the failure modes real ones have."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.charged: Counter[str] = Counter()

    def charge(self, order: OrderPlaced, attempt: int) -> None:
        customer = order.customer_id
        if customer.startswith("down-") or (customer.startswith("flaky-") and attempt <= 2):
            raise TimeoutError("payment gateway did not answer within 2s")
        with self._lock:
            self.charged[order.currency] += 1


class Billing(sg.ConsumerService):
    """Charges each placed order once."""

    topic = "orders"
    contract = OrderPlaced
    group_id = "billing"
    dead_letter_topic = "orders.dlq"
    retry = sg.RetryPolicy(attempts=4, base_delay=0.05, max_delay=0.5, max_budget_ms=5_000)
    transient = (sg.TransientError, TimeoutError, ConnectionError)

    gateway = PaymentGateway()

    def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
        if event.customer_id.startswith("closed-"):
            raise sg.PermanentError("customer account is closed")
        self.gateway.charge(event, attempt=ctx.attempt)
        if ctx.attempt > 1:
            log.info("charged after retry", extra={"offset": ctx.offset, "attempt": ctx.attempt})

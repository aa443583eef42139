"""Billing as a guarded Faust agent: the ``ConsumerService`` example, the Faust way.

Run a worker against the cluster in ``$STREAMGUARD_BOOTSTRAP_SERVERS``, else
127.0.0.1:9092 (``streamguard broker`` starts a local one there), as ``send_orders``
picks its broker::

    faust -A examples.faust_billing.app worker -l info --web-bind 127.0.0.1

Each valid order is billed and its invoice forwarded to ``invoices``; poison input and
orders the gateway refuses go to ``orders.dlq`` with the ``sg-dlq-*`` headers a
``ConsumerService`` writes. Customers named ``closed-*`` are refused for good
(dead-lettered at once), ``flaky-*`` time out twice and then succeed (retried),
``down-*`` always time out (retried, then dead-lettered). ``/metrics`` on the worker's
web port (Faust binds it to 0.0.0.0 unless told ``--web-bind``) serves the guard's
metrics (``runtime="faust"``).
"""

from __future__ import annotations

import os
from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from streamguard.faust import GuardedAgent, guarded_agent


async def charge(order: OrderPlaced, attempt: int) -> None:
    """A stand-in for a remote payment API with the failure modes real ones have."""
    customer = order.customer_id
    if customer.startswith("closed-"):
        raise sg.PermanentError("the customer's account is closed")
    if customer.startswith("down-") or (customer.startswith("flaky-") and attempt <= 2):
        raise TimeoutError("payment gateway did not answer within 2s")


def default_broker() -> str:
    """Faust's broker URL for ``$STREAMGUARD_BOOTSTRAP_SERVERS`` (``host:port,...``), else
    127.0.0.1:9092: the worker reads the cluster ``send_orders`` writes to."""
    servers = os.environ.get("STREAMGUARD_BOOTSTRAP_SERVERS") or "127.0.0.1:9092"
    return "kafka://" + ";".join(s.strip() for s in servers.split(",") if s.strip())


def create_app(broker: str | None = None, **settings: Any) -> tuple[Any, GuardedAgent]:
    """The Faust app and its guarded billing agent; ``settings`` go to ``faust.App``."""
    app = faust.App("faust-billing", broker=broker or default_broker(), **settings)
    invoices = app.topic("invoices", value_serializer="json")

    @guarded_agent(
        app,
        "orders",
        contract=OrderPlaced,
        dead_letter_topic="orders.dlq",
        name="billing",  # sg-dlq-service; by default the handler's qualified name
        retry=sg.RetryPolicy(attempts=3, base_delay=0.2, max_budget_ms=5_000),
        sink=[invoices],
    )
    async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> dict[str, str]:
        await charge(event, ctx.attempt)
        return {"order_id": str(event.order_id), "amount": str(event.amount)}

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        # As a header: aiohttp refuses a charset in content_type, and Prometheus's has one.
        body = generate_latest(bill.registry)
        return web.bytes(body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return app, bill


app, bill = create_app()

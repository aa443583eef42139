"""``streamguard demo``: the whole product in one run, on an embedded broker.

It starts a broker, sends valid and invalid orders, runs the example billing service
(which dead-letters the poison and retries a flaky dependency), prints what happened
with the service's own metrics, and inspects the dead-letter topic. Next to the JSON
``orders`` topic it runs a Confluent-framed Avro topic, ``payments``, with an embedded
schema registry: what teams with Confluent's serializers already have on their topics.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal

from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from streamguard.config import load_project_config
from streamguard.contracts import Contract
from streamguard.devbroker import DevBroker
from streamguard.errors import ConfigurationError, ContractViolation, extra_hint
from streamguard.observe.librdkafka_logs import RepeatsCollapsed
from streamguard.observe.logs import configure_logging
from streamguard.producer import GuardedProducer
from streamguard.registry.codec import registry_schema
from streamguard.topics import create_topics

TOPIC = "orders"
DLQ = "orders.dlq"
PAYMENTS = "payments"
PAYMENTS_DLQ = "payments.dlq"
DEMO_CONTRACTS = "streamguard.demo.contracts"
REASONS = ("decode_error", "contract_violation", "permanent_error", "retries_exhausted")


def _say(text: str) -> None:
    print(text, flush=True)


@contextlib.contextmanager
def _cluster(bootstrap_servers: str | None) -> Iterator[str]:
    if bootstrap_servers:
        yield bootstrap_servers
        return
    with DevBroker() as broker:
        _say(f"* embedded broker on {broker.bootstrap_servers} (pid {broker.pid})")
        yield broker.bootstrap_servers


def _order(contract: type[Contract], i: int, customer: str) -> Contract:
    return contract.model_validate(
        {
            "order_id": uuid.UUID(int=i + 1),
            "customer_id": customer,
            "amount": Decimal("19.90") + i,
            "currency": "EUR" if i % 2 else "USD",
            "placed_at": dt.datetime.now(dt.UTC),
            "items": [{"sku": f"SKU-{i:04d}", "quantity": 1 + i % 3}],
        }
    )


def _send(bootstrap: str, contract: type[Contract]) -> dict[str, int]:
    producer = GuardedProducer(bootstrap, service_name="demo-checkout")
    customers = [f"customer-{i}" for i in range(20)] + ["flaky-1", "closed-1", "down-1"]
    for i, customer in enumerate(customers):
        producer.send(TOPIC, _order(contract, i, customer), key=customer)
    producer.flush()
    _say(
        f"* sent {len(customers)} orders with the guarded producer (3 will fail in billing "
        "at first: 1 recovers on retry, 2 for good)"
    )
    try:
        producer.send(TOPIC, {"order_id": "not-a-uuid", "amount": -5}, contract=contract)
    except ContractViolation as exc:
        _say(f"* the producer refused an invalid order before sending it: {exc}")
    # Poison that a careless producer elsewhere might write; bypasses our producer.
    raw = Producer({"bootstrap.servers": bootstrap})
    raw.produce(TOPIC, b'{"order_id": "oops"', key=b"legacy-1")
    raw.produce(TOPIC, json.dumps({"order_id": str(uuid.uuid4()), "amount": "12"}).encode())
    raw.produce(TOPIC, b"\xff\xfe not even text", key=b"legacy-2")
    raw.flush(10)
    _say("* wrote 3 poison records with a plain producer (bad JSON, a missing field, binary)")
    return {"sent": len(customers) + 3}


def _wait(metrics: CollectorRegistry, topic: str, expected: int, timeout: float) -> float:
    """Wait (bounded) until ``expected`` messages of ``topic`` reached an outcome."""
    deadline = time.monotonic() + timeout
    done = 0.0
    while time.monotonic() < deadline:
        done = sum(
            metrics.get_sample_value(
                "streamguard_messages_total", {"runtime": "consumer", "topic": topic, "outcome": o}
            )
            or 0.0
            for o in ("handled", "dead_lettered")
        )
        if done >= expected:
            break
        time.sleep(0.2)
    return done


def _registry_demo(bootstrap: str) -> bool:
    """Avro in the Confluent wire format: registry, guarded producer, ledger service.

    Skipped, with what to install, without the registry extra: the JSON part above
    needs only the broker extra, and a user who installed just that should not get a
    traceback after it succeeded.
    """
    try:
        from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
    except ImportError:  # httpx, authlib, certifi... come with the extra
        _say(
            "\n* skipped the Confluent-framed Avro topic: it needs schema registry support, "
            f"{extra_hint('registry')}"
        )
        return True

    from streamguard.demo.contracts import PaymentCaptured
    from streamguard.demo.ledger import Ledger
    from streamguard.registry.server import RegistryServer  # here: see streamguard.registry

    _say("\n== a Confluent-framed Avro topic next to the JSON one")
    with RegistryServer(port=0) as registry:
        _say(f"* embedded schema registry on {registry.url} (development only: production")
        _say("  uses a real one, e.g. Confluent Schema Registry, Karapace or Redpanda)")
        client = SchemaRegistryClient({"url": registry.url})
        text, schema_type = registry_schema(PaymentCaptured)
        schema_id = client.register_schema(f"{PAYMENTS}-value", Schema(text, schema_type))
        _say(f"* registered {PaymentCaptured.__subject__} v1 as {PAYMENTS}-value, id {schema_id}")
        producer = GuardedProducer(
            bootstrap, service_name="demo-payments", schema_registry={"url": registry.url}
        )
        count = 12
        for i in range(count):
            payment = PaymentCaptured(
                payment_id=f"pay-{i}",
                order_id=str(uuid.UUID(int=i + 1)),
                amount_cents=1990 + i,
                currency="EUR" if i % 2 else "USD",
            )
            producer.send(PAYMENTS, payment, key=payment.order_id)
        producer.flush()
        raw = Producer({"bootstrap.servers": bootstrap})
        raw.produce(PAYMENTS, b"\x00" + (999).to_bytes(4, "big") + b"\x02\x00", key=b"legacy-3")
        raw.flush(10)
        framing = (b"\x00" + schema_id.to_bytes(4, "big")).hex(" ")
        _say(f"* sent {count} payments framed as [{framing}] + Avro, and 1 with unknown id 999")
        metrics = CollectorRegistry()
        ledger = Ledger(
            bootstrap_servers=bootstrap,
            kafka_config={"session.timeout.ms": 6000},
            schema_registry={"url": registry.url},
            registry=metrics,
        )
        thread = threading.Thread(target=ledger.run, name="ledger", daemon=True)
        thread.start()
        done = _wait(metrics, PAYMENTS, count + 1, 60)
        ledger.stop()
        thread.join(30)

    def count_of(name: str, **labels: str) -> float:
        return metrics.get_sample_value(name, {"runtime": "consumer", **labels}) or 0.0

    handled = count_of("streamguard_messages_total", topic=PAYMENTS, outcome="handled")
    unknown = count_of("streamguard_dead_letters_total", topic=PAYMENTS, reason="decode_error")
    _say(f"  handled        {handled:.0f}  (writer schema fetched once by id, then cached)")
    _say(f"  dead-lettered  {unknown:.0f}  decode_error (schema id 999 is unknown)")
    _say(f"  booked (cents) {dict(Ledger.booked)}")
    if done < count + 1:
        _say(f"demo: only {done:.0f} of {count + 1} payments reached an outcome in time")
        return False
    return True


def _replay_hint() -> str:
    """The replay command to try next, and where it works: ``--revalidate`` finds
    contracts through ./pyproject.toml, which lists the demo's only in the checkout, so
    from an installed wheel the bare command fails with "found no contracts"."""
    command = f"`streamguard dlq replay {DLQ} --revalidate --dry-run`"
    try:
        listed = DEMO_CONTRACTS in load_project_config().contracts
    except ConfigurationError:
        listed = False
    if listed:
        return command
    return (
        f"{command} in the streamguard checkout, or in a directory whose pyproject.toml "
        f'has [tool.streamguard] contracts = ["{DEMO_CONTRACTS}"]'
    )


def run_demo(bootstrap_servers: str | None = None) -> int:
    """Run the demo; returns the process exit code (0 when everything added up)."""
    from streamguard.cli import main as cli_main
    from streamguard.demo.billing import Billing
    from streamguard.demo.contracts import OrderPlaced

    configure_logging("text", "WARNING")
    with _cluster(bootstrap_servers) as bootstrap:
        # A cluster that is down: one connect failure and their count, not one a backoff.
        with RepeatsCollapsed() as lines:
            create_topics(
                bootstrap,
                [TOPIC, DLQ, PAYMENTS, PAYMENTS_DLQ],
                partitions=3,
                config={"logger": lines},
            )
        sent = _send(bootstrap, OrderPlaced)["sent"]
        registry = CollectorRegistry()
        service = Billing(
            bootstrap_servers=bootstrap,
            kafka_config={"session.timeout.ms": 6000},
            registry=registry,
        )
        thread = threading.Thread(target=service.run, name="billing", daemon=True)
        _say("* starting the billing service (streamguard/demo/billing.py) ...")
        thread.start()

        def count(name: str, **labels: str) -> float:
            return registry.get_sample_value(name, {"runtime": "consumer", **labels}) or 0.0

        done = _wait(registry, TOPIC, sent, 60)
        service.stop()
        thread.join(30)

        _say("\n== outcomes (from the service's prometheus metrics)")
        handled = count("streamguard_messages_total", topic=TOPIC, outcome="handled")
        _say(f"  handled        {handled:.0f}")
        for reason in REASONS:
            n = count("streamguard_dead_letters_total", topic=TOPIC, reason=reason)
            _say(f"  dead-lettered  {n:.0f}  {reason}")
        _say(f"  retries        {count('streamguard_retries_total', topic=TOPIC):.0f}")
        _say(f"  charged        {dict(Billing.gateway.charged)}")

        _say(f"\n== streamguard dlq inspect {DLQ}")
        cli_main(["dlq", "inspect", DLQ, "--bootstrap-servers", bootstrap])
        if bootstrap_servers:  # the dead letters stay on the user's broker
            kept = f"Its dead letters stay in {DLQ} on {bootstrap}."
        else:
            kept = (
                "This demo's broker stops with it: to keep its dead letters, start "
                "`streamguard broker` and run `streamguard demo --bootstrap-servers "
                "127.0.0.1:9092`."
            )
        _say(f"\nNext: fix the producer or the contract, then {_replay_hint()}. {kept}")
        if done < sent:
            _say(f"demo: only {done:.0f} of {sent} messages reached an outcome in time")
            return 1
        if not _registry_demo(bootstrap):
            return 1
    return 0

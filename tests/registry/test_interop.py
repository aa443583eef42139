"""Interop through the broker: Confluent's serializers and streamguard read each other."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from streamguard.registry import RegistryServer
from streamguard.registry.codec import RegistryCodec, registry_schema
from streamguard.schema.avro import contract_avro_schema
from streamguard.testing import ServiceHarness
from tests.registry.conftest import (
    PaymentV1,
    PaymentV2,
    SlowRegistryClient,
    avro,
    send_v1_and_v2,
)
from tests.runtime.conftest import Running, dlq_headers, order, wait_for

pytestmark = pytest.mark.broker

FAST_RETRY = sg.RetryPolicy(attempts=2, base_delay=0.05, max_delay=0.2, max_budget_ms=300)


def collector(
    src: str, contract: type[sg.Contract], group: str, **attrs: Any
) -> tuple[type[Any], list[Any]]:
    """A service class that keeps every event it handles, and the list it keeps them in."""
    seen: list[Any] = []

    def handle(self: sg.ConsumerService, event: Any, ctx: sg.MessageContext) -> None:
        seen.append(event)

    namespace = {
        "topic": src,
        "contract": contract,
        "group_id": group,
        "retry": FAST_RETRY,
        "handle": handle,
        **attrs,
    }
    return type("Collect", (sg.ConsumerService,), namespace), seen


def test_confluent_avro_serializer_to_service_v1_read_by_v2(
    registry: RegistryServer,
    client: SchemaRegistryClient,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Producer,
) -> None:
    """Records from confluent-kafka's AvroSerializer, written with v1 and v2 schemas, are
    consumed by a v2 contract: v1 records resolve by Avro's rules (the default fills in)."""
    src = topic_factory("payments")
    send_v1_and_v2(client, raw_producer, src)
    assert client.get_versions(f"{src}-value") == [1, 2]

    cls, seen = collector(src, PaymentV2, unique("g"))
    start_service(cls, schema_registry={"url": registry.url})
    assert wait_for(lambda: len(seen) == 2)
    assert [(e.payment_id, e.amount_cents, e.currency) for e in seen] == [
        ("p1", 100, "EUR"),
        ("p2", 200, "USD"),
    ]


def test_confluent_framed_records_count_drift_by_their_schema_id(
    registry: RegistryServer,
    client: SchemaRegistryClient,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Producer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Records from Confluent's AvroSerializer carry no sg-* headers: their frame's schema
    id tells the drift. One written with the subject's older version counts as
    older_version, one written with the contract's own schema counts as nothing; neither
    is no_schema_headers (which both were, whatever their writer). The `schema drift`
    line gives the registry's version of the id as writer_version, and the id: it gave
    writer_version None, though the registry had told the version."""
    caplog.set_level(logging.WARNING, logger="streamguard.runtime")
    src = topic_factory("payments")
    send_v1_and_v2(client, raw_producer, src)
    v1_id = client.get_version(f"{src}-value", 1).schema_id

    cls, seen = collector(src, PaymentV2, unique("g"), drift="dead_letter")
    running = start_service(cls, schema_registry={"url": registry.url})
    assert wait_for(lambda: len(seen) == 2)

    def drift(kind: str) -> float:
        return running.metric(
            "streamguard_schema_drift_total", subject=PaymentV2.__subject__, kind=kind
        )

    def lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage() == "schema drift"]

    # An id is resolved in the background (the check never waits for the registry):
    # its records are counted, and logged, once it is.
    assert wait_for(lambda: drift("older_version") == 1 and lines() != [], timeout=10)
    time.sleep(0.3)  # anything else would be counted and logged by now
    assert drift("older_version") == 1
    for kind in ("newer_version", "no_schema_headers", "other_subject", "unknown_fingerprint"):
        assert drift(kind) == 0, kind
    (line,) = lines()
    got = {k: line.__dict__.get(k) for k in ("kind", "producer", "writer_version", "schema_id")}
    assert got == {
        "kind": "older_version",
        "producer": "unknown",
        "writer_version": "1",
        "schema_id": v1_id,
    }
    assert line.__dict__["reader_version"] == 2


def test_a_service_with_a_registry_reads_single_object_records_of_its_writer_schemas(
    registry: RegistryServer,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Producer,
) -> None:
    """A v2 service whose AvroCodec lists v1 among its writer_schemas, given a registry:
    v1 producers still writing single-object encoding during the migration are read as
    before. The registry's codec left the writer schemas out, so each of their records was
    dead-lettered as decode_error ("pass its .avsc in AvroCodec(writer_schemas=...)")."""
    src = topic_factory("payments")
    raw_producer.produce(src, sg.AvroCodec().encode(PaymentV1(payment_id="p1", amount_cents=1)))
    raw_producer.flush(10)

    v1 = contract_avro_schema(PaymentV1)
    cls, seen = collector(src, PaymentV2, unique("g"), codec=sg.AvroCodec(writer_schemas=[v1]))
    start_service(cls, schema_registry={"url": registry.url})
    assert wait_for(lambda: len(seen) == 1, timeout=10)
    assert (seen[0].payment_id, seen[0].currency) == ("p1", "EUR")


def test_confluent_json_serializer_to_service(
    registry: RegistryServer,
    client: SchemaRegistryClient,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Producer,
) -> None:
    """Records from confluent-kafka's JSONSerializer are consumed and validated by a
    streamguard service with a JSON contract."""
    src = topic_factory("orders")
    serialize = JSONSerializer(registry_schema(OrderPlaced)[0], client)
    ctx = SerializationContext(src, MessageField.VALUE)
    for i in range(3):
        raw_producer.produce(src, serialize(order(i).model_dump(mode="json"), ctx))
    raw_producer.flush(10)

    cls, seen = collector(src, OrderPlaced, unique("g"))
    start_service(cls, schema_registry=registry.url)
    assert wait_for(lambda: len(seen) == 3)
    assert seen == [order(i) for i in range(3)]


def test_guarded_producer_avro_to_confluent_deserializer(
    registry: RegistryServer,
    client: SchemaRegistryClient,
    bootstrap: str,
    topic_factory: Callable[..., str],
    read_all: Callable[..., list[Any]],
) -> None:
    """GuardedProducer with a registry writes Confluent framing with the id registered
    under <topic>-value, which confluent-kafka's AvroDeserializer reads."""
    src = topic_factory("payments")
    schema_id = client.register_schema(f"{src}-value", avro(PaymentV2))
    producer = sg.GuardedProducer(bootstrap, schema_registry={"url": registry.url})
    producer.send(src, PaymentV2(payment_id="p9", amount_cents=900, currency="USD"))
    producer.flush()

    (msg,) = read_all(src, 1)
    value = msg.value()
    assert value[:5] == b"\x00" + schema_id.to_bytes(4, "big")
    deserialize = AvroDeserializer(client)
    got = deserialize(value, SerializationContext(src, MessageField.VALUE))
    assert got == {"payment_id": "p9", "amount_cents": 900, "currency": "USD"}


def test_guarded_producer_json_to_confluent_deserializer(
    registry: RegistryServer,
    client: SchemaRegistryClient,
    bootstrap: str,
    topic_factory: Callable[..., str],
    read_all: Callable[..., list[Any]],
) -> None:
    """With auto_register, GuardedProducer registers the JSON Schema under the record
    strategy's subject, and confluent-kafka's JSONDeserializer reads the records."""
    src = topic_factory("orders")
    producer = sg.GuardedProducer(
        bootstrap,
        schema_registry={"url": registry.url},
        subject_name_strategy="TopicRecordNameStrategy",
        auto_register=True,
    )
    producer.send(src, order(5))
    producer.flush()

    assert client.get_subjects() == [f"{src}-OrderPlaced"]
    (msg,) = read_all(src, 1)
    deserialize = JSONDeserializer(None, schema_registry_client=client)
    got = deserialize(msg.value(), SerializationContext(src, MessageField.VALUE))
    assert got == order(5).model_dump(mode="json")


def test_unknown_schema_id_is_dead_lettered(
    registry: RegistryServer,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Producer,
    read_all: Callable[..., list[Any]],
) -> None:
    """A Confluent-framed record whose id the registry does not know is dead-lettered as
    decode_error naming the id, and the records after it are handled."""
    src = topic_factory("orders")
    raw_producer.produce(src, b"\x00" + (4242).to_bytes(4, "big") + b"{}")
    raw_producer.produce(src, order(1).model_dump_json().encode())
    raw_producer.flush(10)

    cls, seen = collector(src, OrderPlaced, unique("g"))
    start_service(cls, schema_registry={"url": registry.url})
    (dead,) = read_all(f"{src}.dlq", 1)
    headers = dlq_headers(dead)
    assert headers["sg-dlq-reason"] == "decode_error"
    assert "schema id 4242" in headers["sg-dlq-error-message"]
    assert wait_for(lambda: len(seen) == 1)


def test_registry_outage_holds_records_then_they_flow(
    registry: RegistryServer,
    client: SchemaRegistryClient,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Producer,
) -> None:
    """While the registry is down, records with an id not yet cached wait (far past the
    retry policy's budget, whatever the service's transient tuple) instead of being
    dead-lettered; once it is back, they flow."""
    src = topic_factory("payments")
    ctx = SerializationContext(src, MessageField.VALUE)
    first = AvroSerializer(client, registry_schema(PaymentV1)[0])(
        {"payment_id": "a", "amount_cents": 1}, ctx
    )
    later = AvroSerializer(client, registry_schema(PaymentV2)[0])(
        {"payment_id": "b", "amount_cents": 2, "currency": "USD"}, ctx
    )
    raw_producer.produce(src, first)
    raw_producer.flush(10)
    # Even a service that retries nothing of its own waits for the registry.
    cls, seen = collector(src, PaymentV2, unique("g"), transient=(TimeoutError,))
    running = start_service(cls, schema_registry={"url": registry.url})
    assert wait_for(lambda: len(seen) == 1)

    registry.stop()  # mid-stream: the v2 id was never fetched by the service
    for _ in range(3):
        raw_producer.produce(src, later)
    raw_producer.flush(10)
    time.sleep(1.5)  # five times FAST_RETRY's budget
    assert len(seen) == 1
    dead = running.metric("streamguard_messages_total", topic=src, outcome="dead_lettered")
    assert dead == 0
    assert running.metric("streamguard_retries_total", topic=src) > 0

    registry.start()  # same port, same directory: the same ids
    assert wait_for(lambda: len(seen) == 4)
    assert [e.currency for e in seen] == ["EUR", "USD", "USD", "USD"]
    assert running.metric("streamguard_messages_total", topic=src, outcome="dead_lettered") == 0


def test_async_service_fetches_a_new_writer_schema_off_its_event_loop(
    registry: RegistryServer,
    client: SchemaRegistryClient,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Producer,
) -> None:
    """The first record of a schema id the service has not seen waits for the registry's
    answer, but the service's event loop does not: the request runs in a thread, so the
    handlers of other records (here, a task ticking every 20 ms) go on meanwhile."""
    src = topic_factory("orders")
    slow = SlowRegistryClient({"url": registry.url, "max.retries": 0})
    seen: list[Any] = []
    gaps: list[float] = []
    ticking: list[asyncio.Task[None]] = []
    done = threading.Event()

    async def tick() -> None:
        for _ in range(1000):  # bounded: 20 s
            if done.is_set():
                return
            start = time.monotonic()
            await asyncio.sleep(0.02)
            gaps.append(time.monotonic() - start)

    class Watch(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = unique("g")
        codec = RegistryCodec(slow, wire_format="json")

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            if not ticking:
                ticking.append(asyncio.get_running_loop().create_task(tick()))
            seen.append(event)

    raw_producer.produce(src, order(0).model_dump_json().encode())  # plain JSON: no fetch
    raw_producer.flush(10)
    start_service(Watch)
    assert wait_for(lambda: len(seen) == 1)
    gaps.clear()
    serialize = JSONSerializer(registry_schema(OrderPlaced)[0], client)
    ctx = SerializationContext(src, MessageField.VALUE)
    raw_producer.produce(src, serialize(order(1).model_dump(mode="json"), ctx))
    raw_producer.flush(10)
    assert wait_for(lambda: len(seen) == 2)
    assert seen == [order(0), order(1)]
    assert slow.fetches == 1
    done.set()
    assert len(gaps) > 10
    assert max(gaps) < slow.delay / 2, max(gaps)


def test_an_async_service_dead_letters_an_oversize_record_while_the_registry_is_down(
    registry: RegistryServer,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Producer,
    read_all: Callable[..., list[Any]],
) -> None:
    """The size limit is checked before the id is looked at on an event loop too: an
    oversize Confluent-framed record of a new id is dead-lettered as oversize. Its id
    was fetched first, in a thread, so with the registry down it waited for it."""
    src = topic_factory("orders")
    url = registry.url
    registry.stop()
    raw_producer.produce(src, b"\x00" + (7).to_bytes(4, "big") + b"{" + b" " * 2000 + b"}")
    raw_producer.produce(src, order(1).model_dump_json().encode())  # plain JSON
    raw_producer.flush(10)
    seen: list[Any] = []

    class Watch(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = unique("g")
        codec = RegistryCodec({"url": url}, wire_format="json", max_bytes=1024)
        retry = FAST_RETRY

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            seen.append(event)

    start_service(Watch)
    (dead,) = read_all(f"{src}.dlq", 1)
    assert dlq_headers(dead)["sg-dlq-reason"] == "oversize"
    assert wait_for(lambda: seen == [order(1)])


def test_the_test_kit_sends_events_to_a_service_with_a_registry(
    registry: RegistryServer, client: SchemaRegistryClient
) -> None:
    """``ServiceHarness.send`` frames an event for the service's topic, as a guarded
    producer does, through the service's registry. It called the codec's ``encode``,
    which refuses the default TopicNameStrategy (a subject named after the topic), so
    a service with a registry could be driven by ``send_raw`` only."""
    client.register_schema("payments-kit-value", avro(PaymentV1))
    handled: list[PaymentV1] = []

    class Payments(sg.ConsumerService):
        topic = "payments-kit"
        contract = PaymentV1
        group_id = "payments"

        def handle(self, event: PaymentV1, ctx: sg.MessageContext) -> None:
            handled.append(event)

    with ServiceHarness(
        Payments(bootstrap_servers="127.0.0.1:9", schema_registry={"url": registry.url})
    ) as kit:
        outcome = kit.send(PaymentV1(payment_id="p-1", amount_cents=250))
    assert outcome.outcome == "handled", outcome
    assert handled == [PaymentV1(payment_id="p-1", amount_cents=250)]

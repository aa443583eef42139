"""Fixtures: an embedded schema registry per test, its client, and contracts to register."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

import streamguard as sg
from streamguard.registry import RegistryServer
from streamguard.registry.codec import registry_schema


class PaymentV1(sg.Contract):
    """An Avro contract, first version."""

    __subject__ = "payments.Payment"
    __version__ = 1
    __wire_format__ = "avro"

    payment_id: str
    amount_cents: int


class PaymentV2(sg.Contract):
    """v2 adds a field with a default: BACKWARD compatible (v2 readers read v1 data)."""

    __subject__ = "payments.Payment"
    __version__ = 2
    __wire_format__ = "avro"

    payment_id: str
    amount_cents: int
    currency: str = "EUR"


class PaymentBroken(sg.Contract):
    """A v3 that adds a required field: breaks BACKWARD."""

    __subject__ = "payments.Payment"
    __version__ = 3
    __wire_format__ = "avro"

    payment_id: str
    amount_cents: int
    merchant: str


class SlowRegistryClient(SchemaRegistryClient):
    """confluent-kafka's client, answering a schema-by-id request after ``delay`` seconds
    (a registry across a slow link); counts those requests."""

    delay = 1.0

    def __init__(self, conf: dict[str, Any]) -> None:
        super().__init__(conf)
        self.fetches = 0

    def get_schema(self, schema_id: int, *args: Any, **kwargs: Any) -> Any:
        self.fetches += 1
        time.sleep(self.delay)
        return super().get_schema(schema_id, *args, **kwargs)


@pytest.fixture
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """An embedded registry on a free loopback port, its state in a fresh directory."""
    server = RegistryServer(port=0, directory=tmp_path_factory.mktemp("registry"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(registry: RegistryServer) -> SchemaRegistryClient:
    """confluent-kafka's own client, pointed at the embedded registry over HTTP."""
    return SchemaRegistryClient({"url": registry.url, "max.retries": 0})


def avro(contract: type[sg.Contract]) -> Schema:
    """The registry Schema of an Avro contract (its exported .avsc)."""
    text, schema_type = registry_schema(contract)
    return Schema(text, schema_type)


def record(fields: list[tuple[str, str]], name: str = "R") -> str:
    """An Avro record schema text with ``(name, type)`` fields."""
    return json.dumps(
        {"type": "record", "name": name, "fields": [{"name": n, "type": t} for n, t in fields]}
    )


def send_v1_and_v2(client: SchemaRegistryClient, producer: Producer, topic: str) -> None:
    """One payment written by Confluent's AvroSerializer with PaymentV1's schema, then
    one with PaymentV2's: the subject's versions 1 and 2."""
    ctx = SerializationContext(topic, MessageField.VALUE)
    for contract, fields in (
        (PaymentV1, {"payment_id": "p1", "amount_cents": 100}),
        (PaymentV2, {"payment_id": "p2", "amount_cents": 200, "currency": "USD"}),
    ):
        serialize = AvroSerializer(client, registry_schema(contract)[0])
        producer.produce(topic, serialize(fields, ctx))
    producer.flush(10)


# The runtime suite's service fixtures, shared here (importing a fixture registers it).
from tests.runtime.conftest import raw_producer, start_service  # noqa: E402, F401

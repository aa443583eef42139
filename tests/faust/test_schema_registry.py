"""A guarded agent finds its schema registry as a ``ConsumerService`` does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

import streamguard as sg
from streamguard.faust import guarded_agent
from streamguard.registry import RegistryServer
from streamguard.registry.client import REGISTRY_URL_ENV
from tests.faust.conftest import run_app, until
from tests.registry.conftest import PaymentV1, avro, client, registry  # noqa: F401 (fixtures)

pytestmark = pytest.mark.broker


@pytest.mark.parametrize("configured_by", ["environment", "argument"])
def test_confluent_framed_records_are_read_with_the_registry_from_env_or_argument(
    configured_by: str,
    bootstrap: str,
    registry: RegistryServer,  # noqa: F811 (the fixtures imported above)
    client: SchemaRegistryClient,  # noqa: F811
    topic_factory: Callable[..., str],
    make_app: Callable[..., Any],
    read_all: Callable[..., list[Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Records a GuardedProducer wrote Confluent-framed through the registry are handled
    by an agent given only ``$STREAMGUARD_SCHEMA_REGISTRY_URL`` or ``schema_registry=``.
    The agent ignored both and read with the contract's single-object AvroCodec, so every
    valid record was dead-lettered as decode_error."""
    src = topic_factory("payments", partitions=1)
    client.register_schema(f"{src}-value", avro(PaymentV1))
    producer = sg.GuardedProducer(bootstrap_servers=bootstrap, schema_registry=registry.url)
    for i in range(3):
        producer.send(src, PaymentV1(payment_id=f"p-{i}", amount_cents=100 + i))
    producer.flush(10)

    extra: dict[str, Any] = {}
    if configured_by == "environment":
        monkeypatch.setenv(REGISTRY_URL_ENV, registry.url)
    else:
        monkeypatch.delenv(REGISTRY_URL_ENV, raising=False)
        extra["schema_registry"] = {"url": registry.url}
    app = make_app()
    handled: list[str] = []

    @guarded_agent(app, src, contract=PaymentV1, **extra)
    async def pay(event: PaymentV1, ctx: sg.MessageContext) -> None:
        handled.append(event.payment_id)

    async def all_handled() -> None:
        assert await until(lambda: len(handled) == 3, 30), handled

    run_app(app, all_handled)
    assert handled == ["p-0", "p-1", "p-2"]
    assert read_all(f"{src}.dlq", 1, timeout=2) == []

"""A guarded agent finds its schema registry as a ``ConsumerService`` does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient

import streamguard as sg
from streamguard.faust import guarded_agent
from streamguard.registry import RegistryServer
from streamguard.registry.client import REGISTRY_URL_ENV
from tests.faust.conftest import run_app, until
from tests.registry.conftest import (  # noqa: F401 (fixtures)
    PaymentV1,
    PaymentV2,
    avro,
    client,
    registry,
    send_v1_and_v2,
)

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


def test_confluent_framed_records_count_drift_by_their_schema_id_through_faust(
    registry: RegistryServer,  # noqa: F811 (the fixtures imported above)
    client: SchemaRegistryClient,  # noqa: F811
    topic_factory: Callable[..., str],
    make_app: Callable[..., Any],
    raw_producer: Producer,
) -> None:
    """A guarded agent judges the drift of Confluent-framed records (no sg-* headers) by
    their frame's schema id, as a ConsumerService does: a record written by Confluent's
    AvroSerializer with the subject's older version counts as older_version, one written
    with the contract's own schema as nothing, and neither as no_schema_headers."""
    src = topic_factory("payments", partitions=1)
    send_v1_and_v2(client, raw_producer, src)
    app = make_app()
    handled: list[str] = []

    # dead_letter checks every record (count may skip the second), and a record whose id
    # is resolved after its check passes and is counted late: both are handled.
    @guarded_agent(
        app, src, contract=PaymentV2, schema_registry={"url": registry.url}, drift="dead_letter"
    )
    async def pay(event: PaymentV2, ctx: sg.MessageContext) -> None:
        handled.append(event.payment_id)

    def drift(kind: str) -> float:
        labels = {"runtime": "faust", "subject": PaymentV2.__subject__, "kind": kind}
        return pay.registry.get_sample_value("streamguard_schema_drift_total", labels) or 0.0

    async def counted() -> None:
        assert await until(lambda: len(handled) == 2, 30), handled
        # The id is resolved in the background: its record is counted once it is.
        assert await until(lambda: drift("older_version") == 1, 10)

    run_app(app, counted)
    assert handled == ["p1", "p2"]
    assert drift("older_version") == 1
    for kind in ("newer_version", "no_schema_headers", "other_subject", "unknown_fingerprint"):
        assert drift(kind) == 0, kind

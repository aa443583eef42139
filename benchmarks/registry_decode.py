"""Decode + validation cost of the three framings, on the same events, in one process.

Usage::

    python benchmarks/registry_decode.py [--messages 20000] [--rounds 5]

The same order events are encoded three ways and decoded by the decoder a service
uses: Confluent-framed Avro (``RegistryCodec``, writer schema fetched by id from an
embedded registry on loopback), Avro single-object (``AvroCodec``) and plain JSON
(``JsonCodec``). Rounds alternate between the framings and the median of each counts.
The claim measured: with writer schemas cached by id, registry framing costs no more
than single-object framing (ratio >= 0.95), and the registry is asked once per id.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Literal

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from pydantic import BaseModel, Field

import streamguard as sg
from streamguard.registry.codec import registry_schema


class Item(BaseModel):
    sku: str
    quantity: int = Field(ge=1)


class Order(sg.Contract):
    __subject__ = "bench.OrderPlaced"
    __version__ = 1
    __wire_format__ = "avro"

    order_id: uuid.UUID
    customer_id: str
    amount: Decimal
    currency: Literal["EUR", "USD"]
    placed_at: dt.datetime
    items: list[Item]


def events(count: int) -> list[Order]:
    """Distinct, valid order events."""
    return [
        Order(
            order_id=uuid.UUID(int=i + 1),
            customer_id=f"customer-{i % 1000}",
            amount=Decimal("19.90") + i % 100,
            currency="EUR" if i % 2 else "USD",
            placed_at=dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC),
            items=[Item(sku=f"SKU-{i % 500:04d}", quantity=1 + i % 3)],
        )
        for i in range(count)
    ]


def rate(decode: Callable[[bytes], Any], payloads: list[bytes]) -> float:
    """Messages per second decoding and validating every payload once."""
    start = time.perf_counter()
    for payload in payloads:
        decode(payload)
    return len(payloads) / (time.perf_counter() - start)


class CountingClient(SchemaRegistryClient):  # type: ignore[misc]
    """The real client, counting the writer-schema fetches that reach the registry."""

    fetches = 0

    def get_schema(self, *args: Any, **kwargs: Any) -> Any:
        CountingClient.fetches += 1
        return super().get_schema(*args, **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    sample = events(args.messages)

    with sg.RegistryServer(port=0) as server:
        client = CountingClient({"url": server.url})
        text, schema_type = registry_schema(Order)
        client.register_schema("bench-value", Schema(text, schema_type))
        registry_codec = sg.RegistryCodec(client, wire_format="avro")
        encode = registry_codec.encoder(Order, "bench")
        avro, plain = sg.AvroCodec(), sg.JsonCodec()
        framings: dict[str, tuple[Callable[[bytes], Any], list[bytes]]] = {
            "confluent avro": (registry_codec.decoder(Order), [encode(e) for e in sample]),
            "single-object avro": (avro.decoder(Order), [avro.encode(e) for e in sample]),
            "plain json": (plain.decoder(Order), [plain.encode(e) for e in sample]),
        }
        for decode, payloads in framings.values():  # correctness, and warm caches
            assert decode(payloads[0]) == sample[0]
        rates: dict[str, list[float]] = {name: [] for name in framings}
        for _ in range(args.rounds):
            for name, (decode, payloads) in framings.items():
                rates[name].append(rate(decode, payloads))

    size = {name: statistics.mean(map(len, p)) for name, (_, p) in framings.items()}
    print(f"{args.messages} order events, {args.rounds} rounds, decode + validate")
    medians = {name: statistics.median(r) for name, r in rates.items()}
    for name, values in rates.items():
        shown = ", ".join(f"{v:,.0f}" for v in values)
        print(f"  {name:18}: {medians[name]:>9,.0f} msg/s  {size[name]:5.0f} B  [{shown}]")
    ratio = medians["confluent avro"] / medians["single-object avro"]
    print(f"  confluent / single-object: {ratio:.3f}  (target >= 0.95)")
    print(f"  writer-schema fetches from the registry: {CountingClient.fetches}")
    return 0 if ratio >= 0.95 and CountingClient.fetches == 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""The one data set every contender reads: keyed order events of about 400 bytes.

The events are ``streamguard.demo.contracts.OrderPlaced`` with six line items (``peers.py
--line-items`` sets another number). They carry no
``sg-*`` headers, as events written by another framework's producer would not. Record
``i`` has order id ``UUID(int=i + 1)`` and key ``k{i % KEYS}``, so a key's records sit in
one partition in increasing order. The same bytes go to every contender; the Avro topic
holds the same events in Avro single-object encoding, the avro-registry topic in
Confluent framing (a schema id from the embedded registry, then the Avro record), the
invalid topic the same JSON with a currency the contract refuses.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal

from confluent_kafka import Producer

from peerbench import events
from peerbench.events import IO_KEYS, KEYS, MEASURED_AFTER
from streamguard.codecs import AvroCodec
from streamguard.demo.contracts import OrderPlaced


class OrderPlacedAvro(OrderPlaced):
    """The same order event as an Avro contract (single-object encoding)."""

    __subject__ = "bench.OrderPlacedAvro"
    __wire_format__ = "avro"


def order_event(
    i: int, contract: type[OrderPlaced] = OrderPlaced, order_id: int = 0
) -> OrderPlaced:
    return contract(
        order_id=uuid.UUID(int=order_id or i + 1),
        customer_id=f"customer-{i % 5000:06d}-eu-west-1",
        amount=Decimal("1234.56"),
        currency="EUR",
        placed_at=dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC),
        items=[
            {"sku": f"SKU-{(i + k) % 99999:08d}", "quantity": k + 1}
            for k in range(events.LINE_ITEMS)
        ],
    )


def json_value(i: int) -> bytes:
    return order_event(i).model_dump_json().encode()


def invalid_value(i: int) -> bytes:
    # Same size and shape; "GBP" is not among the contract's currencies.
    return json_value(i).replace(b'"EUR"', b'"GBP"')


_AVRO = AvroCodec()


def avro_value(i: int) -> bytes:
    return _AVRO.encode(order_event(i, OrderPlacedAvro))


ENCODERS: dict[str, Callable[[int], bytes]] = {
    "json": json_value,
    "avro": avro_value,
    "invalid": invalid_value,
    "io": json_value,
}


def _producer(bootstrap: str, **config: object) -> Producer:
    return Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, **config})


def _send(producer: Producer, topic: str, value: bytes, key: bytes) -> None:
    while True:
        try:
            producer.produce(topic, value, key=key)
            return
        except BufferError:
            producer.poll(0.05)


def registry_avro_encoder(registry_url: str, topic: str) -> Callable[[int], bytes]:
    """Confluent-framed Avro for ``topic``, its schema registered under ``<topic>-value``."""
    from streamguard.registry.codec import RegistryCodec

    codec = RegistryCodec({"url": registry_url}, wire_format="avro", auto_register=True)
    frame = codec.encoder(OrderPlacedAvro, topic)
    return lambda i: frame(order_event(i, OrderPlacedAvro))


def produce(bootstrap: str, topic: str, data: str, count: int, registry_url: str = "") -> int:
    """Write ``count`` records of kind ``data``; return the mean value size in bytes."""
    if data == "avro-registry":
        encode = registry_avro_encoder(registry_url, topic)
    else:
        encode = ENCODERS[data]
    keys = IO_KEYS if data == "io" else KEYS
    producer = _producer(bootstrap)
    total = 0
    for i in range(count):
        value = encode(i)
        total += len(value)
        _send(producer, topic, value, b"k%d" % (i % keys))
    producer.flush(120)
    return round(total / max(count, 1))


def paced(rate: float, count: int) -> Iterator[int]:
    """Yield 0..count-1, each at its slot of a fixed rate (no catching up in bursts)."""
    start = time.perf_counter()
    for i in range(count):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        yield i


def produce_paced(bootstrap: str, topic: str, rate: float, count: int, ready: str) -> None:
    """Warm up until the consumer saw a record, then send ``count`` at ``rate`` per second.

    Until the file ``ready`` exists (the consumer's probe writes it on its first record)
    it trickles warm-up records with small order ids. Measured records carry the send
    time (``time.time_ns()``, one clock on one machine) as their order id, which is how
    a handler reads its latency from the validated event.
    """
    producer = _producer(bootstrap, **{"linger.ms": 1})
    deadline = time.monotonic() + 90
    i = 0
    while not os.path.exists(ready) and time.monotonic() < deadline:
        _send(producer, topic, json_value(i), b"k%d" % (i % KEYS))
        producer.poll(0.05)
        i += 1
    time.sleep(1.0)  # let it drain the warm-up backlog
    template = order_event(0, order_id=MEASURED_AFTER).model_dump_json().encode()
    marker = str(uuid.UUID(int=MEASURED_AFTER)).encode()
    for i in paced(rate, count):
        stamp = str(uuid.UUID(int=time.time_ns())).encode()
        _send(producer, topic, template.replace(marker, stamp), b"k%d" % (i % KEYS))
        producer.poll(0)
    producer.flush(30)

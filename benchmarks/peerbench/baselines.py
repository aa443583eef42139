"""The hand-written loops: what a careful engineer writes without a framework.

The JSON loops import nothing of streamguard (see ``events``); the Avro and envelope
loops load it inside their rows for what they reuse (the contract's Avro schema, the
``sg-dlq-*`` header names), and count its memory.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer

from peerbench.events import OrderPlaced, TunedOrderPlaced
from peerbench.kafka import FAST_JOIN, POLL_TIMEOUT, fetch_wait
from peerbench.registry import Run, contender

# streamguard's own consumer settings (``streamguard.runtime.service.CONSUMER_DEFAULTS``,
# which a test holds this to), written out so that the tuned loop does not load it.
TUNED = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "partition.assignment.strategy": "cooperative-sticky",
    "queued.max.messages.kbytes": 2048,
    "fetch.queue.backoff.ms": 1,
    "fetch.wait.max.ms": 100,
}


def untuned_config(run: Run) -> dict[str, Any]:
    """librdkafka's defaults, as a first loop would run them."""
    return {
        "bootstrap.servers": run.bootstrap,
        "group.id": run.group,
        "auto.offset.reset": "earliest",
        **FAST_JOIN,
        **fetch_wait(run),
    }


def tuned_config(run: Run) -> dict[str, Any]:
    """The librdkafka settings streamguard's runtime uses (``TUNED``); the latency
    pass's fetch wait cap applies to it as to every contender."""
    return {**untuned_config(run), **TUNED, **fetch_wait(run)}


def consume_loop(run: Run, config: dict[str, Any], decode: Callable[[bytes], Any]) -> None:
    """``consume(500)``, decode each value, hand it on; the probe ends the process."""
    consumer = Consumer(config)
    consumer.subscribe([run.topic])
    handle = run.probe.handle
    while True:
        for msg in consumer.consume(500, POLL_TIMEOUT):
            if msg.error() is None:
                handle(decode(msg.value()))


@contender(
    "loop-untuned",
    "confluent-kafka loop + model_validate_json, librdkafka defaults",
    modes=("throughput", "latency"),
    tags=("baseline",),
)
def loop_untuned(run: Run) -> None:
    consume_loop(run, untuned_config(run), OrderPlaced.model_validate_json)


@contender(
    "loop-tuned",
    "confluent-kafka loop + model_validate_json, streamguard's librdkafka and parse settings",
    modes=("throughput", "latency"),
    tags=("baseline",),
)
def loop_tuned(run: Run) -> None:
    consume_loop(run, tuned_config(run), TunedOrderPlaced.model_validate_json)


@contender(
    "loop-floor",
    "transport floor: the tuned loop without validation",
    tags=("baseline",),
)
def loop_floor(run: Run) -> None:
    consume_loop(run, tuned_config(run), bytes)


@contender(
    "fastavro-loop",
    "confluent-kafka loop + fastavro + model_validate (Avro single-object)",
    data="avro",
    tags=("baseline",),
)
def fastavro_loop(run: Run) -> None:
    import fastavro

    from peerbench.dataset import OrderPlacedAvro
    from streamguard.schema.avro import contract_avro_schema

    schema = fastavro.parse_schema(contract_avro_schema(OrderPlacedAvro))
    read = fastavro.schemaless_reader
    validate = OrderPlacedAvro.model_validate
    buffer = io.BytesIO

    def decode(value: bytes) -> Any:
        # Skip the 10-byte single-object header; the writer schema is known.
        return validate(read(buffer(value[10:]), schema, None))

    consume_loop(run, tuned_config(run), decode)


@contender(
    "fastavro-registry-loop",
    "confluent-kafka loop + fastavro + model_validate (Avro, Confluent-framed)",
    data="avro-registry",
    tags=("baseline",),
)
def fastavro_registry_loop(run: Run) -> None:
    """What a careful engineer writes for Confluent framing: the writer schema fetched
    from the registry once per schema id, then fastavro on the bytes after the 5-byte
    frame."""
    import fastavro
    from confluent_kafka.schema_registry import SchemaRegistryClient

    from peerbench.dataset import OrderPlacedAvro

    client = SchemaRegistryClient({"url": run.registry_url})
    writers: dict[bytes, Any] = {}
    read = fastavro.schemaless_reader
    validate = OrderPlacedAvro.model_validate
    buffer = io.BytesIO

    def decode(value: bytes) -> Any:
        frame = value[:5]
        schema = writers.get(frame)
        if schema is None:
            text = client.get_schema(int.from_bytes(frame[1:], "big")).schema_str
            schema = writers[frame] = fastavro.parse_schema(json.loads(text))
        return validate(read(buffer(value[5:]), schema, None))

    consume_loop(run, tuned_config(run), decode)


def dead_letter_loop(run: Run, context: Callable[[Any, Any], list[Any]]) -> None:
    """Validate each record; on failure produce it with ``context(msg, error)`` as its
    headers through a durable producer (``acks=all``); a record counts once its delivery
    report says the broker has it."""
    from confluent_kafka import Producer
    from pydantic import ValidationError

    consumer = Consumer(untuned_config(run))
    consumer.subscribe([run.topic])
    producer = Producer({"bootstrap.servers": run.bootstrap, "acks": "all", "linger.ms": 5})
    hit = run.probe.hit
    dlq = f"{run.topic}.dlq"
    validate = OrderPlaced.model_validate_json

    def delivered(err: Any, msg: Any) -> None:
        if err is None:
            hit(None)

    while True:
        for msg in consumer.consume(500, POLL_TIMEOUT):
            if msg.error() is not None:
                continue
            try:
                run.probe.handle(validate(msg.value()))
            except ValidationError as exc:
                producer.produce(
                    dlq, msg.value(), key=msg.key(), headers=context(msg, exc),
                    on_delivery=delivered,
                )  # fmt: skip
        producer.poll(0)


@contender(
    "loop-dlq",
    "confluent-kafka loop dead-lettering every invalid record (acks=all, a report each)",
    data="invalid",
    tags=("baseline",),
)
def loop_dlq(run: Run) -> None:
    """The least a correct hand-written dead-letter loop does: the record's own headers
    plus a reason header."""

    def context(msg: Any, _exc: Any) -> list[Any]:
        headers = list(msg.headers() or ())
        headers.append(("dlq-reason", b"contract_violation"))
        return headers

    dead_letter_loop(run, context)


@contender(
    "loop-dlq-envelope",
    "the same dead-letter loop writing streamguard's sixteen sg-dlq-* headers",
    data="invalid",
    tags=("baseline",),
)
def loop_dlq_envelope(run: Run) -> None:
    """``loop-dlq`` with the record's context written as streamguard writes it (the
    ``sg-dlq-*`` headers of docs/dead-letters.md, error details without input values),
    the headers fixed for the service encoded once: what the envelope itself costs,
    apart from the runtime around it."""
    import socket
    import time

    from streamguard import headers as h
    from streamguard.demo.contracts import OrderPlaced as Contract

    fixed = [
        (h.DLQ_CONSUMER_GROUP, run.group.encode()),
        (h.DLQ_SERVICE, b"loop-dlq-envelope"),
        (h.DLQ_HOST, socket.gethostname().encode()),
        (h.DLQ_REASON, b"contract_violation"),
        (h.DLQ_ERROR_CLASS, b"pydantic_core._pydantic_core.ValidationError"),
        (h.DLQ_EXPECTED_SUBJECT, Contract.__subject__.encode()),
        (h.DLQ_EXPECTED_VERSION, b"%d" % Contract.__version__),
        (h.DLQ_ATTEMPTS, b"1"),
    ]

    def context(msg: Any, exc: Any) -> list[Any]:
        now = b"%d" % int(time.time() * 1000)
        headers = list(msg.headers() or ())
        headers += fixed
        headers += [
            (h.DLQ_ORIGINAL_TOPIC, msg.topic().encode()),
            (h.DLQ_ORIGINAL_PARTITION, b"%d" % msg.partition()),
            (h.DLQ_ORIGINAL_OFFSET, b"%d" % msg.offset()),
            (h.DLQ_ORIGINAL_TIMESTAMP, b"%d" % msg.timestamp()[1]),
            (h.DLQ_ERROR_MESSAGE, b"%d validation error(s)" % exc.error_count()),
            (h.DLQ_ERRORS, exc.json(include_url=False, include_input=False).encode()),
            (h.DLQ_FIRST_FAILURE_MS, now),
            (h.DLQ_DEAD_LETTERED_MS, now),
        ]
        return headers

    dead_letter_loop(run, context)

"""The dead-letter publisher replaces a producer that hit a fatal error (no broker)."""

from __future__ import annotations

from confluent_kafka import KafkaError, Producer
from prometheus_client import CollectorRegistry

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from streamguard.observe.metrics import ServiceMetrics
from streamguard.runtime.deadletters import DeadLetterPublisher


class Orders(sg.ConsumerService):
    topic = "dl-unit"
    contract = OrderPlaced
    group_id = "dl-unit"

    def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...


def test_a_fatal_error_replaces_the_producer_on_the_next_tick() -> None:
    """librdkafka's producer is unusable after a fatal error (a fenced idempotent
    producer): the next maintenance tick builds a new one; ordinary errors keep it."""
    made: list[Producer] = []

    def new_producer() -> Producer:
        made.append(Producer({"bootstrap.servers": "127.0.0.1:9"}))
        return made[-1]

    spec = Orders(bootstrap_servers="127.0.0.1:9")._spec()
    publisher = DeadLetterPublisher(spec, new_producer, ServiceMetrics(CollectorRegistry()))
    publisher.failed(KafkaError(KafkaError._MSG_TIMED_OUT))
    publisher.maintain([], now=0.0)
    assert len(made) == 1
    publisher.failed(KafkaError(KafkaError._FATAL, "fenced", fatal=True))
    assert not publisher.writable
    publisher.maintain([], now=0.0)
    assert len(made) == 2
    assert publisher.writable  # no lane holds a failed dead letter

"""Dead letters written to another cluster (``dead_letter_config``): the DLQ topic is
made there, where its producer writes, not on the cluster the service consumes from."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from streamguard.devbroker import DevBroker
from streamguard.topics import create_topics
from tests.conftest import fast_group_config
from tests.faults.proxy import FaultProxy
from tests.runtime.conftest import Running, committed, dlq_headers, wait_for

pytestmark = pytest.mark.broker


def topics_on(bootstrap: str) -> set[str]:
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    return {name for name in metadata.topics if not name.startswith("_")}


def test_the_dead_letter_topic_is_made_on_the_cluster_it_is_written_to(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Any,
) -> None:
    """Before, the runtime looked for the DLQ in the source cluster's metadata and made it
    there, and the first dead letter then went to a cluster without the topic."""
    src = topic_factory("orders", partitions=3)
    raw_producer.produce(src, b"not json", partition=1)
    raw_producer.flush(10)
    group = unique("billing")

    class Billing(sg.ConsumerService):
        topic, contract, group_id = src, OrderPlaced, group

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            pass

    with DevBroker() as other:
        dead_letters = other.bootstrap_servers
        start_service(Billing, dead_letter_config={"bootstrap.servers": dead_letters})
        assert wait_for(lambda: committed(bootstrap, group, src).get(1) == 1, 30)
        assert f"{src}.dlq" in topics_on(dead_letters)
        assert f"{src}.dlq" not in topics_on(bootstrap)
        metadata = AdminClient({"bootstrap.servers": dead_letters}).list_topics(timeout=10)
        assert len(metadata.topics[f"{src}.dlq"].partitions) == 3  # the source's count
        reader = Consumer({"bootstrap.servers": dead_letters, "group.id": unique("r")})
        reader.assign([TopicPartition(f"{src}.dlq", p, OFFSET_BEGINNING) for p in range(3)])
        try:
            found: list[Any] = []
            for _ in range(60):  # bounded: 30 s
                found += [m for m in reader.consume(10, 0.5) if m.error() is None]
                if found:
                    break
        finally:
            reader.close()
        assert dlq_headers(found[0])["sg-dlq-reason"] == "decode_error"


def test_a_small_dlq_on_another_cluster_is_warned_of_where_it_lives(
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The existing DLQ's size is read where its producer writes, as it is created
    there: the warning and its command name the dead-letter cluster."""
    caplog.set_level(logging.WARNING, logger="streamguard.runtime")
    src = topic_factory("orders")

    class Billing(sg.ConsumerService):
        topic, contract, group_id = src, OrderPlaced, unique("billing")

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            pass

    with DevBroker() as other:
        dead_letters = other.bootstrap_servers
        create_topics(dead_letters, [f"{src}.dlq"], topic_config={"max.message.bytes": "200000"})
        running = start_service(Billing, dead_letter_config={"bootstrap.servers": dead_letters})
        assert wait_for(lambda: bool(running.service.health()["checks"]["assigned"]), 30)
        running.stop()
    warned = [
        r.__dict__
        for r in caplog.records
        if r.getMessage() == "dead-letter topic smaller than the dead letters it may get"
    ]
    assert [(w["dlq"], w["max_message_bytes"], w["needed"]) for w in warned] == [
        (f"{src}.dlq", 200_000, 1_100_000)
    ]
    assert f"--bootstrap-server {dead_letters} " in warned[0]["command"]


def test_a_stop_commits_a_dead_letter_acknowledged_in_its_second_wait(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stop waits shutdown_timeout for handlers, then as long again for dead letters,
    and commits after both. Before, the dead letters had only what the handlers left of
    shutdown_timeout before the commit; one acknowledged in the second wait (which came
    after the commit) stayed uncommitted, and its record was dead-lettered again after
    the restart. Here the DLQ's cluster (behind a stalled proxy) answers 3 s into a stop
    with shutdown_timeout=2."""
    src = topic_factory("orders", partitions=1)
    group = unique("billing")

    class Billing(sg.ConsumerService):
        topic, contract, group_id = src, OrderPlaced, group
        options = sg.ServiceOptions(shutdown_timeout=2.0, revoke_timeout=2.0)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            pass

    proxy = FaultProxy(target_port=0).start()
    other = DevBroker(advertised_port=proxy.port)
    resume = threading.Timer(3.0, proxy.resume)
    try:
        other.start()
        assert other.port is not None
        proxy.target_port = other.port
        running = start_service(Billing, dead_letter_config={"bootstrap.servers": proxy.address})
        assert wait_for(lambda: running.service.health()["ready"], 30)
        proxy.stall()
        caplog.set_level(logging.WARNING, logger="streamguard.runtime")
        raw_producer.produce(src, b"not json", partition=0)
        raw_producer.flush(10)
        assert wait_for(
            lambda: any(r.getMessage() == "dead-lettering message" for r in caplog.records), 20
        )
        resume.start()
        running.stop()
        assert not running.error
        assert running.metric("streamguard_dead_letters_total", topic=src, reason="decode_error")
        assert committed(bootstrap, group, src).get(0) == 1
    finally:
        resume.cancel()
        resume.join(10)
        proxy.stop()
        other.stop()


def test_a_message_max_bytes_in_kafka_config_does_not_shrink_the_dlq_producer(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    read_all: Callable[..., list[Any]],
) -> None:
    """kafka_config's message.max.bytes (here librdkafka's 1 MB default) replaced the DLQ
    producer's 100 MiB: a 1.2 MB record the consumer received could not be dead-lettered,
    the DLQ stayed unwritable and nothing was committed."""
    src = topic_factory("orders")
    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 5_000_000})
    producer.produce(src, b"x" * 1_200_000, key=b"big")
    producer.produce(src, b"not json")
    assert producer.flush(10) == 0
    group = unique("g")

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

    running = start_service(
        Billing, kafka_config=fast_group_config(**{"message.max.bytes": 1_000_000})
    )
    records = read_all(f"{src}.dlq", 2, timeout=10)
    assert [(len(m.value()), dlq_headers(m)["sg-dlq-reason"]) for m in records] == [
        (1_200_000, "oversize"),
        (8, "decode_error"),
    ]
    assert wait_for(lambda: committed(bootstrap, group, src).get(0) == 2, timeout=10)
    assert running.service.health()["checks"]["dlq_writable"]

"""Queueing a record with librdkafka without ever dropping it.

``Producer.produce`` raises ``BufferError`` when the local queue is full, and
``KafkaException`` when it refuses a record outright (larger than
``message.max.bytes``, say). The first is backpressure: wait for room. The second
means no delivery report will ever come, so the caller must treat it as a failed
delivery. Every producer of ours (guarded producer, dead letters, replay) goes through
``enqueue`` so that both cases are handled the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

DeliveryReport = Callable[[KafkaError | None, Message], None]

# How long to serve delivery reports while waiting for room in a full local queue.
ROOM_WAIT = 0.1


def enqueue(
    producer: Producer,
    topic: str,
    value: bytes | None,
    *,
    key: bytes | None,
    headers: Sequence[tuple[str, bytes | None]] | None,
    on_delivery: DeliveryReport,
    partition: int | None = None,
) -> KafkaError | None:
    """Queue one record, waiting while the local queue is full.

    Returns None once the record is queued (``on_delivery`` reports its fate later),
    or the error when librdkafka refused it before queueing: then no report comes.
    """
    kwargs: dict[str, Any] = {"key": key, "on_delivery": on_delivery}
    if headers is not None:
        kwargs["headers"] = headers if isinstance(headers, list) else list(headers)
    if partition is not None:
        kwargs["partition"] = partition
    while True:
        try:
            producer.produce(topic, value, **kwargs)
            return None
        except BufferError:
            producer.poll(ROOM_WAIT)  # serve delivery reports to make room; drop nothing
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            return error

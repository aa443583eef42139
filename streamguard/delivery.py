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

TOO_LARGE_FOR_QUEUE = (
    "record larger than the local queue (queue.buffering.max.kbytes): it can never be queued"
)


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
    or the error when librdkafka refused it before queueing (or it is too large for even
    an empty local queue): then no report comes.
    """
    # Any: the stubs want a list of (str, str | bytes | None), and a list is invariant.
    sent: Any = headers if headers is None or isinstance(headers, list) else list(headers)
    drained = False  # the queue was found empty after the last refusal
    while True:
        try:
            if partition is None:  # keywords, not a dict of them: a dead-letter flood's hot path
                producer.produce(topic, value, key=key, headers=sent, on_delivery=on_delivery)
            else:
                producer.produce(
                    topic, value, key=key, headers=sent, on_delivery=on_delivery,
                    partition=partition,
                )  # fmt: skip
            return None
        except BufferError:
            if len(producer) == 0:
                # No room in an empty queue: the record alone is larger than
                # queue.buffering.max.kbytes, and waiting would never end. Refused only
                # when it happens twice, as other threads may have just drained the queue.
                if drained:
                    return KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, TOO_LARGE_FOR_QUEUE)
                drained = True
                continue
            drained = False
            producer.poll(ROOM_WAIT)  # serve delivery reports to make room; drop nothing
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            return error

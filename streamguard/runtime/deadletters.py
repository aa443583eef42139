"""Writing dead letters, and knowing whether the dead-letter topic can be written.

A message is dead-lettered only once the broker acknowledged its DLQ record; until
then its offset stays open in its lane. When writes fail, the DLQ counts as
unwritable: no lane starts new work (see ``PartitionLane``), every partition is
paused, and the failed records are sent again with a growing backoff until one is
acknowledged.

Locking: none of its own. ``writable`` and ``last_error`` are set by
``failed()`` on whatever thread serves delivery reports; ``writable`` goes back to
True only in ``maintain()``, which the poll loop calls with its poll lock held.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from confluent_kafka import KafkaError, Message, Producer

from streamguard.deadletter import DeadLetterHeaders, DeadLetterLog, Failure
from streamguard.delivery import enqueue
from streamguard.headers import Record
from streamguard.observe.metrics import ServiceMetrics
from streamguard.runtime.spec import ServiceSpec

if TYPE_CHECKING:
    from streamguard.runtime.lane import PartitionLane

log = logging.getLogger("streamguard.runtime")

# First wait between attempts to re-send failed dead letters; doubles up to
# ServiceOptions.dead_letter_backoff_max.
FIRST_BACKOFF = 0.1


# A dead letter's delivery report: the error (None once acknowledged) and the DLQ
# record, which is None when the client refused the record before sending it.
DeliveryReport = Callable[[KafkaError | None, Message | None], None]


class DeadLetterSink(Protocol):
    """Where a pipeline sends dead letters: the broker, or the test kit's memory."""

    writable: bool

    def publish(self, msg: Record, failure: Failure, done: DeliveryReport) -> None: ...

    def resend(self, msg: Record, failure: Failure, done: DeliveryReport, write: int) -> None: ...

    def failed(self, error: KafkaError) -> None: ...


def headers_for(spec: ServiceSpec) -> DeadLetterHeaders:
    """The builder of a service's dead-letter headers (original headers, then ``sg-dlq-*``)."""
    return DeadLetterHeaders.for_contract(
        spec.contract,
        group_id=spec.group_id,
        service=spec.name,
        include_error_text=spec.include_error_text,
    )


class DeadLetterPublisher:
    """Sends a service's dead letters through its own durable producer."""

    def __init__(
        self,
        spec: ServiceSpec,
        new_producer: Callable[[], Producer],
        metrics: ServiceMetrics,
        producer: Producer | None = None,
    ) -> None:
        """Args:
        new_producer: builds the DLQ producer; called again to replace one that hit a
            fatal error (an idempotent producer fenced, say), which can send no more.
        producer: the first producer, if already built; else ``new_producer()``.
        """
        self.topic = spec.dead_letter_topic
        # Whose DLQ each line is about: a process may run several services.
        self._names = spec.dead_letter_names()
        self._headers = headers_for(spec)
        self._log = DeadLetterLog(
            log, spec.options.dead_letter_log_rate, service=spec.name, topic=spec.topic
        )
        self._new_producer = new_producer
        self._producer = producer if producer is not None else new_producer()
        self._broken = False  # the producer hit a fatal error: replace it
        self._failures = metrics.dead_letter_failures.labels(spec.topic)
        self.writable = True
        self.last_error = ""
        self._backoff = FIRST_BACKOFF
        self._backoff_max = spec.options.dead_letter_backoff_max
        self._next_retry = 0.0

    def publish(self, msg: Record, failure: Failure, done: DeliveryReport) -> None:
        """Send the original record, byte for byte, with the ``sg-dlq-*`` context.

        ``done`` is the delivery report: ``(None, record)`` once the broker acknowledged
        it, else ``(error, record)`` (``(error, None)`` when the client refused the
        record before sending it).
        """
        self._log(msg, failure)
        self._send(msg, failure, done)

    def resend(self, msg: Record, failure: Failure, done: DeliveryReport, write: int) -> None:
        """``publish`` again after a failed write (``write``: this write's number),
        logged as a resend, not as the record's dead-lettering again."""
        self._log.resending(msg, failure, write)
        self._send(msg, failure, done)

    def _send(self, msg: Record, failure: Failure, done: DeliveryReport) -> None:
        try:
            refused = enqueue(
                self._producer,
                self.topic,
                msg.value(),
                key=msg.key(),
                headers=self._headers.for_record(msg, failure),
                on_delivery=done,
            )
        except Exception as exc:  # a bad header or argument: still never drop it
            refused = KafkaError(KafkaError._INVALID_ARG, f"{type(exc).__name__}: {exc}")
        if refused is not None:
            # Refused before sending (e.g. larger than message.max.bytes): no report
            # will come. A failure like any other; the message stays uncommitted.
            done(refused, None)

    def _replace_producer(self) -> None:
        """librdkafka's advice on a fatal error: the producer is done; make a new one.

        What the old one still holds is purged, which reports each record as failed,
        so that its lane sends it again through the new producer.
        """
        old = self._producer
        self._broken = False
        log.warning("replacing the dead-letter producer after a fatal error", extra=self._names)
        old.purge(in_queue=True, in_flight=True, blocking=False)
        old.flush(0)  # serves the purge reports
        self._producer = self._new_producer()

    def serve_reports(self) -> None:
        """Run delivery reports of dead letters, which settle their offsets.

        Skipped when none is in flight (librdkafka's count of records queued, in flight
        or with a report not yet served): the call releases the GIL, and on a busy
        process every release costs the thread that polls a wait of up to the
        interpreter's switch interval (5 ms) to get it back.
        """
        if len(self._producer):
            self._producer.poll(0)

    @property
    def in_flight(self) -> int:
        """Dead letters whose delivery report has not run yet."""
        return len(self._producer)

    def flush(self, timeout: float) -> int:
        """Wait (bounded) for every dead letter's acknowledgement; return how many are
        still unacknowledged."""
        return self._producer.flush(timeout)

    def release(self) -> None:
        """Let the producer go as the run ends, with its threads and connections.

        Kept, it outlived the run for as long as the service object: connected, and
        reconnecting to a cluster that went away. Dead letters it still holds were
        never acknowledged: their offsets stay uncommitted, and are read again.
        """
        self._log.flush(last=True)
        self._producer.purge(in_queue=True, in_flight=True, blocking=False)
        del self._producer

    def failed(self, error: KafkaError) -> None:
        """A write failed: the DLQ is unwritable until a write is acknowledged."""
        self._failures.inc()
        if error.fatal():
            self._broken = True
        if self.writable:
            log.error(
                "cannot write to the dead-letter topic; pausing every partition, holding "
                "commits and backing off",
                extra={**self._names, "error": error.str()},
            )
        self.writable = False
        self.last_error = error.str()

    def maintain(self, lanes: Iterable[PartitionLane], now: float) -> bool:
        """Re-send failed dead letters on backoff; return whether the DLQ is writable.

        Writability is what the assigned lanes hold, not the last report: a failed dead
        letter of a partition since revoked no longer counts (its new owner redelivers
        it), and a later success elsewhere does not excuse one still failed.
        """
        self._log.flush()
        if self._broken:
            self._replace_producer()
        failed = [(lane, p) for lane in lanes for p in lane.failed_dead_letters()]
        if failed:
            self.writable = False
            if now >= self._next_retry:
                for lane, pending in failed:
                    lane.republish(pending)
                self._next_retry = now + self._backoff
                self._backoff = min(self._backoff * 2, self._backoff_max)
        elif not self.writable:
            log.info("dead-letter topic is writable again", extra=self._names)
            self.writable = True
            self._backoff = FIRST_BACKOFF
            self._next_retry = 0.0
        return self.writable

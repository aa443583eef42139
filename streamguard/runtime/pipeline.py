"""The per-message pipeline a lane runs: decode, drift check, handler, dead letter.

One ``ServicePipeline`` is shared by all lanes of a service. It holds what is fixed for
the service's life (the decoder, the handler invoker, the DLQ producer) and folds each
batch's counts into the metrics.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from confluent_kafka import KafkaError, KafkaException, Producer

from streamguard.deadletter import REASONS, Failure, Reason, dead_letter_headers
from streamguard.errors import HandlerAbandoned, SchemaDrift
from streamguard.headers import Record
from streamguard.observe.metrics import ServiceMetrics
from streamguard.runtime.context import MessageContext
from streamguard.schema.drift import DriftDetector

if TYPE_CHECKING:
    from streamguard.runtime.service import ConsumerService

log = logging.getLogger("streamguard.runtime")


class ServicePipeline:
    """Everything a lane calls, bound to one running service."""

    def __init__(
        self,
        service: ConsumerService,
        dlq_producer: Producer,
        metrics: ServiceMetrics,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        cls = type(service)
        self.topic = cls.topic
        self.retry = cls.retry
        self.transient = tuple(cls.transient)
        self.dead_letter_topic = service.dead_letter_topic_name
        self.group_id = cls.group_id
        self.service_name = service.name
        self.include_error_text = cls.include_error_text
        self._subject = cls.contract.__subject__
        self._version = cls.contract.__version__
        self._service = service
        self._dlq = dlq_producer
        self._loop = loop
        codec = service.wire_codec
        self.decode: Callable[[bytes | None], Any] = codec.decoder(cls.contract)
        self._drift = DriftDetector(cls.contract)
        self._drift_dead_letters = cls.drift == "dead_letter"
        # Reading a record's headers costs ~0.5 µs per header (2.4 µs for the five a
        # guarded producer stamps, more than half a validation), so "count" checks the
        # first message of each batch and every drift_sample-th after it: every message
        # while a partition keeps up, a sample while it is behind.
        self.drift_sample = 1 if self._drift_dead_letters else cls.options.drift_sample
        self.metrics = metrics
        metrics.start_series(self.topic, REASONS)
        self._handled = metrics.messages.labels(self.topic, "handled")
        self._dead_lettered = metrics.messages.labels(self.topic, "dead_lettered")
        self._retries = metrics.retries.labels(self.topic)
        self._dlq_failures = metrics.dead_letter_failures.labels(self.topic)
        self._lock = threading.Lock()
        self.abandon = threading.Event()  # set when shutdown stops waiting for handlers
        self.dlq_writable = True
        self.dlq_last_error = ""
        self.dlq_in_flight = 0  # dead letters produced and not yet reported on
        self.invoke = self._invoker(service.handle)
        self._tombstone = (
            self._invoker(service.handle_tombstone) if service.handles_tombstones else None
        )

    def _invoker(self, fn: Callable[..., Any]) -> Callable[..., None]:
        """Sync handlers are called directly on the worker; async ones run on the loop.

        An async handler runs on the service's event-loop thread and the worker waits
        for it, which keeps per-partition order; handlers of different partitions
        interleave on the loop while they await.
        """
        if not inspect.iscoroutinefunction(fn):
            return fn
        loop = self._loop
        assert loop is not None, "async handler without an event loop"

        abandon = self.abandon

        def run_async(*args: Any) -> None:
            future = asyncio.run_coroutine_threadsafe(fn(*args), loop)
            while True:
                try:
                    future.result(timeout=0.2)
                    return
                except concurrent.futures.TimeoutError:
                    if abandon.is_set():  # shutdown gave up on it: cancel, stay uncommitted
                        future.cancel()
                        raise HandlerAbandoned from None

        return run_async

    def invoke_tombstone(self, ctx: MessageContext) -> bool:
        if self._tombstone is None:
            return False
        self._tombstone(ctx)
        return True

    def inspect_drift(self, msg: Record, value: bytes | None) -> SchemaDrift | None:
        headers = msg.headers()
        kinds = self._drift.inspect(headers, value)
        if not kinds:
            return None
        self._service.report_drift(headers, kinds)
        return SchemaDrift(kinds, self._subject) if self._drift_dead_letters else None

    def serve_dead_letter_reports(self) -> None:
        """Run delivery callbacks of dead letters, which settle their offsets.

        Skipped when none is in flight: the call releases the GIL, and on a busy
        process every release costs the poll thread a wait of up to the interpreter's
        switch interval (5 ms) to get it back.
        """
        if self.dlq_in_flight:
            self._dlq.poll(0)

    def flush_dead_letters(self, timeout: float) -> None:
        """Wait (bounded) for every dead letter's acknowledgement, settling its offset."""
        self._dlq.flush(timeout)

    def can_process(self) -> bool:
        return self.dlq_writable

    def record_batch(self, handled: int, durations: list[float], retries: int) -> None:
        if handled:
            self._handled.inc(handled)
        if durations:
            self.metrics.handler_seconds.observe_many(self.topic, durations)
        if retries:
            self._retries.inc(retries)

    def record_dead_letter(self, reason: Reason) -> None:
        self._dead_lettered.inc()
        self.metrics.dead_letters.labels(self.topic, reason).inc()

    def dead_letters_recovered(self) -> None:
        """No assigned partition holds a failed dead letter any more (the poller says)."""
        if not self.dlq_writable:
            log.info("dead-letter topic is writable again", extra={"dlq": self.dead_letter_topic})
        self.dlq_writable = True

    def dead_letter_failed(self, error: KafkaError | str) -> None:
        text = error if isinstance(error, str) else error.str()
        self._dlq_failures.inc()
        if self.dlq_writable:
            log.error(
                "cannot write to the dead-letter topic; holding commits and backing off",
                extra={"dlq": self.dead_letter_topic, "error": text},
            )
        self.dlq_writable = False
        self.dlq_last_error = text

    def publish_dead_letter(
        self, msg: Record, failure: Failure, done: Callable[[KafkaError | None], None]
    ) -> None:
        """Send the original record, byte for byte, with the ``sg-dlq-*`` context."""
        kind, ts = msg.timestamp()
        headers = dead_letter_headers(
            original_headers=msg.headers(),
            topic=msg.topic(),
            partition=msg.partition(),
            offset=msg.offset(),
            timestamp_ms=ts if kind != 0 else None,
            failure=failure,
            group_id=self.group_id,
            service=self.service_name,
            expected_subject=self._subject,
            expected_version=self._version,
            include_error_text=self.include_error_text,
        )
        log.warning(
            "dead-lettering message",
            extra={
                "topic": msg.topic(),
                "partition": msg.partition(),
                "offset": msg.offset(),
                "reason": failure.reason,
                "error_class": failure.error_class,
                "attempts": failure.attempts,
            },
        )

        def delivered(err: KafkaError | None, _msg: Record) -> None:
            with self._lock:
                self.dlq_in_flight -= 1
            done(err)

        while True:
            try:
                with self._lock:
                    self.dlq_in_flight += 1
                self._dlq.produce(
                    self.dead_letter_topic,
                    msg.value(),
                    key=msg.key(),
                    headers=cast(list[tuple[str, str | bytes | None]], headers),
                    on_delivery=delivered,
                )
                return
            except BufferError:
                with self._lock:
                    self.dlq_in_flight -= 1
                self._dlq.poll(0.05)  # queue full: serve reports to make room, never drop
            except KafkaException as exc:
                with self._lock:
                    self.dlq_in_flight -= 1
                # Refused before sending (e.g. larger than message.max.bytes): the DLQ
                # cannot take it as configured. Report a failure; it stays uncommitted.
                done(exc.args[0])
                return
            except Exception as exc:  # a bad header or argument: still never drop it
                with self._lock:
                    self.dlq_in_flight -= 1
                done(KafkaError(KafkaError._INVALID_ARG, f"{type(exc).__name__}: {exc}"))
                return

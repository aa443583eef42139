"""The per-message steps a lane runs: decode, drift check, handler, dead letter.

One ``Pipeline`` serves all lanes of a service. It is built from the service's frozen
``ServiceSpec`` and holds what is fixed for the service's life (the decoder, the
handler invokers, the dead-letter publisher), folds each batch's counts into the
metrics, and reports schema drift. The lane decides the order and the retries; this
module decides what happens to one message.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

from confluent_kafka import KafkaError

from streamguard import headers as h
from streamguard.deadletter import REASONS, Failure
from streamguard.errors import SchemaDrift
from streamguard.headers import Record
from streamguard.observe.logs import frames
from streamguard.observe.metrics import ServiceMetrics
from streamguard.runtime.breaker import Breaker
from streamguard.runtime.context import MessageContext
from streamguard.runtime.deadletters import DeadLetterSink, DeliveryReport
from streamguard.runtime.drift import DriftCheck
from streamguard.runtime.outcomes import RetryLog, RetryState, judge
from streamguard.runtime.spec import ServiceSpec, check_returned

log = logging.getLogger("streamguard.runtime")


class Pipeline:
    """Everything a lane calls, bound to one running service; safe across threads."""

    def __init__(
        self,
        spec: ServiceSpec,
        publisher: DeadLetterSink,
        metrics: ServiceMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self.topic = spec.topic
        self.retry = spec.retry
        self.transient = spec.transient
        self.publisher = publisher
        # The sink's own method, not a wrapper: one Python frame less per dead letter.
        self.publish_dead_letter: Callable[[Record, Failure, DeliveryReport], None] = (
            publisher.publish
        )
        self.resend_dead_letter = publisher.resend
        self.decode: Callable[[bytes | None], Any] = spec.codec.decoder(spec.contract)
        # A registry codec's request for a schema id it has not seen (which blocks), or
        # None: an event loop's lanes make it in a thread before they decode.
        self.unfetched: Callable[[bytes | None], Callable[[], object] | None] | None = getattr(
            spec.codec, "unfetched", None
        )
        self._drift_dead_letters = spec.drift == "dead_letter"
        self._drift = DriftCheck(
            spec.contract,
            metrics,
            dead_letter=self._drift_dead_letters,
            codec=spec.codec,
            topic=spec.topic,
            service=spec.name,
        )
        self._subject = spec.contract.__subject__
        # Whose lines: a process may run several services. Only rare lines use it.
        self._names = spec.names()
        # A drift check of a record without the contract's fingerprint parses its value
        # for unknown fields (a validation's cost), so "count" checks the first message
        # of each batch that decodes and every drift_sample-th after it: every message
        # while a partition keeps up, a sample while it is behind.
        self.drift_sample = 1 if self._drift_dead_letters else spec.options.drift_sample
        self.metrics = metrics
        metrics.start_series(self.topic, REASONS)
        self._handled = metrics.messages.labels(self.topic, "handled")
        self._dead_lettered = metrics.messages.labels(self.topic, "dead_lettered")
        self._retries = metrics.retries.labels(self.topic)
        self._by_reason = {r: metrics.dead_letters.labels(self.topic, r) for r in REASONS}
        # Called on worker threads, for sync handlers under partition ordering; every
        # other service runs its handlers on the event loop (see eventloop).
        self.invoke: Callable[[Any, MessageContext], Any] = spec.handle
        self._tombstone = spec.handle_tombstone
        self.handles_tombstones = spec.handle_tombstone is not None
        self._on_dead_letter = spec.on_dead_letter
        # Stops the service with an error run() raises (the runner sets it to the
        # scheduler's ``fail``); by default the error is raised where it happened.
        self.fail: Callable[[BaseException], None] = _reraise
        # The run's stop request (the runner sets it to the scheduler's): once set, a
        # lane's retry runs only within a clean stop's finish (see the lanes' judge).
        self.stopping = threading.Event()
        # A success's age is real seconds, meaningless on the test kit's virtual clock:
        # a handled record then looked older than the failures before it on that clock.
        self.breaker = Breaker(
            spec.breaker,
            metrics,
            spec.topic,
            clock,
            service=spec.name,
            ages=clock is time.monotonic,
        )
        self._retry_log = RetryLog(log, service=spec.name, topic=spec.topic)

    def invoke_tombstone(self, ctx: MessageContext) -> object:
        """Run the tombstone handler; lanes call it only when ``handles_tombstones``
        (without one, a tombstone is decoded, and dead-lettered as undecodable)."""
        assert self._tombstone is not None
        return self._tombstone(ctx)

    def returned(self, result: object, tombstone: bool) -> None:
        """A handler (``tombstone``: the tombstone handler) returned ``result``, not
        None: a ``TypeError`` if it is work handed back unrun (see ``check_returned``)."""
        which = "handle_tombstone" if tombstone else "handle"
        check_returned(result, f"{self.spec.name}.{which}")

    def inspect_drift(self, msg: Record, value: bytes | None) -> SchemaDrift | None:
        """Report drift; return it as an error when the policy dead-letters drift."""
        return self._drift.check(h.read(msg), value)

    def judge(
        self,
        exc: Exception,
        attempt: int,
        retry: RetryState | None,
        now: float,
        message: Hashable,
        by_handler: bool,
        runs_until: float | None = None,
        began: float | None = None,
    ) -> Failure | RetryState:
        """The verdict on a failed attempt under this service's policies (see outcomes);
        ``by_handler``: ``exc`` came out of the user's handler, not out of decoding. A
        retry is logged (rate-limited): its metric alone left a recovered failure
        invisible in the logs; a record parked with its attempt given back is logged as
        waiting, not as a retry (see ``RetryLog``). ``runs_until``: the latest ``due``
        (on ``now``'s clock) at which the lane still retries, -inf for a closed lane
        (a revoke or stop), a clean stop's finish on the event loop; past it the line
        says the retry is dropped, as it is (the record stays uncommitted). ``began``:
        when the failed call started, on ``time.perf_counter`` (see outcomes.judge)."""
        verdict = judge(
            exc,
            attempt,
            retry,
            self.retry,
            self.transient,
            now,
            self.breaker,
            message,
            by_handler=by_handler,
            began=began,
            names=self._names,
        )
        if isinstance(verdict, RetryState):
            # One waiting for a dependency has no due time a stop's finish waits for.
            due = verdict.due if verdict.waits_for is None else math.inf
            dropped = runs_until is not None and due > runs_until
            self._retry_log(message, attempt, exc, verdict, now, self.retry.attempts, dropped)
            if not dropped:  # counted here, with the line: a dropped retry never runs
                self._retries.inc()
        return verdict

    def can_process(self) -> bool:
        """False while the DLQ is unwritable or the breaker holds: no lane starts work."""
        return self.publisher.writable and self.breaker.accepting()

    def dead_letter_failed(self, error: KafkaError) -> None:
        self.publisher.failed(error)

    def record_batch(self, handled: int, durations: list[float]) -> None:
        if handled:
            self._handled.inc(handled)
        if durations:
            self.metrics.handler_seconds.observe_many(self.topic, durations)

    def dead_lettered(self, msg: Record, failure: Failure) -> None:
        """The broker acknowledged a dead letter: count it, then run the user's hook.

        The hook runs on the thread that serves delivery reports (usually the one
        polling): it must be short. Its exceptions are logged and never change the
        message's outcome, which is already final; one that is not an ``Exception``
        also stops the service (``fail``).
        """
        self._dead_lettered.inc()
        self._by_reason[failure.reason].inc()
        if self._on_dead_letter is not None:
            try:
                self._on_dead_letter(MessageContext(msg, failure.attempts), failure)
            except BaseException as exc:
                # The hook is the user's code, and its error's text may quote the record
                # (a KeyError of a field value): its class and frames, never that text,
                # as a handler's error is logged.
                log.error(
                    "on_dead_letter hook failed",
                    extra={
                        **self._names,
                        "partition": msg.partition(),
                        "offset": msg.offset(),
                        "error_class": type(exc).__name__,
                        "traceback": frames(exc),
                    },
                )
                if not isinstance(exc, Exception):
                    # SystemExit, KeyboardInterrupt: the service stops, as on a handler's.
                    # Recorded, not raised: raised out of a delivery report, it cut the
                    # stop's flush short, and with it the final commit and on_stop.
                    self.fail(exc)


def _reraise(error: BaseException) -> None:
    raise error

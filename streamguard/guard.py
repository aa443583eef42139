"""What a failed message means: the decision every runtime makes the same way.

A message that fails is either dead-lettered at once (it cannot be read, breaks its
contract, drifted under the ``dead_letter`` drift policy, or its handler failed
permanently), retried (a transient failure with budget left), or dead-lettered because
its retries ran out. ``ConsumerService`` and the guarded Faust agent both ask these
functions, so the ``Failure`` behind a dead letter (reason, error class and text,
attempts, first failure time), and so its ``sg-dlq-*`` headers, are the same whichever
runtime wrote it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from streamguard import headers as h
from streamguard.contracts import Contract
from streamguard.deadletter import Failure
from streamguard.errors import ContractViolation, DecodeError, RetriesExhausted, SchemaDrift
from streamguard.observe.metrics import ServiceMetrics
from streamguard.policy import RetryPolicy, classify
from streamguard.schema.drift import DriftDetector, FirstSeen, producer_of

log = logging.getLogger("streamguard.guard")


@dataclass(frozen=True, slots=True)
class RetryState:
    """A message failed transiently: which attempt failed, and when the first one did."""

    attempt: int
    first_failure_ms: int
    first_failure_mono: float


def immediate_failure(
    exc: Exception,
    attempt: int,
    transient: tuple[type[BaseException], ...],
    retry: RetryState | None = None,
) -> Failure | None:
    """The ``Failure`` to dead-letter at once, or None if ``exc`` is transient.

    Decode, contract and drift errors carry their own reason and count as one
    attempt (the input will never change); a permanent handler failure keeps the
    attempt number and the time of the first failure, if an earlier attempt failed.
    """
    if isinstance(exc, DecodeError):
        return Failure(exc.reason, exc)  # type: ignore[arg-type]  # oversize or decode_error
    if isinstance(exc, ContractViolation):
        return Failure("contract_violation", exc)
    if isinstance(exc, SchemaDrift):
        return Failure("schema_drift", exc)
    if classify(exc, transient) == "transient":
        return None
    if retry is None:
        return Failure("permanent_error", exc, attempt)
    return Failure("permanent_error", exc, attempt, retry.first_failure_ms)


def next_retry(
    exc: Exception, attempt: int, policy: RetryPolicy, retry: RetryState | None
) -> tuple[float, RetryState] | Failure:
    """After transient failure ``attempt``: (delay, state) to try again, or the
    ``retries_exhausted`` failure when the policy's attempts or budget are spent."""
    now_mono = time.monotonic()
    first_ms = retry.first_failure_ms if retry else int(time.time() * 1000)
    first_mono = retry.first_failure_mono if retry else now_mono
    elapsed_ms = (now_mono - first_mono) * 1000.0
    delay = policy.next_delay(attempt, elapsed_ms)
    if delay is None:
        error = RetriesExhausted(attempt, int(elapsed_ms), exc)
        error.__cause__ = exc
        return Failure("retries_exhausted", error, attempt, first_ms)
    return delay, RetryState(attempt, first_ms, first_mono)


class DriftReporter:
    """Checks a message's writer schema against the contract; counts and logs drift.

    Every drift is counted in ``streamguard_schema_drift_total``; the first occurrence
    per (producer, kind) is logged. Under the ``dead_letter`` drift policy a drifted
    message comes back as the ``SchemaDrift`` to dead-letter it with.
    """

    def __init__(self, contract: type[Contract], metrics: ServiceMetrics, dead_letter: bool):
        self._detector = DriftDetector(contract)
        self._subject = contract.__subject__
        self._version = contract.__version__
        self._metrics = metrics
        self._dead_letter = dead_letter
        self._seen = FirstSeen()

    def check(self, headers: h.Headers | None, value: bytes | None) -> SchemaDrift | None:
        kinds = self._detector.inspect(headers, value)
        if not kinds:
            return None
        producer = producer_of(headers)
        for kind in kinds:
            self._metrics.schema_drift.labels(self._subject, kind).inc()
            if self._seen(producer, kind):
                log.warning(
                    "schema drift",
                    extra={
                        "subject": self._subject,
                        "kind": kind,
                        "producer": producer,
                        "writer_version": h.last(headers, h.VERSION),
                        "reader_version": self._version,
                    },
                )
        return SchemaDrift(kinds, self._subject) if self._dead_letter else None

"""The dead-letter envelope: what a DLQ record carries, and how it is read back.

A dead-lettered record keeps the original key, value and headers byte for byte and adds
``sg-dlq-*`` headers saying where it came from and exactly why it was rejected. Values
are UTF-8 text with numbers in decimal, as Kafka Connect writes its DLQ context headers.
The record is keyed like the original, so the producer's partitioner keeps per-key
order in the DLQ whatever its partition count.
"""

from __future__ import annotations

import functools
import json
import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from streamguard import headers as h
from streamguard.errors import ContractViolation, ErrorDetail, RetriesExhausted, StreamguardError

Reason = Literal[
    "oversize",
    "decode_error",
    "contract_violation",
    "permanent_error",
    "retries_exhausted",
    "schema_drift",
]
REASONS: tuple[Reason, ...] = get_args(Reason)

# Error texts from handlers are free-form and may quote data; cap what goes on the wire.
MAX_ERROR_MESSAGE = 1000


def _text(value: object) -> bytes:
    return str(value).encode("utf-8")


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a message is being dead-lettered, and what was tried.

    Handed to ``ConsumerService.on_dead_letter`` once the DLQ record is acknowledged.

    Attributes:
        reason: one of ``REASONS`` (``decode_error``, ``permanent_error``, ...).
        error: the exception that decided it; ``RetriesExhausted`` wraps the last one.
        attempts: handler calls made (1 when it was never retried).
        first_failure_ms: epoch ms of the first failure of this message.
    """

    reason: Reason
    error: BaseException
    attempts: int = 1
    first_failure_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    @property
    def error_class(self) -> str:
        """The qualified class name of the error that decided it (the last one, after retries)."""
        err = self.error.last if isinstance(self.error, RetriesExhausted) else self.error
        return f"{type(err).__module__}.{type(err).__qualname__}"

    @property
    def errors(self) -> list[ErrorDetail]:
        """The value-free pydantic error details, for a contract violation; else empty."""
        return self.error.errors if isinstance(self.error, ContractViolation) else []


def dead_letter_headers(
    *,
    original_headers: Sequence[tuple[str, bytes | None]] | None,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    failure: Failure,
    group_id: str,
    service: str,
    expected_subject: str,
    expected_version: int,
    include_error_text: bool = False,
    host: str | None = None,
) -> list[tuple[str, bytes | None]]:
    """The original headers unchanged, followed by the ``sg-dlq-*`` context headers.

    Any ``sg-dlq-*`` header already present (a record dead-lettered before, then
    replayed) is dropped first, so the context always describes the latest failure.

    Args:
        include_error_text: keep the text of any exception. By default only
            streamguard's own errors keep their text: decode and contract errors are
            value-free by construction, and ``PermanentError``/``TransientError`` texts
            are written by the handler's author for operators. Other exceptions (a
            ``KeyError`` quoting a customer id, say) are reduced to their class name.
    """
    kept = [(k, v) for k, v in (original_headers or []) if not k.startswith(h.DLQ_PREFIX)]
    message = error_text(failure.error, include_error_text)
    errors = [{"loc": e["loc"], "type": e["type"], "msg": e["msg"]} for e in failure.errors]
    added: list[tuple[str, bytes | None]] = [
        (h.DLQ_ORIGINAL_TOPIC, _text(topic)),
        (h.DLQ_ORIGINAL_PARTITION, _text(partition)),
        (h.DLQ_ORIGINAL_OFFSET, _text(offset)),
        (h.DLQ_ORIGINAL_TIMESTAMP, _text(timestamp_ms if timestamp_ms is not None else -1)),
        (h.DLQ_CONSUMER_GROUP, _text(group_id)),
        (h.DLQ_SERVICE, _text(service)),
        (h.DLQ_HOST, _text(host or _hostname())),
        (h.DLQ_REASON, _text(failure.reason)),
        (h.DLQ_ERROR_CLASS, _text(failure.error_class)),
        (h.DLQ_ERROR_MESSAGE, _text(message[:MAX_ERROR_MESSAGE])),
        (h.DLQ_ERRORS, json.dumps(errors, separators=(",", ":")).encode()),
        (h.DLQ_EXPECTED_SUBJECT, _text(expected_subject)),
        (h.DLQ_EXPECTED_VERSION, _text(expected_version)),
        (h.DLQ_ATTEMPTS, _text(failure.attempts)),
        (h.DLQ_FIRST_FAILURE_MS, _text(failure.first_failure_ms)),
        (h.DLQ_DEAD_LETTERED_MS, _text(int(time.time() * 1000))),
    ]
    return kept + added


@functools.cache
def _hostname() -> str:
    # Looked up once: a system call per dead letter was a tenth of a flood's cost.
    return socket.gethostname()


def headers_for_record(
    record: Any,
    failure: Failure,
    *,
    group_id: str,
    service: str,
    contract: Any,
    include_error_text: bool,
) -> list[tuple[str, bytes | None]]:
    """``dead_letter_headers`` for a consumed record (a confluent-kafka ``Message``, or
    anything with its accessors): what every runtime of ours writes for a dead letter."""
    kind, ts = record.timestamp()
    return dead_letter_headers(
        original_headers=record.headers(),
        topic=record.topic(),
        partition=record.partition(),
        offset=record.offset(),
        timestamp_ms=ts if kind != 0 else None,
        failure=failure,
        group_id=group_id,
        service=service,
        expected_subject=contract.__subject__,
        expected_version=contract.__version__,
        include_error_text=include_error_text,
    )


def log_dead_letter(logger: logging.Logger, record: Any, failure: Failure) -> None:
    """The ``dead-lettering message`` line the runbook reads (no value, no key)."""
    logger.warning(
        "dead-lettering message",
        extra={
            "topic": record.topic(),
            "partition": record.partition(),
            "offset": record.offset(),
            "reason": failure.reason,
            "error_class": failure.error_class,
            "attempts": failure.attempts,
        },
    )


def error_text(error: BaseException, include_any: bool = False) -> str:
    """An exception's text if it is safe to publish, else its class and a note."""
    if include_any or (
        isinstance(error, StreamguardError) and not isinstance(error, RetriesExhausted)
    ):
        return str(error)
    if isinstance(error, RetriesExhausted):
        return f"{error} ({error_text(error.last, include_any)})"
    return f"{type(error).__name__} (text redacted: not a streamguard error)"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A DLQ record read back: its own coordinates, the original record, and why."""

    dlq_topic: str
    dlq_partition: int
    dlq_offset: int
    key: bytes | None
    value: bytes | None
    original_headers: list[tuple[str, bytes | None]]
    context: dict[str, str]

    @classmethod
    def from_record(
        cls,
        *,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes | None]] | None,
    ) -> DeadLetter:
        """Split a consumed DLQ record into the original record and its ``sg-dlq-*`` context."""
        original: list[tuple[str, bytes | None]] = []
        context: dict[str, str] = {}
        for k, v in headers or []:
            if k.startswith(h.DLQ_PREFIX):
                context[k] = "" if v is None else v.decode("utf-8", "replace")
            else:
                original.append((k, v))
        return cls(topic, partition, offset, key, value, original, context)

    @property
    def reason(self) -> str:
        """Why it was dead-lettered (``decode_error``, ``retries_exhausted``, ...)."""
        return self.context.get(h.DLQ_REASON, "unknown")

    @property
    def original_topic(self) -> str | None:
        """The topic the record was consumed from, as its header says (untrusted input)."""
        return self.context.get(h.DLQ_ORIGINAL_TOPIC)

    @property
    def error_class(self) -> str:
        """The qualified class name of the error that decided it (the last one, after retries)."""
        return self.context.get(h.DLQ_ERROR_CLASS, "")

    @property
    def errors(self) -> list[dict[str, Any]]:
        """The value-free ``{loc, type, msg}`` details of a contract violation, if any."""
        try:
            parsed = json.loads(self.context.get(h.DLQ_ERRORS, "[]"))
        except ValueError:
            return []
        return parsed if isinstance(parsed, list) else []

    def int_context(self, name: str, default: int = -1) -> int:
        """A numeric ``sg-dlq-*`` header (offset, attempts, time), else ``default``."""
        try:
            return int(self.context.get(name, ""))
        except ValueError:
            return default

"""Header names on the wire, in one place so producer, runtime and tools agree, and the
one way to read a consumed record's headers (``read``).

Header values are UTF-8 text and numbers are decimal, as Kafka Connect writes them,
so that kcat and other tools show them readably.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from operator import methodcaller
from typing import Any

from streamguard.observe.untrusted import LogBudget

SUBJECT = "sg-subject"
VERSION = "sg-version"
FINGERPRINT = "sg-fingerprint"
PRODUCER = "sg-producer"
CONTENT_TYPE = "content-type"

DLQ_PREFIX = "sg-dlq-"
DLQ_ORIGINAL_TOPIC = "sg-dlq-original-topic"
DLQ_ORIGINAL_PARTITION = "sg-dlq-original-partition"
DLQ_ORIGINAL_OFFSET = "sg-dlq-original-offset"
DLQ_ORIGINAL_TIMESTAMP = "sg-dlq-original-timestamp"
DLQ_CONSUMER_GROUP = "sg-dlq-consumer-group"
DLQ_SERVICE = "sg-dlq-service"
DLQ_HOST = "sg-dlq-host"
DLQ_REASON = "sg-dlq-reason"
DLQ_ERROR_CLASS = "sg-dlq-error-class"
DLQ_ERROR_MESSAGE = "sg-dlq-error-message"
DLQ_ERRORS = "sg-dlq-errors"
DLQ_EXPECTED_SUBJECT = "sg-dlq-expected-subject"
DLQ_EXPECTED_VERSION = "sg-dlq-expected-version"
DLQ_ATTEMPTS = "sg-dlq-attempts"
DLQ_FIRST_FAILURE_MS = "sg-dlq-first-failure-ms"
DLQ_DEAD_LETTERED_MS = "sg-dlq-dead-lettered-ms"

REPLAY_COUNT = "sg-replay-count"
REPLAY_AT = "sg-replay-at"

Headers = Sequence[tuple[str, bytes | None]]

# A consumed record (confluent_kafka.Message). Its stubs type every accessor as
# Optional, though on a record without error() topic, partition and offset are always
# set; the runtime's hot path uses this alias rather than a check per accessor.
Record = Any


log = logging.getLogger("streamguard")

# Through methodcaller, a C-level call: CPython checks its result, so a headers() that
# returns a value with an error set raises here. Called directly, the interpreter's
# specialised call skips that check, and the error is raised at a later line.
_headers = methodcaller("headers")
# Any producer may write such a key on every record, and a line per record would let it
# flood the logs (2,016 lines in 1.3 s for 4,000 records): at most LogBudget's rate of
# lines, each saying how many were skipped before it.
_unreadable_lines = LogBudget()


def read(record: Record) -> list[tuple[str, bytes | None]]:
    """A record's headers; empty when the client cannot read them.

    confluent-kafka (2.16 and before) cannot read a header key that is not UTF-8, which
    any producer may write: its first ``headers()`` call fails, and every later call
    returns a list holding a NULL key that crashes the process when touched. So every
    read of a record's headers comes here: on that failure the broken list is replaced
    with an empty one (``set_headers``) and the record goes on without its headers
    (handled if valid, dead-lettered if not), instead of a crash on every restart.
    """
    try:
        return _headers(record) or []
    except (SystemError, UnicodeDecodeError) as exc:
        replace = getattr(record, "set_headers", None)
        if replace is not None:
            replace([])
        if _unreadable_lines.allow():
            log.warning(
                "record headers unreadable (a header key that is not UTF-8); going on without them",
                extra={
                    # No service: this function is not told whose record it reads (a
                    # parameter would be passed on every record's read, for this line).
                    "topic": record.topic(),
                    "partition": record.partition(),
                    "offset": record.offset(),
                    "error": type(exc.__cause__ or exc).__name__,
                    "not_logged": _unreadable_lines.take_suppressed(),
                },
            )
        return []


def last(headers: Headers | None, name: str) -> str | None:
    """The last value of header ``name`` as text, or None (Kafka allows repeats)."""
    if not headers:
        return None
    found: bytes | None = None
    for key, value in headers:
        if key == name:
            found = value
    return None if found is None else found.decode("utf-8", "replace")

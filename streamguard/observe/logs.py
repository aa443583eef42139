"""Structured logs: one JSON object per line, with the fields a runbook greps for.

The runtime logs through the standard ``logging`` module with context in ``extra``;
this formatter renders that context as JSON keys. Secrets never reach it: the runtime
only logs redacted configuration.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any


def frames(error: BaseException) -> str:
    """``error``'s traceback frames without its text: for a line about an error the
    user's code raised, whose text may quote a record's field (its class goes beside)."""
    return "".join(traceback.format_tb(error.__traceback__))


# Attributes every LogRecord has; anything else was passed in ``extra``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def _context(record: logging.LogRecord) -> Iterator[tuple[str, Any]]:
    """The attributes passed in ``extra``, in the order they were set."""
    for key, value in vars(record).items():
        if key in _STANDARD or key.startswith("_"):
            continue
        # mode's formatter (which Faust's worker puts on the root logger before the
        # handlers passed to it) sets ``extra`` on each record it formats to the text of
        # its ``data``: nearly always empty, which is no context.
        if key == "extra" and value == "":
            continue
        yield key, value


class LineBudget:
    """At most ``per_second`` lines of one kind a second, in bursts of up to as many
    (None: every line), and the count of lines skipped since the last one written
    (``not_logged``), which that line or a ``flush`` of the subclass reports.

    For lines a failure can repeat thousands of times a second (a poison flood, an
    outage): every such event is counted in the metrics, and a line each would flood
    the logs and cost more CPU than the event. Subclasses ``_take()`` a token and log
    when they get one.

    Args:
        per_second: lines a second, in bursts of up to as many; None logs every one.
        service, topic: whose lines (``_names``), named in each: a process may run
            several services (or Faust agents), some on one topic.
    """

    def __init__(
        self,
        logger: logging.Logger,
        per_second: float | None = 10.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        service: str,
        topic: str,
    ) -> None:
        if per_second is not None and per_second <= 0:
            raise ValueError(f"per_second must be positive or None, got {per_second}")
        self._names = {"service": service, "topic": topic}
        self._log = logger
        self._rate = per_second
        self._burst = max(1.0, per_second or 1.0)
        self._tokens = self._burst
        self._clock = clock
        self._last = clock()
        self._lock = threading.Lock()
        self.not_logged = 0  # skipped since the last line written

    def _spend(self) -> bool:
        """Take a line from the token bucket (lock held); False when none is left."""
        if self._rate is None:
            return True
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _take(self) -> int | None:
        """Spend a token for a line: None when the rate is spent (the line is counted
        as skipped), else the count of lines skipped before it, now reported by it."""
        with self._lock:
            if not self._spend():
                self.not_logged += 1
                return None
            skipped, self.not_logged = self.not_logged, 0
        return skipped

    def _take_skipped(self, last: bool = False) -> int:
        """The count of skipped lines, reset, when there are some and the rate allows a
        line to report them (or it is the ``last`` line: no later one would); else 0."""
        with self._lock:
            if not self.not_logged or not (last or self._spend()):
                return 0
            skipped, self.not_logged = self.not_logged, 0
        return skipped


def _timestamp(record: logging.LogRecord) -> str:
    """The record's time in UTC to the millisecond, ISO 8601 (``...T12:00:00.123Z``)."""
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z"
    )


# The keys a JSON line sets itself, whatever the record's ``extra``.
_OWN = frozenset({"ts", "level", "logger", "event", "exception", "stack"})


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON line: time, level, logger, message, then context."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in _context(record):
            # The line's own keys stay its own: an ``extra`` "level" or "event" made an
            # error line read as info, or took the place of its message.
            entry[f"context.{key}" if key in _OWN else key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:  # log(..., stack_info=True): where it was called from
            entry["stack"] = self.formatStack(record.stack_info)
        try:
            return json.dumps(entry, default=str, allow_nan=False)
        except (TypeError, ValueError):
            # A value JSON cannot hold (a dict with tuple keys, a cycle, NaN) raised here,
            # and logging printed a traceback to stderr instead of the line: its text.
            # default=str here too: a value _writable keeps may need it (a datetime).
            return json.dumps({key: _writable(value) for key, value in entry.items()}, default=str)


def _writable(value: Any) -> Any:
    """``value`` if JSON can hold it as it is (or by ``str`` of its parts), else its text."""
    try:
        json.dumps(value, default=str, allow_nan=False)
    except (TypeError, ValueError):
        return str(value)
    return value


class TextFormatter(logging.Formatter):
    """Human-readable lines, from the same UTC time as the JSON lines' ``ts``, with the
    context appended as key=value pairs."""

    def format(self, record: logging.LogRecord) -> str:
        context = " ".join(f"{k}={v}" for k, v in _context(record))
        base = f"{_timestamp(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        text = f"{base} {context}" if context else base
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return text


# pydantic's serializer warnings quote the value they could not serialize as expected
# ("... [field_name='n', input_value='SECRET', input_type=str])", and before
# pydantic-core 2.28 "... but got `str` with value `'SECRET'` - serialized value ..."):
# a record's field, when a handler dumps a model built with ``model_construct``. Each
# entry is one line (a ``str``'s repr escapes newlines), so greedy within it.
_WARNING_VALUES = (
    re.compile(r"(input_value=).*(, input_type=)"),
    re.compile(r"(with value `).*(` - serialized value may not be as expected)"),
)
# A value the patterns missed (an object whose repr spans lines): the rest is cut.
_VALUE_LEFT = re.compile(r"input_value=(?!\*\*\*, )|with value `(?!\*\*\*`)")


class _WarningValuesHidden(logging.Filter):
    """Drops the input values from pydantic's warnings on the ``py.warnings`` logger,
    keeping the category, the field's name and the types."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "input_value=" in message or "with value `" in message:
            for pattern in _WARNING_VALUES:
                message = pattern.sub(r"\1***\2", message)
            left = _VALUE_LEFT.search(message)
            if left is not None:
                message = message[: left.end()] + "*** (the rest is not shown)"
            record.msg, record.args = message, None
        return True


_WARNINGS_HIDDEN = _WarningValuesHidden()


def configure_logging(fmt: str = "json", level: str | int = "INFO") -> None:
    """Send streamguard's logs to stderr in ``fmt`` ("json" or "text")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if isinstance(level, int) else level.upper())
    # Python's warnings (pydantic's about a contract, a library's deprecation) went to
    # stderr as raw text, lines a JSON pipeline cannot parse (jq stopped on them): they
    # come through the ``py.warnings`` logger, in the chosen format, instead.
    # Their values are masked first: logs never carry a record's field values.
    logging.getLogger("py.warnings").addFilter(_WARNINGS_HIDDEN)  # once: addFilter dedups
    logging.captureWarnings(True)

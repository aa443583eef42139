"""Showing values that anyone can write (record headers) in logs, safely and sparingly.

A producer the service does not control chooses its ``sg-producer`` and ``sg-version``
headers. Logged as they come, a hostile one could forge log fields (a newline or
``key=value`` in text logs), write megabytes per line, or, with a new name on every
record, turn each record into a warning. So such values are shown reduced to a short
run of safe characters, and the lines that show them are rate-limited.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

# Names of services and versions: letters, digits and a few separators.
_UNSAFE = re.compile(r"[^A-Za-z0-9._:/@+-]")
MAX_SHOWN = 64


def cut(text: str, limit: int) -> str:
    """``text``, or its first ``limit`` characters and ``...``."""
    return text if len(text) <= limit else text[:limit] + "..."


def shown(value: str | None, limit: int = MAX_SHOWN) -> str | None:
    """``value`` with every unsafe character replaced by ``?``, cut to ``limit``."""
    if value is None:
        return None
    return cut(_UNSAFE.sub("?", value[: limit + 1]), limit)


def printable(text: str) -> str:
    """``text`` with every character that is not printable written as its escape.

    For command output that shows text from records as it is (the names of undeclared
    fields in error locations, say): a newline, a line separator or a terminal escape
    there would forge an output line or drive the operator's terminal. Printable text,
    accents and all, is unchanged.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def escaped(data: bytes, limit: int | None = None) -> str:
    r"""``data`` as UTF-8 text in which a backslash always starts an escape, cut to
    ``limit`` characters of the data.

    A byte that is no UTF-8 is written ``\xff``, a character that is not printable as
    its escape, and a backslash of the data as ``\\``: left alone, a ``\xff`` typed in a
    value would read the same as the byte 0xff.
    """
    text = data.decode("utf-8", "surrogateescape")
    longer = limit is not None and len(text) > limit
    # Cut before escaping, so the cut never splits an escape.
    return "".join(_escape(c) for c in text[:limit]) + ("..." if longer else "")


def quoted(text: str | None) -> str:
    """``escaped`` text in quotes, as a line shows it: ``repr`` would double its
    backslashes. A quote is escaped, so that a key cannot end early and forge what follows.
    """
    return "None" if text is None else "'" + text.replace("'", "\\'") + "'"


def _escape(c: str) -> str:
    if c == "\\":
        return "\\\\"
    if "\udc80" <= c <= "\udcff":  # surrogateescape's stand-in for an undecodable byte
        return f"\\x{ord(c) - 0xDC00:02x}"
    if c.isprintable():
        return c
    if "\x80" <= c <= "\xff":  # unicode_escape's \x85 would read as the byte 0x85
        return f"\\u{ord(c):04x}"
    return c.encode("unicode_escape").decode()


class LogBudget:
    """Allows ``rate`` log lines per ``per`` seconds; counts what it suppressed."""

    def __init__(
        self, rate: int = 10, per: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate, self._per, self._clock = rate, per, clock
        self._window_start = clock()
        self._used = 0
        self.suppressed = 0
        self._reported = 0  # of ``suppressed``, already told by ``take_suppressed``
        self._lock = threading.Lock()

    def allow(self) -> bool:
        """True if a line may be written now (and spend it)."""
        with self._lock:
            now = self._clock()
            if now - self._window_start >= self._per:
                self._window_start, self._used = now, 0
            if self._used < self._rate:
                self._used += 1
                return True
            self.suppressed += 1
            return False

    def take_suppressed(self) -> int:
        """Lines suppressed since the last call: for the next line written to report."""
        with self._lock:
            taken, self._reported = self.suppressed - self._reported, self.suppressed
            return taken

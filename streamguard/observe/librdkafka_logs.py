"""librdkafka's own log lines in a command's output: each kind once, then counted.

A client waiting for a cluster that is down logs a connect failure at every reconnect
backoff, some 200 lines in a command's 10 s wait, which buried the command's own error.
Given as a client's ``logger`` setting, ``RepeatsCollapsed`` logs the first line of each
kind (facility and text, without the timing librdkafka appends) and counts the rest;
``flush()`` logs the counts. Every kind is shown once, so an authentication or TLS
error is never hidden behind the connect failures.

With a Python logger, librdkafka hands its lines over only when the client is served
(``poll``, ``consume``, ``flush``): an ``AdminClient``, which nothing else serves, must
be polled after each request, or its lines are lost.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

LOGGER = logging.getLogger("streamguard.librdkafka")

# The parts of one failure's text that change from one repeat to the next: the thread
# tag in front, the time since the state change and librdkafka's own repeat count behind.
_THREAD = re.compile(r"^\[thrd:[^\]]*\]: ")
_TIMING = re.compile(r" \(after \d+ms in state .*\)$")
# After pass_through, the least time between two lines of one kind: librdkafka retries a
# broker that is down about 20 times a second (its bootstrap connection, whatever
# reconnect.backoff.max.ms says), an error line each.
PASS_THROUGH_EVERY = 10.0
_MAX_KINDS = 1024  # kinds remembered; a text that varies must not grow them for good


# librdkafka's CONFWARN quotes the value it warns about ("Configuration property
# `sasl.mechanism` set to `...` but ..."): a secret read with --kafka-config-env and
# given to the wrong key would be logged. The key and the advice are what to act on.
_SET_TO = re.compile(r"(set to )`[^`]*`")


class _ConfigValuesHidden(logging.Filter):
    """Drops the value from librdkafka's configuration warnings (``CONFWARN``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("CONFWARN") and "set to `" in message:
            record.msg, record.args = _SET_TO.sub(r"\1`***`", message), None
        return True


LOGGER.addFilter(_ConfigValuesHidden())


class RepeatsCollapsed:
    """A client's ``logger``: the first line of each kind to ``logger``, repeats counted."""

    def __init__(
        self, logger: logging.Logger = LOGGER, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._log = logger
        self._clock = clock
        self._lock = threading.Lock()  # a client is served on the thread that polls it
        # kind -> [level, repeats, when its last line was written]
        self._kinds: dict[tuple[str, str], list[Any]] = {}
        self._collapsing = True

    def log(self, level: int, msg: str, *args: object) -> None:
        """confluent-kafka's call: ``log(level, "%s [%s] %s", facility, client, text)``."""
        if level < logging.INFO and not self._collapsing:
            self._log.log(level, msg, *args)  # once connected, what -X debug asked for
            return
        facility, text = (str(args[0]), str(args[2])) if len(args) == 3 else ("", msg % args)
        kind = (facility, _TIMING.sub("", _THREAD.sub("", text)))
        now = self._clock()
        evicted: list[tuple[tuple[str, str], list[Any]]] = []
        with self._lock:
            seen = self._kinds.get(kind)
            if seen is not None and (self._collapsing or now - seen[2] < PASS_THROUGH_EVERY):
                seen[0] = max(seen[0], level)
                seen[1] += 1
                return
            if len(self._kinds) >= _MAX_KINDS:  # texts that vary: forget the quiet ones
                kept = {k: v for k, v in self._kinds.items() if v[1]}
                if len(kept) >= _MAX_KINDS // 2:
                    # Varying texts that each repeat: keeping them grew the kinds for
                    # good, each new one copying them all. Their counts are logged now.
                    evicted, kept = list(kept.items()), {}
                self._kinds = kept
            self._kinds[kind] = [level, 0, now]
        for (evicted_facility, evicted_text), (evicted_level, repeats, _) in evicted:
            self._report(evicted_facility, evicted_text, evicted_level, repeats)
        if seen is not None and seen[1]:
            self._report(facility, kind[1], max(seen[0], level), seen[1])
        self._log.log(level, msg, *args)

    def _report(self, facility: str, text: str, level: int, repeats: int) -> None:
        self._log.log(level, "%s: %d more line(s) like this not shown: %s", facility, repeats, text)

    def flush(self) -> None:
        """Log how many lines of each kind were left out since the last flush.

        A kind stays known: its later repeats are counted for the next flush, not shown.
        """
        with self._lock:
            counts = [(kind, seen[0], seen[1]) for kind, seen in self._kinds.items() if seen[1]]
            for seen in self._kinds.values():
                seen[1] = 0
        for (facility, text), level, repeats in counts:
            self._report(facility, text, level, repeats)

    def __enter__(self) -> RepeatsCollapsed:
        return self

    def __exit__(self, *exc: object) -> None:
        """The counts, when the clients it served are done (or failed)."""
        self.flush()

    def pass_through(self) -> None:
        """Log the counts, then later lines as they come, each kind at most once every
        ``PASS_THROUGH_EVERY`` seconds, with the count of those left out since (debug
        lines, which ``debug`` asked for, each).

        For a client whose start-up waits are collapsed but whose later lines are worth
        seeing: a count logged only at the end would leave an outage's course untold,
        and a line each would be some 20 a second for the whole outage.
        """
        self.flush()
        self._collapsing = False

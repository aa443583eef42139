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

LOGGER = logging.getLogger("streamguard.librdkafka")

# The parts of one failure's text that change from one repeat to the next: the thread
# tag in front, the time since the state change and librdkafka's own repeat count behind.
_THREAD = re.compile(r"^\[thrd:[^\]]*\]: ")
_TIMING = re.compile(r" \(after \d+ms in state .*\)$")


class RepeatsCollapsed:
    """A client's ``logger``: the first line of each kind to ``logger``, repeats counted."""

    def __init__(self, logger: logging.Logger = LOGGER) -> None:
        self._log = logger
        self._lock = threading.Lock()  # a client is served on the thread that polls it
        self._kinds: dict[tuple[str, str], list[int]] = {}  # kind -> [level, repeats]
        self._collapsing = True

    def log(self, level: int, msg: str, *args: object) -> None:
        """confluent-kafka's call: ``log(level, "%s [%s] %s", facility, client, text)``."""
        if not self._collapsing:
            self._log.log(level, msg, *args)
            return
        facility, text = (str(args[0]), str(args[2])) if len(args) == 3 else ("", msg % args)
        kind = (facility, _TIMING.sub("", _THREAD.sub("", text)))
        with self._lock:
            seen = self._kinds.get(kind)
            if seen is not None:
                seen[0] = max(seen[0], level)
                seen[1] += 1
                return
            self._kinds[kind] = [level, 0]
        self._log.log(level, msg, *args)

    def flush(self) -> None:
        """Log how many lines of each kind were left out since the last flush.

        A kind stays known: its later repeats are counted for the next flush, not shown.
        """
        with self._lock:
            counts = [(kind, seen[0], seen[1]) for kind, seen in self._kinds.items() if seen[1]]
            for seen in self._kinds.values():
                seen[1] = 0
        for (facility, text), level, repeats in counts:
            self._log.log(
                level, "%s: %d more line(s) like this not shown: %s", facility, repeats, text
            )

    def __enter__(self) -> RepeatsCollapsed:
        return self

    def __exit__(self, *exc: object) -> None:
        """The counts, when the clients it served are done (or failed)."""
        self.flush()

    def pass_through(self) -> None:
        """Log the counts, then every later line as it comes.

        For a client whose start-up waits are collapsed but whose later lines are
        worth seeing each: during an outage they come one per reconnect backoff, and a
        count logged only at the end would leave the outage's course untold.
        """
        self.flush()
        self._collapsing = False

"""Everything a service says about its input: log lines, metrics, DLQ headers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from streamguard.observe.logs import JsonFormatter


class LogCapture(logging.Handler):
    """Every record under the ``streamguard`` loggers, formatted as the service would
    write it (JSON, with every extra field), from any thread."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        with self._guard:
            self.lines.append(line)

    def text(self) -> str:
        with self._guard:
            return "\n".join(self.lines)


@contextmanager
def captured_logs() -> Iterator[LogCapture]:
    """Capture the ``streamguard`` loggers at DEBUG for the duration."""
    capture = LogCapture()
    logger = logging.getLogger("streamguard")
    level = logger.level
    logger.addHandler(capture)
    logger.setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        logger.removeHandler(capture)
        logger.setLevel(level)

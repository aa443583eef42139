"""SIGTERM handled as Ctrl-C, for the commands that run until they are stopped.

SIGTERM is how a container, a CI job or ``timeout`` asks a process to stop. Left to its
default it kills the process at once; raised as ``KeyboardInterrupt`` it takes the path
Ctrl-C takes, which stops the local broker or registry cleanly and lets a DLQ replay
settle and commit what it sent.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


@contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """Within the block, SIGTERM raises ``KeyboardInterrupt`` in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; its caller owns the signals
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

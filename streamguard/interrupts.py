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
        # Unless the block chose another handler itself (ignore_sigterm_until_exit).
        if signal.getsignal(signal.SIGTERM) is stop:
            signal.signal(signal.SIGTERM, previous)


def ignore_sigterm_until_exit() -> None:
    """Ignore SIGTERM from here to the process's exit.

    For a command run as the program whose outcome is final and said: what is left is
    tearing down clients and Python's own exit (some 0.2 s with streamguard imported),
    and a SIGTERM then must not turn its exit status into 143 (killed).
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

"""A one-line progress bar on stderr, drawn only when stderr is a terminal.

Logs and CI output stay clean: when stderr is a file or a pipe nothing is drawn, and
the final summary on stdout says everything the bar showed.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 30
REDRAW_EVERY = 0.1  # seconds; redrawing per record would cost more than the replay


class Progress:
    """Draws ``[####    ] done/total  text`` in place; a no-op off a terminal."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = max(total, 0)
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self._drawn = 0.0

    def update(self, done: int, text: str, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._drawn < REDRAW_EVERY:
            return
        self._drawn = now
        share = min(done / self.total, 1.0) if self.total else 1.0
        filled = int(share * WIDTH)
        bar = "#" * filled + " " * (WIDTH - filled)
        self.stream.write(f"\r[{bar}] {done}/{self.total}  {text}\x1b[K")
        self.stream.flush()

    def clear(self) -> None:
        """Erase the bar, so that a line printed next starts at the left edge; the
        next ``update`` draws it again below that line."""
        if self.enabled and self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = 0.0

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()

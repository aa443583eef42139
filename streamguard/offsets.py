"""The one offset a consumer may commit: the end of its longest prefix of final outcomes.

A partition's records join a ``FinalPrefix`` in offset order. A record is final when it
joins, or is held open (a dead letter or a replayed record awaiting the broker's
acknowledgement, a handler still running) until it is released. The commit position
is the first offset still open, or the end of everything that joined: never past a
record without a final outcome, so nothing is lost after a crash. The runtime's
partition lanes and the DLQ replay both commit through it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class FinalPrefix(Generic[T]):
    """Offsets of one partition; not thread-safe: its owner's lock guards it.

    Each open offset carries an item of the owner's (what it needs to finish it).
    """

    __slots__ = ("_end", "_open")

    def __init__(self) -> None:
        self._open: dict[int, T] = {}  # insertion order is offset order
        self._end: int | None = None

    def advance(self, end: int) -> None:
        """Every record before ``end`` has joined; those not held are final."""
        if self._end is None or end > self._end:
            self._end = end

    def hold(self, offset: int, item: T) -> None:
        """Keep ``offset`` open until ``release``: nothing from it on may be committed."""
        self._open[offset] = item
        if self._end is None or offset >= self._end:  # advance(), inline: once per dead letter
            self._end = offset + 1

    def release(self, offset: int) -> T | None:
        """``offset`` reached its final outcome; returns its item if it was open."""
        return self._open.pop(offset, None)

    @property
    def end(self) -> int | None:
        """The end of every record that joined, open ones included (None: none did)."""
        return self._end

    @property
    def position(self) -> int | None:
        """The offset to commit (the next one to read), or None if nothing joined."""
        for first in self._open:
            return first
        return self._end

    def __len__(self) -> int:
        """How many offsets are open."""
        return len(self._open)

    def open_items(self) -> Iterator[T]:
        """The items of the open offsets, in offset order."""
        return iter(list(self._open.values()))

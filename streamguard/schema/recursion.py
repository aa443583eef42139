"""The guard a compatibility check keeps against recursive schemas, and its memo.

A recursive model meeting itself again (the same writer and reader pair on the current
path) is taken as compatible there: it is judged where it started. That alone ends the
recursion but not in reasonable time: each branch of a union is compared with each
branch of the other, and every pair met under another path was compared again, so a
recursive union of three models took minutes. Each pair's findings are therefore kept,
their paths relative to the pair, and reused (re-rooted) wherever the pair is met again.

Findings computed while an enclosing pair was taken as compatible *rest* on it, and are
reused only while that pair is still being compared, or once it has ended: if it was
compatible, the assumption held and they rest on what it rested on instead. If it broke,
it is reported where it started, and a memo resting on it is kept only if it breaks
anyway; one that is compatible is dropped and compared again, as the true pair might
break it. That keeps every reused verdict sound, since taking a pair as compatible only
drops findings or lets more union branches match (every rule is monotone in it): a
comparison that breaks under the assumption breaks without it too. What reuse leaves out
are repeats of a pair's findings at the deeper paths where the recursion meets it again.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamguard.schema.jsonschema_compat import Finding, Path


@dataclass
class _Frame:
    key: Hashable
    rests_on: set[Hashable]


@dataclass
class _Memo:
    found: list[Finding]  # paths relative to the pair
    rests_on: set[Hashable]
    keep: Any  # holds objects whose id() is part of the key, so that no id is reused


class RecursionGuard:
    """Pairs being compared and the findings of pairs compared, for one whole check
    (shared by every comparer it derives)."""

    def __init__(self) -> None:
        self._stack: list[_Frame] = []
        self._active: set[Hashable] = set()
        self._memo: dict[Hashable, _Memo] = {}
        # How each pair ended: whether it was compatible, and what it rested on.
        self._ended: dict[Hashable, tuple[bool, set[Hashable]]] = {}

    def enter(self, key: Hashable, path: Path) -> list[Finding] | None:
        """The findings of ``key`` at ``path`` if it is known (``[]`` while it is being
        compared), else None: then it is being compared now, until :meth:`leave`."""
        if key in self._active:
            self._rest_on({key})
            return []
        memo = self._memo.get(key)
        rests_on = None if memo is None else self._still_valid(memo)
        if memo is not None and rests_on is not None:
            self._rest_on(rests_on)
            return [replace(f, path=(*path, *f.path)) for f in memo.found]
        self._active.add(key)
        self._stack.append(_Frame(key, set()))
        return None

    def leave(self, key: Hashable, path: Path, found: list[Finding], keep: Any = None) -> None:
        """``key``, compared at ``path``, gave ``found``; ``keep`` is held with them."""
        frame = self._stack.pop()
        self._active.discard(key)
        rests_on = frame.rests_on - {key}
        self._rest_on(rests_on)
        self._ended[key] = (all(f.safe for f in found), rests_on)
        relative = [replace(f, path=f.path[len(path) :]) for f in found]
        self._memo[key] = _Memo(relative, rests_on, keep)

    def abandon(self, key: Hashable) -> None:
        """``key`` was not compared to the end (the schema cannot be read)."""
        self._stack.pop()
        self._active.discard(key)

    def _rest_on(self, keys: set[Hashable]) -> None:
        if self._stack:
            self._stack[-1].rests_on |= keys

    def _still_valid(self, memo: _Memo) -> set[Hashable] | None:
        """The pairs being compared that ``memo`` rests on, or None if it must be compared
        again: it is compatible and rests, maybe through ended pairs, on one that broke."""
        held, active = self._resolve(memo.rests_on)
        if not held and all(f.safe for f in memo.found):
            return None
        memo.rests_on = active
        return active

    def _resolve(self, keys: set[Hashable]) -> tuple[bool, set[Hashable]]:
        """Whether every ended pair that ``keys`` lead to was compatible, and the pairs
        being compared they lead to; an ended pair is shortened to its answer."""
        held, active = True, set()
        for key in keys:
            if key in self._active:
                active.add(key)
                continue
            ok, rested_on = self._ended[key]
            self._ended[key] = (ok, set())  # a cycle (never expected) ends here
            inner_held, inner = self._resolve(rested_on)
            self._ended[key] = (ok and inner_held, inner)
            held = held and ok and inner_held
            active |= inner
        return held, active

"""Compatibility modes: which directions a change must keep, against which versions.

The modes are Confluent Schema Registry's. ``BACKWARD``: consumers on the new version
read data written with the previous one (upgrade consumers first). ``FORWARD``: the
previous version's consumers read new data (upgrade producers first). ``FULL``: both.
The ``_TRANSITIVE`` forms check against every stored version, not just the latest,
because a topic retains messages of all of them. ``NONE`` checks nothing.
"""

from __future__ import annotations

from streamguard.config import MODES
from streamguard.errors import ConfigurationError
from streamguard.schema.changes import Change, Direction


def parse_mode(text: str) -> str:
    """The canonical (upper-case) name of a mode, or a ConfigurationError naming the choices."""
    mode = text.strip().upper()
    if mode not in MODES:
        raise ConfigurationError(
            f"unknown compatibility mode {text!r}; use one of {', '.join(MODES)}"
        )
    return mode


def directions(mode: str) -> frozenset[Direction]:
    """The reading directions a mode requires to keep working."""
    base = mode.removesuffix("_TRANSITIVE")
    if base == "BACKWARD":
        return frozenset({"BACKWARD"})
    if base == "FORWARD":
        return frozenset({"FORWARD"})
    if base == "FULL":
        return frozenset({"BACKWARD", "FORWARD"})
    return frozenset()


def versions_to_check(mode: str, stored: list[int], current: int) -> list[int]:
    """The stored versions a contract at version ``current`` is compared with."""
    earlier = sorted(v for v in stored if v < current)
    if not directions(mode):
        return []
    return earlier if mode.endswith("_TRANSITIVE") else earlier[-1:]


def breaking(changes: list[Change], mode: str) -> list[Change]:
    """The changes that break a direction the mode requires."""
    wanted = directions(mode)
    return [c for c in changes if c.breaking_in & wanted]

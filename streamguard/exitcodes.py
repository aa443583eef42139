"""Exit codes of every ``streamguard`` command, so scripts and CI can tell them apart."""

from __future__ import annotations

OK = 0
"""Success; for a check, nothing breaking was found."""
FAILED = 1
"""A check found a breaking change, or an operation failed (a replay send, a cluster
that could not be reached, a service a handler crashed)."""
USAGE = 2
"""Bad usage or configuration (an option, a setting, a file that cannot be read); for
the schema and registry commands, a registry that could not be reached, since no
verdict was made."""
INTERRUPTED = 130
"""Stopped by Ctrl-C (128 + SIGINT), as shells report it."""

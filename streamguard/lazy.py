"""Names a package exports but imports only when first read.

A consumer service never uses the embedded schema registry (an HTTP server, fastavro),
the embedded broker (ctypes, subprocess) or the schema package's compatibility checks
and store: loaded with their packages, each cost every service's process memory and
start-up for nothing (docs/benchmark-notes.md, *Imports*, has the figures).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    namespace: dict[str, Any], names: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module's ``__getattr__`` and ``__dir__`` for ``names`` (name -> module).

    The first read imports the name's module and keeps the name in ``namespace``, so
    later reads never come back here. Assign them under ``if not TYPE_CHECKING``, with
    the real imports under ``if TYPE_CHECKING``: a type checker that sees a module
    ``__getattr__`` accepts any name, misspelt ones included.
    """

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *names})

    return __getattr__, __dir__

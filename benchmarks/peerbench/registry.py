"""The contender registry: one row of the table is one registered function.

A contender runs in its own process (so the CPU and RSS it reports are its own), which
imports only the module that registers it. It consumes ``run.count`` records of
``run.topic`` as ``run.group`` and calls ``run.probe.handle(event)`` with each validated
event; the probe does the timing and ends the process after the last.

A feature still in development adds its row with a few lines in any module imported by
``peerbench.contenders``::

    @contender(
        "sg-keyed", 'streamguard, async handler, ordering = "key"',
        modes=("throughput", "io"), keeps_order=True,
        needs=("streamguard:ConsumerService.ordering",),
    )
    def sg_keyed(run: Run) -> None:
        ...

``needs`` lists modules (or ``module:attribute.path``) the row requires; while one is missing
the row is listed as skipped with the reason, so the registry can hold rows ahead of
their features.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from peerbench.probe import Probe

Mode = Literal["throughput", "io", "latency"]
Data = Literal["json", "avro", "avro-registry", "invalid", "io", "latency"]


@dataclass(frozen=True)
class Run:
    """What a contender gets in its process."""

    bootstrap: str
    topic: str
    group: str
    count: int
    probe: Probe
    work_s: float = 0.0  # the I/O wait of each handler call (io rows)
    concurrency: int = 1
    # latency rows: the longest a fetch may wait for data (see docs/benchmarks.md)
    fetch_wait_ms: int = 0
    # the embedded schema registry's URL, while a row reads Confluent-framed records
    registry_url: str = ""


@dataclass(frozen=True)
class Contender:
    name: str
    label: str
    run: Callable[[Run], None]
    data: Data = "json"
    modes: tuple[Mode, ...] = ("throughput",)
    baseline: str | None = None  # the row its ratio is read against
    keeps_order: bool | None = None  # io rows: what the framework promises for a key
    concurrency: int = 1
    needs: tuple[str, ...] = ()
    note: str = ""
    tags: tuple[str, ...] = field(default=())

    def missing(self) -> str | None:
        """The first requirement that is not importable, or None."""
        for need in self.needs:
            module, _, attribute = need.partition(":")
            try:
                loaded = import_quietly(module)
            except ImportError:
                return f"needs {module}"
            for part in attribute.split(".") if attribute else ():
                if not hasattr(loaded, part):
                    return f"needs {need}"
                loaded = getattr(loaded, part)
        return None


def import_quietly(name: str) -> ModuleType:
    """Import a framework's module without printing its import-time warnings.

    The confluent-kafka that the bench venv's quixstreams pins imports authlib's httpx
    shim, whose deprecation warning authlib forces on ("always", ahead of any filter of
    ours): recorded here and dropped, instead of appearing in every listing and run.
    """
    with warnings.catch_warnings(record=True):
        return importlib.import_module(name)


CONTENDERS: dict[str, Contender] = {}


def contender(
    name: str, label: str, **options: object
) -> Callable[[Callable[[Run], None]], Callable[[Run], None]]:
    """Register ``fn`` as the row ``name``; options are ``Contender`` fields."""

    def register(fn: Callable[[Run], None]) -> Callable[[Run], None]:
        if name in CONTENDERS:
            raise ValueError(f"contender {name!r} is registered twice")
        CONTENDERS[name] = Contender(name, label, fn, **options)  # type: ignore[arg-type]
        return fn

    return register

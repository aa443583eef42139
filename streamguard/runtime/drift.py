"""Schema drift at run time: detect it, count it, log it safely, and say whether the
message is to be dead-lettered for it. Shared by ``ConsumerService`` and the guarded
Faust agent, so both count and log drift alike.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

from prometheus_client import Counter

from streamguard import headers as h
from streamguard.contracts import Contract
from streamguard.errors import SchemaDrift
from streamguard.observe.metrics import ServiceMetrics
from streamguard.observe.untrusted import LogBudget, shown
from streamguard.schema.drift import KINDS, DriftDetector, FirstSeen, producer_of

if TYPE_CHECKING:
    from streamguard.registry.drift import FrameDrift, Line

log = logging.getLogger("streamguard.runtime")

# Under drift="count", one message in this many is checked while a partition is behind
# (every message while it keeps up): a check of a message without the contract's
# fingerprint parses its value for unknown fields, a validation's cost, and 1 in 256
# keeps that under 1% of a record's (1 in 32 cost 3.5% on events without headers).
DRIFT_SAMPLE = 256


class DriftCheck:
    """Checks a message's writer schema against the contract; counts and logs drift.

    Every drift is counted in ``streamguard_schema_drift_total``; the first occurrence
    per producer and kind is logged. Producer names and versions come from headers
    anyone can write: they are logged reduced to safe characters, and at most
    ``LogBudget``'s rate of such lines (a producer naming itself anew on every record
    must not log every record).

    Args:
        dead_letter: the ``dead_letter`` drift policy: a drifted message comes back as
            the ``SchemaDrift`` to dead-letter it with.
        log_budget: the rate of ``schema drift`` lines (``LogBudget()`` by default).
        codec, topic: the codec the consumer reads ``topic`` with; a ``RegistryCodec``
            has Confluent-framed records without ``sg-*`` headers judged by the schema
            id in their frame (see ``streamguard.registry.drift``).
        service: who consumes ``topic`` (a service's or agent's name): the drift lines
            name it and the topic, as a process may run several. Both are required: a
            line naming an empty service or topic would match no operator's filter.
    """

    def __init__(
        self,
        contract: type[Contract],
        metrics: ServiceMetrics,
        dead_letter: bool,
        log_budget: LogBudget | None = None,
        codec: object = None,
        *,
        topic: str,
        service: str,
    ):
        self._frames: FrameDrift | None = None
        # Loaded already when the codec is a RegistryCodec: no import for other services.
        registry = sys.modules.get("streamguard.registry.codec")
        if registry is not None and isinstance(codec, registry.RegistryCodec):
            from streamguard.registry.drift import FrameDrift

            self._frames = FrameDrift(codec, contract, topic, self._late, service=service)
        self._detector = DriftDetector(contract, self._frames)
        self._subject = contract.__subject__
        self._names = {"service": service, "topic": topic}
        self._version = contract.__version__
        # labels() costs about a microsecond (a lock and a tuple key); there are six
        # kinds and one subject, so each series is looked up once, here. That also
        # creates each at zero: a counter series that first appears with its first
        # increment is invisible to increase() for it, and the drift alert, which
        # looks at increase() over 15 minutes, missed a drift seen only once.
        counter = metrics.schema_drift
        self._series: dict[str, Counter] = {k: counter.labels(self._subject, k) for k in KINDS}
        self._dead_letter = dead_letter
        self._seen = FirstSeen()
        self._budget = log_budget or LogBudget()

    def _late(
        self,
        kinds: tuple[str, ...],
        count: int,
        schema_id: int,
        version: int | None,
        held: list[Line],
    ) -> None:
        """Count ``count`` framed records whose schema id was resolved after their check
        (called from the resolving thread; they were not dead-lettered for it), and write
        the lines held until the id's version was known."""
        self._count(kinds, None, None, count, (schema_id, version))
        for producer, kind in held:
            self._line(kind, producer, None, (schema_id, version))

    def check(self, headers: h.Headers | None, value: bytes | None) -> SchemaDrift | None:
        kinds = self._detector.inspect(headers, value)
        if not kinds:
            return None
        self._count(kinds, headers, value, 1)
        return SchemaDrift(kinds, self._subject) if self._dead_letter else None

    def _count(
        self,
        kinds: tuple[str, ...],
        headers: h.Headers | None,
        value: bytes | None,
        count: int,
        frame: tuple[int, int | None] | None = None,
    ) -> None:
        """``frame``: the schema id and subject version of a framed record judged by its
        id (see ``_frame``, asked only when a line is written)."""
        # Remembered and logged reduced: the header is any size a record may be, and
        # FirstSeen keeps 1,024 names (whole, a megabyte each, they held a gigabyte).
        producer = shown(producer_of(headers)) or "unknown"
        for kind in kinds:
            self._series[kind].inc(count)
            # Remembered only once its line is written: a pair first seen while the
            # budget was spent (by other producers' first lines) is logged later, not
            # never.
            if not self._seen.known(producer, kind) and self._budget.allow():
                self._seen(producer, kind)
                frame = frame or self._frame(headers, value)
                if frame is not None and frame[1] is None and self._hold(frame[0], producer, kind):
                    continue  # an id whose lookup is under way: its line waits for _late
                self._line(kind, producer, headers, frame)

    def _hold(self, schema_id: int, producer: str, kind: str) -> bool:
        return self._frames is not None and self._frames.hold(schema_id, (producer, kind))

    def _line(
        self,
        kind: str,
        producer: str,
        headers: h.Headers | None,
        frame: tuple[int, int | None] | None,
    ) -> None:
        if frame is None:
            schema_id, writer = None, shown(h.last(headers, h.VERSION), 16)
        else:  # the registry's version: the record has no sg-version header
            schema_id, writer = frame[0], None if frame[1] is None else str(frame[1])
        log.warning(
            "schema drift",
            extra={
                **self._names,
                "subject": self._subject,
                "kind": kind,
                "producer": producer,
                "writer_version": writer,
                "reader_version": self._version,
                "schema_id": schema_id,
            },
        )

    def _frame(
        self, headers: h.Headers | None, value: bytes | None
    ) -> tuple[int, int | None] | None:
        """The schema id and cached subject version of a record judged by its frame."""
        if self._frames is None:
            return None
        schema_id = self._detector.frame_id(headers, value)
        return None if schema_id is None else (schema_id, self._frames.version(schema_id))

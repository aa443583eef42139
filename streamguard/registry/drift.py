"""Schema drift of Confluent-framed records, told by the schema id in their frame.

A record from Confluent's serializers carries no ``sg-*`` headers, but its frame names
the registered schema that wrote it. :class:`FrameDrift` compares that id with the
contract's own id: the id the registry gives for the contract's schema (the text
``schema register --registry`` registers) under the subject the codec's naming strategy
gives for the topic. Another id registered under that subject is ``older_version`` or
``newer_version`` by the subject's version numbers; an id not registered under it is
``other_subject``.

The drift check may run on an event loop, so it never asks the registry itself: an id
not resolved yet is remembered with the number of records checked, and a background
thread asks the registry (the contract's id, then the subject's versions) and reports
those records' kinds once it has the answer. A registry that cannot be reached, or a
subject without the contract's schema, leaves them pending (bounded) and is asked again
at most once a minute. Resolved ids are cached for the service's life, with their
version in the subject (the ``schema drift`` line's ``writer_version``).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from streamguard.contracts import Contract
from streamguard.registry.client import call
from streamguard.schema.drift import NEWER_VERSION, OLDER_VERSION, OTHER_SUBJECT

if TYPE_CHECKING:
    from streamguard.registry.codec import RegistryCodec

log = logging.getLogger("streamguard.runtime")

RETRY_SECONDS = 60.0  # a failed lookup is asked again no sooner than this
MAX_PENDING_IDS = 1024  # ids are 4 bytes of input: a flood may name a new one each time
MAX_VERSIONS = 100  # the subject's latest versions looked at; older ids are other_subject
MAX_RESOLVED_IDS = 4096  # resolved ids kept; past it the cache starts again

# A drift line held until its id's version is known: (producer, kind).
Line = tuple[str, str]
# kinds, records checked before the id was resolved, the schema id, its subject version,
# the lines held for it
Report = Callable[[tuple[str, ...], int, int, int | None, list[Line]], None]


class FrameDrift:
    """Drift kinds of Confluent-framed values of ``contract`` on ``topic``.

    Args:
        codec: the service's ``RegistryCodec`` (its client and naming strategy).
        service: who consumes ``topic``: the ``schema drift lookup failed`` line names
            it and the topic, as a process may run several services on one topic.
        report: called from the background thread with the kinds of an id resolved
            late, the number of records checked before then, the id, its version in the
            subject (None: not one of the subject's), and the lines held for it.
    """

    def __init__(
        self,
        codec: RegistryCodec,
        contract: type[Contract],
        topic: str,
        report: Report,
        *,
        service: str,
    ) -> None:
        from streamguard.registry.codec import registry_schema

        self._client = codec.client
        self._url = codec._url
        self._subject = codec.subject_for(contract, topic)
        self._schema = registry_schema(contract)
        self._report = report
        self._names = {"service": service, "topic": topic}
        self._kinds: dict[int, tuple[str, ...]] = {}
        self._versions: dict[int, int] = {}  # resolved ids of the subject -> version
        self._pending: dict[int, int] = {}  # id -> records checked before it was resolved
        self._held: dict[int, list[Line]] = {}  # pending id -> its lines (see hold)
        self._lock = threading.Lock()
        self._busy = False
        self._next_try = 0.0

    def __call__(self, value: bytes) -> tuple[str, ...] | None:
        """The kinds for a framed value (``()``: the contract's own id), or None when its
        id is not resolved yet: the record is then reported once it is."""
        schema_id = int.from_bytes(value[1:5], "big")
        kinds = self._kinds.get(schema_id)  # the common case: one dict lookup
        if kinds is not None:
            return kinds
        with self._lock:
            kinds = self._kinds.get(schema_id)
            if kinds is not None:
                return kinds
            if schema_id in self._pending or len(self._pending) < MAX_PENDING_IDS:
                self._pending[schema_id] = self._pending.get(schema_id, 0) + 1
            if not self._busy and time.monotonic() >= self._next_try:
                self._busy = True
                threading.Thread(
                    target=self._resolve, name="streamguard-frame-drift", daemon=True
                ).start()
        return None

    def version(self, schema_id: int) -> int | None:
        """The subject's version of a resolved ``schema_id`` (None: not resolved yet, or
        not one of the subject's); from the cache only, never asking the registry."""
        return self._versions.get(schema_id)

    def hold(self, schema_id: int, line: Line) -> bool:
        """Keep a drift line of a pending ``schema_id`` to be given to ``report`` with its
        version once the lookup answers: written now, it said ``writer_version`` null,
        read as not one of the subject's. False if the id is not pending (resolved, or
        past ``MAX_PENDING_IDS``): the line is written now."""
        with self._lock:
            if schema_id not in self._pending:
                return False
            self._held.setdefault(schema_id, []).append(line)
            return True

    def _resolve(self) -> None:
        from confluent_kafka.schema_registry import Schema

        client, subject = self._client, self._subject
        try:
            own = call(self._url, lambda: client.lookup_schema(subject, Schema(*self._schema)))
            own_id, own_version = int(own.schema_id), int(own.version)
            versions: dict[int, int] = {}
            for version in call(self._url, lambda: client.get_versions(subject))[-MAX_VERSIONS:]:
                found = call(self._url, functools.partial(client.get_version, subject, version))
                versions[int(found.schema_id)] = int(version)
        except Exception as exc:  # unreachable, or the subject lacks the contract's schema
            with self._lock:
                self._busy = False
                self._next_try = time.monotonic() + RETRY_SECONDS
                # The held lines are written now, without a version, after the line
                # saying why: a registry that keeps refusing (the contract's schema not
                # registered) would hold them for good. The records stay pending.
                held, self._held = self._held, {}
            # The registry's code tells "register the contract's schema" (40401, 40403)
            # from an outage (None): the class alone is SchemaRegistryError for both kinds
            # of refusal. A number, never the message, which may quote the schema.
            code = getattr(exc, "error_code", None)
            log.warning(
                "schema drift lookup failed",
                extra={
                    **self._names,
                    "subject": subject,
                    "error": type(exc).__name__,
                    "error_code": code if isinstance(code, int) else None,
                },
            )
            for schema_id, lines in held.items():
                self._report((), 0, schema_id, None, lines)
            return
        with self._lock:
            pending, self._pending = self._pending, {}
            held, self._held = self._held, {}
            if len(self._kinds) + len(pending) > MAX_RESOLVED_IDS:
                self._kinds.clear()
                self._versions.clear()
            for schema_id in pending:
                self._kinds[schema_id] = _kind(schema_id, own_id, own_version, versions)
                if schema_id in versions:
                    self._versions[schema_id] = versions[schema_id]
            # The own id with its version: a JSON record framed with it may still be
            # unknown_fields, and its line names the version.
            self._kinds.setdefault(own_id, ())
            self._versions.setdefault(own_id, own_version)
            self._busy = False
        for schema_id, count in pending.items():
            lines = held.get(schema_id, [])
            if self._kinds[schema_id] or lines:
                kinds, version = self._kinds[schema_id], self._versions.get(schema_id)
                self._report(kinds, count, schema_id, version, lines)


def _kind(
    schema_id: int, own_id: int, own_version: int, versions: dict[int, int]
) -> tuple[str, ...]:
    if schema_id == own_id:
        return ()
    version = versions.get(schema_id)
    if version is None:
        return (OTHER_SUBJECT,)
    return (OLDER_VERSION,) if version < own_version else (NEWER_VERSION,)

"""Run-time schema drift: is this message written with the schema we expect?

The consumer runtime asks a :class:`DriftDetector` about every message, so the common
case (the headers carry exactly this contract's fingerprint) is one scan of the header
list comparing raw bytes against bytes computed once: no decoding, no allocation.
Only when the fingerprint differs, or the producer stamped no schema headers, does it
look further: which subject and version the producer claims, and whether the JSON value
has object keys the contract does not declare (at top level and inside nested models),
which is what a consumer silently drops under ``extra='ignore'``.

Kinds: ``newer_version``, ``older_version``, ``unknown_fingerprint`` (same subject and
version, other schema), ``unknown_fields``, ``no_schema_headers``, ``other_subject``.
The runtime counts every drift in ``streamguard_schema_drift_total{subject,kind}`` and
logs only the first occurrence per (producer, kind): :class:`FirstSeen` tells it which.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from pydantic import AliasChoices, AliasPath, BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema, from_json

from streamguard import headers as h
from streamguard.contracts import Contract
from streamguard.schema.jsonschema_doc import Document

Headers = h.Headers

NEWER_VERSION = "newer_version"
OLDER_VERSION = "older_version"
UNKNOWN_FINGERPRINT = "unknown_fingerprint"
UNKNOWN_FIELDS = "unknown_fields"
NO_SCHEMA_HEADERS = "no_schema_headers"
OTHER_SUBJECT = "other_subject"
# Every kind the detector reports: a service creates each series at zero before the
# first drift, so that increase() and the drift alert see that first one.
KINDS = (
    NEWER_VERSION,
    OLDER_VERSION,
    UNKNOWN_FINGERPRINT,
    UNKNOWN_FIELDS,
    NO_SCHEMA_HEADERS,
    OTHER_SUBJECT,
)

_SCHEMA_HEADERS = frozenset((h.SUBJECT, h.VERSION, h.FINGERPRINT))
_MAX_DEPTH = 32  # the codec already bounds nesting; this only stops a runaway walk
_READS = "x-sg-reads"  # a model's keys that its schema does not name: see _ReadKeys


def _first_key(path: AliasPath) -> str | None:
    return path.path[0] if path.path and isinstance(path.path[0], str) else None


def _other_keys(model: type[BaseModel]) -> dict[str, str | None]:
    """The top-level keys ``model`` reads besides its schema's property names, each
    mapped to the property of the field it fills (None where the key only leads to it).
    """
    config = model.model_config
    by_name = bool(config.get("validate_by_name") or config.get("populate_by_name"))
    keys: dict[str, str | None] = {}
    for name, info in model.model_fields.items():
        alias = info.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
        # The schema's name for the field, as pydantic picks it: the alias, or the first
        # choice that is a key, or the field name.
        prop = name
        for choice in choices:
            if isinstance(choice, str):
                prop = choice
                break
            if isinstance(choice, AliasPath) and len(choice.path) == 1:
                prop = _first_key(choice) or name
                break
        for choice in choices:
            if isinstance(choice, str):
                keys[choice] = prop
            elif isinstance(choice, AliasPath) and (key := _first_key(choice)) is not None:
                keys[key] = prop if len(choice.path) == 1 else None
        if by_name or alias is None:
            keys[name] = prop
    return {key: target for key, target in keys.items() if key != target}


class _ReadKeys(GenerateJsonSchema):
    """The validation schema, with the other keys each model reads under ``x-sg-reads``.

    A schema names one key per field, but a model also reads its field names under
    ``populate_by_name`` (``validate_by_name``) and every choice of an ``AliasChoices``:
    such keys are declared, not drift.
    """

    def model_schema(self, schema: core_schema.ModelSchema) -> JsonSchemaValue:
        out = super().model_schema(schema)
        reads = _other_keys(schema["cls"])
        if reads and "properties" in out:
            out[_READS] = reads
        return out


@dataclass
class _Shape:
    """Which object keys a (sub)schema declares, and the shapes of its children."""

    names: frozenset[str] | None = None  # None: any keys allowed (a dict, or no model)
    children: dict[str, _Shape] = field(default_factory=dict)
    items: _Shape | None = None
    values: _Shape | None = None


def _shape(doc: Document, schema: Any, memo: dict[int, _Shape], depth: int = 0) -> _Shape | None:
    resolved = doc.resolve(schema)
    if not isinstance(resolved, dict) or depth > _MAX_DEPTH:
        return None
    key = id(resolved)
    if key in memo:  # a recursive model: share the node
        return memo[key]
    shape = _Shape()
    memo[key] = shape
    any_key = False  # a branch is a map (or a free object): the union takes any key
    for branch in resolved.get("anyOf", []) + resolved.get("oneOf", []):
        target = doc.resolve(branch)
        if (
            isinstance(target, dict)
            and target.get("type") == "object"
            and "properties" not in target
        ):
            any_key = True
            continue
        sub = _shape(doc, branch, memo, depth + 1)
        if sub is not None:  # Optional[Model] and friends: the model's branch decides
            shape.names = sub.names if shape.names is None else shape.names | (sub.names or set())
            shape.children.update(sub.children)
            shape.items = shape.items or sub.items
            shape.values = shape.values or sub.values
    props = resolved.get("properties")
    if isinstance(props, dict):
        shape.names = frozenset(props) | (shape.names or frozenset())
        for name, sub_schema in props.items():
            sub = _shape(doc, sub_schema, memo, depth + 1)
            if sub is not None:
                shape.children[name] = sub
        reads = resolved.get(_READS)
        if isinstance(reads, dict):
            shape.names |= frozenset(reads)
            for key, prop in reads.items():
                if prop in shape.children:
                    shape.children[key] = shape.children[prop]
    if resolved.get("items") is not None:
        shape.items = _shape(doc, resolved["items"], memo, depth + 1)
    extra = resolved.get("additionalProperties")
    if isinstance(extra, dict):
        shape.values = _shape(doc, extra, memo, depth + 1)
    if any_key:  # its objects are not looked into, as a union's may match either branch
        shape.names, shape.values = None, None
        shape.children = {}
    if shape.names is None and not (shape.children or shape.items or shape.values):
        return None
    return shape


def _has_unknown(value: Any, shape: _Shape | None, depth: int = 0) -> bool:
    if shape is None or depth > _MAX_DEPTH:
        return False
    if isinstance(value, dict):
        names = shape.names
        if names is not None:
            # One set comparison in C for the keys, then only the children present.
            if not value.keys() <= names:
                return True
            for key, child in shape.children.items():
                if key in value and _has_unknown(value[key], child, depth + 1):
                    return True
        elif shape.values is not None:
            values = shape.values
            for sub in value.values():
                if _has_unknown(sub, values, depth + 1):
                    return True
    elif isinstance(value, list) and shape.items is not None:
        items = shape.items
        for sub in value:
            if _has_unknown(sub, items, depth + 1):
                return True
    return False


def _is_framed(value: bytes | None) -> TypeGuard[bytes]:
    """Confluent's framing: byte 00, then a 4-byte schema id."""
    return value is not None and len(value) >= 5 and value[0] == 0


class DriftDetector:
    """Tells, per message, how its writer's schema differs from a contract's."""

    __slots__ = ("_fingerprint", "_framed", "_json", "_shape", "_subject", "_version")

    def __init__(
        self,
        contract: type[Contract],
        framed: Callable[[bytes], tuple[str, ...] | None] | None = None,
    ) -> None:
        """``framed``: with a schema registry, the kinds of a Confluent-framed value
        without ``sg-*`` headers, told by its schema id (None: not known yet, nothing
        to count now); without one such a value is ``no_schema_headers``."""
        self._framed = framed
        self._fingerprint = contract.fingerprint().encode()
        self._subject = contract.__subject__.encode()
        self._version = contract.__version__
        self._json = contract.__wire_format__ == "json"
        schema = contract.model_json_schema(mode="validation", schema_generator=_ReadKeys)
        self._shape = _shape(Document(schema), schema, {})

    def inspect(self, headers: Headers | None, value: bytes | None) -> tuple[str, ...]:
        """Drift kinds for one message; ``()`` when the headers carry this fingerprint
        and this subject (or none).

        The hot path compares the last ``sg-fingerprint`` and ``sg-subject`` headers' raw
        bytes with the expected bytes and returns; everything else is the slow path. The
        subject counts too: contracts of one shape share a fingerprint (it leaves titles
        out), so a fingerprint alone passed another event type off as this one.
        """
        if headers:
            fingerprint = subject = False  # the last one of each seen, and ours
            for key, raw in reversed(headers):
                if key == h.FINGERPRINT and not fingerprint:
                    if raw != self._fingerprint:
                        break
                    if subject:
                        return ()
                    fingerprint = True
                elif key == h.SUBJECT and not subject:
                    if raw != self._subject:
                        break
                    if fingerprint:
                        return ()
                    subject = True
            else:
                if fingerprint:  # no subject header: the fingerprint decides
                    return ()
        return self._slow(headers, value)

    def _slow(self, headers: Headers | None, value: bytes | None) -> tuple[str, ...]:
        subject = version = fingerprint = None
        for key, raw in headers or ():
            if key == h.SUBJECT:
                subject = raw
            elif key == h.VERSION:
                version = raw
            elif key == h.FINGERPRINT:
                fingerprint = raw
        kinds: list[str] = []
        if subject is None and version is None and fingerprint is None:
            # Only records without schema headers get here, and only on a drift check.
            if self._framed is not None and _is_framed(value):
                kinds.extend(self._framed(value) or ())
            else:
                kinds.append(NO_SCHEMA_HEADERS)
        elif subject is not None and subject != self._subject:
            kinds.append(OTHER_SUBJECT)
        else:
            try:
                claimed = int(version) if version is not None else None
            except ValueError:
                claimed = None
            if claimed is not None and claimed > self._version:
                kinds.append(NEWER_VERSION)
            elif claimed is not None and claimed < self._version:
                kinds.append(OLDER_VERSION)
            elif fingerprint != self._fingerprint:
                kinds.append(UNKNOWN_FINGERPRINT)
        if self._json and self._unknown_fields(value):
            kinds.append(UNKNOWN_FIELDS)
        return tuple(kinds)

    def frame_id(self, headers: Headers | None, value: bytes | None) -> int | None:
        """The schema id in the frame of a value judged by it (a registry's framed drift,
        no ``sg-*`` schema headers), or None. For the drift line only: not per record."""
        if self._framed is None or not _is_framed(value):
            return None
        if any(key in _SCHEMA_HEADERS for key, _ in headers or ()):
            return None
        return int.from_bytes(value[1:5], "big")

    def _unknown_fields(self, value: bytes | None) -> bool:
        """Whether the JSON value has object keys the contract does not declare.

        ``json.loads`` is the reference parser. pydantic-core's ``from_json`` (the
        parser the codec uses) takes 1.5 µs for the peers' 390 B event against 4 µs,
        so it goes first and may only answer "no unknown keys": where it fails, or
        finds any, ``json.loads`` decides. On whatever both parse, the two agree on
        every object's keys (duplicate keys: the last wins in both), which
        tests/schema/test_drift.py checks against generated and tricky JSON.
        """
        if value and value[0] == 0:
            # Confluent framing (byte 00, a 4-byte schema id): Confluent's JSONSerializer
            # and a producer with a registry write the JSON after it, and a registry
            # service reads it there. Avro bytes after it fail the object test below.
            value = value[5:]
        if not value or self._shape is None or value.lstrip(b" \t\r\n")[:1] != b"{":
            return False  # not an object (the codec allows JSON whitespace before one)
        try:
            parsed = from_json(value, cache_strings="keys")
        except ValueError:
            pass  # json.loads decides
        else:
            if not _has_unknown(parsed, self._shape):
                return False
        try:
            data = json.loads(value)
        except ValueError:  # not JSON: the codec reports it, drift has nothing to say
            return False
        return _has_unknown(data, self._shape)


def producer_of(headers: Headers | None) -> str:
    """The ``sg-producer`` a message names, or ``"unknown"``."""
    return h.last(headers, h.PRODUCER) or "unknown"


class FirstSeen:
    """Says whether a (producer, kind) pair is new, remembering at most ``capacity`` pairs.

    The runtime logs a drift only the first time a producer shows it. Producer names
    come from message headers, which anyone can write, so the memory is bounded: the
    least recently seen pair is forgotten first (and would be logged again).
    """

    def __init__(self, capacity: int = 1024) -> None:
        if capacity < 1:
            raise ValueError("FirstSeen capacity must be at least 1")
        self.capacity = capacity
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()

    def __call__(self, producer: str, kind: str) -> bool:
        """True the first time this pair is seen (or after it was forgotten)."""
        key = (producer, kind)
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return True

    def known(self, producer: str, kind: str) -> bool:
        """True if this pair is remembered (and now the most recently seen); unlike a
        call, it does not remember a new pair: the runtime does that once it logged it."""
        try:
            self._seen.move_to_end((producer, kind))  # one step: no other thread between
        except KeyError:
            return False
        return True

    def __len__(self) -> int:
        return len(self._seen)

"""The error taxonomy: what went wrong, and so what the runtime does about it.

Each class says when it is raised and what the consumer runtime does with it. None of
them carries a message's field values: error texts are built from locations and types,
so they are safe to log and to put into dead-letter headers.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterator, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, NotRequired, TypedDict, get_args
from uuid import UUID

from pydantic_core.core_schema import ErrorType

# One encoder for every violation's JSON: json.dumps with separators builds one per call.
_COMPACT = json.JSONEncoder(separators=(",", ":"))
# The sg-dlq-errors header is capped. pydantic reports one error per invalid item, so a
# 21 KB record (a list of 7,000 empty objects) had a megabyte of errors: a dead letter
# fifty times its record, over what a DLQ takes (Kafka's max.message.bytes is 1 MB by
# default), which held the service until an operator raised it. An undeclared field's
# name in a location is input too, of any length.
MAX_ERRORS_JSON = 8192
MAX_SHOWN_TEXT = 200  # characters of one location part or message in a capped list


class ErrorDetail(TypedDict):
    """One validation error, as pydantic reports it but without the input value."""

    loc: list[str | int]
    type: str
    msg: str
    input: NotRequired[Any]  # only when a caller opted in to seeing values


def _without_map_keys(loc: list[str | int], schema: dict[str, Any]) -> list[str | int]:
    """``loc`` with every part that may address a map entry (not a declared field) as ``*``.

    Walks the JSON Schema along ``loc``. A property of the current node is a field name
    and stays, as do a union's branch tag (pydantic names the branch first: a schema
    word, an int for a union discriminated by ``Literal[1] | Literal[2]``) and a list
    index. Where the node is a map (see ``_map_values``), the part is a key and is
    hidden. The name of an undeclared field of a closed model (``extra="forbid"``)
    stays: it tells an operator which field a producer added. A part the schema cannot
    explain (a type that overrides its schema, say) is hidden too: it may be data.

    Where a union's tag does not name its branch for sure, the walk goes on in every
    branch, and a part that is a key in any of them is hidden.
    """
    defs = schema.get("$defs", {})

    def resolve(node: Any) -> Any:
        for _ in range(32):  # $ref chains are short; the bound only stops a cycle
            ref = node.get("$ref") if isinstance(node, dict) else None
            if not isinstance(ref, str) or not ref.startswith("#/$defs/"):
                return node
            node = defs.get(ref.removeprefix("#/$defs/"))
        return node

    def choices(node: dict[str, Any]) -> list[Any]:
        """A union's branches but null: X | None has one choice, X."""
        return [
            b
            for b in (resolve(b) for b in node.get("anyOf", []) + node.get("oneOf", []))
            if not (isinstance(b, dict) and b.get("type") == "null")
        ]

    def named(node: dict[str, Any], tag: str | int) -> Any:
        """The branch of a union that pydantic's branch tag names, or None if unsure.

        A discriminated union maps its tags (an int one as text) to branches; a smart
        union tags a model's branch with the model's name, its schema's title (unless
        the model sets another).
        """
        discriminator = node.get("discriminator")
        mapping = discriminator.get("mapping") if isinstance(discriminator, dict) else None
        if isinstance(mapping, dict) and isinstance(mapping.get(str(tag)), str):
            return resolve({"$ref": mapping[str(tag)]})
        titled = [b for b in choices(node) if isinstance(b, dict) and b.get("title") == tag]
        return titled[0] if len(titled) == 1 else None

    def step(node: Any, part: str | int, depth: int = 0) -> tuple[str, list[Any]]:
        """What ``part`` is at ``node`` (tag, field, index, key, undeclared or unknown),
        and the schemas the walk goes on in."""
        node = resolve(node)
        for _ in range(8):  # X | None wraps X, which may be a union itself
            if not isinstance(node, dict) or len(options := choices(node)) != 1:
                break
            node = options[0]  # X | None: pydantic's location goes on into X
        if not isinstance(node, dict):
            return "unknown", []
        union = choices(node)
        if len(union) > 1:
            branch = named(node, part)
            return "tag", union if branch is None else [branch]
        if isinstance(node.get("contentSchema"), dict) and depth < 8:
            return step(node["contentSchema"], part, depth + 1)  # a Json[...] field's value
        if isinstance(part, int) and (item := _item(node, part)) is not None:
            return "index", [item]
        properties = node.get("properties")
        if isinstance(properties, dict) and part in properties:
            return "field", [properties[part]]
        values = _map_values(node)
        if values is not None:
            return "key", [values]
        return ("undeclared" if node.get("additionalProperties") is False else "unknown"), []

    out: list[str | int] = []
    nodes: list[Any] = [schema]
    for part in loc:
        kinds: set[str] = set()
        following: dict[int, Any] = {}
        for node in nodes:
            kind, more = step(node, part)
            kinds.add(kind)
            following.update((id(n), n) for n in more)
        nodes = list(following.values())[:MAX_WALKED]
        if "key" in kinds:
            out.append("*")
        elif isinstance(part, int) or part == "[key]":  # an index or tag; pydantic's marker
            out.append(part)
        elif not kinds & {"tag", "field", "undeclared"}:
            out.append("*")
        else:
            out.append(part)
    return out


# Schemas a location is walked in at once: the branches of unions whose tag names none
# for sure, and of the unions among them.
MAX_WALKED = 64


def _item(array: dict[str, Any], index: int) -> Any:
    """The schema of an array's item at ``index``: a tuple's position, else its items
    (None when ``array`` is not an array)."""
    prefix = array.get("prefixItems")
    return prefix[index] if isinstance(prefix, list) and index < len(prefix) else array.get("items")


def _map_values(node: dict[str, Any]) -> Any:
    """The schema of a map's values if ``node`` is a map, else None.

    pydantic writes a map's values as ``additionalProperties``: their schema, or
    ``true`` when they may be anything (``dict[UUID, Any]``: a key that is not a UUID
    still fails). Keys constrained by a pattern make ``patternProperties`` instead,
    with one entry, the key's pattern.
    """
    values = node.get("additionalProperties")
    if isinstance(values, dict):
        return values
    patterns = node.get("patternProperties")
    if isinstance(patterns, dict) and patterns:
        return next(iter(patterns.values()))
    return {} if values is True else None


class StreamguardError(Exception):
    """Base of every error streamguard raises; catch it to catch them all."""


class ConfigurationError(StreamguardError, ValueError):
    """A contract, service or setting is wrong; raised at class creation or start-up."""


def extra_hint(extra: str) -> str:
    """How to install one of streamguard's extras: from a checkout, or in the direct
    reference of a project installed from a wheel (deploy/README.md), never from PyPI,
    where the name ``streamguard`` belongs to an unrelated project."""
    return (
        f"install the {extra} extra: from the streamguard checkout, pip install -e "
        f"'.[{extra}]'; in a project that depends on a streamguard wheel or archive, "
        f"\"streamguard[{extra}] @ <its URL>\" (not from PyPI, whose 'streamguard' is an "
        "unrelated project)"
    )


class BrokerUnavailable(StreamguardError, ConnectionError):
    """The Kafka cluster could not be reached within the start-up timeout."""


class DecodeError(StreamguardError, ValueError):
    """The bytes are not a message at all (oversize, not UTF-8, malformed, too deep).

    The runtime dead-letters the message at once with reason ``decode_error`` (or
    ``oversize``); it is never retried, since the same bytes never decode.
    """

    def __init__(self, message: str, *, reason: str = "decode_error") -> None:
        super().__init__(message)
        self.reason = reason


class ContractViolation(StreamguardError, ValueError):
    """The message decodes but breaks its contract (missing, extra or wrong-typed fields).

    The runtime dead-letters it at once with reason ``contract_violation``. ``errors``
    keeps pydantic's structured ``loc``/``type``/``msg`` without input values.
    """

    def __init__(self, subject: str, errors: Sequence[ErrorDetail]) -> None:
        self.subject = subject
        self._errors: list[ErrorDetail] | None = list(errors)
        self._template: ContractViolation | None = None
        self._json: bytes | None = None
        first = errors[0] if errors else None
        where = ".".join(str(p) for p in first["loc"]) if first else "?"
        summary = f"{first['msg']} at {where!r}" if first else "invalid"
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"{subject}: {len(errors)} validation error(s): {summary}{more}")

    @property
    def errors(self) -> list[ErrorDetail]:
        """pydantic's ``loc``/``type``/``msg`` per error, without input values."""
        if self._errors is None:  # a twin (see again()): its own copies, made on first read
            assert self._template is not None
            self._errors = [{**e, "loc": list(e["loc"])} for e in self._template.errors]
        return self._errors

    @errors.setter
    def errors(self, errors: list[ErrorDetail]) -> None:
        self._errors = errors
        self._json = None

    def errors_json(self) -> bytes:
        """The details as compact JSON, ``[{"loc", "type", "msg"}, ...]`` (never an
        ``input``, even when the details carry one): the ``sg-dlq-errors`` header."""
        if self._errors is None:  # a twin whose details nobody read: the template's text
            assert self._template is not None
            return self._template.errors_json()
        if self._json is None:
            details = [{"loc": e["loc"], "type": e["type"], "msg": e["msg"]} for e in self._errors]
            text = _COMPACT.encode(details)  # ASCII (ensure_ascii): characters are bytes
            if len(text) > MAX_ERRORS_JSON:
                text = _capped(details)
            self._json = text.encode()
        return self._json

    @property
    def origin(self) -> ContractViolation:
        """The violation this one repeats (see ``again``), or itself: violations with
        the same origin have the same subject, details and text. A repeat whose details
        were read (and so may have been changed) is its own origin."""
        return self._template if self._template is not None and self._errors is None else self

    def again(self) -> ContractViolation:
        """A new violation with the same subject, details and text, built without
        formatting them again: what a decoder raises for a record that fails exactly
        like an earlier one. Its details are its own copies (a hook may change them),
        made only when read: a flood of dead letters never reads them."""
        twin = ContractViolation.__new__(ContractViolation, *self.args)  # sets its args
        twin.subject = self.subject
        twin._errors = None
        twin._template = self if self._errors is not None else self._template
        twin._json = None
        return twin


def _cut(text: str) -> str:
    return text if len(text) <= MAX_SHOWN_TEXT else text[:MAX_SHOWN_TEXT] + "..."


def _capped(details: list[dict[str, Any]]) -> str:
    """The first details that fit in ``MAX_ERRORS_JSON``, long texts cut, and an entry
    of type ``errors_left_out`` saying how many more there were."""
    budget = MAX_ERRORS_JSON - 200  # room for the closing entry
    kept: list[str] = []
    size = 2
    for detail in details:
        loc = [_cut(p) if isinstance(p, str) else p for p in detail["loc"]]
        piece = _COMPACT.encode({"loc": loc, "type": detail["type"], "msg": _cut(detail["msg"])})
        if size + len(piece) + 1 > budget:
            break
        kept.append(piece)
        size += len(piece) + 1
    left = len(details) - len(kept)
    if left:
        kept.append(
            _COMPACT.encode(
                {
                    "loc": [],
                    "type": "errors_left_out",
                    "msg": f"{left} more error(s) not listed (the header is capped at "
                    f"{MAX_ERRORS_JSON} bytes)",
                }
            )
        )
    return "[" + ",".join(kept) + "]"


class PermanentError(StreamguardError):
    """Raised by a handler to say: this message will never succeed, do not retry.

    The runtime dead-letters it at once with reason ``permanent_error``.
    """


class TransientError(StreamguardError):
    """Raised by a handler to say: this may succeed later, retry it.

    The runtime retries the message per the service's ``RetryPolicy`` while its
    partition is paused; when attempts or budget run out it is dead-lettered with
    reason ``retries_exhausted``. Retried whatever the service's ``transient`` lists,
    as a ``PermanentError`` is never retried whatever it lists.
    """


class RegistryUnavailable(TransientError, ConnectionError):
    """The schema registry could not be reached (network error, timeout, 5xx, 429).

    Raised while decoding a record whose writer schema is not cached yet. It is not the
    record's fault, so the runtime never dead-letters it: the partition waits, with the
    retry policy's backoff, until the registry answers again.

    ``registry`` is what failed, without what a service does about it: the CLI's
    commands (``dlq replay --revalidate``) stop instead of waiting, and print that part.
    """

    def __init__(self, message: str, *, registry: str | None = None) -> None:
        super().__init__(message)
        self.registry = message if registry is None else registry


class RetriesExhausted(StreamguardError):
    """A transient failure outlived the retry policy; carries the last error as cause.

    The runtime dead-letters the message with reason ``retries_exhausted``.
    """

    def __init__(self, attempts: int, elapsed_ms: int, last: BaseException) -> None:
        super().__init__(
            f"gave up after {attempts} attempt(s) in {elapsed_ms} ms: {type(last).__name__}"
        )
        self.attempts = attempts
        self.elapsed_ms = elapsed_ms
        self.last = last


class SchemaDrift(StreamguardError):
    """The message was written with another schema, and the service's drift policy is
    ``dead_letter``: the runtime dead-letters it with reason ``schema_drift``."""

    def __init__(self, kinds: Sequence[str], subject: str) -> None:
        self.kinds = list(kinds)
        super().__init__(f"{subject}: schema drift ({', '.join(self.kinds)})")


class DeliveryFailed(StreamguardError):
    """The broker did not acknowledge one or more produced records.

    ``failures`` lists ``(topic, error text)`` pairs, one per record that failed;
    nothing is dropped silently. ``pending`` counts the records still unacknowledged
    when ``flush()`` timed out (listed as one ``("*", ...)`` pair): they are still
    queued and may yet be delivered, so sending them again may duplicate them; a later
    ``flush()`` reports those that fail.
    """

    def __init__(
        self,
        failures: Sequence[tuple[str, str]],
        *,
        pending: int = 0,
        timeout: float | None = None,
    ) -> None:
        self.failures = list(failures)
        self.pending = pending
        parts = []
        if self.failures:
            topic, text = self.failures[0]
            parts.append(
                f"{len(self.failures)} record(s) were not delivered; first: topic {topic!r}: {text}"
            )
        if pending:
            within = f" within {timeout}s" if timeout is not None else ""
            self.failures.append(("*", f"{pending} record(s) not acknowledged{within}"))
            parts.insert(
                0,
                f"{pending} record(s) not acknowledged{within}; they are still queued and "
                "may yet be delivered (a later flush() reports those that fail)",
            )
        super().__init__("; ".join(parts) or "record(s) were not delivered")


# pydantic-core's UUID errors quote the offending character ("found `S` at 0"): a piece
# of the input, so it is cut unless the caller opted in to values.
_QUOTED_INPUT = re.compile(r"[:,] found `[^`]*`")


# Messages that quote the input itself, replaced by value-free ones unless opted in:
# a tagged union's tag, and pydantic's own validators of ZoneInfo ("invalid timezone:
# <the input>"), ByteSize ("could not interpret byte unit: <its unit>") and
# ImportString (the path, in Python's import error).
_VALUE_FREE_MSG = {
    "union_tag_invalid": "Input tag does not match any of the expected tags",
    "zoneinfo_str": "invalid timezone",
    "byte_size_unit": "could not interpret byte unit",
    "import_error": "Invalid python path",
}


# bytes in base64 or hex ("Data should be valid base64: Invalid symbol 42, offset 3",
# "Data should be valid hex: Invalid character 'z' at position 2"): the decoder's detail,
# after the colon, quotes a character of the input, so only the encoding is kept.
_DETAIL_QUOTES_INPUT = frozenset({"bytes_invalid_encoding"})


# Errors whose message the contract's own validator wrote (``ValueError(f"unknown sku
# {v}")``): the input it was given is cut wherever it appears there word for word.
_OWN_MESSAGE = frozenset({"value_error", "assertion_error"})
# A validator's PydanticCustomError("sku_unknown", "unknown sku {sku}", {"sku": v}) has a
# type of its author's naming and a message its author wrote: any type pydantic-core
# does not define is a validator's own message too.
_BUILT_IN_TYPES = frozenset(get_args(ErrorType)) - _OWN_MESSAGE
_MIN_CUT = 4  # shorter texts ("EUR" aside) would cut ordinary words out of the message
_MAX_CUTS = 256
# Values whose text a message may quote: JSON's, and the Python values a mapping given
# to GuardedProducer.send holds (a validator gets a Decimal or a UUID as it is).
_QUOTABLE = (str, int, float, Decimal, UUID, date, time, timedelta)


# A validator is handed what pydantic parsed, not the input: "1999-01-01T00:00:00Z" is a
# datetime whose str() is "1999-01-01 00:00:00+00:00", an upper-case UUID's str() is
# lower-case, and 123456.0 (or "123456.0") an int field's 123456. So the texts of what
# an input parses as are cut too. Only strings short enough to be one are tried (a
# violation's cost, not a valid record's).
_PARSED_AS = (datetime, date, time, timedelta, UUID, Decimal, int, float)
_MAX_PARSED = 64
_MAX_PARSED_ITEMS = 32  # values of one input parsed: a violation's cost stays bounded
_PARSEABLE = (str, int, float)


@functools.cache
def _parsers() -> list[Callable[[Any], Any]]:
    from pydantic import TypeAdapter  # imported here: only a violation needs it

    # datetime.fromisoformat too: it takes forms pydantic does not ("19990101T000000Z")
    return [datetime.fromisoformat, *(TypeAdapter(kind).validate_python for kind in _PARSED_AS)]


def _may_parse(item: Any) -> bool:
    """Whether ``item`` may parse as one of ``_PARSED_AS``: a number or a Python value of
    a mapping, or a string short enough, with a digit (a field's name is not, so it takes
    none of the parsed slots)."""
    return not isinstance(item, str) or (len(item) <= _MAX_PARSED and any(map(str.isdigit, item)))


def _parsed_as(item: Any) -> list[Any]:
    """The values ``item`` parses as: each of ``_PARSED_AS`` as pydantic parses it."""
    if not _may_parse(item):
        return []
    parsed = []
    for parse in _parsers():
        try:
            parsed.append(parse(item))
        except (ValueError, TypeError):  # pydantic's ValidationError is a ValueError
            continue
    return parsed


def _texts_of(value: Any) -> Iterator[str]:
    """How a validator's message may quote ``value``: ``{v}``, ``{v!r}``, ``.isoformat()``."""
    yield str(value)
    if isinstance(value, str):  # as {value!r} quotes it: escaped, if it must be
        yield repr(value)[1:-1]
        return
    if not isinstance(value, int | float):
        yield repr(value)
    if isinstance(value, date | time):
        yield value.isoformat()
    elif isinstance(value, UUID):
        yield value.hex


def _without_input(msg: str, value: Any) -> str:
    """``msg`` with every text of ``value`` (a string, number, UUID or time, or those
    inside a model's input, to a few levels), or of what pydantic parses it as, that it
    quotes replaced by ``<redacted>``."""
    texts: set[str] = set()
    parseable: list[Any] = []
    todo: list[tuple[Any, int]] = [(value, 0)]
    while todo and len(texts) < _MAX_CUTS:
        item, depth = todo.pop()
        if isinstance(item, _QUOTABLE) and not isinstance(item, bool):
            if isinstance(item, _PARSEABLE):  # most of an input: written out
                text = str(item)
                if len(text) >= _MIN_CUT:
                    texts.add(text)
                    if isinstance(item, str):  # as {value!r} quotes it: escaped, if it must be
                        texts.add(repr(item)[1:-1])
                if len(parseable) < _MAX_PARSED_ITEMS and _may_parse(item):
                    parseable.append(item)
            else:  # a mapping's Python value: a datetime reaches a date field as a date
                texts.update(t for t in _texts_of(item) if len(t) >= _MIN_CUT)
                if len(parseable) < _MAX_PARSED_ITEMS:
                    parseable.append(item)
        # Pushed in reverse, so popped in the input's order: the first values are parsed
        # (a model validator quoting one most likely quotes the first).
        elif depth < 4 and isinstance(item, dict):
            todo.extend((v, depth + 1) for pair in reversed(item.items()) for v in pair[::-1])
        elif depth < 4 and isinstance(item, list | tuple):
            todo.extend((v, depth + 1) for v in reversed(item))
    # What an input parses as, only for a message holding a digit (every such form has
    # one), and for at most _MAX_PARSED_ITEMS values: a model validator failing on a
    # record of 60 line items is classified in 216 µs without the parsing and 630 with
    # it (measured 2026-12-06), and a flood of such records pays it for every record.
    if any(c.isdigit() for c in msg):
        parsed = (form for item in parseable for form in _parsed_as(item))
        texts.update(t for form in parsed for t in _texts_of(form) if len(t) >= _MIN_CUT)
    for text in sorted(texts, key=len, reverse=True):  # a longer text before its parts
        msg = msg.replace(text, "<redacted>")
    return msg


class _MaskedLocations:
    """``_without_map_keys`` for one schema, remembering the answers.

    A flood of invalid messages repeats the same few locations; walking the schema for
    each cost more than pydantic's validation. Bounded: the locations may hold map keys,
    which are data a hostile producer can vary per record.
    """

    __slots__ = ("_memo", "_schema")
    CAPACITY = 1024
    # Characters of a location's names past which it is not remembered: an undeclared
    # field's name is input of any length, and 1,024 names of a megabyte held a GiB.
    MAX_REMEMBERED = 256

    def __init__(self, schema: dict[str, Any]) -> None:
        self._schema = schema
        self._memo: dict[tuple[str | int, ...], list[str | int]] = {}

    def __call__(self, loc: tuple[str | int, ...]) -> list[str | int]:
        known = self._memo.get(loc)
        if known is None:
            known = _without_map_keys(list(loc), self._schema)
            if sum(len(p) for p in loc if isinstance(p, str)) > self.MAX_REMEMBERED:
                return known
            if len(self._memo) >= self.CAPACITY:
                self._memo.clear()
            self._memo[loc] = known
        return list(known)


# Per schema document (contracts cache theirs for the process's life); the entry holds
# its schema, so an id is never mistaken for a later object's.
_MASKS: dict[int, _MaskedLocations] = {}


def _masked_locations(schema: dict[str, Any]) -> _MaskedLocations:
    masks = _MASKS.get(id(schema))
    if masks is None or masks._schema is not schema:
        if len(_MASKS) >= 256:  # schemas built per call (not a contract's) must not pile up
            _MASKS.clear()
        masks = _MASKS[id(schema)] = _MaskedLocations(schema)
    return masks


def error_details(
    exc: Any,
    *,
    include_input: bool = False,
    schema: dict[str, Any] | None = None,
    record: Callable[[], Any] | None = None,
) -> list[ErrorDetail]:
    """Turn a pydantic ``ValidationError`` into value-free ``{loc, type, msg}`` dicts.

    pydantic's ``msg`` does not contain the input for the built-in error types, except
    the character a UUID error quotes and the tag a tagged union quotes, both cut here.
    With the model's JSON ``schema``, the keys of declared maps in ``loc`` (a
    ``dict[str, int]`` keyed by e-mail address, say) become ``*``: they are data too.
    ``include_input=False`` also drops the ``input`` and ``ctx`` keys, and cuts the
    input out of the messages a contract's own validators wrote, where they quote it;
    with ``record`` (a function giving the whole input), the record's values too, which
    a field's validator may quote from ``info.data``.
    """
    details: list[ErrorDetail] = []
    whole: list[Any] = []  # the record, asked for once, and only for such a message
    masked = _masked_locations(schema) if schema is not None and not include_input else None
    for err in exc.errors(include_url=False, include_context=False):
        msg, loc = err["msg"], list(err["loc"])
        if not include_input:
            msg = _VALUE_FREE_MSG.get(err["type"]) or _QUOTED_INPUT.sub("", msg)
            if err["type"] in _DETAIL_QUOTES_INPUT:
                msg = msg.partition(":")[0]
            if err["type"] not in _BUILT_IN_TYPES and "input" in err:
                msg = _without_input(msg, err["input"])
                if record is not None and err["loc"]:  # at the root, the input is the record
                    if not whole:  # its values: its keys are field names
                        values = record()
                        whole.append(list(values.values()) if isinstance(values, dict) else values)
                    msg = _without_input(msg, whole[0])
            if masked is not None:
                loc = masked(err["loc"])
        detail: ErrorDetail = {"loc": loc, "type": err["type"], "msg": msg}
        if include_input and "input" in err:
            detail["input"] = err["input"]
        details.append(detail)
    return details

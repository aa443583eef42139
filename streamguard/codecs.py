"""Codecs turn bytes into contract instances and back, guarding the trust boundary.

Every decode checks the size first (before a byte is parsed), then parses and
validates in one pass. The outcome is a contract instance, or one of two errors that
the runtime treats differently in its reports: ``DecodeError`` (the bytes are not a
message: too big, not UTF-8, malformed, nested too deep) and ``ContractViolation``
(a well-formed message that breaks the contract, including a JSON array where an object
is expected). Neither error text contains input values unless ``include_input=True``.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError, from_json

from streamguard.contracts import Contract, shared_schema, wire_format
from streamguard.errors import (
    ConfigurationError,
    ContractViolation,
    DecodeError,
    ErrorDetail,
    error_details,
)

C = TypeVar("C", bound=BaseModel)

DEFAULT_MAX_BYTES = 1024 * 1024
JSON_CONTENT_TYPE = "application/json"
AVRO_CONTENT_TYPE = "application/avro"

# Every byte but the four brackets, deleted to count nesting.
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class Codec(Protocol):
    """What the runtime and the producer need from a wire format."""

    content_type: str

    def encode(self, event: BaseModel) -> bytes:
        """Serialise a validated event."""
        ...

    def decoder(self, contract: type[C]) -> Callable[[bytes | None], C]:
        """A function that decodes and validates one message for ``contract``.

        Returned once per contract so the hot path is a single call per message.
        """
        ...


def codec_for(contract: type[BaseModel], codec: Codec | None = None) -> Codec:
    """``codec`` if given (checked to fit), else the default codec of the contract's format."""
    if codec is None:
        codec = AvroCodec() if wire_format(contract) == "avro" else JsonCodec()
    check_codec_fits(contract, codec)
    return codec


def check_codec_fits(contract: type[BaseModel], codec: Codec) -> None:
    """Refuse a codec whose wire format is not the contract's.

    An Avro contract sent or read as JSON would look fine in tests and break every
    Avro reader, so the mismatch fails when the producer or service is set up.
    """
    wants = wire_format(contract)
    if wants == "avro" and codec.content_type != AVRO_CONTENT_TYPE:
        raise ConfigurationError(
            f"{contract.__qualname__} is an Avro contract (__wire_format__ = 'avro') but the "
            f"codec is {type(codec).__name__} ({codec.content_type}); use sg.AvroCodec() "
            "(the default when no codec is given) or declare __wire_format__ = 'json'."
        )
    if wants == "json" and codec.content_type != JSON_CONTENT_TYPE:
        raise ConfigurationError(
            f"{contract.__qualname__} is a JSON contract but the codec writes "
            f"{codec.content_type}; set __wire_format__ on the contract to match."
        )


_BY_ALIAS: dict[type[BaseModel], bool] = {}


def wire_by_alias(model: type[BaseModel]) -> bool:
    """Whether a model is written by alias: the keys a consumer reads are its validation
    aliases (its schema's names), and a dump writes serialization aliases or field names.

    ``Field(alias=...)`` sets both, so a dump by alias writes what is read; a
    serialization-only alias (``serialization_alias``, or an ``alias_generator`` of
    one) is not read, so such a model is written by field name. Of the two dumps, the
    one that leaves out fewer of the names read wins, by alias on a tie (fields left
    out of every dump, ``exclude=True`` or a custom serializer, count for neither).
    Never raises: what no dump writes readably, the producer's own decode refuses.
    """
    known = _BY_ALIAS.get(model)
    if known is None:
        try:
            read = _property_names(model.model_json_schema(mode="validation"))
            by_alias = _property_names(model.model_json_schema(mode="serialization"))
            by_name = _property_names(model.model_json_schema(mode="serialization", by_alias=False))
            known = len(read - by_alias) <= len(read - by_name)
        except Exception:  # a schema pydantic cannot generate: the dump decides
            known = True
        _BY_ALIAS[model] = known
    return known


def _property_names(schema: Any) -> set[str]:
    """Every property name anywhere in a JSON Schema (nested models included)."""
    names: set[str] = set()
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            properties = node.get("properties")
            if isinstance(properties, dict):
                names.update(properties)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return names


def _json_depth_exceeds(data: bytes, limit: int) -> bool:
    """True if ``data`` nests arrays/objects deeper than ``limit``.

    Cheap when it matters: a message with fewer brackets than the limit cannot be too
    deep, so the exact scan only runs on messages that have many brackets.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    # Brackets inside strings do not nest. Strings are cut out in linear time: escaped
    # backslashes, then escaped quotes, then every other run between quotes. (A regex
    # over strings took quadratic time on an unclosed one made of \" pairs: over an
    # hour of CPU for a 1 MiB record.)
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(unescaped.split(b'"')[::2])
    depth = 0
    for byte in outside.translate(None, _NOT_BRACKETS):
        if byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def json_bytes(event: BaseModel, by_alias: bool) -> bytes:
    """``event`` as JSON, or a ``ContractViolation`` naming the fields JSON cannot hold
    (bytes that are not UTF-8, say): pydantic's own error names no field, and is no
    error the producer's callers expect."""
    try:
        return event.model_dump_json(by_alias=by_alias, warnings=False).encode()
    except PydanticSerializationError as exc:
        subject = getattr(type(event), "__subject__", type(event).__qualname__)
        raise ContractViolation(subject, _encode_errors(event, exc)) from None


class JsonCodec:
    """JSON on the wire, validated by pydantic's Rust parser in one pass.

    Args:
        max_bytes: messages larger than this are refused before parsing (``oversize``).
        max_depth: refuse messages nested deeper than this. ``None`` keeps the parser's
            own fixed limit (pydantic-core refuses about 200 levels).
        include_input: put offending values into error details. Off by default: values
            may be personal data, and errors end up in logs and dead-letter headers.
    """

    content_type = JSON_CONTENT_TYPE

    def __init__(
        self,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_depth: int | None = None,
        include_input: bool = False,
    ) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        if max_depth is not None and max_depth < 1:
            raise ValueError(f"max_depth must be positive or None, got {max_depth}")
        self.max_bytes = max_bytes
        self.max_depth = max_depth
        self.include_input = include_input

    def __repr__(self) -> str:
        return f"JsonCodec(max_bytes={self.max_bytes}, max_depth={self.max_depth})"

    def encode(self, event: BaseModel) -> bytes:
        """The bytes a producer sends for ``event`` (no validation: the producer validates).

        Its keys are the ones every consumer reads (see ``wire_by_alias``). pydantic's
        serializer warnings are off: for an instance that bypassed validation
        (``model_construct``), they quote the offending value, and the producer's own
        decode refuses such bytes with a value-free error anyway.
        """
        return json_bytes(event, wire_by_alias(type(event)))

    def decode(self, data: bytes | None, contract: type[C]) -> C:
        """Decode one message; see ``decoder`` for the errors raised."""
        return self.decoder(contract)(data)

    def decoder(self, contract: type[C]) -> Callable[[bytes | None], C]:
        """A function that decodes and validates one message for ``contract``.

        Built once per contract so that the hot path is one call; it raises
        ``DecodeError`` or ``ContractViolation``, never with input values.
        """
        # The model's own SchemaValidator: model_validate_json is a Python wrapper
        # around it that costs 0.5 µs per call, an eighth of a small validation.
        validate = contract.__pydantic_validator__.validate_json
        max_bytes = self.max_bytes
        max_depth = self.max_depth
        include_input = self.include_input

        def decode(data: bytes | None) -> C:
            # The checks below repeat AvroCodec's on purpose: this is the hot path, and a
            # shared helper would add a call per message.
            if data is None:
                raise DecodeError("message has no value (a tombstone); expected a JSON object")
            if len(data) > max_bytes:
                raise DecodeError(
                    f"message is {len(data)} bytes, over the limit of {max_bytes}; "
                    "raise max_bytes if such messages are legitimate",
                    reason="oversize",
                )
            if max_depth is not None and _json_depth_exceeds(data, max_depth):
                raise DecodeError(f"JSON nests deeper than the limit of {max_depth} levels")
            try:
                event: C = validate(data)
            except ValidationError as exc:
                raise _classify(exc, contract, include_input, data) from None
            return event

        return decode


# Violations already classified, per contract and pydantic's (type, loc, msg) list:
# a flood of invalid records repeats a few, and classifying each again cost as much as
# validating it. Bounded, since locations may hold map keys and list indices.
_CLASSIFIED: dict[tuple[Any, ...], ContractViolation] = {}
# Only small violations are kept. A record of 21 KB, a list of 7,000 empty objects,
# has 14,000 errors: its entry held 11 MiB, and 1,024 distinct ones would have held
# 11 GiB. Violations that large are not the few a flood repeats.
MAX_CACHED_ERRORS = 32
MAX_CACHED_KEY = 8192  # characters of the key's JSON (an undeclared field's name is input)


def _classify(
    exc: ValidationError, contract: type[BaseModel], include_input: bool, record: Any
) -> Exception:
    """``exc`` as a value-free ``ContractViolation`` (or ``DecodeError``); ``record`` is
    the input, JSON bytes or the decoded Avro record, whose values are cut from the
    messages of the contract's own validators."""
    if include_input or exc.error_count() > MAX_CACHED_ERRORS:
        # With values, the details are the record's own: nothing to share.
        return _classify_anew(exc, contract, include_input, record)
    # pydantic's own JSON of the (type, loc, msg) list: a third of the cost of building
    # the list of dicts to key on (0.36 against 1.3 µs per record).
    text = exc.json(include_url=False, include_input=False, include_context=False)
    if len(text) > MAX_CACHED_KEY:
        return _classify_anew(exc, contract, include_input, record)
    key = (contract, text)
    known = _CLASSIFIED.get(key)
    if known is not None:
        return known.again()
    error = _classify_anew(exc, contract, include_input, record)
    if isinstance(error, ContractViolation):
        if len(_CLASSIFIED) >= 1024:
            _CLASSIFIED.clear()
        template = error.again()
        template.errors  # noqa: B018 (its own details: the first one's may be changed by a hook)
        _CLASSIFIED[key] = template
    return error


def _classify_anew(
    exc: ValidationError, contract: type[BaseModel], include_input: bool, record: Any
) -> Exception:
    # The schema lets error_details hide map keys in error locations (they are data).
    schema = shared_schema(contract)
    subject = getattr(contract, "__subject__", contract.__qualname__)
    details = error_details(
        exc, include_input=include_input, schema=schema, record=lambda: _parsed(record)
    )
    for detail in details:
        if detail["type"] == "json_invalid" and not detail["loc"]:
            # pydantic-core reports malformed JSON, bad UTF-8 and its recursion limit
            # all as json_invalid, with a position but never the input. With a
            # location, it is a Json[...] field's text: the message parsed, the field
            # breaks the contract.
            return DecodeError(detail["msg"])
    return ContractViolation(subject, details)


def _parsed(record: Any) -> Any:
    """The values of a record: JSON bytes parsed (pydantic parsed them already, so
    they parse), an Avro record as it is. Keys alone are cached, as a contract's own
    parse does: a flood of distinct violations would fill the cache with values."""
    if not isinstance(record, bytes):
        return record
    try:
        return from_json(record, cache_strings="keys")
    except ValueError:
        return None


SINGLE_OBJECT_MARKER = b"\xc3\x01"


class AvroCodec:
    """Avro single-object encoding: ``C3 01``, the writer schema's 8-byte CRC-64-AVRO
    fingerprint, then the binary record (the Avro specification's framing, used when
    no schema registry is configured).

    The record schema is derived from the contract (``streamguard schema export``
    writes the same ``.avsc``). A message written with another schema decodes only if
    that schema is among ``writer_schemas`` (for instance the ``.avsc`` files of older
    versions in ``schemas/``); it is then resolved to the contract's schema by Avro's
    rules. Any other fingerprint is a ``DecodeError``, since without the writer's
    schema the bytes cannot be read at all.

    Args:
        max_bytes: messages larger than this are refused before parsing.
        writer_schemas: other schemas the producers may have written with.
        include_input: put offending values into validation error details.
    """

    content_type = AVRO_CONTENT_TYPE

    def __init__(
        self,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        writer_schemas: Iterable[Mapping[str, Any]] = (),
        include_input: bool = False,
    ) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes = max_bytes
        self.include_input = include_input
        # As given: a codec built on this one (a service's RegistryCodec) reads them too.
        self.writer_schemas = tuple(dict(schema) for schema in writer_schemas)
        self._writers: dict[bytes, Any] = {}
        for schema in self.writer_schemas:
            parsed, fingerprint = _parsed_avro(dict(schema))
            _refuse_zero_width_arrays(schema)
            self._writers[fingerprint] = parsed
        self._recursive_writer = any(map(_recursive, self.writer_schemas))
        self._schemas: dict[type[BaseModel], tuple[Any, bytes]] = {}

    def __repr__(self) -> str:
        return f"AvroCodec(max_bytes={self.max_bytes}, writer_schemas={len(self._writers)})"

    def _schema(self, contract: type[BaseModel]) -> tuple[Any, bytes]:
        known = self._schemas.get(contract)
        if known is None:
            from streamguard.schema.avro import contract_avro_schema

            known = _parsed_avro(contract_avro_schema(contract))  # type: ignore[arg-type]
            self._schemas[contract] = known
        return known

    def encode(self, event: BaseModel) -> bytes:
        """The bytes a producer sends for ``event`` (no validation: the producer validates)."""
        import fastavro  # here and below, not at import: JSON services never load it (1.5 MiB)

        parsed, fingerprint = self._schema(type(event))
        by_alias = wire_by_alias(type(event))
        out = io.BytesIO()
        out.write(SINGLE_OBJECT_MARKER)
        out.write(fingerprint)
        try:
            fastavro.schemaless_writer(
                out, parsed, event.model_dump(mode="json", by_alias=by_alias, warnings=False)
            )
        except Exception as exc:  # fastavro's texts may quote the value: keep the type
            subject = getattr(type(event), "__subject__", type(event).__qualname__)
            raise ContractViolation(subject, _encode_errors(event, exc)) from None
        return out.getvalue()

    def decode(self, data: bytes | None, contract: type[C]) -> C:
        """Decode one message; see ``decoder`` for the errors raised."""
        return self.decoder(contract)(data)

    def decoder(self, contract: type[C]) -> Callable[[bytes | None], C]:
        """A function that decodes and validates one message for ``contract``.

        Built once per contract so that the hot path is one call; it raises
        ``DecodeError`` or ``ContractViolation``, never with input values.
        """
        from fastavro.read import SchemaResolutionError

        reader, own = self._schema(contract)
        writers = {**self._writers, own: reader}
        schemaless_reader = avro_reader(self._recursive_writer or _recursive(reader))
        validate = contract.__pydantic_validator__.validate_python
        max_bytes, include_input = self.max_bytes, self.include_input

        def decode(data: bytes | None) -> C:
            if data is None:
                raise DecodeError("message has no value (a tombstone); expected an Avro record")
            if len(data) > max_bytes:
                raise DecodeError(
                    f"message is {len(data)} bytes, over the limit of {max_bytes}",
                    reason="oversize",
                )
            if data[:2] != SINGLE_OBJECT_MARKER or len(data) < 10:
                framed = data[:1] == b"\x00" and len(data) >= 5  # magic byte 0, an id
                raise DecodeError(
                    "not Avro single-object encoding (no C3 01 marker)"
                    + (
                        "; it looks Confluent-framed: read it with a schema registry"
                        if framed
                        else ""
                    )
                )
            writer = writers.get(data[2:10])
            if writer is None:
                raise DecodeError(
                    f"written with an unknown Avro schema (fingerprint {data[2:10].hex()}); "
                    "pass its .avsc in AvroCodec(writer_schemas=...) to read it"
                )
            try:
                record = schemaless_reader(io.BytesIO(data[10:]), writer, reader)
            except SchemaResolutionError:
                raise DecodeError(_unresolvable(data[2:10].hex(), writer, reader)) from None
            except Exception as exc:  # fastavro raises many types on corrupt input
                raise DecodeError(f"corrupt Avro record: {type(exc).__name__}") from None
            try:
                # Lax: the record holds the JSON form of what Avro has no type for (UUID,
                # datetime, Decimal as strings), which a strict=True contract refuses in
                # Python mode, as it would not in JSON; Avro's own types already fix what
                # every other field holds (a long is an int, a string a str).
                event: C = validate(record, strict=False)
            except ValidationError as exc:
                raise _classify(exc, contract, include_input, record) from None
            return event

        return decode


def _unresolvable(fingerprint: str, writer: Any, reader: Any) -> str:
    """Why a record of one of ``writer_schemas`` cannot be read as the contract: the first
    mismatch of the two schemas (field paths and type names, never a value: fastavro's
    own text may quote an enum symbol read). It said "corrupt Avro record", and the
    record was sound: a schema in ``writer_schemas`` the contract cannot resolve."""
    return (
        f"writer schema {fingerprint} cannot be resolved to the contract's Avro schema"
        f"{first_mismatch(writer, reader)}; the writer's schema and the contract's must be "
        "made compatible"
    )


def first_mismatch(writer: Any, reader: Any) -> str:
    """`` by Avro's rules: <field path>: <rule> <old> -> <new>``, the first change of
    ``writer`` to ``reader`` that Avro cannot resolve: schema text only, never a value."""
    from streamguard.schema.avro import compare_avro_schemas
    from streamguard.schema.changes import field_path

    try:
        broken = [f for f in compare_avro_schemas(writer, reader) if not f.safe]
    except Exception:  # the comparison is a hint: its failure must not hide the error
        return " by Avro's rules"
    if not broken:
        return " by Avro's rules"
    first = broken[0]
    types = f" {first.old_type} -> {first.new_type}" if first.old_type else ""
    return f" by Avro's rules: {field_path(first.path)}: {first.rule}{types}"


def _recursive(schema: Any) -> bool:
    from streamguard.schema.avro import recursive

    return recursive(schema)


def avro_reader(recursive: bool) -> Callable[[IO[bytes], Any, Any], Any]:
    """fastavro's ``schemaless_reader`` for a writer schema: its compiled one, or for a
    ``recursive`` schema its pure-Python one. The compiled reader recurses on the C stack
    with no limit, so a record of a self-holding schema nesting a few thousand levels
    (10 KB) crashed the consumer with SIGSEGV, on every restart; the Python reader raises
    RecursionError, a ``decode_error``. Chosen once per writer schema, not per record."""
    if recursive:
        from fastavro._read_py import schemaless_reader as python_reader

        return python_reader
    from fastavro import schemaless_reader

    return schemaless_reader


def _refuse_zero_width_arrays(schema: Mapping[str, Any]) -> None:
    """Refuse a writer schema with an array of items that take no bytes: its item count
    alone bounds a read, so one record of a few bytes could hold the consumer for hours
    (see ``zero_width_array``). Checked once, here, so that no record pays for it."""
    from streamguard.schema.avro import zero_width_array

    where = zero_width_array(schema)
    if where is not None:
        name = schema.get("name", "?")
        raise ConfigurationError(
            f"writer schema {name} has an array whose items take no bytes in Avro, {where}: "
            "a record of a few bytes could claim a billion items and hold the consumer for "
            "minutes, so streamguard does not read it; leave it out of writer_schemas (its "
            "records are then a decode_error)"
        )


def _parsed_avro(schema: dict[str, Any]) -> tuple[Any, bytes]:
    import fastavro.schema

    parsed = fastavro.parse_schema(schema)
    canonical = fastavro.schema.to_parsing_canonical_form(parsed)
    # fastavro gives the CRC-64-AVRO fingerprint's bytes in little-endian order, which
    # is what single-object encoding puts on the wire.
    return parsed, bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))


def _encode_errors(event: BaseModel, exc: Exception) -> list[ErrorDetail]:
    """Why ``event`` could not be written (changed after construction, or built with
    ``model_construct``, or a value its format cannot hold), naming the fields: the
    errors of fastavro and of pydantic's serializer name none, and their texts may quote
    the value. The event is validated again for that, value-free; when its contract
    accepts it, the fields whose JSON form alone cannot be written are named (bytes that
    are not UTF-8), else the error is the writer's type alone."""
    dumped: Any = None
    try:
        dumped = event.model_dump(warnings=False)
        type(event).model_validate(dumped)
    except ValidationError as invalid:
        schema = shared_schema(type(event)) if isinstance(event, Contract) else None
        return error_details(invalid, schema=schema, record=lambda: dumped)
    except Exception:  # noqa: S110  # a dump that fails says no more than the writer did
        pass
    avro = not isinstance(exc, PydanticSerializationError)
    kind, fits = ("avro_encode", "its Avro schema") if avro else ("json_encode", "JSON")
    unwritable: list[ErrorDetail] = []
    for name in type(event).model_fields:
        try:
            event.model_dump_json(include={name}, warnings=False)
        except Exception as field_exc:
            unwritable.append(
                {
                    "loc": [name],
                    "type": kind,
                    "msg": f"does not fit {fits} ({type(field_exc).__name__}){_hint(field_exc)}",
                }
            )
    if avro and not unwritable:
        # An int beyond 64 bits is valid to a contract's `int` and to JSON, not to an Avro
        # long: fastavro's OverflowError names no field, and the error named none either.
        for name in type(event).model_fields:
            try:
                value = event.model_dump(mode="json", include={name}, warnings=False)
            except Exception:  # noqa: S112  # a dump that fails names nothing more
                continue
            if _beyond_long(value):
                msg = "does not fit its Avro schema (an integer beyond Avro's 64-bit long)"
                unwritable.append({"loc": [name], "type": kind, "msg": msg})
    return unwritable or [
        {"loc": [], "type": kind, "msg": f"does not fit {fits} ({type(exc).__name__}){_hint(exc)}"}
    ]


def _beyond_long(value: Any) -> bool:
    """Whether a dumped value holds an int outside Avro's long, -2**63 to 2**63 - 1."""
    if isinstance(value, dict):
        return any(_beyond_long(v) for v in value.values())
    if isinstance(value, list):
        return any(_beyond_long(v) for v in value)
    return isinstance(value, int) and not -(2**63) <= value < 2**63


def _hint(exc: Exception) -> str:
    """What to do about a value UTF-8 cannot hold: its text names the kind, not the value."""
    text = str(exc).lower()
    if "surrogates not allowed" in text:  # a str, from surrogateescape decoding say
        return "; text with a lone surrogate (U+D800 to U+DFFF) is not Unicode any format holds"
    if "utf-8" in text:
        return "; bytes that are not UTF-8 need ser_json_bytes='base64' and val_json_bytes='base64'"
    return ""

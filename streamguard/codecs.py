"""Codecs turn bytes into contract instances and back, guarding the trust boundary.

Every decode checks the size first (before a byte is parsed), then parses and
validates in one pass. The outcome is a contract instance, or one of two errors that
the runtime treats differently in its reports: ``DecodeError`` (the bytes are not a
message: too big, not UTF-8, malformed, nested too deep) and ``ContractViolation``
(a well-formed message that breaks the contract, including a JSON array where an object
is expected). Neither error text contains input values unless ``include_input=True``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from streamguard.errors import ConfigurationError, ContractViolation, DecodeError, error_details

C = TypeVar("C", bound=BaseModel)

DEFAULT_MAX_BYTES = 1024 * 1024
JSON_CONTENT_TYPE = "application/json"
AVRO_CONTENT_TYPE = "application/avro"

# A string literal in JSON, escapes included; its brackets do not count as nesting.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
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


def check_codec_fits(contract: type[BaseModel], codec: Codec) -> None:
    """Refuse a codec whose wire format is not the contract's.

    An Avro contract sent or read as JSON would look fine in tests and break every
    Avro reader, so the mismatch fails when the producer or service is set up.
    """
    wants = getattr(contract, "__format__", "json")
    if wants == "avro" and codec.content_type != AVRO_CONTENT_TYPE:
        raise ConfigurationError(
            f"{contract.__qualname__} is an Avro contract (__format__ = 'avro') but the "
            f"codec is {type(codec).__name__} ({codec.content_type}). streamguard ships "
            "no Avro codec yet: pass one whose content_type is 'application/avro', or "
            "declare the contract with __format__ = 'json'."
        )
    if wants == "json" and codec.content_type != JSON_CONTENT_TYPE:
        raise ConfigurationError(
            f"{contract.__qualname__} is a JSON contract but the codec writes "
            f"{codec.content_type}; set __format__ on the contract to match."
        )


def _json_depth_exceeds(data: bytes, limit: int) -> bool:
    """True if ``data`` nests arrays/objects deeper than ``limit``.

    Cheap when it matters: a message with fewer brackets than the limit cannot be too
    deep, so the exact scan only runs on messages that have many brackets.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    depth = 0
    for byte in _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS):
        if byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


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
        return event.model_dump_json().encode()

    def decode(self, data: bytes | None, contract: type[C]) -> C:
        """Decode one message; see ``decoder`` for the errors raised."""
        return self.decoder(contract)(data)

    def decoder(self, contract: type[C]) -> Callable[[bytes | None], C]:
        # The model's own SchemaValidator: model_validate_json is a Python wrapper
        # around it that costs 0.5 µs per call, an eighth of a small validation.
        validate = contract.__pydantic_validator__.validate_json
        max_bytes = self.max_bytes
        max_depth = self.max_depth
        include_input = self.include_input
        subject = getattr(contract, "__subject__", contract.__qualname__)

        def decode(data: bytes | None) -> C:
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
                raise _classify(exc, subject, include_input) from None
            return event

        return decode


def _classify(exc: ValidationError, subject: str, include_input: bool) -> Exception:
    details = error_details(exc, include_input=include_input)
    for detail in details:
        if detail["type"] == "json_invalid":
            # pydantic-core reports malformed JSON, bad UTF-8 and its recursion limit
            # all as json_invalid, with a position but never the input.
            return DecodeError(detail["msg"])
    return ContractViolation(subject, details)

"""The Confluent wire format: byte ``00``, a 4-byte big-endian schema id, then the payload.

``RegistryCodec`` reads what Confluent's serializers write and writes what their
deserializers read, for Avro and JSON Schema. Decoding tells the framing from the first
bytes, so one topic may mix producers:

- ``00`` + id: the writer schema is fetched from the registry by id, once (cached for
  the codec's life: a registered id never changes its schema). Avro is resolved to the
  contract's reader schema by Avro's rules, JSON is parsed as JSON; either way the
  contract validates the result.
- ``C3 01`` + fingerprint: Avro single-object encoding, as ``AvroCodec`` reads it.
- anything else: plain JSON, as ``JsonCodec`` reads it.

An id the registry does not know, or a writer schema that cannot be resolved to the
reader's, is a ``DecodeError`` naming the id (dead-lettered as ``decode_error``). A
registry that cannot be reached raises ``RegistryUnavailable``: the record waits.
"""

from __future__ import annotations

import functools
import io
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from streamguard.codecs import (
    AVRO_CONTENT_TYPE,
    DEFAULT_MAX_BYTES,
    JSON_CONTENT_TYPE,
    AvroCodec,
    Codec,
    JsonCodec,
    _classify,
    avro_reader,
    codec_for,
    first_mismatch,
    json_bytes,
    wire_by_alias,
)
from streamguard.contracts import Contract, shared_schema
from streamguard.errors import ConfigurationError, DecodeError, RegistryUnavailable
from streamguard.registry.client import (
    SubjectNameStrategy,
    call,
    new_client,
    redact_registry_config,
    registry_error_code,
    subject_name,
)

C = TypeVar("C", bound=BaseModel)

MAGIC_BYTE = b"\x00"
HEADER_SIZE = 5  # magic byte + 4-byte schema id
GUID_FRAMING = (
    "Confluent framing with a schema GUID (magic byte 01) is not supported: "
    "have the producer write the schema id framing (magic byte 00)"
)
# An id the registry refused (unknown to it, or a schema streamguard cannot read) is
# answered from memory for this many seconds: a producer writing against another
# registry frames every record with such an id, and asking again for each record made
# one registry request per record, one at a time under the codec's lock.
REFUSED_ID_SECONDS = 60.0
MAX_REFUSED_IDS = 1024  # ids are 4 bytes of input: a flood may name a new one each time
# Registries number schemas with Java ints (Confluent's deserializers read the id as
# one): a larger id names no schema, and Confluent's registry answers a request for it
# with a bare 404, not 40403. Such a record is refused without asking.
MAX_SCHEMA_ID = 2**31 - 1


def registry_schema(contract: type[Contract]) -> tuple[str, str]:
    """(schema text, schema type) of a contract as registered: its ``.avsc`` or JSON Schema.

    The producer looks this exact text up and ``schema register --registry`` registers
    it, so both name the same registry entry.
    """
    if contract.__wire_format__ == "avro":
        from streamguard.schema.avro import contract_avro_schema

        return json.dumps(contract_avro_schema(contract)), "AVRO"
    return json.dumps(shared_schema(contract)), "JSON"


def record_name(contract: type[Contract]) -> str:
    """The record name Confluent's record strategies use: the Avro full name, or the
    JSON Schema ``title`` (as Confluent's JSON serializer reads it)."""
    if contract.__wire_format__ == "avro":
        from streamguard.schema.avro import contract_avro_schema

        avsc = contract_avro_schema(contract)
        namespace = avsc.get("namespace")
        return f"{namespace}.{avsc['name']}" if namespace else str(avsc["name"])
    # The shared schema, not json_schema()'s copy: encode() asks for it per record.
    return str(shared_schema(contract).get("title") or contract.__subject__)


def reading_codec(
    contract: type[Contract], codec: Codec | None, schema_registry: Mapping[str, Any] | None
) -> Codec:
    """The codec a consumer of ``contract`` reads with: ``codec`` (or the contract's
    default), and with a schema registry a ``RegistryCodec`` that also reads Confluent
    framing, keeping that codec's limits and writer schemas. A ``RegistryCodec`` given
    as ``codec`` is used as it is. Shared by ``ConsumerService`` and ``guarded_agent``
    so both read a topic alike."""
    base = codec_for(contract, codec)
    if schema_registry is None or isinstance(base, RegistryCodec):
        return base
    return RegistryCodec(
        schema_registry,
        wire_format=contract.__wire_format__,
        max_bytes=getattr(codec, "max_bytes", DEFAULT_MAX_BYTES),
        include_input=getattr(codec, "include_input", False),
        # Its single-object records of older writers still decode, as without a registry.
        writer_schemas=codec.writer_schemas if isinstance(codec, AvroCodec) else (),
        max_depth=getattr(codec, "max_depth", None),
    )


class RegistryCodec:
    """Confluent-framed Avro or JSON Schema, with the writer schemas from a registry.

    Args:
        schema_registry: the registry client's config dict (``url``, basic auth, TLS),
            or an existing ``SchemaRegistryClient``.
        wire_format: ``"avro"`` or ``"json"``, the contract's ``__wire_format__``.
        subject_name_strategy: how the producer names the subject of a topic's values.
        auto_register: let the producer register a contract schema the subject lacks.
            Off by default: schemas are registered by CI (``streamguard schema register
            --registry``), where compatibility is checked and reviewed.
        max_bytes, include_input: as for ``JsonCodec`` and ``AvroCodec``.
        max_depth: as for ``JsonCodec``: JSON nested deeper is refused before parsing.
        writer_schemas: as for ``AvroCodec``: the other schemas single-object (``C3 01``)
            records may have been written with, such as older versions' ``.avsc``.
    """

    def __init__(
        self,
        schema_registry: Mapping[str, Any] | Any,
        *,
        wire_format: str = "json",
        subject_name_strategy: SubjectNameStrategy = "TopicNameStrategy",
        auto_register: bool = False,
        max_bytes: int = DEFAULT_MAX_BYTES,
        include_input: bool = False,
        writer_schemas: Iterable[Mapping[str, Any]] = (),
        max_depth: int | None = None,
    ) -> None:
        if isinstance(schema_registry, Mapping):
            self._client = new_client(schema_registry)
            self._shown = redact_registry_config(schema_registry)
        else:
            self._client = schema_registry
            self._shown = redact_registry_config(schema_registry.config())
        self._url = str(self._shown.get("url", "?"))
        if wire_format not in ("json", "avro"):
            raise ConfigurationError(f"wire_format must be 'json' or 'avro', got {wire_format!r}")
        subject_name(subject_name_strategy, "t", "r")  # refuses an unknown strategy now
        self.wire_format = wire_format
        self.content_type = AVRO_CONTENT_TYPE if wire_format == "avro" else JSON_CONTENT_TYPE
        self.subject_name_strategy = subject_name_strategy
        self.auto_register = auto_register
        self.max_bytes = max_bytes
        self.include_input = include_input
        self._json = JsonCodec(
            max_bytes=max_bytes, max_depth=max_depth, include_input=include_input
        )
        self._avro = AvroCodec(
            max_bytes=max_bytes, writer_schemas=writer_schemas, include_input=include_input
        )
        self._writers: dict[int, tuple[str, Any]] = {}
        self._refused: dict[int, tuple[float, str]] = {}  # id -> (until, why)
        self._ids: dict[tuple[type[BaseModel], str], int] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"RegistryCodec({self._shown}, wire_format={self.wire_format!r}, "
            f"subject_name_strategy={self.subject_name_strategy!r}, "
            f"auto_register={self.auto_register})"
        )

    @property
    def client(self) -> Any:
        """The ``SchemaRegistryClient`` in use."""
        return self._client

    # -- writing -------------------------------------------------------------------

    def encode(self, event: BaseModel) -> bytes:
        """Encode under ``RecordNameStrategy``, the one strategy that needs no topic.

        Producers use ``encoder(contract, topic)``, which follows the configured strategy.
        """
        if self.subject_name_strategy != "RecordNameStrategy":
            raise ConfigurationError(
                f"{self.subject_name_strategy} names subjects after the topic: encode with "
                "encoder(contract, topic), as GuardedProducer does"
            )
        contract = type(event)
        assert issubclass(contract, Contract)
        return self.encoder(contract, "")(event)

    def subject_for(self, contract: type[Contract], topic: str) -> str:
        """The subject ``contract``'s values on ``topic`` are registered under, by the
        naming strategy (``<topic>-value`` with the default one)."""
        return subject_name(self.subject_name_strategy, topic, record_name(contract))

    def encoder(self, contract: type[Contract], topic: str) -> Callable[[BaseModel], bytes]:
        """A function framing events of ``contract`` for ``topic`` with their schema id.

        Looks the id up once (registering the schema first if ``auto_register``).

        Raises:
            ConfigurationError: the schema is not registered under the subject (and
                ``auto_register`` is off), or the registry refused to register it.
            RegistryUnavailable: the registry could not be reached.
        """
        subject = self.subject_for(contract, topic)
        prefix = MAGIC_BYTE + self._schema_id(contract, subject).to_bytes(4, "big")
        if contract.__wire_format__ == "avro":
            avro = self._avro
            # AvroCodec writes C3 01 + 8-byte fingerprint + body: keep the body.
            return lambda event: prefix + avro.encode(event)[10:]
        by_alias = wire_by_alias(contract)
        # No serializer warnings: they quote values (see JsonCodec.encode).
        return lambda event: prefix + json_bytes(event, by_alias)

    def _schema_id(self, contract: type[Contract], subject: str) -> int:
        known = self._ids.get((contract, subject))
        if known is not None:
            return known
        from confluent_kafka.schema_registry import Schema

        text, schema_type = registry_schema(contract)
        schema = Schema(text, schema_type)
        try:
            found = call(self._url, lambda: self._client.lookup_schema(subject, schema))
            schema_id = int(found.schema_id)
        except RegistryUnavailable:
            raise
        except Exception as exc:
            if registry_error_code(exc) not in (40401, 40403):
                raise ConfigurationError(
                    f"schema registry refused the lookup of {contract.__qualname__} under "
                    f"{subject!r}: {exc}"
                ) from None
            if not self.auto_register:
                raise ConfigurationError(self._unregistered(contract, subject, schema)) from None
            schema_id = self._register(contract, subject, schema)
        self._ids[(contract, subject)] = schema_id
        return schema_id

    def _unregistered(self, contract: type[Contract], subject: str, schema: Any) -> str:
        """Why ``contract`` has no id under ``subject``, and the fix.

        ``schema register --registry`` registers under the contract's ``__subject__``
        unless pyproject maps it to a ``registry_subject``, while the producer looks the
        schema up under the strategy's subject: with TopicNameStrategy, ``<topic>-value``.
        So "run schema register" alone sent users in a circle; the hint names the mapping.
        """
        text = (
            f"{contract.__qualname__} (v{contract.__version__}) is not registered under "
            f"subject {subject!r} ({self.subject_name_strategy}) at {self._url}"
        )
        own = contract.__subject__
        if subject == own:
            return (
                f"{text}; register it with `streamguard schema register --registry URL`, "
                "or pass auto_register=True"
            )
        try:  # one more request, on this error path only: is it where the CLI puts it?
            found = int(call(self._url, lambda: self._client.lookup_schema(own, schema)).schema_id)
        except Exception:  # not there, or the registry failed now: the hint stands alone
            found = None
        if found is not None:
            text += (
                f"; it is registered under subject {own!r} (id {found}), where `streamguard "
                "schema register --registry` puts a contract with no registry_subject"
            )
        return (
            f"{text}. To register it under {subject!r}, set registry_subject = "
            f'"{subject}" under [tool.streamguard.subjects."{own}"] in pyproject.toml, '
            "then run `streamguard schema register --registry URL`; or pass "
            "auto_register=True"
        )

    def _register(self, contract: type[Contract], subject: str, schema: Any) -> int:
        try:
            return int(call(self._url, lambda: self._client.register_schema(subject, schema)))
        except RegistryUnavailable:
            raise
        except Exception as exc:
            raise ConfigurationError(
                f"schema registry refused to register {contract.__qualname__} under "
                f"{subject!r}: {exc}"
            ) from None

    # -- reading -------------------------------------------------------------------

    def decode(self, data: bytes | None, contract: type[C]) -> C:
        """Decode one message; see ``decoder`` for the errors raised."""
        return self.decoder(contract)(data)

    def decoder(self, contract: type[C]) -> Callable[[bytes | None], C]:
        """A function decoding any of the three framings into a validated ``contract``."""
        from fastavro.read import SchemaResolutionError  # not at import: see AvroCodec.encode

        from streamguard.schema.avro import recursive

        json_decode = self._json.decoder(contract)
        is_avro = getattr(contract, "__wire_format__", "json") == "avro"
        single_object = self._avro.decoder(contract) if is_avro else json_decode
        reader = self._avro._schema(contract)[0] if is_avro else None
        validate = contract.__pydantic_validator__.validate_python
        # Per id: (type, writer, reader) as fastavro takes them, and the fastavro reader
        # for that writer (see avro_reader). A writer with the reader's canonical form
        # reads as the reader without resolution: fastavro compares the two schemas on
        # every record otherwise, which made Confluent framing 13% slower than
        # single-object encoding (benchmarks/registry_decode.py).
        plans: dict[int, tuple[str, Any, Any, Callable[..., Any]]] = {}
        unresolved: dict[int, str] = {}  # id -> its error text, composed once
        fetch = self._writer
        max_bytes, include_input = self.max_bytes, self.include_input

        def plan(schema_id: int) -> tuple[str, Any, Any, Callable[..., Any]]:
            kind, writer = fetch(schema_id)
            if kind == "AVRO" and reader is not None and _canonical(writer) == _canonical(reader):
                writer = reader
            read = avro_reader(kind == "AVRO" and recursive(writer))
            found = plans[schema_id] = (kind, writer, None if writer is reader else reader, read)
            return found

        def decode(data: bytes | None) -> C:
            if not data or data[0] != 0:  # tombstones and empty values fail in there
                if data and data[0] == 0xC3:
                    return single_object(data)
                try:
                    return json_decode(data)
                except DecodeError as exc:
                    # Byte 01 starts no JSON: it is Confluent's schema-GUID framing, which
                    # "Invalid JSON" would hide. Named here, off the path of a good record.
                    if data and data[0] == 1 and exc.reason == "decode_error":
                        raise DecodeError(GUID_FRAMING) from None
                    raise
            if len(data) > max_bytes:
                raise DecodeError(
                    f"message is {len(data)} bytes, over the limit of {max_bytes}",
                    reason="oversize",
                )
            if len(data) < HEADER_SIZE:
                raise DecodeError("Confluent framing cut short: no 4-byte schema id")
            schema_id = int.from_bytes(data[1:5], "big")
            kind, writer, resolve_to, schemaless_reader = plans.get(schema_id) or plan(schema_id)
            if kind == "JSON":
                return json_decode(data[5:])
            try:
                record = schemaless_reader(io.BytesIO(data[5:]), writer, resolve_to)
            except SchemaResolutionError:
                why = unresolved.get(schema_id)
                if why is None:  # a comparison of the two schemas: once per id
                    why = unresolved[schema_id] = self._unresolvable(schema_id, writer, reader)
                raise DecodeError(why) from None
            except Exception as exc:  # fastavro raises many types on corrupt input
                raise DecodeError(
                    f"corrupt Avro record (schema id {schema_id}): {type(exc).__name__}"
                ) from None
            try:
                event: C = validate(record, strict=False)  # as AvroCodec's, for the same reason
            except ValidationError as exc:
                raise _classify(exc, contract, include_input, record) from None
            return event

        return decode

    def _unresolvable(self, schema_id: int, writer: Any, reader: Any) -> str:
        """Why Avro cannot resolve ``writer`` to ``reader``: the first mismatch our rules
        find (schema text: field paths and type names, never record values, so not
        fastavro's message, which may quote an enum symbol read), and where to look up
        the id's subjects, since the writer's subject may not be the contract's."""
        text = (
            f"writer schema id {schema_id} cannot be resolved to the contract's Avro schema"
            f"{first_mismatch(writer, reader)}"
        )
        # No request for the id's subjects here: this runs inside decode, on the event
        # loop of an async service or a Faust agent, which a registry request must not
        # hold (see ``unfetched``). The id names them: GET /schemas/ids/{id}/versions.
        return (
            f"{text}; the producer's schema (id {schema_id}; its subjects: GET "
            f"/schemas/ids/{schema_id}/versions) and the contract's must be made compatible"
        )

    def unfetched(self, data: bytes | None) -> Callable[[], object] | None:
        """The registry request decoding ``data`` would block on first, or None.

        A record with a schema id not seen yet fetches its writer schema, for up to the
        registry client's timeout. Lanes on an event loop (async services, guarded Faust
        agents) ask this first and run the request in a thread, so that one slow answer
        does not stall every partition's handlers. It raises as decoding would.
        """
        if data and data[0] == 0 and len(data) >= HEADER_SIZE:
            schema_id = int.from_bytes(data[1:5], "big")
            # An oversize record is refused before its id is looked at, as ``decode``
            # does: it must not wait for a registry that is down.
            if (
                schema_id not in self._writers
                and schema_id <= MAX_SCHEMA_ID
                and len(data) <= self.max_bytes
                and self._refusal(schema_id) is None
            ):
                return functools.partial(self._writer, schema_id)
        return None  # decoding needs no request, or raises a remembered refusal at once

    def _refusal(self, schema_id: int) -> str | None:
        """Why the registry refused ``schema_id``, if it did less than
        ``REFUSED_ID_SECONDS`` ago."""
        refused = self._refused.get(schema_id)
        return refused[1] if refused is not None and time.monotonic() < refused[0] else None

    def _remembered(self, schema_id: int) -> tuple[str, Any] | None:
        """The writer schema of an id already fetched, else None; raises the refusal of
        an id refused a moment ago. Read without the lock: dict lookups are atomic."""
        known = self._writers.get(schema_id)
        if known is None and (why := self._refusal(schema_id)) is not None:
            raise DecodeError(why)
        return known

    def _writer(self, schema_id: int) -> tuple[str, Any]:
        """The writer schema of an id, fetched once (never one request per record).

        A refusal is remembered too, for ``REFUSED_ID_SECONDS``: the records of an id
        the registry does not know are dead-lettered without asking it each time.
        """
        if schema_id > MAX_SCHEMA_ID:
            raise DecodeError(
                f"schema id {schema_id} is out of range: registries number schemas up to "
                f"{MAX_SCHEMA_ID}; not a Confluent-framed record, or a corrupt one"
            )
        # Answered from memory without the lock, which is held for the whole of a
        # request: an event loop decoding a known or refused id must not wait behind
        # another id's request (``unfetched``).
        known = self._remembered(schema_id)
        if known is not None:
            return known
        with self._lock:  # one request per id, however many workers ask at once
            known = self._remembered(schema_id)  # another worker may have asked meanwhile
            if known is not None:
                return known
            now = time.monotonic()
            try:
                writer = _parse_writer(schema_id, self._fetch(schema_id))
            except DecodeError as exc:
                if len(self._refused) >= MAX_REFUSED_IDS:
                    self._refused.clear()
                self._refused[schema_id] = (now + REFUSED_ID_SECONDS, str(exc))
                raise
            self._refused.pop(schema_id, None)
            self._writers[schema_id] = writer
            return writer

    def _fetch(self, schema_id: int) -> Any:
        """Ask the registry for an id's schema; its 40403 is a ``DecodeError``.

        Only the registry's own "schema not found" (error code 40403) is the record's
        fault. Any other failed answer says the URL leads to no registry's API (a 404
        with no registry error code: a wrong path or a proxy's own page) or the
        registry failed: it is ``RegistryUnavailable``, and the record waits for the
        configuration or the registry to be fixed instead of being dead-lettered.
        """
        try:
            schema = call(self._url, lambda: self._client.get_schema(schema_id))
        except RegistryUnavailable:
            raise
        except Exception as exc:
            if registry_error_code(exc) == 40403:
                raise DecodeError(
                    f"schema id {schema_id} is unknown to the schema registry (40403): "
                    "written against another registry, or its schema was deleted"
                ) from None
            status = getattr(exc, "http_status_code", None)
            answer = f"HTTP {status}" if isinstance(status, int) else type(exc).__name__
            raise self._no_schema(schema_id, answer) from None
        if not isinstance(schema.schema_str, str) or not isinstance(schema.schema_type, str | None):
            # A 200 whose JSON is no schema (``{}`` from another service's catch-all
            # route): the URL's fault, not the record's. The client cached it by id, and
            # would answer every later request with it: forget it, so it is asked again.
            clear = getattr(self._client, "clear_caches", None)
            if clear is not None:
                clear()
            raise self._no_schema(schema_id, "HTTP 200 without a schema")
        return schema

    def _no_schema(self, schema_id: int, answer: str) -> RegistryUnavailable:
        what = (
            f"schema registry at {self._url} gave no schema for id {schema_id} "
            f"({answer}, not the registry's 40403): check the URL"
        )
        return RegistryUnavailable(
            f"{what}; records needing it wait and are retried", registry=what
        )


def _canonical(parsed: Any) -> str:
    import fastavro.schema

    return str(fastavro.schema.to_parsing_canonical_form(parsed))


def _parse_writer(schema_id: int, schema: Any) -> tuple[str, Any]:
    schema_type = (schema.schema_type or "AVRO").upper()
    if schema.references:
        raise DecodeError(
            f"writer schema id {schema_id} uses schema references, which streamguard does not "
            "resolve; register a self-contained schema"
        )
    if schema_type == "JSON":
        return "JSON", None
    if schema_type != "AVRO":
        raise DecodeError(f"writer schema id {schema_id} is {schema_type}; expected AVRO or JSON")
    import fastavro

    from streamguard.schema.avro import zero_width_array

    try:
        raw = json.loads(schema.schema_str)
        parsed = fastavro.parse_schema(raw)
        where = zero_width_array(raw)
    except Exception as exc:  # fastavro's many parse errors; the text names no data
        raise DecodeError(
            f"writer schema id {schema_id} is not a valid Avro schema ({type(exc).__name__})"
        ) from None
    if where is not None:
        # Checked once per id, not per record. A producer's schema is untrusted input:
        # its records are dead letters, never a consumer stuck on one of them.
        raise DecodeError(
            f"writer schema id {schema_id} has an array whose items take no bytes in Avro, "
            f"{where}: a record of a few bytes could claim a billion items and hold the "
            "consumer for minutes, so streamguard does not read this schema"
        )
    return "AVRO", parsed

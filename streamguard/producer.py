"""The guarded producer: validate before sending, stamp schema identity, lose nothing.

A ``GuardedProducer`` refuses an event that breaks its contract before any byte leaves
the process, stamps each record with the contract's subject, version and fingerprint,
and keeps track of every delivery report, so that ``flush()`` can say which records the
broker did not take.
"""

from __future__ import annotations

import atexit
import logging
import socket
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError, Message, Producer
from pydantic import BaseModel, ValidationError

from streamguard import headers as h
from streamguard.codecs import DEFAULT_MAX_BYTES, Codec, codec_for
from streamguard.contracts import Contract, shared_schema
from streamguard.delivery import enqueue
from streamguard.errors import (
    ConfigurationError,
    ContractViolation,
    DeliveryFailed,
    RegistryUnavailable,
    error_details,
)
from streamguard.observe.librdkafka_logs import LOGGER as LIBRDKAFKA_LOGGER
from streamguard.observe.logs import frames
from streamguard.registry.client import (
    SubjectNameStrategy,
    redact_registry_config,
    resolve_registry_config,
)
from streamguard.registry.codec import RegistryCodec
from streamguard.roundtrip import round_trip_changes
from streamguard.settings import client_config, redact
from streamguard.topics import check_topic_name

log = logging.getLogger("streamguard.producer")

# acks=all and idempotence: a record the broker acknowledged is durable and not
# duplicated by the client's own retries.
PRODUCER_DEFAULTS: Mapping[str, Any] = {
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 5,
}

# How long, at interpreter exit, the producers still alive may take in all to deliver
# the records they queue (or report them): the client, destroyed, would drop them.
EXIT_FLUSH = 5.0

Key = str | bytes | None
# The record is None only when the client refused it before queueing (no report comes).
DeliveryCallback = Callable[[KafkaError | None, Message | None], None]


def encode_key(key: Key) -> bytes | None:
    """Keys are bytes on the wire; text keys are UTF-8."""
    return utf8(key, "the key") if isinstance(key, str) else key


def utf8(text: str, what: str, advice: str = ": pass it as bytes") -> bytes:
    """``text`` in UTF-8, for a key, a header's value or name a caller gave as ``str``.

    Raises:
        ConfigurationError: ``text`` holds a lone surrogate (bytes decoded with
            ``surrogateescape``, say). Python's own error quotes the character and holds
            the whole text, which may be a value the caller's data carried.
    """
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        raise ConfigurationError(
            f"{what} holds a lone surrogate (U+D800 to U+DFFF) at position {exc.start}, "
            f"which UTF-8 cannot encode{advice}; nothing was sent"
        ) from None


class GuardedProducer:
    """Sends contract-checked events to Kafka.

    Args:
        bootstrap_servers: the cluster; else ``kafka_config`` or the environment.
        kafka_config: librdkafka settings, passed through (TLS, SASL, ...). Secrets in
            it are never logged or shown in ``repr``.
        service_name: stamped as ``sg-producer``; defaults to ``client.id`` or the host.
        codec: the wire format for every contract sent; by default each contract's
            own (``JsonCodec()``, or ``AvroCodec()`` for ``__wire_format__ = "avro"``).
        schema_registry: a Confluent-compatible schema registry (the
            ``SchemaRegistryClient`` config dict, or a URL); else
            ``$STREAMGUARD_SCHEMA_REGISTRY_URL``. With one, values are written in the
            Confluent wire format (``00`` + the schema id), which Confluent's
            deserializers read. Credentials in it are never shown.
        subject_name_strategy: the subject a topic's schema is looked up under:
            ``TopicNameStrategy`` (``<topic>-value``, the default),
            ``RecordNameStrategy`` or ``TopicRecordNameStrategy``.
        auto_register: register a contract's schema the subject lacks (checked by the
            registry's compatibility level). Off by default: a missing schema fails
            ``send()`` with a ``ConfigurationError`` saying how to register it.
    """

    def __init__(
        self,
        bootstrap_servers: str | None = None,
        *,
        kafka_config: Mapping[str, Any] | None = None,
        service_name: str | None = None,
        codec: Codec | None = None,
        schema_registry: Mapping[str, Any] | str | None = None,
        subject_name_strategy: SubjectNameStrategy = "TopicNameStrategy",
        auto_register: bool = False,
    ) -> None:
        self._config = client_config(bootstrap_servers, kafka_config, PRODUCER_DEFAULTS)
        self._registry_config = resolve_registry_config(schema_registry)
        self._registry_codecs: dict[str, RegistryCodec] = {}
        if self._registry_config is not None:
            # The codec's limits hold as a consumer's reading_codec keeps them: without
            # them, a producer sent what a consumer with the same codec dead-letters.
            limits: dict[str, Any] = {
                "subject_name_strategy": subject_name_strategy,
                "auto_register": auto_register,
                "max_bytes": getattr(codec, "max_bytes", DEFAULT_MAX_BYTES),
                "include_input": getattr(codec, "include_input", False),
                "max_depth": getattr(codec, "max_depth", None),
            }
            # One client for both formats: its id cache is shared.
            avro = RegistryCodec(self._registry_config, wire_format="avro", **limits)
            json_codec = RegistryCodec(avro.client, wire_format="json", **limits)
            self._registry_codecs = {"avro": avro, "json": json_codec}
        self._encoders: dict[tuple[type[BaseModel], str], Callable[[BaseModel], bytes]] = {}
        self.service_name = (
            service_name or str(self._config.get("client.id") or "") or socket.gethostname()
        )
        self._codec = codec
        self._codecs: dict[type[BaseModel], Codec] = {}
        # librdkafka's lines through the logger the services' clients use, whose filter
        # masks the values its CONFWARN lines quote (a secret given to the wrong key):
        # without one, librdkafka wrote them to stderr itself. A config's own wins. The
        # lines are handed over when the client is served: each send() and flush().
        self._producer = Producer({"logger": LIBRDKAFKA_LOGGER, **self._config})
        self._lock = threading.Lock()
        self._failures: list[tuple[str, str]] = []
        self._stamps: dict[type[BaseModel], list[tuple[str, bytes]]] = {}
        self._decoders: dict[type[BaseModel], Callable[[bytes | None], BaseModel]] = {}
        _alive.add(self)

    def __repr__(self) -> str:
        shown = f"service_name={self.service_name!r}, config={redact(self._config)}"
        if self._registry_config is not None:
            shown += f", schema_registry={redact_registry_config(self._registry_config)}"
        return f"GuardedProducer({shown})"

    def send(
        self,
        topic: str,
        event: BaseModel | Mapping[str, Any],
        *,
        key: Key = None,
        headers: Mapping[str, str | bytes] | list[tuple[str, str | bytes]] | None = None,
        contract: type[Contract] | None = None,
        partition: int | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        """Validate, encode and queue one event; delivery is reported at ``flush()``.

        Args:
            event: a contract instance, or a mapping validated against ``contract``.
            contract: required when ``event`` is a mapping; checked against the type of
                ``event`` otherwise.
            headers: extra headers, appended after streamguard's own; not ``sg-*`` ones
                nor ``content-type`` (see ``caller_header``).
            on_delivery: also called with each delivery report, for callers that track
                records one by one.

        The bytes about to be sent are decoded and validated exactly as a consumer of
        the contract will, so an instance built with ``model_construct`` or changed
        after construction cannot slip through, and neither can one over the size limit;
        and the decoded event must equal the one given (see ``streamguard.roundtrip``),
        so no consumer gets a value other than the one sent.

        Raises:
            ContractViolation: the event breaks its contract, or would reach consumers
                changed (errors of type ``round_trip`` name each such field); nothing
                was sent.
            DecodeError: the encoded event is over the codec's size limit, or a
                consumer's codec would refuse to read it back (JSON nested deeper than
                ``max_depth``, an integer too long for the parser); nothing was sent.
            ConfigurationError: the topic name is illegal or the contract is missing
                or not an ``sg.Contract``, or (with a registry) its schema is not
                registered under the subject, or a header is streamguard's own, or a
                ``str`` key or header value holds a lone surrogate (see ``utf8``).
            RegistryUnavailable: the schema registry could not be reached; nothing sent.
        """
        model = self._validated(event, contract)
        record_headers = list(self._stamp(type(model)))
        try:
            value = self._encoder(type(model), check_topic_name(topic))(model)
            # Reading the record back may ask the registry too (a new id is cached under
            # its subject, not for the decoder's lookup by id alone).
            decoded = self._decoders[type(model)](value)
        except RegistryUnavailable as exc:
            # The registry's own text tells what a consumer does (its records wait and
            # are retried); here nothing was queued, and nothing retries it.
            raise RegistryUnavailable(
                f"{exc.registry}; nothing was sent: send it again once the registry answers",
                registry=exc.registry,
            ) from None
        changes = round_trip_changes(model, decoded)
        if changes:
            raise ContractViolation(getattr(model, "__subject__", "?"), changes)
        if headers:
            items = headers.items() if isinstance(headers, Mapping) else headers
            record_headers.extend(
                (caller_header(k), utf8(v, f"header {k!r}") if isinstance(v, str) else v)
                for k, v in items
            )
        self.produce_raw(
            check_topic_name(topic),
            value,
            key=encode_key(key),
            headers=record_headers,
            partition=partition,
            on_delivery=on_delivery,
        )

    def produce_raw(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None,
        headers: list[tuple[str, bytes | None]] | list[tuple[str, bytes]],
        partition: int | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        """Queue already-encoded bytes, waiting for room when the local queue is full.

        A record the client refuses outright is reported by ``flush()`` as well.

        Raises:
            ConfigurationError: a header name holds a lone surrogate (see
                ``check_header_name``); nothing was sent.
        """
        for name, _ in headers or ():  # None too, as confluent-kafka takes it
            check_header_name(name)

        def report(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                with self._lock:
                    self._failures.append((msg.topic() or topic, err.str()))
            if on_delivery is not None:
                _call(on_delivery, err, msg)

        refused = enqueue(
            self._producer,
            topic,
            value,
            key=key,
            headers=headers,
            partition=partition,
            on_delivery=report,
        )
        if refused is not None:
            # No delivery report will come: report it like one, at flush(), rather than
            # leak a raw client exception from send().
            with self._lock:
                self._failures.append((topic, refused.str()))
            if on_delivery is not None:
                _call(on_delivery, refused, None)  # no record object exists for it
            return
        self._producer.poll(0)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for every queued record's delivery report.

        Raises:
            DeliveryFailed: some records were refused (``failures`` names each), or
                not acknowledged in time (``pending`` counts them: still queued, they may
                yet be delivered). Failures are reported once.
        """
        remaining = self._producer.flush(timeout)
        with self._lock:
            failures, self._failures = self._failures, []
        if failures or remaining:
            raise DeliveryFailed(failures, pending=remaining, timeout=timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Flush; the underlying client is released when the object is collected."""
        self.flush(timeout)

    def __enter__(self) -> GuardedProducer:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is None:
            self.close()
            return
        # The block failed: what it queued is still delivered (or told of), but a
        # DeliveryFailed must not take the place of the block's own exception.
        try:
            self.close()
        except DeliveryFailed as exc:
            _log_undelivered("records not delivered as the producer's block failed", exc)

    def _validated(
        self, event: BaseModel | Mapping[str, Any], contract: type[Contract] | None
    ) -> BaseModel:
        if isinstance(event, BaseModel):
            if contract is not None and not isinstance(event, contract):
                raise ConfigurationError(
                    f"event is a {type(event).__qualname__}, not the {contract.__qualname__} "
                    "given as contract"
                )
            if not isinstance(event, Contract):
                raise ConfigurationError(
                    f"{type(event).__qualname__} is not an sg.Contract: the producer stamps "
                    "subject and version headers, so it needs __subject__ and __version__"
                )
            return event
        if contract is None:
            raise ConfigurationError(
                "send() got a mapping without a contract: pass contract=YourContract so "
                "the producer can validate it"
            )
        if not (isinstance(contract, type) and issubclass(contract, Contract)):
            raise ConfigurationError(
                f"contract {getattr(contract, '__qualname__', type(contract).__name__)} is "
                "not an sg.Contract: the producer stamps subject and version headers, so it "
                "needs __subject__ and __version__"
            )
        try:
            return contract.model_validate(event)
        except ValidationError as exc:
            details = error_details(exc, schema=shared_schema(contract), record=lambda: event)
            raise ContractViolation(contract.__subject__, details) from None

    def _encoder(self, model_type: type[BaseModel], topic: str) -> Callable[[BaseModel], bytes]:
        """The encoding of a contract for a topic: the codec's, or framed with the id of
        its schema under the topic's subject (looked up once per contract and topic)."""
        codec = self._codecs[model_type]
        if not isinstance(codec, RegistryCodec):
            return codec.encode
        encoder = self._encoders.get((model_type, topic))
        if encoder is None:
            assert issubclass(model_type, Contract)
            encoder = self._encoders[(model_type, topic)] = codec.encoder(model_type, topic)
        return encoder

    def _stamp(self, model_type: type[BaseModel]) -> list[tuple[str, bytes]]:
        stamp = self._stamps.get(model_type)
        if stamp is None:
            assert issubclass(model_type, Contract)
            codec = self._codecs[model_type] = self._registry_codecs.get(
                model_type.__wire_format__
            ) or codec_for(model_type, self._codec)
            self._decoders[model_type] = codec.decoder(model_type)
            # Published last: a thread that finds the stamp finds the codec and decoder
            # too (threads may share a producer; two may set a contract up at once).
            stamp = self._stamps[model_type] = stamp_headers(model_type, codec, self.service_name)
        return stamp


# The producers not yet collected, flushed at interpreter exit (weakly held: one dropped
# is collected as before).
_alive: weakref.WeakSet[GuardedProducer] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    """Deliver what live producers still queue when the interpreter exits, within
    ``EXIT_FLUSH`` in all, and log what was not delivered: a process that ended without
    ``close()`` lost its queued records without a word (and its unreported failures)."""
    deadline = time.monotonic() + EXIT_FLUSH
    for producer in list(_alive):
        try:
            if not len(producer._producer) and not producer._failures:
                continue
            producer.flush(max(0.0, deadline - time.monotonic()))
        except DeliveryFailed as exc:
            _log_undelivered("records not delivered at exit", exc)
        except RuntimeError:
            continue  # its client was closed already


def _log_undelivered(message: str, exc: DeliveryFailed) -> None:
    # failures ends with one pair standing for all the pending records: not a failure.
    failed = len(exc.failures) - (1 if exc.pending else 0)
    log.warning(message, extra={"failed": failed, "pending": exc.pending})


def stamp_headers(contract: type[Contract], codec: Codec, producer: str) -> list[tuple[str, bytes]]:
    """The ``sg-*`` headers a guarded producer stamps on every record of ``contract``."""
    return [
        (h.SUBJECT, contract.__subject__.encode()),
        (h.VERSION, str(contract.__version__).encode()),
        (h.FINGERPRINT, contract.fingerprint().encode()),
        (h.PRODUCER, producer.encode()),
        (h.CONTENT_TYPE, codec.content_type.encode()),
    ]


def _call(on_delivery: DeliveryCallback, err: KafkaError | None, msg: Message | None) -> None:
    """The caller's delivery callback, which runs inside ``poll()`` or ``flush()``: what
    it raised came out of a later ``send()``, whose record had been queued (a caller
    retrying it sent it twice), or out of ``flush()`` instead of its report. Logged with
    its class and frames (its text may quote the record), never raised."""
    try:
        on_delivery(err, msg)
    except Exception as exc:
        log.error(
            "on_delivery callback failed",
            extra={"error_class": type(exc).__name__, "traceback": frames(exc)},
        )


def check_header_name(name: str) -> None:
    """Refuse a header name UTF-8 cannot encode.

    Raises:
        ConfigurationError: ``name`` holds a lone surrogate. confluent-kafka does not
            check this encoding: such a name crashed the process (a segfault).
    """
    utf8(name, "a header name", advice="")  # a name is text: no bytes to pass instead


def caller_header(name: str) -> str:
    """``name``, if a caller may add a header so named to a guarded record.

    Consumers read a header's last value, and a caller's headers follow the stamps: an
    ``sg-subject`` of its own would override the stamped one, passing a record off as
    another contract's. ``sg-`` is streamguard's namespace (its DLQ and replay tools
    write theirs with a plain client, not through ``send``), ``content-type`` a stamp.

    Raises:
        ConfigurationError: the name is one of those (in any case), or UTF-8 cannot
            encode it.
    """
    check_header_name(name)
    folded = name.lower()
    if folded.startswith("sg-") or folded == h.CONTENT_TYPE:
        raise ConfigurationError(
            f"header {name!r} is streamguard's own (sg-* and content-type are its stamps "
            "and its tools' headers): a caller cannot set it"
        )
    return name

"""The guarded producer: validate before sending, stamp schema identity, lose nothing.

A ``GuardedProducer`` refuses an event that breaks its contract before any byte leaves
the process, stamps each record with the contract's subject, version and fingerprint,
and keeps track of every delivery report, so that ``flush()`` can say which records the
broker did not take.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError, Message, Producer
from pydantic import BaseModel, ValidationError

from streamguard import headers as h
from streamguard.codecs import Codec, codec_for
from streamguard.contracts import Contract
from streamguard.delivery import enqueue
from streamguard.errors import (
    ConfigurationError,
    ContractViolation,
    DeliveryFailed,
    error_details,
)
from streamguard.settings import client_config, redact
from streamguard.topics import check_topic_name

# acks=all and idempotence: a record the broker acknowledged is durable and not
# duplicated by the client's own retries.
PRODUCER_DEFAULTS: Mapping[str, Any] = {
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 5,
}

Key = str | bytes | None
# The record is None only when the client refused it before queueing (no report comes).
DeliveryCallback = Callable[[KafkaError | None, Message | None], None]


def encode_key(key: Key) -> bytes | None:
    """Keys are bytes on the wire; text keys are UTF-8."""
    return key.encode() if isinstance(key, str) else key


class GuardedProducer:
    """Sends contract-checked events to Kafka.

    Args:
        bootstrap_servers: the cluster; else ``kafka_config`` or the environment.
        kafka_config: librdkafka settings, passed through (TLS, SASL, ...). Secrets in
            it are never logged or shown in ``repr``.
        service_name: stamped as ``sg-producer``; defaults to ``client.id`` or the host.
        codec: the wire format for every contract sent; by default each contract's
            own (``JsonCodec()``, or ``AvroCodec()`` for ``__wire_format__ = "avro"``).
    """

    def __init__(
        self,
        bootstrap_servers: str | None = None,
        *,
        kafka_config: Mapping[str, Any] | None = None,
        service_name: str | None = None,
        codec: Codec | None = None,
    ) -> None:
        self._config = client_config(bootstrap_servers, kafka_config, PRODUCER_DEFAULTS)
        self.service_name = (
            service_name or str(self._config.get("client.id") or "") or socket.gethostname()
        )
        self._codec = codec
        self._codecs: dict[type[BaseModel], Codec] = {}
        self._producer = Producer(self._config)
        self._lock = threading.Lock()
        self._failures: list[tuple[str, str]] = []
        self._stamps: dict[type[BaseModel], list[tuple[str, bytes]]] = {}
        self._decoders: dict[type[BaseModel], Callable[[bytes | None], BaseModel]] = {}

    def __repr__(self) -> str:
        return f"GuardedProducer(service_name={self.service_name!r}, config={redact(self._config)})"

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
            headers: extra headers, appended after streamguard's own.
            on_delivery: also called with each delivery report, for callers that track
                records one by one.

        The bytes about to be sent are decoded and validated exactly as a consumer of
        the contract will, so an instance built with ``model_construct`` or changed
        after construction cannot slip through, and neither can one over the size limit.

        Raises:
            ContractViolation: the event breaks its contract; nothing was sent.
            DecodeError: the encoded event is over the codec's size limit; nothing sent.
            ConfigurationError: the topic name is illegal or the contract is missing.
        """
        model = self._validated(event, contract)
        record_headers = list(self._stamp(type(model)))
        value = self._codecs[type(model)].encode(model)
        self._decoders[type(model)](value)
        if headers:
            items = headers.items() if isinstance(headers, Mapping) else headers
            record_headers.extend((k, v.encode() if isinstance(v, str) else v) for k, v in items)
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
        """

        def report(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                with self._lock:
                    self._failures.append((msg.topic() or topic, err.str()))
            if on_delivery is not None:
                on_delivery(err, msg)

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
                on_delivery(refused, None)  # no record object exists for it
            return
        self._producer.poll(0)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for every queued record's delivery report.

        Raises:
            DeliveryFailed: some records were refused, or not acknowledged in time;
                ``failures`` names each. Failures are reported once.
        """
        remaining = self._producer.flush(timeout)
        with self._lock:
            failures, self._failures = self._failures, []
        if remaining:
            failures.append(("*", f"{remaining} record(s) not acknowledged within {timeout}s"))
        if failures:
            raise DeliveryFailed(failures)

    def close(self, timeout: float = 30.0) -> None:
        """Flush; the underlying client is released when the object is collected."""
        self.flush(timeout)

    def __enter__(self) -> GuardedProducer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

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
        try:
            return contract.model_validate(event)
        except ValidationError as exc:
            details = error_details(exc, schema=contract.json_schema())
            raise ContractViolation(contract.__subject__, details) from None

    def _stamp(self, model_type: type[BaseModel]) -> list[tuple[str, bytes]]:
        stamp = self._stamps.get(model_type)
        if stamp is None:
            assert issubclass(model_type, Contract)
            codec = self._codecs[model_type] = codec_for(model_type, self._codec)
            stamp = [
                (h.SUBJECT, model_type.__subject__.encode()),
                (h.VERSION, str(model_type.__version__).encode()),
                (h.FINGERPRINT, model_type.fingerprint().encode()),
                (h.PRODUCER, self.service_name.encode()),
                (h.CONTENT_TYPE, codec.content_type.encode()),
            ]
            self._stamps[model_type] = stamp
            self._decoders[model_type] = codec.decoder(model_type)
        return stamp

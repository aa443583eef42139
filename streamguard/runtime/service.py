"""``ConsumerService``: the base class of a Kafka consumer service.

A subclass declares its topic, contract, group and policies as class attributes and
implements ``handle``. The class checks the declaration when it is created, so a typo
fails at import with a hint, not at the first message in production.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Mapping
from types import FrameType
from typing import Any, ClassVar, Literal

from confluent_kafka import Consumer, KafkaException, Producer
from prometheus_client import CollectorRegistry

from streamguard import headers as h
from streamguard.codecs import DEFAULT_MAX_BYTES, Codec, codec_for
from streamguard.contracts import Contract
from streamguard.errors import BrokerUnavailable, ConfigurationError
from streamguard.observe.health import HealthServer
from streamguard.observe.metrics import ServiceMetrics
from streamguard.policy import DEFAULT_TRANSIENT, RetryPolicy
from streamguard.registry.client import redact_registry_config, resolve_registry_config
from streamguard.registry.codec import RegistryCodec
from streamguard.runtime.context import MessageContext
from streamguard.runtime.options import ServiceOptions
from streamguard.runtime.pipeline import ServicePipeline
from streamguard.runtime.poller import Poller
from streamguard.schema.drift import FirstSeen, producer_of
from streamguard.settings import client_config, redact
from streamguard.topics import check_topic_name, create_topics

log = logging.getLogger("streamguard.runtime")

DriftPolicy = Literal["count", "dead_letter"]

# Offsets are committed by the runtime, only for final outcomes: auto commit off.
# A new group starts at the earliest offset, since skipping a backlog loses messages.
# cooperative-sticky rebalances move only the partitions that change owner.
# librdkafka's fetch queue is capped at 16 MiB (default 64 MiB) because the runtime
# buffers per partition itself; fetch.queue.backoff.ms=10 (default 1000) keeps that
# smaller queue from stalling a fast consumer when it fills (BROKER.md measured this).
CONSUMER_DEFAULTS: Mapping[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "partition.assignment.strategy": "cooperative-sticky",
    "queued.max.messages.kbytes": 16384,
    "fetch.queue.backoff.ms": 10,
}
# The DLQ producer must be durable (acks=all, idempotent), must take records as large
# as any the consumer can fetch, and must give up on a broken DLQ in bounded time so
# that the runtime can report it and retry, rather than waiting five minutes.
DLQ_PRODUCER_DEFAULTS: Mapping[str, Any] = {
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 5,
    "message.max.bytes": 64 * 1024 * 1024,
    "message.timeout.ms": 30_000,
}
# Consumer-only librdkafka properties: the DLQ producer shares the user's kafka_config
# (security settings above all) but not these, which librdkafka would warn about.
_CONSUMER_ONLY = (
    "group.",
    "session.",
    "heartbeat.",
    "max.poll.",
    "auto.",
    "fetch.",
    "partition.assignment",
    "queued.",
    "enable.auto",
    "isolation.level",
    "enable.partition.eof",
    "check.crcs",
    "topic.metadata.refresh",
)


class ConsumerService:
    """Consume one topic, validate each message against a contract, handle it.

    Every message ends ``handled`` or dead-lettered before its offset is committed.
    Subclass it::

        class Billing(sg.ConsumerService):
            topic = "orders"
            contract = OrderPlaced
            group_id = "billing"
            retry = sg.RetryPolicy(attempts=3, base_delay=0.2, max_budget_ms=30_000)

            def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

        Billing(bootstrap_servers="127.0.0.1:9092").run()

    Class attributes:
        topic, contract, group_id: required.
        dead_letter_topic: defaults to ``f"{topic}.dlq"``.
        retry: the ``RetryPolicy`` for transient failures.
        transient: exception types retried; everything else is permanent.
        codec: the wire format; by default ``JsonCodec()`` for JSON contracts and
            ``AvroCodec()`` for Avro ones (``__wire_format__ = "avro"``).
        drift: ``"count"`` (default) counts and logs messages written with another
            schema, checking a sample under load (``ServiceOptions.drift_sample``);
            ``"dead_letter"`` checks every message and dead-letters those (reason
            ``schema_drift``).
        include_error_text: publish any handler exception's text in DLQ headers; by
            default only streamguard's own errors keep their text (see deadletter).
        options: ``ServiceOptions`` (batching, buffers, timeouts).
        service_name: stamped as ``sg-dlq-service``; the class name by default.
    """

    topic: ClassVar[str]
    contract: ClassVar[type[Contract]]
    group_id: ClassVar[str]
    dead_letter_topic: ClassVar[str | None] = None
    retry: ClassVar[RetryPolicy] = RetryPolicy()
    transient: ClassVar[tuple[type[BaseException], ...]] = DEFAULT_TRANSIENT
    codec: ClassVar[Codec | None] = None
    drift: ClassVar[DriftPolicy] = "count"
    include_error_text: ClassVar[bool] = False
    options: ClassVar[ServiceOptions] = ServiceOptions()
    service_name: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if inspect.isabstract(cls) or cls.__dict__.get("__abstract__", False):
            return
        _check_declaration(cls)

    def __init__(
        self,
        bootstrap_servers: str | None = None,
        *,
        kafka_config: Mapping[str, Any] | None = None,
        dead_letter_config: Mapping[str, Any] | None = None,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        registry: CollectorRegistry | None = None,
        schema_registry: Mapping[str, Any] | str | None = None,
    ) -> None:
        """Configure the service; nothing connects until ``run()``.

        Args:
            bootstrap_servers: the cluster; else ``kafka_config`` or
                ``STREAMGUARD_BOOTSTRAP_SERVERS``.
            kafka_config: librdkafka settings for both consumer and DLQ producer
                (security.protocol, sasl.*, ssl.*, ...). Secrets are never logged.
            dead_letter_config: overrides for the DLQ producer only, e.g. a separate
                cluster's ``bootstrap.servers``.
            metrics_port: serve ``/metrics``, ``/healthz`` and ``/readyz`` there.
            registry: the prometheus registry; a private one by default, so that two
                services in one process do not collide. Pass
                ``prometheus_client.REGISTRY`` to share the global one.
            schema_registry: a Confluent-compatible schema registry (the
                ``SchemaRegistryClient`` config dict, or a URL); else
                ``$STREAMGUARD_SCHEMA_REGISTRY_URL``. With one, records in the Confluent
                wire format are read too; credentials in it are never shown.
        """
        cls = type(self)
        self.name = cls.service_name or cls.__name__
        self.dead_letter_topic_name = cls.dead_letter_topic or f"{cls.topic}.dlq"
        consumer_defaults = {**CONSUMER_DEFAULTS, "group.id": cls.group_id}
        self._consumer_config = client_config(bootstrap_servers, kafka_config, consumer_defaults)
        shared = {
            k: v
            for k, v in self._consumer_config.items()
            if k != "group.id" and not k.startswith(_CONSUMER_ONLY)
        }
        dlq = {**DLQ_PRODUCER_DEFAULTS, **shared, **(dead_letter_config or {})}
        self._dlq_config = dlq
        self._schema_registry = resolve_registry_config(schema_registry)
        self.wire_codec: Codec = _wire_codec(cls, self._schema_registry)
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = ServiceMetrics(self.registry)
        self.metrics.ready.set_function(lambda: 1.0 if self.health()["ready"] else 0.0)
        self._metrics_port = metrics_port
        self._metrics_host = metrics_host
        self._stop_requested = threading.Event()
        self._poller: Poller | None = None
        self._pipeline: ServicePipeline | None = None
        self._running = False
        self._drift_seen = FirstSeen()

    def __repr__(self) -> str:
        shown = f"config={redact(self._consumer_config)}"
        if self._schema_registry is not None:
            shown += f", schema_registry={redact_registry_config(self._schema_registry)}"
        return f"{type(self).__name__}({shown})"

    # -- what a subclass writes --------------------------------------------------------

    def handle(self, event: Any, ctx: MessageContext) -> Awaitable[None] | None:
        """Process one valid event. Return to mark it handled; raise to fail it.

        Raise ``sg.TransientError`` (or a type in ``transient``) to have it retried,
        ``sg.PermanentError`` (or anything else) to dead-letter it at once.
        May be ``async def``.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement handle(event, ctx)")

    def handle_tombstone(self, ctx: MessageContext) -> Awaitable[None] | None:
        """Process a record with a null value (a tombstone, as compaction uses them).

        Not overridden: tombstones are dead-lettered as ``decode_error``, since a
        contract describes a value and a null has none. Override it to process deletes.
        """
        raise NotImplementedError

    def on_start(self) -> None:
        """Called once the service reached the cluster, before the first poll."""

    def on_stop(self) -> None:
        """Called after the final commit, before the clients close."""

    def on_assign(self, partitions: list[int]) -> None:
        """Called when partitions are assigned (on the poll thread: keep it short)."""

    def on_revoke(self, partitions: list[int]) -> None:
        """Called after revoked partitions were settled and committed."""

    @property
    def handles_tombstones(self) -> bool:
        return type(self).handle_tombstone is not ConsumerService.handle_tombstone

    def report_drift(self, headers: h.Headers | None, kinds: tuple[str, ...]) -> None:
        """Count drift and log the first occurrence per producer and kind."""
        subject = type(self).contract.__subject__
        producer = producer_of(headers)
        for kind in kinds:
            self.metrics.schema_drift.labels(subject, kind).inc()
            if self._drift_seen(producer, kind):
                log.warning(
                    "schema drift",
                    extra={
                        "subject": subject,
                        "kind": kind,
                        "producer": producer,
                        "writer_version": h.last(headers, h.VERSION),
                        "reader_version": type(self).contract.__version__,
                    },
                )

    # -- lifecycle ---------------------------------------------------------------------

    def run(self) -> None:
        """Consume until ``stop()``, SIGTERM or SIGINT; then settle, commit and close.

        Raises:
            BrokerUnavailable: the cluster was not reachable within the startup timeout.
        """
        if self._running:
            raise RuntimeError("this service is already running")
        self._running = True
        restore = self._install_signal_handlers()
        loop, loop_thread = self._start_event_loop()
        consumer: Consumer | None = None
        health: HealthServer | None = None
        try:
            consumer = Consumer(
                {**self._consumer_config, "logger": _librdkafka_log, "on_commit": self._on_commit}
            )
            self._connect(consumer)
            dlq = Producer({**self._dlq_config, "logger": _librdkafka_log})
            pipeline = ServicePipeline(self, dlq, self.metrics, loop)
            poller = Poller(consumer, pipeline, type(self).options, self.on_assign, self.on_revoke)
            self._pipeline, self._poller = pipeline, poller
            if self._metrics_port is not None:
                health = HealthServer(
                    self.registry, self.health, self._metrics_host, self._metrics_port
                )
                health.start()
            poller.subscribe()
            self.on_start()
            log.info(
                "service started",
                extra={
                    "service": self.name,
                    "topic": type(self).topic,
                    "group": type(self).group_id,
                    "dlq": self.dead_letter_topic_name,
                    "schema_registry": self._schema_registry
                    and redact_registry_config(self._schema_registry)["url"],
                },
            )
            if self._stop_requested.is_set():
                poller.stopping.set()
            try:
                poller.run()
            finally:
                poller.shutdown()  # also on failure: settle, commit, stop the workers
            self.on_stop()
            dlq.flush(type(self).options.shutdown_timeout)
        finally:
            if consumer is not None:
                try:
                    consumer.close()
                except (KafkaException, RuntimeError) as exc:
                    log.warning("consumer close failed", extra={"error": str(exc)})
            if health is not None:
                health.stop()
            if loop is not None and loop_thread is not None:
                loop.call_soon_threadsafe(loop.stop)
                loop_thread.join(timeout=5)
            restore()
            self._running = False
            log.info("service stopped", extra={"service": self.name})

    def stop(self) -> None:
        """Ask ``run()`` to finish: stop fetching, settle in-flight work, commit, close."""
        self._stop_requested.set()
        if self._poller is not None:
            self._poller.stopping.set()

    def health(self) -> dict[str, Any]:
        """Readiness and its reasons, as ``/readyz`` reports it."""
        poller, pipeline = self._poller, self._pipeline
        checks = {
            "running": self._running and not self._stop_requested.is_set(),
            "assigned": bool(poller and poller.assigned_once),
            "polling": bool(poller and time.monotonic() - poller.last_poll < 10.0),
            "dlq_writable": bool(pipeline and pipeline.dlq_writable),
        }
        report: dict[str, Any] = {"ready": all(checks.values()), "checks": checks}
        if pipeline and not pipeline.dlq_writable:
            report["dlq_error"] = pipeline.dlq_last_error
        return report

    @property
    def ready(self) -> bool:
        return bool(self.health()["ready"])

    def _on_commit(self, error: Any, partitions: list[Any]) -> None:
        if self._poller is not None:
            self._poller.on_commit(error, partitions)

    def _connect(self, consumer: Consumer) -> None:
        cls = type(self)
        timeout = cls.options.startup_timeout
        try:
            metadata = consumer.list_topics(timeout=timeout)
        except KafkaException as exc:
            raise BrokerUnavailable(
                f"could not reach Kafka at {self._consumer_config['bootstrap.servers']} within "
                f"{timeout:g}s ({exc.args[0].str()}); check bootstrap_servers, the network "
                "and security settings"
            ) from None
        topics = metadata.topics
        if cls.topic not in topics:
            log.warning("topic does not exist yet; waiting for it", extra={"topic": cls.topic})
        if self.dead_letter_topic_name not in topics:
            partitions = len(topics[cls.topic].partitions) if cls.topic in topics else 1
            try:
                create_topics(
                    self._consumer_config["bootstrap.servers"],
                    [self.dead_letter_topic_name],
                    partitions=partitions,
                    config={
                        k: v
                        for k, v in self._dlq_config.items()
                        if k.startswith(("security.", "sasl.", "ssl."))
                    },
                )
                log.info("created dead-letter topic", extra={"dlq": self.dead_letter_topic_name})
            except ConfigurationError as exc:
                log.warning(
                    "could not create the dead-letter topic; create it before the "
                    "first dead letter",
                    extra={"dlq": self.dead_letter_topic_name, "error": str(exc)},
                )

    def _install_signal_handlers(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("stop requested by signal", extra={"signal": signal.Signals(signum).name})
            self.stop()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

    def _start_event_loop(
        self,
    ) -> tuple[asyncio.AbstractEventLoop | None, threading.Thread | None]:
        if not (
            inspect.iscoroutinefunction(self.handle)
            or inspect.iscoroutinefunction(self.handle_tombstone)
        ):
            return None, None
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="streamguard-loop", daemon=True)
        thread.start()
        return loop, thread


_librdkafka_log = logging.getLogger("streamguard.librdkafka")


def _wire_codec(cls: type[ConsumerService], schema_registry: dict[str, Any] | None) -> Codec:
    """The class's codec; with a schema registry, one that also reads Confluent framing."""
    if schema_registry is None or isinstance(cls.codec, RegistryCodec):
        return codec_for(cls.contract, cls.codec)
    base = cls.codec
    return RegistryCodec(
        schema_registry,
        wire_format=cls.contract.__wire_format__,
        max_bytes=getattr(base, "max_bytes", DEFAULT_MAX_BYTES),
        include_input=getattr(base, "include_input", False),
    )


def _check_declaration(cls: type[ConsumerService]) -> None:
    name = cls.__qualname__
    for attr in ("topic", "contract", "group_id"):
        if not hasattr(cls, attr):
            raise ConfigurationError(
                f"{name} must set the class attribute {attr!r} "
                "(topic, contract and group_id are required)"
            )
    check_topic_name(cls.topic)
    if cls.dead_letter_topic is not None:
        check_topic_name(cls.dead_letter_topic)
        if cls.dead_letter_topic == cls.topic:
            raise ConfigurationError(f"{name}.dead_letter_topic must differ from its topic")
    if not (isinstance(cls.contract, type) and issubclass(cls.contract, Contract)):
        raise ConfigurationError(
            f"{name}.contract must be an sg.Contract subclass, got {cls.contract!r}"
        )
    codec_for(cls.contract, cls.codec)
    if not isinstance(cls.group_id, str) or not cls.group_id:
        raise ConfigurationError(f"{name}.group_id must be a non-empty string")
    if not isinstance(cls.retry, RetryPolicy):
        raise ConfigurationError(f"{name}.retry must be an sg.RetryPolicy(...)")
    if not isinstance(cls.transient, tuple) or not all(
        isinstance(t, type) and issubclass(t, BaseException) for t in cls.transient
    ):
        raise ConfigurationError(
            f"{name}.transient must be a tuple of exception types, e.g. "
            "(sg.TransientError, TimeoutError)"
        )
    if cls.drift not in ("count", "dead_letter"):
        raise ConfigurationError(f"{name}.drift must be 'count' or 'dead_letter'")
    if cls.handle is ConsumerService.handle:
        raise ConfigurationError(f"{name} must implement handle(self, event, ctx)")
    if not isinstance(cls.options, ServiceOptions):
        raise ConfigurationError(f"{name}.options must be an sg.ServiceOptions(...)")

"""``ConsumerService``: the base class of a Kafka consumer service.

A subclass declares its topic, contract, group and policies as class attributes and
implements ``handle``. The class checks the declaration when it is created, so a typo
fails at import with a hint, not at the first message in production.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Mapping
from typing import Any, ClassVar

from prometheus_client import CollectorRegistry

from streamguard.codecs import Codec, codec_for
from streamguard.contracts import Contract
from streamguard.deadletter import Failure
from streamguard.errors import ConfigurationError
from streamguard.policy import DEFAULT_TRANSIENT, CircuitBreaker, RetryPolicy, check_transient
from streamguard.registry.client import redact_registry_config, resolve_registry_config
from streamguard.registry.codec import reading_codec
from streamguard.runtime.context import MessageContext
from streamguard.runtime.options import ServiceOptions
from streamguard.runtime.runner import Hooks, ServiceRuntime
from streamguard.runtime.spec import (
    DriftPolicy,
    Ordering,
    ServiceSpec,
    check_handler,
    check_hook,
)
from streamguard.settings import client_config, redact
from streamguard.topics import (
    MAX_RECORD_BYTES,
    check_default_dead_letter_topic,
    check_topic_name,
    dead_letter_topic_for,
)

# Offsets are committed by the runtime, only for final outcomes: auto commit off.
# A new group starts at the earliest offset, since skipping a backlog loses messages.
# cooperative-sticky rebalances move only the partitions that change owner.
# librdkafka's fetch queue is capped at 2 MiB (librdkafka's default: 64 MiB) because the
# runtime buffers per partition itself, and fetching resumes 1 ms after the queue fills
# (librdkafka's default: 1000): a consumer that drains the queue within one backoff would
# otherwise wait for the rest of it. Against 4 MiB and 10 ms: about 10 MiB less RSS over
# a million records, the same rate on 0.3 to 4.6 KB events, a third more on 20 KB ones
# that validate fast (benchmarks/fetch_queue.py, docs/benchmark-notes.md).
# A fetch of partitions with nothing new is held by the broker for fetch.wait.max.ms
# (librdkafka's default: 500), and a partition resumed after a retry waits for it: 100 ms
# tripled a sync service's rate with retries next to an idle partition, for 0.1% of a
# core more while idle (docs/consumer.md, librdkafka defaults).
CONSUMER_DEFAULTS: Mapping[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "partition.assignment.strategy": "cooperative-sticky",
    "queued.max.messages.kbytes": 2048,
    "fetch.queue.backoff.ms": 1,
    "fetch.wait.max.ms": 100,
}
# The DLQ producer must be durable (acks=all, idempotent), must take records as large
# as any the consumer can fetch, and must give up on a broken DLQ in bounded time so
# that the runtime can report it and retry, rather than waiting five minutes.
DLQ_PRODUCER_DEFAULTS: Mapping[str, Any] = {
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 5,
    "message.max.bytes": MAX_RECORD_BYTES,
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
        retry: the ``RetryPolicy`` for transient failures, per message.
        breaker: the ``CircuitBreaker``: a service-wide retry budget, and a breaker
            that pauses the service while a dependency fails most calls (on by default).
        transient: exception types retried (``sg.TransientError`` is, whatever it
            lists); everything else is permanent.
        codec: the wire format; by default ``JsonCodec()`` for JSON contracts and
            ``AvroCodec()`` for Avro ones (``__wire_format__ = "avro"``).
        drift: ``"count"`` (default) counts and logs messages written with another
            schema, checking a sample under load (``ServiceOptions.drift_sample``);
            ``"dead_letter"`` checks every message and dead-letters those (reason
            ``schema_drift``).
        include_error_text: publish any handler exception's text in DLQ headers; by
            default only streamguard's own errors keep their text (see deadletter).
        ordering: ``"partition"`` (default): one record at a time per partition, in
            offset order. ``"key"``: one at a time per record key, different keys of a
            partition concurrently (up to ``options.max_in_flight``), for handlers
            that wait on I/O. ``"none"``: any order, for idempotent handlers.
        options: ``ServiceOptions`` (batching, buffers, timeouts, handlers in flight).
        service_name: stamped as ``sg-dlq-service``; the class name by default.
    """

    topic: ClassVar[str]
    contract: ClassVar[type[Contract]]
    group_id: ClassVar[str]
    dead_letter_topic: ClassVar[str | None] = None
    retry: ClassVar[RetryPolicy] = RetryPolicy()
    breaker: ClassVar[CircuitBreaker] = CircuitBreaker()
    transient: ClassVar[tuple[type[BaseException], ...]] = DEFAULT_TRANSIENT
    codec: ClassVar[Codec | None] = None
    drift: ClassVar[DriftPolicy] = "count"
    ordering: ClassVar[Ordering] = "partition"
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
            registry: the prometheus registry; a private one by default. Pass
                ``prometheus_client.REGISTRY`` to share the global one; the services
                of one process may share one (docs/consumer.md, *Metrics and health*).
            schema_registry: a Confluent-compatible schema registry (the
                ``SchemaRegistryClient`` config dict, or a URL); else
                ``$STREAMGUARD_SCHEMA_REGISTRY_URL``. With one, records in the Confluent
                wire format are read too; credentials in it are never shown.
        """
        cls = type(self)
        if cls is ConsumerService or inspect.isabstract(cls) or cls.__dict__.get("__abstract__"):
            raise ConfigurationError(
                f"{cls.__qualname__} is a base class, not a service to run: run a subclass "
                "that declares topic, contract, group_id and handle"
            )
        consumer_config = client_config(
            bootstrap_servers, kafka_config, {**CONSUMER_DEFAULTS, "group.id": cls.group_id}
        )
        _refuse_auto_commit(consumer_config)
        if not str(consumer_config["group.id"]).strip():
            # librdkafka makes no group queue for it, and confluent-kafka then aborts
            # the process (a failed C assertion, exit 134) when the consumer is built.
            raise ConfigurationError(
                "kafka_config group.id is empty: leave it out to consume in the class's "
                f"group_id ({cls.group_id!r}), or name another group"
            )
        # Nor message.max.bytes: a dead letter is a record the consumer received, up to
        # 100 MiB, and a kafka_config's (librdkafka's 1 MB default, copied from a
        # producer's config) made a larger one unwritable, and the DLQ stuck for good.
        shared = {
            k: v
            for k, v in consumer_config.items()
            if k not in ("group.id", "message.max.bytes") and not k.startswith(_CONSUMER_ONLY)
        }
        # One private attribute holds all runtime state, and the runtime reads only the
        # spec built here: a subclass may use any attribute name of its own.
        self.__schema_registry = resolve_registry_config(schema_registry)
        # The group it consumes in, which kafka_config (or ``run -X group.id=``) may
        # override, is the one its logs and dead letters name.
        self.__group_id = str(consumer_config["group.id"])
        self.__runtime = ServiceRuntime(
            self._spec(),
            consumer_config=consumer_config,
            dead_letter_config={
                **DLQ_PRODUCER_DEFAULTS,
                **shared,
                **(dead_letter_config or {}),
            },
            registry=registry if registry is not None else CollectorRegistry(),
            hooks=Hooks(self.on_start, self.on_stop, self.on_assign, self.on_revoke),
            metrics_port=metrics_port,
            metrics_host=metrics_host,
        )

    def _spec(self) -> ServiceSpec:
        cls = type(self)
        return ServiceSpec(
            name=service_name(cls),
            topic=cls.topic,
            contract=cls.contract,
            group_id=self.__group_id,
            dead_letter_topic=cls.dead_letter_topic or dead_letter_topic_for(cls.topic),
            retry=cls.retry,
            transient=tuple(cls.transient),
            codec=reading_codec(cls.contract, cls.codec, self.__schema_registry),
            drift=cls.drift,
            ordering=cls.ordering,
            breaker=cls.breaker,
            include_error_text=cls.include_error_text,
            options=cls.options,
            handle=self.handle,
            handle_tombstone=(
                self.handle_tombstone
                if cls.handle_tombstone is not ConsumerService.handle_tombstone
                else None
            ),
            on_dead_letter=(
                self.on_dead_letter
                if cls.on_dead_letter is not ConsumerService.on_dead_letter
                else None
            ),
        )

    def __repr__(self) -> str:
        shown = f"config={redact(self.__runtime.consumer_config)}"
        if self.__schema_registry is not None:
            shown += f", schema_registry={redact_registry_config(self.__schema_registry)}"
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
        """Called once the final commit is sent (the consumer's close confirms it),
        before the clients close; also when ``run()`` ends with an error, so that it can
        release what ``on_start`` acquired.

        When the run is failing, an exception it raises is logged and ``run()`` raises
        the run's own error; after a clean stop, ``run()`` raises the hook's.
        """

    def on_assign(self, partitions: list[int]) -> None:
        """Called when partitions are assigned (on whichever thread polls: keep it short)."""

    def on_revoke(self, partitions: list[int]) -> None:
        """Called after revoked partitions were settled and committed."""

    def on_dead_letter(self, ctx: MessageContext, failure: Failure) -> None:
        """Called once a message is durably dead-lettered (the broker acknowledged it).

        An extension point for alerting, auditing or counting by customer: ``failure``
        says why (``reason``, ``error``, ``attempts``). It runs on the thread serving
        delivery reports, so keep it short; an exception it raises is logged and
        changes nothing (the message's outcome is already final).
        """

    # -- lifecycle ---------------------------------------------------------------------

    def run(self) -> None:
        """Consume until ``stop()``, SIGTERM or SIGINT; then settle, commit and close.

        Raises:
            BrokerUnavailable: the cluster was not reachable within the startup timeout.
        """
        self.__runtime.run()

    def stop(self, *, hurry: bool = False) -> None:
        """Ask ``run()`` to finish: stop fetching, settle in-flight work, commit, close.

        ``hurry``: also end the stop's waits (for handlers, fetched records and dead
        letters) at once, as a second SIGTERM or Ctrl-C does; what has no outcome yet
        stays uncommitted and is delivered again after the restart.
        """
        self.__runtime.stop(hurry)

    def health(self) -> dict[str, Any]:
        """Readiness and its checks, as ``/readyz`` reports it (``health()["ready"]``)."""
        return self.__runtime.health()


def service_name(cls: type[ConsumerService]) -> str:
    """The name a service class's log lines and dead letters give it (``sg-dlq-service``)."""
    return cls.service_name or cls.__name__


def _refuse_auto_commit(config: Mapping[str, Any]) -> None:
    """A ``kafka_config`` turning on both of librdkafka's automatic offset store and
    commit is a ConfigurationError.

    Together they commit each record's offset a few seconds after it is fetched, whether
    or not it was handled or dead-lettered: a crash or rebalance then skips records that
    never had an outcome. (Either alone commits nothing: the runtime commits explicit
    offsets and stores none.)
    """

    def on(key: str) -> bool:
        # librdkafka reads true, t and 1 as true; Python's True reaches it as "true".
        return str(config[key]).strip().lower() in ("true", "t", "1")

    if on("enable.auto.commit") and on("enable.auto.offset.store"):
        raise ConfigurationError(
            "kafka_config turns on enable.auto.commit and enable.auto.offset.store: "
            "librdkafka would then commit each record as it is fetched, before it is "
            "handled or dead-lettered, and a crash would skip it. A service commits "
            "each record's offset itself, once it has its outcome: leave both out"
        )


def _check_declaration(cls: type[ConsumerService]) -> None:
    name = cls.__qualname__
    for attr in ("topic", "contract", "group_id"):
        if not hasattr(cls, attr):
            raise ConfigurationError(
                f"{name} must set the class attribute {attr!r} "
                "(topic, contract and group_id are required), or set __abstract__ = True "
                "if it is a base shared by services"
            )
    check_topic_name(cls.topic)
    if cls.dead_letter_topic is not None:
        check_topic_name(cls.dead_letter_topic)
        if cls.dead_letter_topic == cls.topic:
            raise ConfigurationError(f"{name}.dead_letter_topic must differ from its topic")
    else:
        check_default_dead_letter_topic(cls.topic, name)
    if not (isinstance(cls.contract, type) and issubclass(cls.contract, Contract)):
        raise ConfigurationError(
            f"{name}.contract must be an sg.Contract subclass, got {cls.contract!r}"
        )
    if cls.contract.__abstract__:
        raise ConfigurationError(
            f"{name}.contract is {cls.contract.__qualname__}, a base for contracts "
            "(__abstract__ = True): name a contract with a __subject__ and __version__"
        )
    codec_for(cls.contract, cls.codec)
    if not isinstance(cls.group_id, str) or not cls.group_id:
        raise ConfigurationError(f"{name}.group_id must be a non-empty string")
    if not isinstance(cls.retry, RetryPolicy):
        raise ConfigurationError(f"{name}.retry must be an sg.RetryPolicy(...)")
    if not isinstance(cls.breaker, CircuitBreaker):
        raise ConfigurationError(
            f"{name}.breaker must be an sg.CircuitBreaker(...) "
            "(sg.CircuitBreaker(enabled=False) turns it off)"
        )
    if not isinstance(cls.transient, tuple) or not all(
        isinstance(t, type) and issubclass(t, BaseException) for t in cls.transient
    ):
        raise ConfigurationError(
            f"{name}.transient must be a tuple of exception types, e.g. "
            "(sg.TransientError, TimeoutError)"
        )
    check_transient(cls.transient, f"{name}.transient")
    if cls.ordering not in ("partition", "key", "none"):
        raise ConfigurationError(
            f"{name}.ordering must be 'partition' (one record at a time per partition), "
            "'key' (one at a time per key, keys concurrently) or 'none' (any order)"
        )
    if cls.drift not in ("count", "dead_letter"):
        raise ConfigurationError(f"{name}.drift must be 'count' or 'dead_letter'")
    if cls.handle is ConsumerService.handle:
        raise ConfigurationError(f"{name} must implement handle(self, event, ctx)")
    check_handler(cls.handle, f"{name}.handle")
    if cls.handle_tombstone is not ConsumerService.handle_tombstone:
        check_handler(cls.handle_tombstone, f"{name}.handle_tombstone")
    for hook in ("on_start", "on_stop", "on_assign", "on_revoke", "on_dead_letter"):
        if getattr(cls, hook) is not getattr(ConsumerService, hook):
            check_hook(getattr(cls, hook), f"{name}.{hook}")
    if not isinstance(cls.options, ServiceOptions):
        raise ConfigurationError(f"{name}.options must be an sg.ServiceOptions(...)")

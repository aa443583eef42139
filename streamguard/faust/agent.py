"""``guarded_agent``: a Faust agent with the guard of a ``ConsumerService``.

What Faust does on its own, and what this changes (faust-streaming 0.15.3):

- A topic with ``value_type=bytes`` still JSON-decodes values, and a non-JSON value
  crashes the agent after Faust acked it. The source is declared with raw key and value
  serializers; streamguard's codec decodes and validates, so every failure becomes a
  dead letter.
- Faust acks an event whose agent raised, and commits past events still in flight when
  acks arrive out of order (issue #606). The agent iterates ``stream.noack().events()``
  in one actor, runs one handler per partition at a time (see ``lane``), never lets an
  exception escape, and acks only a final outcome.
- Faust waits for every unacknowledged event before a rebalance or shutdown completes.
  A retry backoff stops when either begins, and the event is left for redelivery.
- Faust drops the acked offsets of revoked partitions before its revoke-time commit;
  ``_RevokeCommit`` commits them, so a rebalance does not redeliver acked events.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import random
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Literal

from aiokafka.admin.config_resource import ConfigResourceType
from aiokafka.protocol.admin import DescribeConfigsRequest
from faust.agents import Agent
from faust.transport.drivers.aiokafka import server_list
from faust.types import ChannelT
from prometheus_client import CollectorRegistry

from streamguard.codecs import Codec
from streamguard.contracts import Contract
from streamguard.deadletter import REASONS, DeadLetterHeaders, DeadLetterLog, Reason
from streamguard.errors import ConfigurationError
from streamguard.faust.lane import Lane, through_wrapper
from streamguard.observe.metrics import ServiceMetrics
from streamguard.policy import DEFAULT_TRANSIENT, RetryPolicy, check_transient
from streamguard.registry.client import resolve_registry_config
from streamguard.registry.codec import reading_codec
from streamguard.runtime.context import MessageContext
from streamguard.runtime.drift import DRIFT_SAMPLE, DriftCheck
from streamguard.runtime.outcomes import RetryLog, RetryState
from streamguard.runtime.spec import async_only_inside, check_handler, is_async
from streamguard.topics import (
    check_default_dead_letter_topic,
    check_topic_name,
    dead_letter_max_message_bytes,
    message_bytes_value,
    warn_if_dead_letter_topic_small,
)

log = logging.getLogger("streamguard.faust")

Handler = Callable[[Any, MessageContext], Awaitable[Any]]
DriftPolicy = Literal["count", "dead_letter"]

# One metrics set per registry: guarded agents of one app (or sharing a registry)
# label their series by topic instead of registering the families twice.
_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, ServiceMetrics] = weakref.WeakKeyDictionary()
_APP_REGISTRIES: weakref.WeakKeyDictionary[Any, CollectorRegistry] = weakref.WeakKeyDictionary()
_PEERS: weakref.WeakKeyDictionary[CollectorRegistry, list[GuardedAgent]] = (
    weakref.WeakKeyDictionary()
)


class _RevokeCommit:
    """Commits, at a rebalance, the offsets acked since Faust's last interval commit.

    Faust (0.15.3) forgets the acked offsets of revoked partitions (``Consumer._acked``)
    before its own revoke-time commit (``wait_empty``), which then commits only what is
    acked while it waits: with the eager protocol every partition is revoked, so each
    rebalance delivered again, to whichever worker got the partition, every event acked
    in the last ``broker_commit_interval``. The acked lists are noted when the
    rebalance starts (called synchronously in the consumer's thread, before that) and
    put back and committed once Faust's revoke has waited for the events in flight.
    Work per rebalance only; one per app, for the topics of its guarded agents. Not
    under ``processing_guarantee="exactly_once"``, whose transactions Faust ends first.
    """

    def __init__(self, app: Any) -> None:
        self._app = weakref.ref(app)  # the app keeps this one, not the other way round
        self.topics: set[str] = set()
        self._noted: tuple[dict[Any, list[int]], dict[Any, int | None]] = ({}, {})
        started = app.on_rebalance_start

        def on_rebalance_start() -> None:
            try:
                self._note()
            except Exception as exc:  # Faust's internals moved: never in its rebalance's way
                self._noted = ({}, {})
                log.warning(
                    "could not note the acked offsets at a rebalance; they may come again",
                    extra={"error_class": type(exc).__name__},
                )
            started()

        app.on_rebalance_start = on_rebalance_start
        app.on_partitions_revoked.connect(self._commit_noted)

    def _note(self) -> None:
        app = self._app()
        if app is None or app.in_transaction:
            return
        consumer = app.consumer
        # Copies of the dicts, made in one step (the event loop's thread acks meanwhile);
        # the lists stay shared, so acks made before Faust drops them are in them too.
        self._noted = (dict(consumer._acked), dict(consumer._committed_offset))

    async def _commit_noted(self, sender: Any, revoked: Any, **kwargs: Any) -> None:
        (acked, committed), self._noted = self._noted, ({}, {})
        app = self._app()
        if app is None or not acked:
            return
        consumer = app.consumer
        put_back: dict[Any, list[int]] = {}
        for tp in revoked:
            offsets = acked.get(tp)
            if tp.topic not in self.topics or not offsets or consumer._acked.get(tp) is offsets:
                continue  # not one of ours, nothing acked, or not dropped by Faust
            index = consumer._acked_index[tp]
            fresh = [offset for offset in offsets if offset not in index]
            consumer._acked[tp].extend(fresh)
            index.update(fresh)
            if consumer._committed_offset.get(tp) is None:  # dropped too: its gap check
                consumer._committed_offset[tp] = committed.get(tp)
            put_back[tp] = fresh
        if not put_back:
            return
        # Never below what Faust committed while it waited (its _should_commit).
        await consumer.force_commit(set(put_back))
        for tp, fresh in put_back.items():
            # What a gap kept from the commit goes, as Faust would have dropped it: the
            # events come again after the rebalance and are acked anew.
            left = set(fresh)
            consumer._acked[tp][:] = [o for o in consumer._acked[tp] if o not in left]
            consumer._acked_index[tp].difference_update(left)


_REVOKE_COMMITS: weakref.WeakKeyDictionary[Any, _RevokeCommit] = weakref.WeakKeyDictionary()

# Faust's port for a ``kafka://`` URL that names none.
DEFAULT_KAFKA_PORT = 9092
# How long a topic's description may take at startup, as for a ConsumerService
# (runner.DLQ_CREATE_WAIT).
DESCRIBE_WAIT = 5.0


async def _max_message_bytes(client: Any, topic: str) -> int | None:
    """``topics.max_message_bytes`` asked through the app's own aiokafka ``client``:
    None when the description gives none or cannot be read (no ``DescribeConfigs``, no
    answer within ``DESCRIBE_WAIT``)."""
    # Every setting of the topic: a request for one by name made the embedded broker
    # (Tansu) close the connection, the app producer's.
    request = DescribeConfigsRequest([(ConfigResourceType.TOPIC, topic, None)])
    try:
        response = await asyncio.wait_for(
            client.send(client.get_random_node(), request), DESCRIBE_WAIT
        )
        ((error, _, _, _, entries),) = response.resources
    except Exception:
        return None
    if error:
        return None
    return next(
        (message_bytes_value(entry[1]) for entry in entries if entry[0] == "max.message.bytes"),
        None,
    )


def _metrics_for(registry: CollectorRegistry) -> ServiceMetrics:
    metrics = _METRICS.get(registry)
    if metrics is None:
        metrics = _METRICS[registry] = ServiceMetrics(registry, runtime="faust")
    return metrics


def guarded_agent(
    app: Any,
    topic: str,
    *,
    contract: type[Contract],
    dead_letter_topic: str | None = None,
    retry: RetryPolicy | None = None,
    transient: tuple[type[BaseException], ...] = DEFAULT_TRANSIENT,
    codec: Codec | None = None,
    drift: DriftPolicy = "count",
    drift_sample: int = DRIFT_SAMPLE,
    include_error_text: bool = False,
    sink: Iterable[Any] | None = None,
    name: str | None = None,
    registry: CollectorRegistry | None = None,
    partition_buffer: int = 1000,
    schema_registry: Mapping[str, Any] | str | None = None,
) -> Callable[[Handler], GuardedAgent]:
    """Declare ``async def handler(event, ctx)`` as a guarded Faust agent on ``topic``.

    The handler may be decorated (``functools.wraps`` kept), with an ``async def``
    wrapper or a plain ``def`` one that returns the coroutine, or be an object whose
    ``__call__`` is ``async def``; it runs on Faust's event loop.

    Args:
        app: the ``faust.App``.
        topic: the source topic; declared with raw serializers.
        contract: the ``sg.Contract`` every value must satisfy.
        dead_letter_topic: defaults to ``f"{topic}.dlq"``; created at startup.
        retry: the ``RetryPolicy`` for transient failures. Its ``max_budget_ms`` must
            stay within half the app's ``broker_rebalance_timeout`` (checked here).
        transient: exception types retried (``sg.TransientError`` is, whatever it
            lists); everything else is permanent.
        codec: the wire format; the contract's default codec if None. With a schema
            registry, it is wrapped in a ``RegistryCodec`` keeping its limits and
            ``writer_schemas``, as a ``ConsumerService``'s is (a ``RegistryCodec`` is
            used as it is).
        drift: ``"count"`` counts and logs schema drift; ``"dead_letter"`` dead-letters
            drifted messages (reason ``schema_drift``).
        drift_sample: under ``"count"``, check every message that comes 10 ms or more
            after its partition's last check, and every ``drift_sample``-th above that
            rate, as ``ServiceOptions.drift_sample`` does: a check of a message without
            the contract's fingerprint parses its value, a validation's cost.
        include_error_text: publish any handler exception's text in DLQ headers.
        sink: topics, agents or callables the handler's non-None results go to, as
            with a Faust agent; a result is confirmed before its event is acked.
        name: the agent's name and ``sg-dlq-service``; the handler's qualified name.
        registry: the prometheus registry; one private registry per app by default
            (``GuardedAgent.registry``). Series carry ``runtime="faust"``.
        partition_buffer: events held per partition ahead of its handler; at this mark
            the partition is paused in Faust's consumer (the others keep flowing) and
            resumed when half of them are done.
        schema_registry: a Confluent-compatible schema registry (the
            ``SchemaRegistryClient`` config dict, or a URL); else
            ``$STREAMGUARD_SCHEMA_REGISTRY_URL``, read at decoration. With one, records
            in the Confluent wire format are read too, as by a ``ConsumerService``.
    """
    policy = retry if retry is not None else RetryPolicy()

    def decorate(handler: Handler) -> GuardedAgent:
        return GuardedAgent(
            app,
            handler,
            topic=topic,
            contract=contract,
            dead_letter_topic=dead_letter_topic,
            retry=policy,
            transient=transient,
            codec=codec,
            drift=drift,
            drift_sample=drift_sample,
            include_error_text=include_error_text,
            sink=sink,
            name=name,
            registry=registry,
            partition_buffer=partition_buffer,
            schema_registry=schema_registry,
        )

    return decorate


class GuardedAgent:
    """A Faust agent that gives every event of its topic a final outcome before its ack.

    Built by ``guarded_agent``; ``agent`` is the underlying ``faust.Agent``.
    """

    def __init__(
        self,
        app: Any,
        handler: Handler,
        *,
        topic: str,
        contract: type[Contract],
        dead_letter_topic: str | None,
        retry: RetryPolicy,
        transient: tuple[type[BaseException], ...],
        codec: Codec | None,
        drift: DriftPolicy,
        drift_sample: int,
        include_error_text: bool,
        sink: Iterable[Any] | None,
        name: str | None,
        registry: CollectorRegistry | None,
        partition_buffer: int,
        schema_registry: Mapping[str, Any] | str | None = None,
    ) -> None:
        label = f"guarded_agent({getattr(handler, '__qualname__', handler)!r})"
        _check(app, handler, topic, contract, dead_letter_topic, retry, transient, drift, label)
        if partition_buffer < 1:
            raise ConfigurationError(f"{label}: partition_buffer must be at least 1")
        if drift_sample < 1:
            raise ConfigurationError(f"{label}: drift_sample must be at least 1")
        self.app = app
        self.handler = handler
        self.topic = topic
        self.contract = contract
        self.dead_letter_topic = dead_letter_topic or f"{topic}.dlq"
        self.retry = retry
        self.transient = tuple(transient)
        self.include_error_text = include_error_text
        self.sinks = list(sink or ())
        for target in self.sinks:
            if not (hasattr(target, "send") or callable(target)):
                raise ConfigurationError(
                    f"{label}: sink {target!r} has no send() and is not callable; pass a "
                    "topic, a Faust agent (a guarded agent's is its .agent) or a callable. "
                    "A sink gets the handler's result as it is returned."
                )
        self.name = name or _default_name(handler)
        # What the lanes call: the handler, or for a plain def wrapper of an async def
        # (functools.wraps kept), the wrapper with its coroutine awaited.
        self.call: Handler = (
            through_wrapper(handler, f"guarded agent {self.name}")
            if async_only_inside(handler)
            else handler
        )
        if self.name in app.agents:
            # Faust keeps one agent per name: the new one would silently replace the
            # other, whose topic would then never be consumed.
            raise ConfigurationError(
                f"{label}: the app already has an agent named {self.name!r} (the name "
                "defaults to the handler's qualified name); pass name=... to tell them apart"
            )
        # The registry as a ConsumerService finds it: without it, a worker configured
        # only by the environment dead-lettered every Confluent-framed record.
        wire = reading_codec(contract, codec, resolve_registry_config(schema_registry))
        self.decode = wire.decoder(contract)
        # A registry codec's request for a schema id it has not seen (which blocks), or
        # None: the lanes make it in a thread, off Faust's event loop, before decoding.
        self.unfetched: Callable[[bytes | None], Callable[[], object] | None] | None = getattr(
            wire, "unfetched", None
        )
        self.dead_letter_headers = DeadLetterHeaders.for_contract(
            contract,
            group_id=self.group_id,
            service=self.name,
            include_error_text=include_error_text,
        )
        # Whose lines, named as a ConsumerService's are: a worker may run several agents.
        self.names = {"service": self.name, "topic": topic}
        # And its DLQ, for the lines about its dead letters (ServiceSpec.dead_letter_names).
        self.dead_letter_names = {**self.names, "dlq": self.dead_letter_topic}
        self.log_dead_letter = DeadLetterLog(log, service=self.name, topic=topic)
        self.log_retry = RetryLog(log, service=self.name, topic=topic)
        if registry is None:
            registry = _APP_REGISTRIES.get(app)
            if registry is None:
                registry = _APP_REGISTRIES[app] = CollectorRegistry()
        self.registry = registry
        self.metrics = _metrics_for(registry)
        self.drift = DriftCheck(
            contract,
            self.metrics,
            dead_letter=drift == "dead_letter",
            codec=wire,
            topic=topic,
            service=self.name,
        )
        self.drift_sample = 1 if drift == "dead_letter" else drift_sample
        self._partition_buffer = partition_buffer
        self._lanes: dict[int, Lane] = {}
        self._dlq_declared: asyncio.Future[None] | None = None
        self._dlq_size_checked = False
        self._handled = self.metrics.messages.labels(topic, "handled")
        self._dead_lettered = self.metrics.messages.labels(topic, "dead_lettered")
        self._retries = self.metrics.retries.labels(topic)
        self._dlq_failures = self.metrics.dead_letter_failures.labels(topic)
        self.metrics.start_series(topic, REASONS)
        self._dead_letters_down = False  # the last dead-letter line said "cannot write"
        peers = _PEERS.setdefault(registry, [])
        peers.append(self)
        # Every agent of this registry on the topic (e.g. billing and audit agents on
        # one topic) shares the topic's series: its gauges add theirs up at scrape
        # time, as its counters do, instead of showing the last one declared.
        self.metrics.track(
            topic,
            lambda: sum(a._inflight() for a in peers if a.topic == topic),
            lambda: sum(a._paused() for a in peers if a.topic == topic),
        )
        # Ready only once the group gave the app partitions of the topic, as a
        # service's ``assigned`` check: between the app's start and its first join it
        # is neither rebalancing nor consuming. Faust's public signal, once per
        # rebalance; the flag stays set, as ``Assignment.assigned_once`` does.
        self._assigned_once = False
        app.on_partitions_assigned.connect(self._on_partitions_assigned)
        self.metrics.track_ready(self, lambda agent: agent.ready)
        revoke_commit = _REVOKE_COMMITS.get(app)
        if revoke_commit is None:
            revoke_commit = _REVOKE_COMMITS[app] = _RevokeCommit(app)
        revoke_commit.topics.add(topic)
        source = app.topic(topic, key_serializer="raw", value_serializer="raw")
        self.agent = app.agent(source, name=self.name, concurrency=1)(self._consume)

    def __repr__(self) -> str:
        return f"GuardedAgent({self.name!r}, topic={self.topic!r}, dlq={self.dead_letter_topic!r})"

    @property
    def dead_letter_writable(self) -> bool:
        """No lane holds a dead letter the DLQ refused: a refusal in one partition is
        not excused by a success in another, and a lane given up (its partition moved
        to another worker) no longer counts, as in a ``ConsumerService``."""
        return not any(lane.dead_letter_failing for lane in self._lanes.values())

    @property
    def ready(self) -> bool:
        """Started, assigned partitions of the topic at least once, not stopping or
        rebalancing, and the DLQ writable (``streamguard_ready``)."""
        app = self.app
        return bool(
            self._assigned_once
            and app.started
            and not app.should_stop
            and not app.rebalancing
            and self.dead_letter_writable
        )

    def _on_partitions_assigned(self, sender: Any, assigned: Any, **kwargs: Any) -> None:
        """Note an assignment with partitions of the topic; an empty one (a member
        beyond the partition count) or one of other topics only does not count."""
        if not self._assigned_once:
            self._assigned_once = any(tp.topic == self.topic for tp in assigned)

    @property
    def group_id(self) -> str:
        """Faust's consumer group: the app's id."""
        return str(self.app.conf.id)

    # -- the actor ---------------------------------------------------------------------

    async def _consume(self, stream: Any) -> None:
        """The Faust actor: hand each event to its partition's lane, in arrival order."""
        self._dlq_declared = asyncio.ensure_future(self._declare_dead_letter_topic())
        lanes = self._lanes
        source = stream.noack()
        try:
            # The events as ``events()`` yields them, without its generator around
            # the stream's: one layer less per event.
            async for _ in source:
                event = source.current_event
                if event is None:
                    continue
                partition = event.message.partition
                lane = lanes.get(partition)
                if lane is None or lane.task.done():
                    lane = lanes[partition] = Lane(self, partition, stream, self._partition_buffer)
                lane.offer(event)
        finally:
            for lane in lanes.values():
                lane.task.cancel()
                lane.flush_counts()
            await asyncio.gather(*(lane.task for lane in lanes.values()), return_exceptions=True)
            for lane in lanes.values():
                lane.release()  # a restarted actor's lanes start with nothing held
            lanes.clear()

    def interrupted(self, msg: Any) -> bool:
        """True when ``msg``'s event must be given up: a rebalance or stop began, or
        its assignment is over."""
        app = self.app
        return bool(
            app.should_stop
            or not app.flow_control.is_active()
            or msg.generation_id != app.consumer_generation_id
        )

    async def forward(self, result: Any) -> None:
        """Send a handler's result to every sink and wait for each confirmation."""
        for target in self.sinks:
            if hasattr(target, "send"):
                if isinstance(target, ChannelT | Agent):
                    # Sent now (force): with the app's stream_publish_on_commit, Faust
                    # holds a send made during an event until that event's offset is
                    # committed, which waits for the ack that waits for this send.
                    sent = await target.send(value=result, force=True)
                else:
                    sent = await target.send(value=result)
                if inspect.isawaitable(sent):
                    await sent
            else:
                returned = target(result)
                if inspect.isawaitable(returned):
                    await returned

    # -- the dead-letter topic -----------------------------------------------------------

    async def _declare_dead_letter_topic(self) -> None:
        """Create the DLQ topic at startup, with the source's partition count (a send to
        a missing topic would wait for metadata forever) and, as a ``ConsumerService``
        does, a ``max.message.bytes`` that takes a dead letter of the source's largest
        record: at the broker's default, one such record would hold its partition. An
        existing DLQ that takes less is warned of, once."""
        partitions = await self._source_partitions()
        client = await self._cluster_client()
        source_limit = None if client is None else await _max_message_bytes(client, self.topic)
        conf = self.app.conf
        # The DLQ producer is the app's aiokafka one: its batches, as librdkafka's, are
        # never split when the broker refuses them as too large.
        needed = dead_letter_max_message_bytes(
            source_limit,
            {
                "batch.size": conf.producer_max_batch_size,
                "message.max.bytes": conf.producer_max_request_size,
            },
        )
        topic = self.app.topic(
            self.dead_letter_topic,
            partitions=partitions,
            key_serializer="raw",
            value_serializer="raw",
            # With no source limit, the broker's default, as a ConsumerService leaves it.
            config=None if source_limit is None else {"max.message.bytes": str(needed)},
        )
        try:
            await topic.maybe_declare()
            if conf.topic_allow_declare:
                log.info("dead-letter topic ready", extra=self.dead_letter_names)
            else:  # Faust declares nothing then: "ready" would vouch for a DLQ unmade
                log.info(
                    "dead-letter topic not declared (Faust's topic_allow_declare is off); "
                    "it must exist",
                    extra=self.dead_letter_names,
                )
        except Exception as exc:
            log.warning(
                "could not create the dead-letter topic; create it before the first dead letter",
                extra={**self.dead_letter_names, "error": str(exc)},
            )
            return
        if client is None or self._dlq_size_checked:  # a restarted actor: said already
            return
        self._dlq_size_checked = True
        # Faust leaves an existing topic as it is: one made smaller than this is read back.
        size = await _max_message_bytes(client, self.dead_letter_topic)
        servers = ",".join(server_list(conf.broker, DEFAULT_KAFKA_PORT))
        warn_if_dead_letter_topic_small(log, self.dead_letter_names, servers, size, needed)

    async def _cluster_client(self) -> Any:
        """The aiokafka client of the app's producer, started, or None (another driver).

        It reaches the cluster as the app does, with its ``broker_credentials``, and
        asks without blocking the event loop. A private attribute of Faust's aiokafka
        driver, looked up defensively.
        """
        producer = self.app.producer
        with contextlib.suppress(Exception):  # stopping, or the cluster does not answer
            await producer.maybe_start()
        return getattr(getattr(producer, "_producer", None), "client", None)

    async def _source_partitions(self) -> int | None:
        """The source topic's partition count, or None (Faust's default) if unknown.

        The consumer knows it once the group is joined, which takes half of Faust's
        session timeout (30 s by default) and more on a slow broker; the aiokafka
        producer Faust runs asks the cluster for it at once.
        """
        app = self.app
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # the consumer is not started yet
                partitions = app.consumer.topic_partitions(self.topic)
                if partitions:
                    return int(partitions)
            # A private attribute of Faust's aiokafka driver, looked up defensively.
            ask = getattr(getattr(app.producer, "_producer", None), "partitions_for", None)
            if ask is not None:
                with contextlib.suppress(Exception):  # not started, or no answer yet
                    wait = max(0.1, min(1.0, deadline - time.monotonic()))
                    found = await asyncio.wait_for(ask(self.topic), wait)
                    if found:
                        return len(found)
            await asyncio.sleep(0.1)
        return None

    async def dead_letter_topic_ready(self) -> None:
        if self._dlq_declared is not None:
            await asyncio.shield(self._dlq_declared)

    async def send_dead_letter(
        self, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]]
    ) -> Any:
        """Queue one dead letter on the app's producer; the caller awaits what this
        returns for the broker's confirmation."""
        producer = self.app.producer
        # The aiokafka producer is a private attribute of Faust's driver.
        client = getattr(producer, "_producer", None) if key is None and value is None else None
        if client is not None:
            # A keyless tombstone: aiokafka's send() refuses a record with neither key
            # nor value (an assertion), though Kafka takes one, and an empty key in its
            # place was replayed as one. aiokafka's batch API sends it as it is, to a
            # partition picked at random as its partitioner does for a null key.
            partitions = sorted(await client.partitions_for(self.dead_letter_topic))
            batch = client.create_batch()
            batch.append(timestamp=None, key=None, value=None, headers=headers)
            batch.close()
            return await client.send_batch(
                batch, self.dead_letter_topic, partition=random.choice(partitions)
            )
        if key is None and value is None:  # a driver without aiokafka's producer
            key = b""
        return await producer.send(
            self.dead_letter_topic,
            key=key,
            value=value,
            partition=None,
            timestamp=None,
            headers=headers,
        )

    # -- counting ------------------------------------------------------------------------

    def record_handled(self, count: int, durations: list[float]) -> None:
        self._handled.inc(count)
        self.metrics.handler_seconds.observe_many(self.topic, durations)

    def retried(
        self, msg: Any, attempt: int, error: BaseException, verdict: RetryState, now: float
    ) -> None:
        """Count a retry of ``msg``'s event and log it (rate-limited, as a service does):
        a wait with the attempt given back (the registry is down) is logged as a wait.
        Once a rebalance or stop began the lane gives the event up before any retry:
        logged as dropped and not counted, as a ``ConsumerService``'s closed lane."""
        dropped = self.interrupted(msg)
        if not dropped:
            self._retries.inc()
        where = (msg.partition, msg.offset)
        self.log_retry(where, attempt, error, verdict, now, self.retry.attempts, dropped)

    def dead_lettered(self, reason: Reason) -> None:
        if self._dead_letters_down and self.dead_letter_writable:
            self._dead_letters_down = False
            log.info("dead-letter topic is writable again", extra=self.dead_letter_names)
        self._dead_lettered.inc()
        self.metrics.dead_letters.labels(self.topic, reason).inc()

    def dead_letter_failed(self, error: BaseException) -> None:
        self._dlq_failures.inc()
        if not self._dead_letters_down:
            self._dead_letters_down = True
            log.error(
                "cannot write to the dead-letter topic; holding the partition and backing off",
                extra={**self.dead_letter_names, "error": f"{type(error).__name__}"},
            )

    def _inflight(self) -> float:
        return float(sum(lane.inflight for lane in self._lanes.values()))

    def _paused(self) -> float:
        """Partitions not fetched: in a retry or dead-letter backoff, or held at
        ``partition_buffer`` (a handler that never returns ends there)."""
        return float(
            sum(1 for lane in self._lanes.values() if lane.waiting or lane.paused_tp is not None)
        )


def _default_name(handler: Any) -> str:
    """The handler's qualified name; a partial's function's, an object's class's."""
    target = handler.func if isinstance(handler, functools.partial) else handler
    qualname = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{target.__module__}.{qualname}"


def _check(
    app: Any,
    handler: Any,
    topic: str,
    contract: Any,
    dead_letter_topic: str | None,
    retry: Any,
    transient: Any,
    drift: str,
    label: str,
) -> None:
    """Refuse a declaration that cannot work, at import, with a fix."""
    check_topic_name(topic)
    if dead_letter_topic is not None:
        check_topic_name(dead_letter_topic)
        if dead_letter_topic == topic:
            raise ConfigurationError(f"{label}: dead_letter_topic must differ from the topic")
    else:
        check_default_dead_letter_topic(topic, label)
    if not (isinstance(contract, type) and issubclass(contract, Contract)):
        raise ConfigurationError(f"{label}: contract must be an sg.Contract subclass")
    if contract.__abstract__:
        raise ConfigurationError(
            f"{label}: contract {contract.__qualname__} is a base for contracts "
            "(__abstract__ = True): name a contract with a __subject__ and __version__"
        )
    check_handler(handler, f"{label}: the handler")
    if not is_async(handler):
        raise ConfigurationError(
            f"{label}: the handler must be 'async def handler(event, ctx)' (a decorator "
            "around it must keep __wrapped__: functools.wraps). A blocking handler would "
            "stall Faust's event loop, heartbeats included; run blocking work with "
            "asyncio.to_thread inside an async handler."
        )
    if not isinstance(retry, RetryPolicy):
        raise ConfigurationError(f"{label}: retry must be an sg.RetryPolicy(...)")
    if not isinstance(transient, tuple) or not all(
        isinstance(t, type) and issubclass(t, BaseException) for t in transient
    ):
        raise ConfigurationError(
            f"{label}: transient must be a tuple of exception types, e.g. "
            "(sg.TransientError, TimeoutError)"
        )
    check_transient(transient, f"{label}: transient")
    if drift not in ("count", "dead_letter"):
        raise ConfigurationError(f"{label}: drift must be 'count' or 'dead_letter'")
    rebalance_s = float(app.conf.broker_rebalance_timeout)
    if retry.max_budget_ms > rebalance_s * 500:
        raise ConfigurationError(
            f"{label}: RetryPolicy(max_budget_ms={retry.max_budget_ms}) may hold a "
            f"partition's events unacknowledged for {retry.max_budget_ms / 1000:g} s, but "
            f"the app's broker_rebalance_timeout is {rebalance_s:g} s, and Faust makes a "
            "rebalance wait for every unacknowledged event. Keep the budget within half "
            f"of it: lower max_budget_ms to {int(rebalance_s * 500)} or less, or raise "
            "broker_rebalance_timeout in the faust.App settings."
        )

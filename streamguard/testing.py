"""Test a service's handler without a broker: the real pipeline, in memory.

``ServiceHarness`` pushes records through a service's own decode, validation, drift
check, handler and retry logic, the same code a running service uses, with an
in-memory dead-letter sink and a virtual clock: each record comes back with its
outcome, the dead-letter headers it would carry, and the retry delays the policy
chose, recorded instead of slept. ``message_context`` builds the ``MessageContext`` a
handler receives, for calling a handler directly::

    from streamguard.testing import ServiceHarness

    def test_closed_accounts_are_dead_lettered() -> None:
        with ServiceHarness(Billing) as harness:
            result = harness.send(order(customer_id="closed-7"))
        assert result.reason == "permanent_error"

Nothing here talks to Kafka: what needs a broker (commits, rebalances, backpressure)
is tested against a real one.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Self, TypeVar

from confluent_kafka import TIMESTAMP_CREATE_TIME, KafkaError, Message
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from streamguard import headers as h
from streamguard.codecs import codec_for
from streamguard.contracts import Contract, wire_format
from streamguard.deadletter import Failure
from streamguard.errors import ConfigurationError
from streamguard.headers import Record
from streamguard.observe.logs import frames
from streamguard.observe.metrics import ServiceMetrics
from streamguard.producer import caller_header, encode_key, stamp_headers, utf8
from streamguard.registry.codec import RegistryCodec
from streamguard.runtime.context import MessageContext
from streamguard.runtime.deadletters import DeliveryReport, headers_for
from streamguard.runtime.eventloop import LoopLane, LoopRunner, new_event_loop, stop_event_loop
from streamguard.runtime.lane import PartitionLane
from streamguard.runtime.pipeline import Pipeline
from streamguard.runtime.service import ConsumerService
from streamguard.runtime.spec import ServiceSpec

__all__ = ["Outcome", "ServiceHarness", "dead_letter_headers_of", "message_context", "record"]

# Real seconds a record may take on the event loop (handlers really run).
_LOOP_TIMEOUT = 30.0
# Passes of the lane (handler calls on the event loop) per record; far above any retry
# policy's attempts.
_MAX_PASSES = 10_000
# Used when a test gives no bootstrap address: nothing connects to it.
_NO_CLUSTER = "127.0.0.1:9"

log = logging.getLogger("streamguard.testing")

# Covariant: a ServiceHarness[Sub] is a ServiceHarness[Base] (``service`` is read-only).
S = TypeVar("S", bound=ConsumerService, covariant=True)


# Headers as a test gives them: a mapping or pairs, values text (sent as UTF-8) or bytes,
# as GuardedProducer.send takes them.
TestHeaders = Mapping[str, str | bytes | None] | Sequence[tuple[str, str | bytes | None]]


def _as_consumed(headers: TestHeaders | None) -> list[tuple[str, str | bytes | None]] | None:
    """Headers as a consumer reads them: pairs with bytes values. A dict iterated as
    pairs gave its keys alone, and a text value is never what Kafka delivers: both
    broke the record in ways no service sees."""
    if headers is None:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(k, utf8(v, f"header {k!r}") if isinstance(v, str) else v) for k, v in items]


def record(
    value: bytes | None,
    *,
    key: bytes | str | None = None,
    headers: TestHeaders | None = None,
    topic: str = "test-topic",
    partition: int = 0,
    offset: int = 0,
    timestamp_ms: int | None = None,
) -> Record:
    """A consumed record, as ``Consumer.poll`` returns it, built in memory."""
    # Kafka carries bytes (a producer refuses anything else): an int key reached the
    # handler as ctx.key == 5, which no running service ever sees.
    if not (key is None or isinstance(key, str | bytes)):
        raise TypeError(f"a record's key is bytes, str or None, not {type(key).__name__}")
    if not (value is None or isinstance(value, bytes)):
        raise TypeError(
            f"a record's value is bytes or None (a tombstone), not {type(value).__name__}"
        )
    encoded_key = encode_key(key)
    kwargs: dict[str, Any] = {}
    if timestamp_ms is not None:
        kwargs["timestamp"] = (TIMESTAMP_CREATE_TIME, timestamp_ms)
    return Message(
        topic=topic,
        partition=partition,
        offset=offset,
        key=encoded_key,
        value=value,
        headers=_as_consumed(headers),
        **kwargs,
    )


def message_context(
    value: bytes | None = b"",
    *,
    key: bytes | str | None = None,
    headers: TestHeaders | None = None,
    topic: str = "test-topic",
    partition: int = 0,
    offset: int = 0,
    timestamp_ms: int | None = None,
    attempt: int = 1,
) -> MessageContext:
    """The ``MessageContext`` a handler would get for such a record."""
    msg = record(
        value,
        key=key,
        headers=headers,
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp_ms=timestamp_ms,
    )
    return MessageContext(msg, attempt)


@dataclass
class Outcome:
    """What became of one record.

    Attributes:
        outcome: ``"handled"``, ``"dead_lettered"``, or ``"waiting"`` when
            ``max_attempts`` of the harness stopped it mid-retry.
        reason: the dead-letter reason (``decode_error``, ``retries_exhausted``, ...).
        error: the exception that decided a dead letter.
        attempts: handler calls made (0 when the record never reached the handler).
        retry_delays: seconds the policy chose before each retry, not slept.
        dead_letter_headers: the headers the DLQ record would carry, in order.
        offset: the record's offset in the harness's partition.
    """

    outcome: Literal["handled", "dead_lettered", "waiting"]
    offset: int
    attempts: int = 0
    reason: str | None = None
    error: BaseException | None = None
    retry_delays: list[float] = field(default_factory=list)
    dead_letter_headers: list[tuple[str, bytes | None]] = field(default_factory=list)

    @property
    def handled(self) -> bool:
        return self.outcome == "handled"

    def header(self, name: str) -> str | None:
        """The last value of one of the dead-letter headers, as text."""
        return h.last(self.dead_letter_headers, name)


class _VirtualClock:
    """Monotonic seconds: the retry waits the harness skipped, plus the time handlers ran.

    A handler's own time counts as in a service: its calls (a bank call that times out
    after a while) use up ``max_budget_ms``. The harness's own time does not: a clock
    running in real time made ``retry_delays`` fall short of the delays the policy chose
    by the time between a verdict and its reading.
    """

    def __init__(self) -> None:
        self.now = 1_000.0

    @contextmanager
    def running(self) -> Iterator[None]:
        """Around a handler call: the time it takes moves the clock."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.now += time.perf_counter() - started

    def __call__(self) -> float:
        return self.now


class _MemoryDeadLetters:
    """A dead-letter sink that acknowledges every record and keeps what it was given.

    With ``deferred`` (a service on the event loop) the acknowledgements wait for
    ``deliver``, called by the harness's own thread: a service's delivery reports, and
    with them ``on_dead_letter``, run on the thread that polls, never on the loop.
    """

    def __init__(self, spec: ServiceSpec, *, deferred: bool = False) -> None:
        self._headers = headers_for(spec)
        self.writable = True
        self.letters: dict[int, tuple[Failure, list[tuple[str, bytes | None]]]] = {}
        self._deferred = deferred
        self._reports: queue.SimpleQueue[DeliveryReport] = queue.SimpleQueue()

    def publish(self, msg: Record, failure: Failure, done: DeliveryReport) -> None:
        self.letters[msg.offset()] = (failure, self._headers.for_record(msg, failure))
        if self._deferred:
            self._reports.put(done)
        else:
            done(None, None)

    def deliver(self) -> None:
        """Acknowledge the dead letters published since the last call."""
        while True:
            try:
                done = self._reports.get_nowait()
            except queue.Empty:
                return
            done(None, None)

    def resend(self, msg: Record, failure: Failure, done: DeliveryReport, write: int) -> None:
        self.publish(msg, failure, done)  # never called: publish always succeeds

    def failed(self, error: KafkaError) -> None:  # never called: publish always succeeds
        raise AssertionError(f"in-memory dead letters cannot fail: {error.str()}")


def _build(service: type[S]) -> S:
    """``service(bootstrap_servers=...)``, for a class given to the harness. A constructor
    of the user's own that takes other arguments failed with "got an unexpected keyword
    argument 'bootstrap_servers'", an argument the test never passed: say what was called
    and how to give the service its arguments."""
    try:
        return service(bootstrap_servers=_NO_CLUSTER)
    except TypeError as exc:
        name = service.__name__
        raise TypeError(
            f"ServiceHarness({name}) builds {name}(bootstrap_servers={_NO_CLUSTER!r}), which "
            f"failed: {exc}. Build it with your own arguments and pass the instance: "
            f"ServiceHarness({name}(...))"
        ) from exc


class ServiceHarness(Generic[S]):
    """A service's real per-message logic, driven one record at a time, in memory.

    Args:
        service: the ``ConsumerService`` subclass, or an instance of it (to test one
            built with your own constructor arguments). ``harness.service`` is that
            instance, typed as your class, so a test reads its attributes as they are.
        max_attempts: stop retrying a record after this many handler calls and report
            it as ``"waiting"``; by default the service's ``RetryPolicy`` decides.
        registry: where the service's metrics go, to assert on counts; by default the
            registry the service was built with (an instance's ``registry=``), as in
            ``run()``.
    """

    def __init__(
        self,
        service: type[S] | S,
        *,
        max_attempts: int | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if max_attempts is not None and not (isinstance(max_attempts, int) and max_attempts >= 1):
            # 0 still made the one call every record gets: say so rather than ignore it.
            raise ConfigurationError(
                f"ServiceHarness(max_attempts={max_attempts!r}) counts handler calls: an "
                "int of at least 1, or None for the service's RetryPolicy"
            )
        self._service: S = _build(service) if isinstance(service, type) else service
        self.spec: ServiceSpec = self.service._spec()
        if registry is None:
            # The registry the service was built with (its ``registry=``, else its private
            # one), where run() writes: a test reads the metrics where the service has them.
            registry = vars(self.service)["_ConsumerService__runtime"].registry
        self.registry: CollectorRegistry = registry
        self._max_attempts = max_attempts
        self._clock = _VirtualClock()
        self._dead_letters = _MemoryDeadLetters(self.spec, deferred=self.spec.on_event_loop)
        self.pipeline = Pipeline(
            self.spec, self._dead_letters, ServiceMetrics(self.registry), clock=self._clock
        )
        self._lane = PartitionLane(0, self.pipeline, clock=self._clock)
        self._next_offset = 0
        self._calls = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._runner: LoopRunner | None = None
        self._delays: list[float] = []
        self._stalled = threading.Event()
        if self.spec.on_event_loop:
            # The service's handlers run on an event loop (async, or key/no ordering):
            # drive the same LoopRunner a running service uses, with a virtual sleep.
            self._loop = new_event_loop(self.spec.options.event_loop)
            self._loop_thread = threading.Thread(
                target=self._loop.run_forever, name="streamguard-testing-loop", daemon=True
            )
            self._loop_thread.start()
            self._runner = LoopRunner(
                self.pipeline,
                self._loop,
                self.spec.ordering,
                self.spec.options.max_in_flight,
                sleep=self._virtual_sleep,
                clock=self._clock,
            )
            self._lane = LoopLane(0, self.pipeline, self._runner)
        # As run() does before its first record: what a handler needs (a connection,
        # a schema) is often set up there, and without it every record failed.
        self._started = False
        try:
            self.service.on_start()
        except BaseException:
            self.close()
            raise
        self._started = True

    @property
    def service(self) -> S:
        """The service the records run through, typed as your class. Read-only, so the
        harness is covariant: ``kit`` may hold a harness of a subclass after one of
        its base class, as a test that reuses the name does."""
        return self._service

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self._close(failing=exc is not None)

    def close(self) -> None:
        """Call the service's ``on_stop``, then stop the event loop of async handlers."""
        self._close(failing=False)

    def _close(self, *, failing: bool) -> None:
        try:
            if self._started:
                self._started = False
                try:
                    self.service.on_stop()
                except BaseException as error:
                    if not failing:
                        raise
                    # As run() does: the error that ended the block (a failed assertion,
                    # a handler's KeyboardInterrupt) is the one the test must see.
                    log.error(
                        "on_stop failed; the harness raises the error that ended its block",
                        extra={
                            **self.spec.names(),
                            "error_class": type(error).__name__,
                            "traceback": frames(error),
                        },
                    )
        finally:
            self._close_loop()

    def _close_loop(self) -> None:
        if self._runner is not None:
            self._runner.shutdown()
        if self._loop is not None and self._loop_thread is not None:
            stop_event_loop(self._loop, self._loop_thread)
            self._loop = None

    def send(
        self,
        event: BaseModel,
        *,
        key: bytes | str | None = None,
        headers: Mapping[str, str | bytes] | Sequence[tuple[str, str | bytes | None]] | None = None,
        producer: str = "streamguard-testing",
        timestamp_ms: int | None = None,
    ) -> Outcome:
        """Encode ``event`` as a guarded producer would (with its ``sg-*`` headers),
        then process it (``timestamp_ms`` as for ``send_raw``).

        As a producer does, it stamps the event's own contract, which may be another
        version than the service's (a newer producer): drift is then seen, as it
        would be on the wire. ``headers`` are what ``GuardedProducer.send`` takes (a
        mapping, or pairs; text values are sent as UTF-8), appended after the stamps, and
        refused as it refuses them (an ``sg-*`` or ``content-type`` header: to feed the
        service a record that carries one, use ``send_raw``).
        """
        if not isinstance(event, BaseModel):
            # Else an AttributeError from deep in the codec ('dict' object has no
            # attribute 'model_dump_json'), which named neither the call nor the fix.
            raise TypeError(
                f"ServiceHarness.send() takes an event (an instance of "
                f"{self.spec.contract.__name__} or another pydantic model), not "
                f"{type(event).__name__}: send other bytes with send_raw()"
            )
        contract = type(event) if isinstance(event, Contract) else self.spec.contract
        codec = self.spec.codec
        if wire_format(contract) != wire_format(self.spec.contract):
            codec = codec_for(contract)  # the producer's own: the consumer cannot read it
        if isinstance(codec, RegistryCodec) and isinstance(event, Contract):
            # Framed for the service's topic, as GuardedProducer does: the subject may
            # be named after the topic (the default strategy), which encode() has not.
            value = codec.encoder(type(event), self.spec.topic)(event)
        else:
            value = codec.encode(event)
        record_headers: list[tuple[str, bytes | None]] = [*stamp_headers(contract, codec, producer)]
        if headers:
            items = headers.items() if isinstance(headers, Mapping) else headers
            record_headers.extend(
                (caller_header(k), utf8(v, f"header {k!r}") if isinstance(v, str) else v)
                for k, v in items
            )
        return self.send_raw(value, key=key, headers=record_headers, timestamp_ms=timestamp_ms)

    def send_raw(
        self,
        value: bytes | None,
        *,
        key: bytes | str | None = None,
        headers: TestHeaders | None = None,
        timestamp_ms: int | None = None,
    ) -> Outcome:
        """Process the bytes as they would arrive (poison input included).

        Args:
            timestamp_ms: the record's CreateTime; now by default, since every record a
                consumer reads from Kafka has one (a handler reading
                ``ctx.timestamp_ms`` gets a number, as in a running service).
        """
        if not self._started:
            # A running service calls no handler after on_stop; a sync handler here
            # would meet what on_stop released, an async one a closed event loop.
            raise RuntimeError(
                f"the ServiceHarness of {self.spec.name} is closed (its on_stop ran): "
                "send records inside its with block"
            )
        if timestamp_ms is None:
            timestamp_ms = int(time.time() * 1000)
        offset = self._next_offset
        self._next_offset += 1
        msg = record(
            value,
            key=key,
            headers=headers,
            topic=self.spec.topic,
            offset=offset,
            timestamp_ms=timestamp_ms,
        )
        return self._process(msg)

    async def _virtual_sleep(self, seconds: float) -> None:
        """Record a retry wait and skip it; at ``max_attempts``, wait for good."""
        self._delays.append(seconds)
        self._clock.now += seconds
        # Bounded as a worker's record is: one that waits for good (the schema registry
        # down, which spends no attempt) is left waiting, not spun for _LOOP_TIMEOUT.
        limit = self._max_attempts if self._max_attempts is not None else _MAX_PASSES
        if self._calls >= limit:
            self._stalled.set()
            await asyncio.Event().wait()  # cancelled when the harness moves on

    def _process(self, msg: Record) -> Outcome:
        if self._runner is not None:
            return self._process_on_loop(msg)
        return self._process_on_worker(msg)

    def _process_on_loop(self, msg: Record) -> Outcome:
        lane, offset = self._lane, msg.offset()
        self._delays, self._calls = [], 0
        self._stalled.clear()
        runner = self._runner
        assert runner is not None
        handle = runner._handle

        async def counted(*args: Any) -> Any:
            self._calls += 1
            with self._clock.running():
                return await handle(*args)

        runner._handle = counted
        tombstone = runner._tombstone
        if tombstone is not None:  # a tombstone's handler calls are its attempts too

            async def counted_tombstone(*args: Any) -> Any:
                self._calls += 1
                with self._clock.running():
                    return await tombstone(*args)

            runner._tombstone = counted_tombstone
        breaker, probe = self.pipeline.breaker, None
        try:
            lane.enqueue([msg])
            lane.drain()
            deadline = time.monotonic() + _LOOP_TIMEOUT
            while True:
                self._dead_letters.deliver()  # on this thread, as a service's poll thread
                if self._final(offset):
                    break
                if runner.failure is not None:  # raised as a worker's handler would raise it
                    raise runner.failure
                if not breaker.closed and probe is None:
                    probe = self._skip_to_probe()  # the record probes (the loop sees it)
                held = not breaker.closed and self._probe_failed(probe)
                if self._stalled.is_set() or held:
                    # Stopped at max_attempts, or its probe failed: the dependency looks
                    # down, and a service would hold the record too.
                    lane.close()  # cancels the wait; later records get a fresh lane
                    self._lane = LoopLane(0, self.pipeline, runner)
                    self._report_loop_metrics()
                    return Outcome("waiting", offset, self._calls, retry_delays=self._delays)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"record {offset} found no outcome in {_LOOP_TIMEOUT}s")
                time.sleep(0.001)
        finally:
            runner._handle, runner._tombstone = handle, tombstone
        self._report_loop_metrics()
        return self._outcome(offset, self._calls, self._delays)

    def _report_loop_metrics(self) -> None:
        """Write the counts the loop keeps (handled, retries, handler times) to the
        metrics now: a service writes them every half second, a test reads them at once."""
        runner, loop = self._runner, self._loop
        assert runner is not None
        assert loop is not None
        reported = threading.Event()

        def report() -> None:
            runner._report_metrics()
            reported.set()

        loop.call_soon_threadsafe(report)
        reported.wait(_LOOP_TIMEOUT)

    def _final(self, offset: int) -> bool:
        position = self._lane.commit_position()
        return position is not None and position > offset

    def _outcome(self, offset: int, calls: int, delays: list[float]) -> Outcome:
        letter = self._dead_letters.letters.pop(offset, None)
        if letter is None:
            return Outcome("handled", offset, calls, retry_delays=delays)
        failure, headers = letter
        return Outcome(
            "dead_lettered",
            offset,
            calls,
            reason=failure.reason,
            error=failure.error,
            retry_delays=delays,
            dead_letter_headers=headers,
        )

    def _skip_to_probe(self) -> float:
        """The circuit breaker is open: move the virtual clock to its cool-down's end, as
        a service would wait for it, so that the record probes. Returns that time; a
        later ``half_open_at`` then means the probe failed."""
        due = self.pipeline.breaker.half_open_at()
        self._clock.now = max(self._clock.now, due)
        return due

    def _probe_failed(self, probe: float | None) -> bool:
        """Whether the breaker opened again after the probe ``_skip_to_probe`` let in."""
        return probe is not None and self.pipeline.breaker.half_open_at() > probe

    def _process_on_worker(self, msg: Record) -> Outcome:
        lane, clock = self._lane, self._clock
        offset = msg.offset()
        delays: list[float] = []
        calls = _CallCounter(self.pipeline, clock)
        breaker, probe = self.pipeline.breaker, None
        claimed = lane.enqueue([msg])
        try:
            # Bounded: every pass either finishes the record or makes a retry attempt,
            # and the policy bounds those.
            for _ in range(_MAX_PASSES):
                if claimed:
                    claimed = lane.drain(max_batches=1)  # True: still claimed, work left
                position = lane.commit_position()
                if position is not None and position > offset:
                    if claimed:
                        lane.drain(max_batches=1)  # finds the queue empty: releases the claim
                    break  # final: handled, or dead-lettered and acknowledged
                if not breaker.closed:
                    stopped = self._max_attempts is not None and calls.count >= self._max_attempts
                    if stopped or self._probe_failed(probe):
                        # Its probe failed: the dependency looks down (other records
                        # failed too), and a service would hold the record as well.
                        return self._left_waiting(offset, calls.count, delays)
                    probe = self._skip_to_probe()
                    if lane.retry is not None:  # parked a moment longer than the cool-down
                        clock.now = max(clock.now, lane.retry.due)
                    claimed = claimed or lane.claim_if_due(clock.now)
                    continue
                retry = lane.retry
                if retry is None:
                    raise RuntimeError(f"record {offset} made no progress in the harness")
                delays.append(max(0.0, retry.due - clock.now))
                if self._max_attempts is not None and calls.count >= self._max_attempts:
                    return self._left_waiting(offset, calls.count, delays)
                clock.now = max(clock.now, retry.due)
                claimed = claimed or lane.claim_if_due(clock.now)
            else:
                return self._left_waiting(offset, calls.count, delays)
        finally:
            calls.restore()
        return self._outcome(offset, calls.count, delays)

    def _left_waiting(self, offset: int, calls: int, delays: list[float]) -> Outcome:
        """The record has no outcome yet: report it waiting, and give the next record a
        lane of its own rather than one held by this record."""
        self._lane.close()
        self._lane = PartitionLane(0, self.pipeline, clock=self._clock)
        return Outcome("waiting", offset, calls, retry_delays=delays)


class _CallCounter:
    """Counts handler calls of one record by wrapping the pipeline's invokers: ``handle``
    and, for a tombstone, ``handle_tombstone``; their time moves ``clock``."""

    def __init__(self, pipeline: Pipeline, clock: _VirtualClock) -> None:
        self.count = 0
        self._pipeline = pipeline
        self._invoke = invoke = pipeline.invoke
        self._invoke_tombstone = invoke_tombstone = pipeline.invoke_tombstone

        def counted(event: Any, ctx: MessageContext) -> object:
            self.count += 1
            with clock.running():
                return invoke(event, ctx)

        def counted_tombstone(ctx: MessageContext) -> object:
            self.count += 1
            with clock.running():
                return invoke_tombstone(ctx)

        pipeline.invoke = counted
        pipeline.invoke_tombstone = counted_tombstone  # type: ignore[method-assign]

    def restore(self) -> None:
        self._pipeline.invoke = self._invoke
        self._pipeline.invoke_tombstone = self._invoke_tombstone  # type: ignore[method-assign]


def dead_letter_headers_of(outcome: Outcome) -> dict[str, str]:
    """The ``sg-dlq-*`` headers of an outcome as text, for compact assertions."""
    return {
        k: v.decode("utf-8", "replace")
        for k, v in outcome.dead_letter_headers
        if k.startswith(h.DLQ_PREFIX) and v is not None
    }

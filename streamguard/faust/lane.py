"""One partition's lane in a guarded agent: its events in order, one at a time.

The agent's single actor reads the stream and hands each event to the lane of its
partition; the lane runs decode, drift check, handler, retry and dead letter, and
acknowledges the event only for a final outcome. Acks therefore reach Faust strictly in
offset order per partition, which is what keeps Faust from committing past an event
still in flight (faust-streaming issue #606), while a retry backoff in one partition
leaves the others running.

An event a lane gives up on (a rebalance or stop began, or it belongs to an assignment
that is over) is never acknowledged, nor is anything after it in that partition for the
same assignment: Faust seeks every partition back to its committed offset once the
rebalance is done, so the event is delivered again.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from faust.streams import _current_event
from faust.types import TP
from mode import Service

from streamguard.deadletter import Failure
from streamguard.errors import ContractViolation, DecodeError
from streamguard.observe.logs import frames
from streamguard.runtime.context import MessageContext
from streamguard.runtime.outcomes import RetryState, judge, unpark
from streamguard.runtime.spec import returned_unrun, unrun_error

if TYPE_CHECKING:
    from streamguard.faust.agent import GuardedAgent

log = logging.getLogger("streamguard.faust")


class WrapperRunsCoroutine(TypeError):
    """A handler's plain ``def`` wrapper tried to run its ``async def`` to the end itself
    (``asyncio.run``, asgiref's ``async_to_sync``), which cannot be done on the thread of
    Faust's running event loop. A bug in the declaration, not an outcome: the worker
    crashes with the event unacked, rather than dead-letter every event."""


def through_wrapper(
    wrapper: Callable[..., Any], name: str
) -> Callable[[Any, MessageContext], Awaitable[Any]]:
    """Call a handler that is ``async def`` only inside a plain ``def`` wrapper
    (``functools.wraps`` kept): the wrapper runs on Faust's loop, and the coroutine it
    returns is awaited there. A ``ConsumerService`` calls such a wrapper in a thread
    instead, where one that runs the coroutine itself can; here the handler must run on
    Faust's loop (its tables, topics and current event live there), so that wrapper is
    refused, naming the fix, when its call fails on the running loop."""

    async def call(event: Any, ctx: MessageContext) -> Any:
        try:
            result = wrapper(event, ctx)
        except RuntimeError as exc:
            # asyncio.run, asgiref's async_to_sync and run_until_complete all refuse,
            # with these words, to run on a thread whose event loop is running.
            if "event loop" not in str(exc):
                raise
            raise WrapperRunsCoroutine(
                f"{name}: its handler is a plain 'def' wrapper of an 'async def' that "
                f"runs the coroutine itself ({exc}), which cannot be done on Faust's "
                "event loop. Make the wrapper 'async def' and await the function, or "
                "have it return the function's coroutine (return fn(*args)) for the "
                "agent to await"
            ) from exc
        if inspect.iscoroutine(result):
            return await result
        return result

    return call


# Faust's "current event" of a task (faust.streams.current_event() reads it), set by its
# own stream for each event; private, like the other Faust internals the lanes rely on.
set_current_event = _current_event.set

# How long a lane that ran dry waits before it reports the dead-letter lines it skipped.
LOG_FLUSH_WAIT = 0.2

# How often a waiting lane looks whether a rebalance or stop began. Faust waits for
# every unacknowledged event before a rebalance completes, so this is the delay a
# retry backoff can add to a rebalance.
POLL_SECONDS = 0.05
# A dead-letter write that the broker has not confirmed by then counts as failed and
# is tried again (a send to a missing topic would otherwise wait for metadata forever).
DEAD_LETTER_TIMEOUT = 30.0
DEAD_LETTER_MAX_BACKOFF = 5.0
# Handled counts and handler times reach the metrics every FLUSH_EVERY events, every
# FLUSH_SECONDS while slow handlers work through a backlog (as a ConsumerService folds
# them), and FLUSH_WAIT seconds after the lane ran dry: per event they cost a tenth of
# its time, and the actor hands events over one at a time, so a lane runs dry after
# most of them.
FLUSH_EVERY = 256
FLUSH_SECONDS = 0.5
FLUSH_WAIT = 0.05
# Drift is checked on every event that comes at least this long after the partition's
# last check, and on one in ``drift_sample`` above that rate (the queue cannot tell
# whether a partition keeps up, for the same reason).
DRIFT_EVERY = 0.01


# The lanes holding each partition at their ``partition_buffer``, per app. Faust's flow
# control is per partition, and the guarded agents of one app on one topic (billing and
# audit) each have a lane for it: the partition is fetched again only once no lane
# holds it, or the first to drain resumed it for a lane still full, whose queue then
# grew without bound.
_HOLDERS: weakref.WeakKeyDictionary[Any, dict[Any, set[Lane]]] = weakref.WeakKeyDictionary()


class FaustRecord:
    """A Faust message seen through the accessors a ``MessageContext`` reads.

    ``message.headers`` is the list the client returned, repeated keys included; the
    event's ``headers`` dict keeps only one value per key, so it is never used.
    """

    __slots__ = ("_msg",)

    def __init__(self, message: Any) -> None:
        self._msg = message

    def topic(self) -> str:
        return str(self._msg.topic)

    def partition(self) -> int:
        return int(self._msg.partition)

    def offset(self) -> int:
        return int(self._msg.offset)

    def key(self) -> bytes | None:
        key: bytes | None = self._msg.key
        return key

    def value(self) -> bytes | None:
        value: bytes | None = self._msg.value
        return value

    def headers(self) -> list[tuple[str, bytes | None]]:
        return list(self._msg.headers or ())

    def timestamp(self) -> tuple[int, int]:
        """(kind, epoch ms) with confluent-kafka's kinds: 0 none, 1 create, 2 log append.

        Faust turns the client's milliseconds into float seconds; rounding gives the
        broker's integer back, so the DLQ header matches what ``ConsumerService`` writes.
        """
        seconds = self._msg.timestamp
        if seconds is None or seconds < 0:
            return 0, -1
        kind = 2 if self._msg.timestamp_type == 1 else 1
        return kind, round(seconds * 1000)


def crash_worker(app: Any, exc: BaseException) -> None:
    """Crash the app and the worker that runs it, as ``app.crash`` would, but leave the
    consumer's thread to the stop that follows.

    ``app.crash`` marks every service crashed at once, the consumer's thread too: that
    thread then shuts its own loop down while the stop still commits through it, and a
    commit that lands after the thread stopped serving calls never returns (the process
    hung, about one crash in thirty under load). Marked crashed, the app and its worker
    stop (``app.should_stop``) and the worker exits with ``exc``; the consumer, marked
    too, does not wait for handlers still running in other partitions, as a stop does
    (they are cancelled, their events unacked), and commits through its running thread.
    The lane has logged the crash (its error's class and frames, not its text, which
    ``app.crash`` logged).
    """
    services = [node.data for node in app.beacon.walk()]  # the app, up to the root
    for service in [app.consumer, *services]:
        if isinstance(service, Service) and not service.crashed:
            service.crash_reason = exc
            service._crashed.set()  # as Service._crash does, without the children


class Lane:
    """The events of one partition, processed in offset order by one task."""

    def __init__(self, agent: GuardedAgent, partition: int, stream: Any, high: int) -> None:
        self.agent = agent
        self.partition = partition
        self.stream = stream
        # Unbounded, so the actor never waits for one partition: at ``high`` events the
        # partition stops being fetched instead (Faust's own stream-buffer flow control),
        # and is fetched again at half of it. What it holds beyond ``high`` is what was
        # fetched before. A deque and one future while the lane waits, not an
        # asyncio.Queue: the actor hands events over one at a time, and the lane waits
        # for nearly every one.
        self.queue: deque[Any] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        self.high = high
        self.paused_tp: Any = None
        self._holders = _HOLDERS.setdefault(agent.app, {})
        self.busy = False
        self.waiting = False  # in a retry or dead-letter backoff
        self.dead_letter_failing = False  # its dead letter was refused and waits to retry
        self.dropped_generation: int | None = None
        self.handled = 0  # since the last flush (see FLUSH_EVERY)
        self.durations: list[float] = []
        self.flush_at = time.perf_counter() + FLUSH_SECONDS  # see FLUSH_SECONDS
        self._flush_due = False
        self._log_flush_due = False
        self.seen = 0  # events processed: every drift_sample-th is drift-checked
        self.drift_checked = 0.0  # monotonic time of the last drift check
        self.task = asyncio.get_running_loop().create_task(
            self._run(), name=f"streamguard-lane-{agent.topic}-{partition}"
        )

    @property
    def inflight(self) -> int:
        return len(self.queue) + (1 if self.busy else 0)

    def flush_counts(self) -> None:
        self.flush_at = time.perf_counter() + FLUSH_SECONDS
        if self.handled:
            self.agent.record_handled(self.handled, self.durations)
            self.handled = 0
            self.durations = []

    def _flush_later(self) -> None:
        self._flush_due = False
        self.flush_counts()

    def _flush_log(self) -> None:
        self._log_flush_due = False
        self.agent.log_dead_letter.flush()

    async def _run(self) -> None:
        queue = self.queue
        loop = asyncio.get_running_loop()
        while True:
            if self.handled >= FLUSH_EVERY:
                self.flush_counts()
            elif self.handled and not self._flush_due and not queue:
                self._flush_due = True
                loop.call_later(FLUSH_WAIT, self._flush_later)
            if self.agent.log_dead_letter.not_logged and not queue and not self._log_flush_due:
                # A flood's last skipped lines are reported once the rate allows one,
                # not with the next dead letter, which may never come. One timer at a
                # time: the lane runs dry after nearly every event of a flood.
                self._log_flush_due = True
                loop.call_later(LOG_FLUSH_WAIT, self._flush_log)
            while not queue:
                self._wakeup = loop.create_future()
                await self._wakeup
            event = queue.popleft()
            if self.paused_tp is not None and len(queue) <= self.high // 2:
                self._resume()
            self.busy = True
            try:
                await self.process(event)
            except asyncio.CancelledError as exc:
                if self.task.cancelling():
                    raise  # the lane is stopped: the event stays unacked, for redelivery
                self._crash(event, exc)  # a handler's own CancelledError
                return
            except BaseException as exc:  # a bug, or a handler's BaseException: never ack
                # SystemExit and KeyboardInterrupt (a handler's sys.exit()) too: raised
                # out of the lane's task, they stopped the loop, and the app's stop then
                # waited forever for the events queued behind this one, never acked.
                self._crash(event, exc)
                return
            finally:
                self.busy = False

    def _crash(self, event: Any, exc: BaseException) -> None:
        """Stop the worker without acking ``event``; Faust restarts from the commit.

        A lane that just ended instead would leave its event unacked while the next
        lane of the partition acked later ones, and Faust would commit past it.
        """
        # Mostly a handler's own: its text may quote the record, so class and frames.
        log.error(
            "guarded agent lane crashed",
            extra={
                **self.agent.names,  # whose lane: a worker may run several agents
                "partition": self.partition,
                "error": type(exc).__name__,
                "traceback": frames(exc),
            },
        )
        self._drop(event)
        queue = self.queue
        while queue:  # never to run: given up unacked too, for redelivery
            self._drop(queue.popleft())
        crash_worker(self.agent.app, exc)

    def offer(self, event: Any) -> None:
        """Queue an event (the actor calls this); stop fetching its partition at the mark."""
        self.queue.append(event)
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            if not wakeup.done():  # not when the lane was cancelled meanwhile
                wakeup.set_result(None)
        if (
            self.paused_tp is None
            and len(self.queue) >= self.high
            and not self.agent.interrupted(event.message)
        ):
            # on_buffer_full, not pause_partitions: Faust drops the rest of an already
            # fetched batch for a partition paused while it hands the batch out (and
            # the client's position is past those records, so they would never come
            # back); a "buffered" partition still gets its batch, and is not fetched
            # again until on_buffer_drop. Faust's own TP: the client's TopicPartition
            # fails the consumer's checks.
            self.paused_tp = TP(event.message.topic, event.message.partition)
            self._holders.setdefault(self.paused_tp, set()).add(self)
            self.agent.app.consumer.on_buffer_full(self.paused_tp)

    def release(self) -> bool:
        """Stop holding the partition; True if no other lane of the app holds it."""
        tp, self.paused_tp = self.paused_tp, None
        holders = self._holders.get(tp)
        if holders is not None:
            holders.discard(self)
            if holders:
                return False
            del self._holders[tp]
        return True

    def _resume(self) -> None:
        tp = self.paused_tp
        # Not while a rebalance is under way: the new assignment makes every assigned
        # partition active again anyway.
        app = self.agent.app
        if self.release() and app.flow_control.is_active() and not app.rebalancing:
            app.consumer.on_buffer_drop(tp)

    async def process(self, event: Any) -> None:
        """Bring one event to a final outcome and ack it, or give it up unacked."""
        msg = event.message
        agent = self.agent
        if msg.generation_id == self.dropped_generation or agent.interrupted(msg):
            self._drop(event)
            return
        record = FaustRecord(msg)
        value = msg.value
        failure: Failure | None = None
        self.seen += 1
        waiting: RetryState | None = None  # for the registry, as judge decides
        while True:
            try:
                if agent.unfetched is not None and (fetch := agent.unfetched(value)) is not None:
                    await asyncio.get_running_loop().run_in_executor(None, fetch)
                decoded = agent.decode(value)
                now = time.monotonic()
                if now - self.drift_checked >= DRIFT_EVERY or not self.seen % agent.drift_sample:
                    self.drift_checked = now
                    drift = agent.drift.check(msg.headers, value)
                    if drift is not None:
                        failure = Failure("schema_drift", drift)
            except (DecodeError, ContractViolation) as exc:
                verdict = judge(
                    exc, 1, None, agent.retry, agent.transient, time.monotonic(), names=agent.names
                )
                assert isinstance(verdict, Failure)  # invalid input is never retried
                failure = verdict
            except Exception as exc:
                # Judged as a ConsumerService judges it (outcomes.judge): an unreachable
                # registry is not the event's fault, and it waits (given up unacked if a
                # rebalance or stop begins); whatever else a contract's validator raised
                # that pydantic passes on (not a ValueError) is judged by the agent's
                # transient types, not a crash of the worker (whose log line quoted the
                # value, and which crashed again on every restart).
                now = time.monotonic()
                attempt = 1 if waiting is None else waiting.attempt + 1
                judged = judge(
                    exc, attempt, waiting, agent.retry, agent.transient, now, names=agent.names
                )
                if isinstance(judged, Failure):
                    failure = judged
                    break
                waiting = judged
                agent.retried(msg, attempt, exc, waiting, now)
                if not await self._backoff(max(0.0, waiting.due - now), msg):
                    self._drop(event)
                    return
                unpark(waiting, time.monotonic())
                continue
            break
        if failure is None:
            # A decode retry's state carries over: its attempts and budget are the
            # record's, as in a ConsumerService, not the decoding's alone.
            outcome = await self._handle(event, record, decoded, waiting)
            if outcome == "handled":
                await self.stream.ack(event)
                return
            if outcome == "given_up":  # a rebalance or stop began during a backoff
                self._drop(event)
                return
            failure = outcome
            del decoded  # not held while the dead letter is written
        if await self._dead_letter(record, failure, msg):
            await self.stream.ack(event)
        else:
            self._drop(event)

    async def _handle(
        self, event: Any, record: FaustRecord, decoded: Any, retry: RetryState | None
    ) -> Failure | Literal["handled", "given_up"]:
        """Run the handler, retrying transient failures: handled, given up, or a Failure.

        ``retry``: the state a transient decode failure left (None if the first decode
        succeeded); the handler's calls go on from its attempt.
        """
        agent = self.agent
        # The event is Faust's current event while its handler and sinks run, as in a
        # plain agent: tables take a change's partition from it (and refuse one made
        # without it), windows its timestamp. The lane's task would otherwise see the
        # event that was current when the actor created it, gone after its handling.
        set_current_event(weakref.ref(event))
        attempt = 1 if retry is None else retry.attempt + 1
        while True:
            start = time.perf_counter()
            try:
                result = await agent.call(decoded, MessageContext(record, attempt))
                # The handler's time (streamguard_handler_seconds): not its sinks'
                # sends, which a ConsumerService's handler has none of.
                end = time.perf_counter()
                if result is not None:
                    if returned_unrun(result):
                        break  # a bug, not an outcome: raised below, out of the judging
                    if agent.sinks:
                        await agent.forward(result)
            except Exception as exc:
                if isinstance(exc, WrapperRunsCoroutine):
                    raise  # a bug, not an outcome: crashes the worker, unacked (see _run)
                now = time.monotonic()
                verdict = judge(
                    exc,
                    attempt,
                    retry,
                    agent.retry,
                    agent.transient,
                    now,
                    by_handler=True,
                    names=agent.names,
                )
                if isinstance(verdict, Failure):
                    # Not kept by this frame, which the handler's frame (in the error)
                    # links back to, while the dead letter is written.
                    decoded = None
                    return verdict
                retry = verdict
                agent.retried(event.message, attempt, exc, verdict, now)
                if not await self._backoff(max(0.0, retry.due - now), event.message):
                    return "given_up"
                unpark(retry, time.monotonic())
                attempt = retry.attempt + 1
                continue
            self.durations.append(end - start)
            self.handled += 1
            if end >= self.flush_at:
                # Slow handlers with a backlog: the lane does not run dry for a while.
                self.flush_counts()
            return "handled"
        # The handler handed back a coroutine (or generator) it did not run: a
        # forgotten await in its return. Acked, its event would count as handled though
        # nothing ran; the TypeError crashes the worker with it unacked (see _run).
        raise unrun_error(result, f"guarded agent {agent.name}")

    async def _backoff(self, delay: float, msg: Any) -> bool:
        """Sleep ``delay`` seconds; False as soon as a rebalance or stop begins."""
        # What the lane handled before this wait is counted now, as a ConsumerService
        # folds its counts when a retry ends its batch: the lane's own flushes come after
        # a success or when it runs dry, and a wait may last the whole retry budget.
        self.flush_counts()
        self.waiting = True
        try:
            deadline = time.monotonic() + delay
            while True:
                if self.agent.interrupted(msg):
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    return True
                await asyncio.sleep(min(left, POLL_SECONDS))
        finally:
            self.waiting = False

    async def _dead_letter(self, record: FaustRecord, failure: Failure, msg: Any) -> bool:
        """Publish to the DLQ until the broker confirms; False if given up (unacked)."""
        agent = self.agent
        headers = agent.dead_letter_headers.for_record(record, failure)
        agent.log_dead_letter(record, failure)
        backoff = 0.1
        # A send the broker has not confirmed yet. Kept across tries: a confirmation that
        # outlasts a try (a stalled broker) is waited for again, not sent again, or each
        # try of a stall would leave one more copy in the DLQ once the broker answers.
        sent: Any = None
        try:
            while not agent.interrupted(msg):
                try:
                    if sent is None:
                        await agent.dead_letter_topic_ready()
                        # The send too, not only its confirmation: it waits for the
                        # topic's metadata first, up to Faust's producer_request_timeout.
                        sent = await asyncio.wait_for(
                            agent.send_dead_letter(msg.key, msg.value, headers),
                            DEAD_LETTER_TIMEOUT,
                        )
                    if isinstance(sent, asyncio.Future):
                        await asyncio.wait_for(asyncio.shield(sent), DEAD_LETTER_TIMEOUT)
                    elif inspect.isawaitable(sent):
                        await asyncio.wait_for(sent, DEAD_LETTER_TIMEOUT)
                except Exception as exc:  # TimeoutError included: not confirmed, try again
                    if not (isinstance(sent, asyncio.Future) and not sent.done()):
                        sent = None  # refused, or never queued: sent again
                    self.dead_letter_failing = True
                    agent.dead_letter_failed(exc)
                    if not await self._backoff(backoff, msg):
                        return False
                    backoff = min(backoff * 2, DEAD_LETTER_MAX_BACKOFF)
                    continue
                self.dead_letter_failing = False
                agent.dead_lettered(failure.reason)
                return True
            return False
        finally:
            self.dead_letter_failing = False  # written, or given up: this lane holds none

    def _drop(self, event: Any) -> None:
        """Give the event up unacknowledged; it and its successors come back after the
        rebalance (Faust seeks to the committed offset).

        Faust's consumer waits for its set of unacknowledged messages to empty before a
        rebalance or shutdown proceeds; an event given up must leave that set, or the
        rebalance would wait for it forever.
        """
        msg = event.message
        self.dropped_generation = msg.generation_id
        self.release()  # the new assignment after the rebalance makes it active
        self.agent.app.consumer.unacked.discard(msg)

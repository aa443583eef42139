"""A partition lane keeps order, holds its commit position at open outcomes, and
never starts work while the DLQ is unwritable. No broker: records are built in memory."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any, ClassVar, cast

import pytest
from confluent_kafka import KafkaError
from prometheus_client import CollectorRegistry
from pydantic import model_validator

import streamguard as sg
from streamguard.deadletter import Failure
from streamguard.demo.contracts import LineItem, OrderPlaced
from streamguard.headers import Record
from streamguard.observe.metrics import ServiceMetrics
from streamguard.runtime.assignment import Assignment
from streamguard.runtime.deadletters import DeliveryReport
from streamguard.runtime.eventloop import LoopLane, LoopRunner, stop_event_loop
from streamguard.runtime.lane import PartitionLane
from streamguard.runtime.pipeline import Pipeline
from streamguard.runtime.spec import Ordering
from streamguard.testing import record
from tests.runtime.conftest import order


class HeldDeadLetters:
    """A DLQ that acknowledges only when the test says so."""

    def __init__(self) -> None:
        self.writable = True
        self.waiting: list[tuple[int, DeliveryReport]] = []

    def publish(self, msg: Record, failure: Failure, done: DeliveryReport) -> None:
        self.waiting.append((msg.offset(), done))

    def resend(self, msg: Record, failure: Failure, done: DeliveryReport, write: int) -> None:
        self.publish(msg, failure, done)

    def failed(self, error: KafkaError) -> None:
        self.writable = False


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_lane(handled: list[int]) -> tuple[PartitionLane, HeldDeadLetters, Clock]:
    class Orders(sg.ConsumerService):
        topic = "lane-unit"
        contract = OrderPlaced
        group_id = "lane-unit"
        retry = sg.RetryPolicy(attempts=3, base_delay=1.0, max_delay=1.0)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            if event.customer_id == "flaky" and ctx.attempt == 1:
                raise TimeoutError("later")
            handled.append(ctx.offset)

    spec = Orders(bootstrap_servers="127.0.0.1:9")._spec()
    sink = HeldDeadLetters()
    pipeline = Pipeline(spec, sink, ServiceMetrics(CollectorRegistry()))
    clock = Clock()
    return PartitionLane(0, pipeline, clock=clock), sink, clock


def batch(*values: bytes) -> list[Record]:
    return [record(v, topic="lane-unit", offset=i) for i, v in enumerate(values)]


def valid(i: int, customer: str = "c") -> bytes:
    return order(i, customer_id=customer).model_dump_json().encode()


def test_a_batch_is_handled_in_offset_order() -> None:
    """Records of one partition reach the handler in offset order."""
    handled: list[int] = []
    lane, _, _ = make_lane(handled)
    assert lane.enqueue(batch(*(valid(i) for i in range(5))))
    lane.drain()
    assert handled == [0, 1, 2, 3, 4]
    assert lane.commit_position() == 5


def test_a_retrying_head_holds_the_rest_of_its_partition() -> None:
    """A transient failure waits for its backoff; later records wait behind it."""
    handled: list[int] = []
    lane, _, clock = make_lane(handled)
    lane.enqueue(batch(valid(0), valid(1, "flaky"), valid(2)))
    lane.drain()
    assert handled == [0]
    assert lane.commit_position() == 1
    assert lane.retry is not None
    assert not lane.claim_if_due(clock.now)  # not due yet
    clock.now = lane.retry.due
    assert lane.claim_if_due(clock.now)
    lane.drain()
    assert handled == [0, 1, 2]
    assert lane.commit_position() == 3


def test_an_unacknowledged_dead_letter_holds_the_commit_position() -> None:
    """Nothing at or after a dead letter is committable until the broker acknowledges it."""
    handled: list[int] = []
    lane, sink, _ = make_lane(handled)
    lane.enqueue(batch(valid(0), b"{broken", valid(2)))
    lane.drain()
    assert handled == [0, 2]
    assert lane.commit_position() == 1
    assert lane.inflight() == 1
    offset, done = sink.waiting.pop()
    assert offset == 1
    done(None, None)
    assert lane.commit_position() == 3
    assert lane.inflight() == 0


def test_a_failed_dead_letter_stays_open_and_can_be_republished() -> None:
    """A failed DLQ write keeps the offset open; a successful resend releases it."""
    lane, sink, _ = make_lane([])
    lane.enqueue(batch(b"{broken"))
    lane.drain()
    _, done = sink.waiting.pop()
    done(KafkaError(KafkaError._MSG_TIMED_OUT), None)
    assert not sink.writable
    (failed,) = lane.failed_dead_letters()
    assert lane.commit_position() == 0
    lane.republish(failed)
    _, done = sink.waiting.pop()
    done(None, None)
    assert lane.failed_dead_letters() == []
    assert lane.commit_position() == 1


def test_failed_dead_letters_lists_only_those_whose_last_write_failed() -> None:
    """Among open dead letters only the failed ones are listed, each once, however
    often its resend fails, and none once each failed one is acknowledged."""
    lane, sink, _ = make_lane([])
    lane.enqueue(batch(b"{broken", b"{broken", b"{broken"))
    lane.drain()
    (o3, ok_later), (o2, fails), (o1, acked) = (sink.waiting.pop() for _ in range(3))
    assert (o1, o2, o3) == (0, 1, 2)
    acked(None, None)
    assert lane.failed_count == 0
    fails(KafkaError(KafkaError._MSG_TIMED_OUT), None)
    assert [p.msg.offset() for p in lane.failed_dead_letters()] == [1]
    for _ in range(2):  # the resend fails again: still one failed dead letter
        lane.republish(lane.failed_dead_letters()[0])
        _, done = sink.waiting.pop()
        done(KafkaError(KafkaError._MSG_TIMED_OUT), None)
        assert [p.msg.offset() for p in lane.failed_dead_letters()] == [1]
        assert lane.failed_count == 1
    lane.republish(lane.failed_dead_letters()[0])
    _, done = sink.waiting.pop()
    done(None, None)
    assert lane.failed_dead_letters() == []
    assert lane.failed_count == 0
    assert lane.commit_position() == 2  # offset 2 is still awaiting its report
    ok_later(None, None)
    assert lane.commit_position() == 3


def test_no_work_starts_while_the_dlq_is_unwritable() -> None:
    """A lane with buffered work is not claimed while dead letters cannot be written."""
    handled: list[int] = []
    lane, sink, clock = make_lane(handled)
    sink.writable = False
    assert not lane.enqueue(batch(valid(0)))
    assert not lane.claim_if_due(clock.now)
    sink.writable = True
    assert lane.claim_if_due(clock.now)
    lane.drain()
    assert handled == [0]


def test_close_drops_the_buffer_for_redelivery() -> None:
    """A closed lane drops what it buffered (its next owner reads it again)."""
    lane, _, _ = make_lane([])
    lane.enqueue(batch(valid(0), valid(1)))
    lane.close()
    assert lane.inflight() == 0
    assert not lane.drain()
    assert lane.commit_position() is None


def test_inflight_counts_no_finished_record_of_the_batch_in_hand() -> None:
    """Of the batch a worker is processing, ``streamguard_inflight`` counts the record
    in the handler and those after it: the ones handled or dead-lettered before it are
    done (a dead letter counts once, until the DLQ acknowledges it). The whole batch
    used to count until it ended or folded (every 0.5 s): up to a batch of finished
    records, and a dead letter twice."""
    seen: dict[int, int] = {}
    lanes: list[PartitionLane] = []

    class Watched(sg.ConsumerService):
        topic = "lane-unit"
        contract = OrderPlaced
        group_id = "lane-unit"

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            seen[ctx.offset] = lanes[0].inflight()

    spec = Watched(bootstrap_servers="127.0.0.1:9")._spec()
    pipeline = Pipeline(spec, HeldDeadLetters(), ServiceMetrics(CollectorRegistry()))
    lanes.append(PartitionLane(0, pipeline))
    # Offsets with gaps (compaction, transaction markers); offset 4 is a dead letter.
    offsets = [0, 2, 4, 6, 7, 9]
    values = [valid(0), valid(1), b"{broken", valid(3), valid(4), valid(5)]
    records = zip(values, offsets, strict=True)
    lanes[0].enqueue([record(v, topic="lane-unit", offset=o) for v, o in records])
    lanes[0].drain()
    assert seen == {0: 6, 2: 5, 6: 3 + 1, 7: 2 + 1, 9: 1 + 1}
    assert lanes[0].inflight() == 1  # the dead letter, until it is acknowledged


def test_a_slow_batch_reports_its_progress_before_it_ends() -> None:
    """Handled records of a batch reach the metrics, the commit position and the
    in-flight count while the batch still runs, not only at its end: with a 1 s handler
    a batch of 500 records showed nothing for eight minutes (no handled messages, no
    handler times for StreamguardHandlerLatencyHigh, no committed progress)."""
    registry = CollectorRegistry()
    seen: list[tuple[int, int | None, float, int]] = []
    lanes: list[PartitionLane] = []

    class Slow(sg.ConsumerService):
        topic = "lane-unit"
        contract = OrderPlaced
        group_id = "lane-unit"

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            lane = lanes[0]
            handled = registry.get_sample_value(
                "streamguard_messages_total",
                {"runtime": "consumer", "topic": "lane-unit", "outcome": "handled"},
            )
            seen.append((ctx.offset, lane.commit_position(), handled or 0.0, lane.inflight()))
            time.sleep(0.15)

    spec = Slow(bootstrap_servers="127.0.0.1:9")._spec()
    pipeline = Pipeline(spec, HeldDeadLetters(), ServiceMetrics(registry))
    lanes.append(PartitionLane(0, pipeline))
    assert lanes[0].enqueue(batch(*(valid(i) for i in range(8))))
    lanes[0].drain()
    # Offset 6 starts after six calls of 0.15 s: 0.9 s into the batch.
    offset, position, handled, inflight = seen[6]
    assert offset == 6
    assert position is not None, seen
    assert position >= 3, seen
    assert handled >= 3, seen
    assert inflight <= 8 - 3, seen
    assert lanes[0].commit_position() == 8
    assert (
        registry.get_sample_value(
            "streamguard_handler_seconds_count", {"runtime": "consumer", "topic": "lane-unit"}
        )
        == 8
    )


class OffTheLoop:
    """A runner seen from another thread than its loop's (a revoke from the poller)."""

    keyed = True

    def on_loop_thread(self) -> bool:
        return False


def test_an_event_loop_lane_is_idle_once_its_handlers_return() -> None:
    """A revoke waits, bounded, until no handler of an event-loop lane runs. The lane
    reads its count of running handlers: an Event set and cleared per record cost
    2.6 µs of CPU a key-ordered record."""
    pipeline = cast(Pipeline, make_lane([])[0].pipeline)
    lane = LoopLane(0, pipeline, cast(LoopRunner, OffTheLoop()))
    assert lane.wait_idle(0.0)
    lane.running = 1
    started = time.monotonic()
    assert not lane.wait_idle(0.05)
    assert time.monotonic() - started >= 0.05
    threading.Timer(0.05, setattr, (lane, "running", 0)).start()
    assert lane.wait_idle(5.0)
    assert lane.running == 0


def test_a_key_run_cancelled_before_its_first_step_is_forgotten() -> None:
    """A shutdown that gives up waiting right after the loop was handed a lane's records
    cancels their runs before they ever ran: each run's task still forgets itself (a
    done callback added when it is cancelled), so the loop is not left busy with runs
    that will never end."""
    pipeline = cast(Pipeline, make_lane([])[0].pipeline)
    loop = asyncio.new_event_loop()
    try:
        runner = LoopRunner(pipeline, loop, "key", max_in_flight=8)
        lane = LoopLane(0, pipeline, runner)
        lane.enqueue([record(valid(i), key=f"k{i}", topic="lane-unit", offset=i) for i in range(3)])
        lane.drain()  # from this thread: the loop accepts the records on its next turn
        runner.cancel_all()  # queued right behind: it runs before the runs' first steps
        loop.run_until_complete(asyncio.sleep(0.01))
        assert not runner.busy
    finally:
        loop.close()


class KeyedOrders(sg.ConsumerService):
    topic = "lane-unit"
    contract = OrderPlaced
    group_id = "lane-unit"
    ordering = "key"
    handled: ClassVar[list[int]] = []

    async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
        self.handled.append(ctx.offset)


def test_a_revoke_that_saw_no_handler_running_keeps_the_record_from_starting() -> None:
    """A revoke on another thread closes the lane, then waits for ``running`` at zero.
    Landing between the loop's last look at ``closed`` and its raising of ``running``
    (here: inside the slot take, between the two), it saw nothing running, committed and
    handed the partition over, and the record was handled here as well as by its new
    owner."""
    KeyedOrders.handled.clear()
    spec = KeyedOrders(bootstrap_servers="127.0.0.1:9")._spec()
    pipeline = Pipeline(spec, HeldDeadLetters(), ServiceMetrics(CollectorRegistry()))
    loop = asyncio.new_event_loop()
    try:
        runner = LoopRunner(pipeline, loop, "key", max_in_flight=8)
        lane = LoopLane(0, pipeline, runner)
        revoke_saw_idle: list[bool] = []
        take = runner.slots.try_take

        def revoked_meanwhile() -> bool:
            def revoke() -> None:  # Assignment.settle's order: close, then wait
                lane.close()
                revoke_saw_idle.append(lane.wait_idle(0.0))

            thread = threading.Thread(target=revoke)
            thread.start()
            thread.join()
            return take()

        runner.slots.try_take = revoked_meanwhile  # type: ignore[method-assign]
        lane.enqueue([record(valid(0), key="k", topic="lane-unit", offset=0)])
        lane.drain()
        for _ in range(50):
            loop.run_until_complete(asyncio.sleep(0.01))
            if not runner.busy:
                break
        assert revoke_saw_idle == [True]
        assert KeyedOrders.handled == []  # its new owner handles it
        assert lane.running == 0
        assert runner.slots.running == 0
    finally:
        loop.close()


def settling(pipeline: Pipeline, commits: list[int | None]) -> Assignment:
    """An Assignment for ``settle`` alone: a DLQ that is always flushed, and a committer
    that notes each lane's commit position in ``commits``."""
    return Assignment(
        pipeline,
        SimpleNamespace(flush=lambda timeout: None, writable=True),  # type: ignore[arg-type]
        sg.ServiceOptions(),
        SimpleNamespace(),  # type: ignore[arg-type]
        SimpleNamespace(  # type: ignore[arg-type]
            commit=lambda lanes, asynchronous, final=False: commits.extend(
                lane.commit_position() for lane in lanes
            )
        ),
        SimpleNamespace(),  # type: ignore[arg-type]
        on_assigned=lambda parts: None,
        on_revoked=lambda parts: None,
    )


class SlowCleanup(sg.ConsumerService):
    """A handler whose cleanup awaits, then fails: it outlives its cancellation."""

    topic = "lane-unit"
    contract = OrderPlaced
    group_id = "lane-unit"
    started: ClassVar[threading.Event] = threading.Event()
    cleaned: ClassVar[threading.Event] = threading.Event()

    async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
        SlowCleanup.started.set()
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(1.0)  # a rollback, say: well past CANCEL_WAIT
            SlowCleanup.cleaned.set()
            raise sg.PermanentError("rollback failed")


@pytest.mark.parametrize("ordering", ["partition", "key", "none"])
def test_a_handler_that_outlives_its_cancellation_leaves_nothing_after_the_revoke(
    ordering: Ordering, caplog: pytest.LogCaptureFixture
) -> None:
    """A revoke past revoke_timeout cancels the handler, but cancelling only asks: one
    that awaits in its cleanup ran on after the revoke had committed and handed the
    partition over, and its failure was dead-lettered by the old owner, beside the new
    owner's call of the same record. It is reported, and its outcome ignored; its record
    stays uncommitted."""
    SlowCleanup.started.clear()
    SlowCleanup.cleaned.clear()
    sink = HeldDeadLetters()
    spec = SlowCleanup(bootstrap_servers="127.0.0.1:9")._spec()
    pipeline = Pipeline(spec, sink, ServiceMetrics(CollectorRegistry()))
    commits: list[int | None] = []
    assignment = settling(pipeline, commits)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        runner = LoopRunner(pipeline, loop, ordering, max_in_flight=8)
        lane = LoopLane(0, pipeline, runner)
        lane.enqueue([record(valid(0), key="k", topic="lane-unit", offset=0)])
        lane.drain()
        assert SlowCleanup.started.wait(5.0)
        with caplog.at_level("WARNING", logger="streamguard.runtime"):
            assignment.settle([lane], 0.05)  # the revoke, from the polling thread
        assert SlowCleanup.cleaned.wait(5.0)
        assert runner.barrier(5.0)  # the loop recorded what the cleanup came to
        # Committed up to its record at most: the new owner runs it again.
        assert commits in ([None], [0])
        assert sink.waiting == []  # no dead letter from the old owner
        (line,) = [
            r
            for r in caplog.records
            if r.getMessage().startswith("handler still running after it was cancelled")
        ]
        # Whose handler: a process may run several services.
        assert (line.service, line.topic) == ("SlowCleanup", "lane-unit")
        # The failure its cleanup came to, ignored, says whose too (written by now: the
        # barrier above waited for the loop to record it).
        (ignored,) = [
            r for r in caplog.records if "after its partition was settled" in r.getMessage()
        ]
        assert (ignored.service, ignored.topic) == ("SlowCleanup", "lane-unit")
        assert lane.running == 0
    finally:
        stop_event_loop(loop, thread)


def test_handlers_given_up_on_share_one_wait_for_their_cancellation() -> None:
    """A stop gives every handler still running one CANCEL_WAIT together to end once
    cancelled: a wait a lane, in turn, made a stop whose handlers outlive their
    cancellation (or whose loop is blocked) 0.1-0.2 s longer for every partition."""
    cancel_wait = 0.1  # CANCEL_WAIT

    SlowCleanup.started.clear()
    spec = SlowCleanup(bootstrap_servers="127.0.0.1:9")._spec()
    pipeline = Pipeline(spec, HeldDeadLetters(), ServiceMetrics(CollectorRegistry()))
    assignment = settling(pipeline, [])
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        runner = LoopRunner(pipeline, loop, "partition", max_in_flight=12)
        lanes = [LoopLane(p, pipeline, runner) for p in range(12)]
        for p, lane in enumerate(lanes):
            lane.enqueue([record(valid(0), topic="lane-unit", partition=p, offset=0)])
            lane.drain()
        deadline = time.monotonic() + 5
        while sum(lane.running for lane in lanes) < 12 and time.monotonic() < deadline:
            time.sleep(0.01)
        start = time.monotonic()
        assignment.settle(lanes, 0.05)
        took = time.monotonic() - start
        # One shared wait, and a barrier the running loop answers at once: well under
        # the 1.25 s twelve waits in turn took at the least, with room for a loaded machine.
        assert took < 0.05 + 2 * cancel_wait + 0.6, took
        assert all(lane.abandoned for lane in lanes)
        deadline = time.monotonic() + 5  # the cleanups end (1 s) before the loop stops
        while any(lane.running for lane in lanes) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert runner.barrier(5.0)
    finally:
        stop_event_loop(loop, thread)


class DeafCleanup(SlowCleanup):
    """A handler whose cleanup ignores every cancellation: it outlives the stop."""

    async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
        SlowCleanup.started.set()
        try:
            await asyncio.sleep(60)
        finally:
            while True:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(60)


def test_a_handler_left_running_when_the_loop_closes_is_no_crash(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A revoke gives up on the handlers, the stop cancels them again (``cancel_all``),
    then closes the loop (``run()``'s end) with them still pending. Collected later,
    their runs end in GeneratorExit: each was logged as a lane crash stopping the
    service, after the service had stopped, and scheduled its flush on the closed loop."""
    SlowCleanup.started.clear()
    spec = DeafCleanup(bootstrap_servers="127.0.0.1:9")._spec()
    pipeline = Pipeline(spec, HeldDeadLetters(), ServiceMetrics(CollectorRegistry()))
    assignment = settling(pipeline, [])
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    failures: list[BaseException] = []
    runner = LoopRunner(pipeline, loop, "partition", max_in_flight=2)
    runner.attach(
        SimpleNamespace(),  # type: ignore[arg-type]
        threading.Event(),
        lambda: None,
        failures.append,
    )
    lanes = [LoopLane(p, pipeline, runner) for p in range(3)]  # one waits for a slot
    for p, lane in enumerate(lanes):
        lane.enqueue([record(valid(0), topic="lane-unit", partition=p, offset=0)])
        lane.drain()
    deadline = time.monotonic() + 5
    while sum(lane.running for lane in lanes) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    with caplog.at_level("ERROR", logger="streamguard.runtime"):
        assignment.settle(lanes, 0.05)  # the revoke
        runner.cancel_all()  # the stop gives up on them as well
        assert runner.barrier(5.0)
        assert sum(lane.running for lane in lanes) == 2  # deaf to both
        runner.shutdown()
        stop_event_loop(loop, thread)  # run()'s end
        assert loop.is_closed()
        runner._flush_due = False  # no flush pending: a run's end would schedule one
        unraisable: list[str] = []
        hook = sys.unraisablehook
        sys.unraisablehook = lambda args: unraisable.append(repr(args.exc_value))
        try:
            del runner, lanes, lane
            gc.collect()
        finally:
            sys.unraisablehook = hook
    assert "crashed" not in caplog.text
    assert failures == []
    assert unraisable == []


def test_a_record_that_probed_in_vain_counts_its_drift_once() -> None:
    """A failed probe gives the record its attempt back, so its next try is attempt 1
    again: drift is counted once a try gets past decoding, not on every attempt 1."""
    from streamguard.runtime.breaker import OPEN
    from streamguard.testing import ServiceHarness, record

    calls = [0]

    class Probed(sg.ConsumerService):
        topic, contract, group_id = "orders-kit", OrderPlaced, "g"

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            calls[0] += 1
            if calls[0] == 1:
                raise TimeoutError("still down")

    registry = CollectorRegistry()
    kit = ServiceHarness(Probed, registry=registry)
    pipe, clock = kit.pipeline, kit._clock
    breaker = pipe.breaker
    breaker._set(OPEN)
    breaker._opened_at = clock.now - breaker.config.cool_down  # the next call probes
    lane = PartitionLane(0, pipe, clock=clock)
    msg = record(order(1).model_dump_json().encode(), topic="orders-kit", offset=0)
    claimed = lane.enqueue([msg])
    for _ in range(2000):  # bounded: virtual time, 0.1 s a pass
        if claimed:
            claimed = lane.drain(max_batches=1)
        if (lane.commit_position() or 0) > 0:
            break
        clock.now += 0.1
        claimed = claimed or lane.claim_if_due(clock.now)
    labels = {
        "runtime": "consumer",
        "subject": OrderPlaced.__subject__,
        "kind": "no_schema_headers",
    }
    assert (calls[0], breaker.closed) == (2, True)
    assert registry.get_sample_value("streamguard_schema_drift_total", labels) == 1.0


def test_a_record_parked_before_its_first_try_still_counts_its_drift() -> None:
    """The breaker opens while a batch runs (other partitions fail): the next record is
    parked before its first try, with a retry state already. Its drift is counted when
    it does get tried (it was skipped while "first try" meant "no retry state")."""
    from streamguard.testing import ServiceHarness, record

    calls: list[int] = []

    class Billing(sg.ConsumerService):
        topic, contract, group_id = "orders-kit", OrderPlaced, "g"

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            calls.append(ctx.offset)
            if len(calls) == 1:  # meanwhile, other partitions' failures open the breaker
                with breaker._lock:
                    breaker._open(kit._clock(), "others failed", "TimeoutError")

    registry = CollectorRegistry()
    kit = ServiceHarness(Billing, registry=registry)
    breaker = kit.pipeline.breaker
    lane = PartitionLane(0, kit.pipeline, clock=kit._clock)
    msgs = [
        record(order(i).model_dump_json().encode(), topic="orders-kit", offset=i) for i in (0, 1)
    ]
    claimed = lane.enqueue(msgs)
    for _ in range(2000):  # bounded: virtual time, 0.1 s a pass
        if claimed:
            claimed = lane.drain(max_batches=1)
        if (lane.commit_position() or 0) >= 2:
            break
        kit._clock.now += 0.1
        claimed = claimed or lane.claim_if_due(kit._clock.now)
    labels = {
        "runtime": "consumer",
        "subject": OrderPlaced.__subject__,
        "kind": "no_schema_headers",
    }
    assert calls == [0, 1]
    assert registry.get_sample_value("streamguard_schema_drift_total", labels) == 2.0


def test_a_batch_whose_first_record_is_invalid_still_has_its_drift_checked() -> None:
    """The drift sample counts the records that decode: with the batch's position, a
    producer's batch that began with an invalid record had none of its records checked,
    so drift behind such a record was never counted."""
    from streamguard.testing import ServiceHarness

    handled: list[int] = []

    class Billing(sg.ConsumerService):
        topic, contract, group_id = "orders-kit", OrderPlaced, "g"

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            handled.append(ctx.offset)

    registry = CollectorRegistry()
    kit = ServiceHarness(Billing, registry=registry)
    lane = PartitionLane(0, kit.pipeline, clock=kit._clock)
    msgs = [
        record(b"not json", topic="orders-kit", offset=0),
        record(order(1).model_dump_json().encode(), topic="orders-kit", offset=1),
    ]
    if lane.enqueue(msgs):
        lane.drain()
    labels = {
        "runtime": "consumer",
        "subject": OrderPlaced.__subject__,
        "kind": "no_schema_headers",
    }
    assert handled == [1]
    assert registry.get_sample_value("streamguard_schema_drift_total", labels) == 1.0


def test_an_old_calls_success_does_not_close_a_half_open_breaker_in_a_partition_lane() -> None:
    """Only the probe decides a half-open breaker. A sync lane told the breaker of its
    successes without naming a record, which counts as the probe's: a call that started
    before the breaker opened and answered while another partition's probe was out
    closed it, and every parked record then called the dependency."""
    from streamguard.runtime.breaker import HALF_OPEN
    from streamguard.testing import ServiceHarness

    class Billing(sg.ConsumerService):
        topic, contract, group_id = "orders-kit", OrderPlaced, "g"

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            if ctx.offset == 0:  # meanwhile the dependency failed, and partition 1 probes
                with breaker._lock:
                    breaker._open(kit._clock(), "others failed", "TimeoutError")
                kit._clock.now += breaker.config.cool_down
                assert breaker.allow((1, 99))

    kit = ServiceHarness(Billing, registry=CollectorRegistry())
    breaker = kit.pipeline.breaker
    lane = PartitionLane(0, kit.pipeline, clock=kit._clock)
    msgs = [
        record(order(i).model_dump_json().encode(), topic="orders-kit", offset=i) for i in (0, 1)
    ]
    if lane.enqueue(msgs):
        lane.drain(max_batches=1)
    assert lane.commit_position() == 1  # offset 1 is parked behind the breaker
    assert breaker.state == HALF_OPEN
    breaker.succeeded(1, (1, 99))  # the probe's answer closes it
    assert breaker.closed


class Basket(sg.Contract):
    """A contract whose validation notes whether an event handled earlier is still alive."""

    __subject__ = "tests.Basket"
    __version__ = 1

    n: int

    @model_validator(mode="before")
    @classmethod
    def _note_the_last_event(cls, data: Any) -> Any:
        ALIVE_WHILE_DECODING.append(any(ref() is not None for ref in HANDLED))
        return data


HANDLED: list[weakref.ref[Basket]] = []
ALIVE_WHILE_DECODING: list[bool] = []


class Baskets(sg.ConsumerService):
    """Keeps a weak reference to each event it handles, in HANDLED."""

    topic = "lane-unit"
    contract = Basket
    group_id = "lane-unit"

    def handle(self, event: Basket, ctx: sg.MessageContext) -> None:
        HANDLED.append(weakref.ref(event))


def test_a_handled_event_is_let_go_before_the_next_record_decodes() -> None:
    """Neither lane keeps the last event it handled while it decodes the next. Kept,
    each young-generation collection during a decode walked the whole previous event:
    on events of 300 line items (12 KB) the collector's time per record rose from 60
    to 99 µs in a sync service and to 166 in an async one (docs/benchmark-notes.md,
    *Larger events*)."""
    HANDLED.clear()
    ALIVE_WHILE_DECODING.clear()

    class AsyncBaskets(Baskets):
        async def handle(self, event: Basket, ctx: sg.MessageContext) -> None:  # type: ignore[override]
            HANDLED.append(weakref.ref(event))

    values = [b'{"n": %d}' % i for i in range(4)]
    spec = Baskets(bootstrap_servers="127.0.0.1:9")._spec()
    lane = PartitionLane(0, Pipeline(spec, HeldDeadLetters(), ServiceMetrics(CollectorRegistry())))
    assert lane.enqueue(batch(*values))
    lane.drain()
    assert len(HANDLED) == 4
    assert ALIVE_WHILE_DECODING == [False] * 4

    HANDLED.clear()
    ALIVE_WHILE_DECODING.clear()
    spec = AsyncBaskets(bootstrap_servers="127.0.0.1:9")._spec()
    pipeline = Pipeline(spec, HeldDeadLetters(), ServiceMetrics(CollectorRegistry()))
    loop = asyncio.new_event_loop()
    try:
        runner = LoopRunner(pipeline, loop, "partition", max_in_flight=8)
        loop_lane = LoopLane(0, pipeline, runner)
        assert loop_lane.enqueue(batch(*values))
        loop_lane.drain()
        for _ in range(100):
            loop.run_until_complete(asyncio.sleep(0.01))
            if len(HANDLED) == 4:
                break
    finally:
        loop.close()
    assert len(HANDLED) == 4
    assert ALIVE_WHILE_DECODING == [False] * 4


def test_an_idle_pool_thread_does_not_keep_the_last_event_it_handled() -> None:
    """A sync handler under key ordering runs in the event loop's thread pool. The
    thread that ran it kept the call's arguments (the event, its context) in its locals
    until its next call, which on a quiet topic may never come: the last event of each
    thread stayed alive, and was walked by every young collection. With the collector
    off, only reference counting can have freed it."""
    HANDLED.clear()

    spec = Baskets(bootstrap_servers="127.0.0.1:9")._spec()
    pipeline = Pipeline(spec, HeldDeadLetters(), ServiceMetrics(CollectorRegistry()))
    loop = asyncio.new_event_loop()
    gc.disable()
    try:
        runner = LoopRunner(pipeline, loop, "key", max_in_flight=8)
        lane = LoopLane(0, pipeline, runner)
        assert lane.enqueue(batch(b'{"n": 1}', b'{"n": 2}'))
        lane.drain()
        for _ in range(200):
            loop.run_until_complete(asyncio.sleep(0.01))
            if len(HANDLED) == 2 and not runner.busy and not any(r() for r in HANDLED):
                break
        assert len(HANDLED) == 2
        assert [ref() for ref in HANDLED] == [None, None]
    finally:
        gc.enable()
        loop.close()


class Scratch:
    """Something a handler builds, which nothing but its locals refers to."""


# Weak references to the refused event and to what its handler built.
REFUSED: list[weakref.ref[Any]] = []
# What on_dead_letter hooks formatted of the errors they were given.
FORMATTED: list[str] = []


def refused_order(i: int) -> bytes:
    """A large event (300 line items) that the handlers below refuse."""
    items = [LineItem(sku=f"sku-{n}", quantity=1) for n in range(300)]
    return order(i, customer_id="refused", items=items).model_dump_json().encode()


class Refusing(sg.ConsumerService):
    topic = "lane-unit"
    contract = OrderPlaced
    group_id = "lane-unit"

    def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
        scratch = Scratch()
        if event.customer_id == "refused":
            REFUSED.extend([weakref.ref(event), weakref.ref(scratch)])
            raise sg.PermanentError("refused")

    def on_dead_letter(self, ctx: sg.MessageContext, failure: Failure) -> None:
        FORMATTED.append("".join(traceback.format_exception(failure.error)))


class AsyncRefusing(Refusing):
    async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:  # type: ignore[override]
        scratch = Scratch()
        if event.customer_id == "refused":
            REFUSED.extend([weakref.ref(event), weakref.ref(scratch)])
            raise sg.PermanentError("refused")


@pytest.mark.parametrize(
    ("service", "ordering"),
    [
        (Refusing, None),  # worker threads
        (AsyncRefusing, "partition"),  # the event loop's in-order runs
        (AsyncRefusing, "key"),  # the event loop's key runs
        (Refusing, "key"),  # a sync handler in the event loop's thread pool
    ],
)
def test_a_refused_event_is_let_go_before_its_dead_letter_is_acknowledged(
    service: type[Refusing], ordering: str | None
) -> None:
    """A dead letter's error is held until the DLQ acknowledges it, up to max_buffered
    of them a lane. Its traceback's frames held the handler's locals (the decoded
    event, what the handler built) and, through them, the lane's: each refused event
    stayed alive, and was walked by every young collection, until then. With the
    collector off, only reference counting can have freed them; the error the hook
    gets still formats with the handler's file, line and function."""
    REFUSED.clear()
    FORMATTED.clear()
    sink = HeldDeadLetters()
    pipeline = Pipeline(
        service(bootstrap_servers="127.0.0.1:9")._spec(),
        sink,
        ServiceMetrics(CollectorRegistry()),
    )
    records = [
        record(valid(0), key="a", topic="lane-unit", offset=0),
        record(refused_order(1), key="b", topic="lane-unit", offset=1),
    ]
    loop = asyncio.new_event_loop()
    gc.disable()
    try:
        lane: PartitionLane
        if ordering is None:
            lane = PartitionLane(0, pipeline)
            assert lane.enqueue(records)
            lane.drain()
        else:
            runner = LoopRunner(pipeline, loop, ordering, max_in_flight=8)  # type: ignore[arg-type]
            lane = LoopLane(0, pipeline, runner)
            assert lane.enqueue(records)
            lane.drain()
            for _ in range(200):
                loop.run_until_complete(asyncio.sleep(0.01))
                # A sync handler's pool thread drops its call's arguments (the event)
                # just after completing the call's future: the loop may see the run
                # end first, so wait for the references to go too (2 s at most).
                if sink.waiting and not runner.busy and not any(r() for r in REFUSED):
                    break
        assert [offset for offset, _ in sink.waiting] == [1]  # not acknowledged yet
        assert len(REFUSED) == 2
        assert [ref() for ref in REFUSED] == [None, None]
        _, done = sink.waiting.pop()
        done(None, None)
    finally:
        gc.enable()
        loop.close()
    [text] = FORMATTED
    assert f'File "{__file__}"' in text
    assert 'in handle\n    raise sg.PermanentError("refused")' in text
    assert text.endswith("streamguard.errors.PermanentError: refused\n")


class Backend:
    """A client whose requests a task of its own serves, one at a time: a failed one's
    error is handed to its caller (on the future it waits on), and the task goes on."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue[tuple[str, asyncio.Future[str]]] = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        while True:
            customer, reply = await self.requests.get()
            try:
                if customer == "refused":
                    raise sg.PermanentError("refused")
                reply.set_result(customer)
            except Exception as exc:  # its traceback holds this suspended frame
                reply.set_exception(exc)

    async def call(self, customer: str) -> str:
        reply: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        await self.requests.put((customer, reply))
        return await reply


class ThroughBackend(sg.ConsumerService):
    topic = "lane-unit"
    contract = OrderPlaced
    group_id = "lane-unit"
    backend: ClassVar[Backend | None] = None
    served: ClassVar[list[str]] = []

    async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
        if ThroughBackend.backend is None:
            ThroughBackend.backend = Backend()
        ThroughBackend.served.append(await ThroughBackend.backend.call(event.customer_id))


def test_letting_go_of_a_failure_does_not_close_a_coroutine_that_is_still_suspended() -> None:
    """An error can hold the frame of a coroutine that caught it and is still running:
    a client's own task that hands a failed request's error to its caller. Clearing
    that frame (traceback.clear_frames before Python 3.13) closed the coroutine: the
    client's task ended, and every later request through it waited for ever."""
    ThroughBackend.backend = None
    ThroughBackend.served = []
    sink = HeldDeadLetters()
    pipeline = Pipeline(
        ThroughBackend(bootstrap_servers="127.0.0.1:9")._spec(),
        sink,
        ServiceMetrics(CollectorRegistry()),
    )
    loop = asyncio.new_event_loop()
    try:
        runner = LoopRunner(pipeline, loop, "partition", max_in_flight=8)
        lane = LoopLane(0, pipeline, runner)
        assert lane.enqueue(
            [
                record(valid(0, "refused"), topic="lane-unit", offset=0),
                record(valid(1, "served"), topic="lane-unit", offset=1),
            ]
        )
        lane.drain()
        for _ in range(100):
            loop.run_until_complete(asyncio.sleep(0.01))
            if ThroughBackend.served:
                break
        assert [offset for offset, _ in sink.waiting] == [0]
        assert ThroughBackend.backend is not None
        assert not ThroughBackend.backend.task.done()
        assert ThroughBackend.served == ["served"]
        ThroughBackend.backend.task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()


class OutageWithASlowCall(sg.ConsumerService):
    """Keys "a" and "b" fail (the dependency is down); key "slow" was called before the
    breaker opened and answers late, successfully. A probe's call waits for ``probe``."""

    topic = "lane-unit"
    contract = OrderPlaced
    group_id = "lane-unit"
    ordering = "key"
    retry = sg.RetryPolicy(attempts=5, base_delay=0.01, max_delay=0.01)
    breaker = sg.CircuitBreaker(min_calls=2, cool_down=0.2)
    slow: ClassVar[asyncio.Event]
    probe: ClassVar[asyncio.Event]
    probing: ClassVar[list[int]] = []
    back: ClassVar[bool] = False

    async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
        if event.customer_id == "slow":
            await self.slow.wait()
            return
        if self.back:
            return
        if ctx.attempt > 1:
            self.probing.append(ctx.offset)
            await self.probe.wait()
        raise TimeoutError("down")


def test_an_old_calls_success_does_not_close_a_half_open_breaker_on_the_loop() -> None:
    """Only the probe decides a half-open breaker (see Breaker._is_probe). Under key
    ordering, a call that started before the breaker opened and succeeded while the
    probe was still out closed the breaker: the loop told it of the success without
    naming the record, which counts as the probe's. Every waiting record then called
    the dependency that the probe had not yet found back."""
    from streamguard.runtime.breaker import HALF_OPEN, OPEN

    service = OutageWithASlowCall
    service.probing.clear()
    service.back = False
    pipeline = Pipeline(
        service(bootstrap_servers="127.0.0.1:9")._spec(),
        HeldDeadLetters(),
        ServiceMetrics(CollectorRegistry()),
    )
    breaker = pipeline.breaker
    loop = asyncio.new_event_loop()
    runner = LoopRunner(pipeline, loop, "key", max_in_flight=8)

    def run_until(done: Callable[[], bool]) -> None:
        for _ in range(1000):  # bounded: 10 s
            loop.run_until_complete(asyncio.sleep(0.01))
            if done():
                return
        raise AssertionError("timed out")

    try:
        service.slow, service.probe = asyncio.Event(), asyncio.Event()
        lane = LoopLane(0, pipeline, runner)
        lane.enqueue(
            [
                record(valid(0, "slow"), key="slow", topic="lane-unit", offset=0),
                record(valid(1), key="a", topic="lane-unit", offset=1),
                record(valid(2), key="b", topic="lane-unit", offset=2),
            ]
        )
        lane.drain()
        run_until(lambda: breaker.state == OPEN)
        run_until(lambda: bool(service.probing))  # half-open: one record probes
        assert breaker.state == HALF_OPEN
        service.slow.set()  # the old call succeeds
        run_until(lambda: lane.commit_position() == 1)
        assert breaker.state == HALF_OPEN  # the probe has not answered yet
        service.probe.set()  # the probe fails: the dependency is still down
        run_until(lambda: breaker.state == OPEN)
        service.back = True  # the next probe's success closes it, and all is handled
        run_until(lambda: lane.commit_position() == 3)
        assert breaker.closed
    finally:
        runner.cancel_all()
        loop.run_until_complete(asyncio.sleep(0.01))
        loop.close()


def loop_pipeline(
    service: type[sg.ConsumerService], sink: HeldDeadLetters | None = None
) -> Pipeline:
    """A pipeline of ``service`` whose dead letters ``sink`` (or a new one) holds."""
    return Pipeline(
        service(bootstrap_servers="127.0.0.1:9")._spec(),
        sink or HeldDeadLetters(),
        ServiceMetrics(CollectorRegistry()),
    )


@contextlib.contextmanager
def loop_runner(
    pipeline: Pipeline, ordering: Ordering, max_in_flight: int
) -> Iterator[tuple[asyncio.AbstractEventLoop, LoopRunner]]:
    """A runner on a loop this thread turns (``turn``); its tasks cancelled after."""
    loop = asyncio.new_event_loop()
    runner = LoopRunner(pipeline, loop, ordering, max_in_flight=max_in_flight)
    try:
        yield loop, runner
    finally:
        runner.cancel_all()
        loop.run_until_complete(asyncio.sleep(0.01))
        loop.close()


def turn(loop: asyncio.AbstractEventLoop, times: int) -> None:
    """Let the loop run for ``times`` turns of 10 ms."""
    for _ in range(times):
        loop.run_until_complete(asyncio.sleep(0.01))


class DownWithOneSlot(sg.ConsumerService):
    """Every call fails: the dependency is down. Each call notes the breaker's state."""

    topic = "lane-unit"
    contract = OrderPlaced
    group_id = "lane-unit"
    ordering = "none"
    # Far beyond the test's waits, so that no retry falls within them on a loaded machine.
    retry = sg.RetryPolicy(attempts=5, base_delay=10.0, max_delay=10.0, max_budget_ms=300_000)
    breaker = sg.CircuitBreaker(min_calls=2, cool_down=30.0)
    states: ClassVar[list[str]] = []
    pipeline: ClassVar[Pipeline]

    async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
        self.states.append(self.pipeline.breaker.state_name)
        await asyncio.sleep(0.001)
        raise TimeoutError("down")


def test_records_waiting_for_a_slot_call_no_handler_once_the_breaker_opens() -> None:
    """An open breaker stops handler calls. Records queued for a ``max_in_flight`` slot
    when it opened were let through the breaker before they waited: each called the
    dependency the breaker had found down as soon as it got its slot (under no ordering,
    every buffered record of the partition)."""
    service = DownWithOneSlot
    service.states.clear()
    service.pipeline = pipeline = loop_pipeline(service)
    with loop_runner(pipeline, "none", max_in_flight=1) as (loop, runner):
        lane = LoopLane(0, pipeline, runner)
        lane.enqueue([record(valid(i), topic="lane-unit", offset=i) for i in range(6)])
        lane.drain()
        turn(loop, 30)  # bounded: the retries are due after 10 s, the probe after 30
        assert not pipeline.breaker.closed
        assert service.states == ["closed", "closed"]  # the two calls that opened it


class DlqFailsWithOneSlot(sg.ConsumerService):
    """The first record's call sees the DLQ fail (another record's dead letter, say)."""

    topic = "lane-unit"
    contract = OrderPlaced
    group_id = "lane-unit"
    ordering = "none"
    called: ClassVar[list[int]] = []
    sink: ClassVar[HeldDeadLetters]

    async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
        self.called.append(ctx.offset)
        await asyncio.sleep(0.001)
        if ctx.offset == 0:  # the first only: a later call failing it would hold the rest
            self.sink.writable = False


def test_records_waiting_for_a_slot_start_no_work_once_the_dlq_is_unwritable() -> None:
    """No work starts while the DLQ cannot be written; records queued for a slot when it
    failed started theirs as soon as they got one."""
    service = DlqFailsWithOneSlot
    service.called.clear()
    service.sink = HeldDeadLetters()
    pipeline = loop_pipeline(service, service.sink)
    with loop_runner(pipeline, "none", max_in_flight=1) as (loop, runner):
        lane = LoopLane(0, pipeline, runner)
        lane.enqueue([record(valid(i), topic="lane-unit", offset=i) for i in range(4)])
        lane.drain()
        turn(loop, 10)
        assert service.called == [0]
        service.sink.writable = True  # the DLQ is back: the others are handled
        for _ in range(1000):  # bounded: 10 s (a loaded machine)
            turn(loop, 1)
            if lane.commit_position() == 4:
                break
        assert sorted(service.called) == [0, 1, 2, 3]


@pytest.mark.parametrize("ordering", ["partition", "key"])
def test_successes_folded_on_the_loop_do_not_close_a_half_open_breaker(ordering: str) -> None:
    """The loop reports successes in folds: an in-order run's (``_fold``) and a key
    run's counted while the breaker was closed (``_fold_successes``). Unnamed, a fold
    made after the breaker went half-open counted as the probe's answer and closed it."""
    from streamguard.runtime.breaker import HALF_OPEN

    pipeline = Pipeline(
        OutageWithASlowCall(bootstrap_servers="127.0.0.1:9")._spec(),
        HeldDeadLetters(),
        ServiceMetrics(CollectorRegistry()),
    )
    breaker = pipeline.breaker
    loop = asyncio.new_event_loop()
    try:
        runner = LoopRunner(pipeline, loop, ordering, max_in_flight=8)
        lane = LoopLane(0, pipeline, runner)
        msgs = [record(valid(i), key="k", topic="lane-unit", offset=i) for i in range(3)]
        runner._succeeded = 3  # counted while closed, as a key run does
        with breaker._lock:
            breaker._open(time.monotonic(), "others failed", "TimeoutError")
        breaker._opened_at -= breaker.config.cool_down
        assert breaker.allow((1, 99))  # partition 1's record probes
        if ordering == "partition":
            runner._fold(lane, 3, msgs[-1], time.perf_counter())
        else:
            runner._fold_successes()
        assert breaker.state == HALF_OPEN
    finally:
        loop.close()


def test_records_that_waited_for_the_dlq_call_no_handler_once_the_breaker_opens() -> None:
    """A record that waited for an unwritable DLQ (breaker closed) was not let through a
    probe, yet it skipped the look after its slot wait: when the DLQ came back, every
    buffered record queued for a slot called the dependency the breaker had just found
    down."""
    service = DownWithOneSlot
    service.states.clear()
    sink = HeldDeadLetters()
    sink.writable = False  # every record waits for the DLQ first
    service.pipeline = pipeline = loop_pipeline(service, sink)
    with loop_runner(pipeline, "none", max_in_flight=1) as (loop, runner):
        lane = LoopLane(0, pipeline, runner)
        lane.enqueue([record(valid(i), topic="lane-unit", offset=i) for i in range(6)])
        lane.drain()
        turn(loop, 5)
        assert service.states == []
        sink.writable = True  # the DLQ is back: each record queues for the one slot
        turn(loop, 30)  # bounded: the retries are due after 10 s, the probe after 30
        assert not pipeline.breaker.closed
        assert service.states == ["closed", "closed"]  # the two calls that opened it


class DownInOrder(DownWithOneSlot):
    ordering = "partition"


def test_a_partition_waiting_for_a_slot_calls_no_handler_once_the_breaker_opens() -> None:
    """Under partition order a run waiting for a ``max_in_flight`` slot looked at the
    breaker before it waited: once two partitions' calls opened it, a third partition
    queued for the slot called the dependency the breaker had just found down."""
    service = DownInOrder
    service.states.clear()
    service.pipeline = pipeline = loop_pipeline(service)
    with loop_runner(pipeline, "partition", max_in_flight=1) as (loop, runner):
        for partition in range(3):
            lane = LoopLane(partition, pipeline, runner)
            records = [
                record(valid(i), topic="lane-unit", partition=partition, offset=i) for i in (0, 1)
            ]
            lane.enqueue(records)
            lane.drain()
        turn(loop, 30)  # bounded: the retries are due after 10 s, the probe after 30
        assert not pipeline.breaker.closed
        assert service.states == ["closed", "closed"]  # the two calls that opened it


def test_a_success_told_while_the_breaker_is_busy_counts_as_of_its_call_start() -> None:
    """A lane's success waits for the breaker's lock (another lane in it, a thread
    switch): aged by the lane before that wait, it counted as of later than its call
    began, past a failure that came after, which then looked as if something succeeded
    since and was dead-lettered when its retries ran out. The breaker ages it itself."""
    returned = threading.Event()

    class Orders(sg.ConsumerService):
        topic, contract, group_id = "lane-unit", OrderPlaced, "lane-unit"

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            returned.set()

    spec = Orders(bootstrap_servers="127.0.0.1:9")._spec()
    pipeline = Pipeline(spec, HeldDeadLetters(), ServiceMetrics(CollectorRegistry()))
    breaker = pipeline.breaker
    lane = PartitionLane(1, pipeline)
    assert lane.enqueue(batch(valid(0)))
    drained = threading.Thread(target=lane.drain)
    with breaker._lock:  # another lane is in the breaker
        drained.start()
        assert returned.wait(5)
        time.sleep(0.05)  # the call returned; its success waits to be told
        since = time.monotonic()  # the dependency is down: (0, 7) fails first
    drained.join(5)
    breaker.failed((0, 7))
    breaker.failed((2, 3))
    assert breaker.outage_suspected((0, 7), since)


class SlowProbe(sg.ConsumerService):
    """The probe's call gets its answer, then its task goes on for 0.2 s."""

    topic = "lane-unit"
    contract = OrderPlaced
    group_id = "lane-unit"
    began: ClassVar[list[float]] = []

    async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
        self.began.append(time.monotonic())
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("ordering", ["partition", "key"])
def test_a_probes_success_on_the_loop_counts_as_of_its_call_start(ordering: str) -> None:
    """A half-open breaker's probe succeeded on the loop and told the breaker at once,
    unaged: its success counted as of its task's resumption, not its call's start, as
    every other success does, and a failure in between looked as if something had
    succeeded since it (dead-lettered when its retries ran out, an outage's or not)."""
    SlowProbe.began.clear()
    pipeline = loop_pipeline(SlowProbe)
    breaker = pipeline.breaker
    with loop_runner(pipeline, ordering, max_in_flight=8) as (loop, runner):
        with breaker._lock:
            breaker._open(time.monotonic(), "others failed", "TimeoutError")
        breaker._opened_at -= breaker.config.cool_down  # a probe is due
        lane = LoopLane(0, pipeline, runner)
        lane.enqueue([record(valid(0), key="k", topic="lane-unit", offset=0)])
        lane.drain()
        for _ in range(500):  # bounded: 5 s
            turn(loop, 1)
            if lane.commit_position() == 1:
                break
        assert breaker.closed
        [began] = SlowProbe.began
        assert breaker._last_success - began < 0.1

"""A running service: its clients, its threads, and its life from start to stop.

``ServiceRuntime`` is what ``ConsumerService.run()`` drives. It builds the runtime's
pieces from the service's ``ServiceSpec`` (never from the user's object), connects,
runs the scheduler until stopped, then settles, commits and closes.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from functools import partial
from types import FrameType
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry

from streamguard.errors import BrokerUnavailable, ConfigurationError
from streamguard.observe.health import HealthServer
from streamguard.observe.librdkafka_logs import RepeatsCollapsed
from streamguard.observe.logs import frames
from streamguard.observe.metrics import ServiceMetrics
from streamguard.runtime.assignment import Assignment, wait_unless_hurried
from streamguard.runtime.breaker import Breaker
from streamguard.runtime.commits import Committer
from streamguard.runtime.connectivity import (
    STATS_INTERVAL_MS,
    ClusterLink,
    check_link_settings,
)
from streamguard.runtime.deadletters import DeadLetterPublisher
from streamguard.runtime.flow import FlowControl
from streamguard.runtime.lag import LagMonitor
from streamguard.runtime.lane import PartitionLane
from streamguard.runtime.pipeline import Pipeline
from streamguard.runtime.poller import Poller
from streamguard.runtime.scheduler import Scheduler
from streamguard.runtime.spec import ServiceSpec
from streamguard.settings import BOOTSTRAP_ENV
from streamguard.topics import (
    create_topics,
    dead_letter_max_message_bytes,
    max_message_bytes,
    warn_if_dead_letter_topic_small,
)

if TYPE_CHECKING:
    # A sync service under partition order runs no event loop: the event-loop runtime
    # (and with it asyncio, unless the Kafka client loads it) is imported only by the
    # services that run one.
    import asyncio

    from streamguard.runtime.eventloop import LoopRunner

log = logging.getLogger("streamguard.runtime")
_librdkafka_log = logging.getLogger("streamguard.librdkafka")

# /readyz reports "not polling" when no poll happened for this long, not counting a
# revoke's wait for handlers (up to revoke_timeout, which may be longer).
POLL_STALE_AFTER = 10.0
# The longest single wait for the cluster at start-up: a stop (SIGTERM) is seen between two.
CONNECT_WAIT = 0.5
# The longest wait at start-up to make the DLQ topic on another cluster than the source's.
DLQ_CREATE_WAIT = 5.0
# After the shutdown, the longest wait for workers and the loop to record a handler's
# crash (microseconds after its lane turned idle; only a stuck handler costs all of it).
CRASH_RECORD_WAIT = 0.5
# The longest wait for the event loop's thread to end once its loop answered: it ends
# within milliseconds, and is then closed (its descriptors released).
LOOP_STOP_WAIT = 5.0
# The longest wait for the consumer's close, which waits for the stop's final commit:
# librdkafka retries that without limit while the group coordinator is down or silent.
# A healthy close takes milliseconds; one leaving a silent coordinator's group, 5 s.
CLOSE_WAIT = 10.0
# A hurried stop's (a second signal): still time for a healthy close and its commit.
HURRIED_CLOSE_WAIT = 1.0


_EXITED_IN = "streamguard_exited_in"


def exited_in(exc: SystemExit) -> str | None:
    """The hook that raised ``exc`` (``sys.exit(3)`` in ``on_start``, ``on_assign``,
    ``on_revoke``, or in ``on_stop`` after a clean stop), None for a handler's:
    ``streamguard run`` keeps the exit code of the service's own stop, as Python does,
    but not a handler's, which its record may have chosen."""
    hook = vars(exc).get(_EXITED_IN)
    return hook if isinstance(hook, str) else None


def _mark_exit(exc: SystemExit, hook: str) -> None:
    vars(exc)[_EXITED_IN] = hook  # see exited_in


def _marking_exit(hook: Callable[[list[int]], None], name: str) -> Callable[[list[int]], None]:
    """``hook`` (``on_assign``, ``on_revoke``), its ``SystemExit`` marked as its own:
    it runs in a rebalance callback inside the consumer's poll, which re-raises the
    same exception, so ``run()`` raised it unmarked, as if a handler's (exit 1)."""

    def call(partitions: list[int]) -> None:
        try:
            hook(partitions)
        except SystemExit as exc:
            _mark_exit(exc, name)
            raise

    return call


def _close_consumer(consumer: Consumer, names: Mapping[str, str]) -> None:
    """Close ``consumer``; a failure (the cluster gone, say) is logged: the run is over.
    ``names``: its service and topic, for the line (a process may run several)."""
    try:
        consumer.close()
    except (KafkaException, RuntimeError) as exc:
        log.warning("consumer close failed", extra={**names, "error": str(exc)})


def _close_in_time(consumer: Consumer, hurry: threading.Event, names: Mapping[str, str]) -> None:
    """Close ``consumer`` on a daemon thread, waiting ``CLOSE_WAIT`` at most (hurried,
    ``HURRIED_CLOSE_WAIT``): past that, the close, and the final commit it waits for,
    are left to that thread, so that a stop stays within its bound. Nothing is lost: a
    commit that never lands leaves its records to be delivered again."""
    closed = threading.Event()

    def close() -> None:
        try:
            _close_consumer(consumer, names)
        finally:
            closed.set()

    threading.Thread(target=close, name="streamguard-close", daemon=True).start()
    deadline = time.monotonic() + CLOSE_WAIT
    if not wait_unless_hurried(closed.wait, deadline, hurry):
        closed.wait(max(0.0, min(HURRIED_CLOSE_WAIT, deadline - time.monotonic())))
    if not closed.is_set():
        log.warning(
            "consumer close did not end in time; the final commit is unconfirmed, and "
            "records since the last confirmed one may be delivered again",
            extra={**names, "wait": CLOSE_WAIT, "hurried": hurry.is_set()},
        )


class _CommitAnswers:
    """librdkafka's commit callback of one run's consumer, for that run's committer."""

    committer: Committer | None = None

    def __call__(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if self.committer is not None:
            self.committer.on_commit(error, partitions)


def _close_when_free(
    poller: Poller, publisher: DeadLetterPublisher | None, names: Mapping[str, str]
) -> None:
    """Close the consumer once the poll a worker is still inside ends, then release the
    DLQ producer, on a daemon thread. Nobody else would: the consumer's heartbeats go on
    without polls, so it kept its partitions until ``max.poll.interval.ms`` (5 minutes
    by default) in a process that lives on, and the producer its connections."""

    def close() -> None:
        poller.lock.acquire()  # held for good: that worker polls no more
        poller.owned = True
        _close_consumer(poller.consumer, names)
        if publisher is not None:
            publisher.release()

    threading.Thread(target=close, name="streamguard-close", daemon=True).start()


class Hooks:
    """The lifecycle callbacks of a service (all optional, none may block for long)."""

    def __init__(
        self,
        on_start: Callable[[], None] | None = None,
        on_stop: Callable[[], None] | None = None,
        on_assign: Callable[[list[int]], None] | None = None,
        on_revoke: Callable[[list[int]], None] | None = None,
    ) -> None:
        self.on_start = on_start or (lambda: None)
        self.on_stop = on_stop or (lambda: None)
        self.on_assign = on_assign or (lambda parts: None)
        self.on_revoke = on_revoke or (lambda parts: None)


class ServiceRuntime:
    """Runs one service's consumer, workers, DLQ producer and health endpoints."""

    def __init__(
        self,
        spec: ServiceSpec,
        *,
        consumer_config: Mapping[str, Any],
        dead_letter_config: Mapping[str, Any],
        registry: CollectorRegistry,
        hooks: Hooks,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
    ) -> None:
        self.spec = spec
        check_link_settings(consumer_config, spec.options.broker_silence)
        self.consumer_config = dict(consumer_config)
        self.dead_letter_config = dict(dead_letter_config)
        self.registry = registry
        self.metrics = ServiceMetrics(registry)
        self.metrics.track_ready(self, lambda runtime: bool(runtime.health()["ready"]))
        self._hooks = hooks
        self._metrics_port = metrics_port
        self._metrics_host = metrics_host
        # The stop request of the run in progress or, between runs, of the next one:
        # each run ends by making its successor's, so a stop() landing as a run returns
        # reaches that run, and one made before a run() stops that run at once.
        self._stopping = threading.Event()
        # The run in progress's: set, its stop's waits end at once (see stop()).
        self._hurry = threading.Event()
        self._scheduler: Scheduler | None = None
        self._poller: Poller | None = None
        self._publisher: DeadLetterPublisher | None = None
        self._committer: Committer | None = None
        self._loop_runner: LoopRunner | None = None
        self._breaker: Breaker | None = None
        self._link: ClusterLink | None = None
        self._running = False
        # Set when a handler blocks the event loop's thread at the stop: the end of the
        # stop's bound, which the run's end then waits for that thread at most.
        self._loop_stuck_until: float | None = None

    def run(self) -> None:
        """Consume until ``stop()``, SIGTERM or SIGINT; then settle, commit and close."""
        if self._running:
            raise RuntimeError("this service is already running")
        stopping = self._stopping  # the scheduler stops on this very event (see stop())
        # Set by a signal while the run stops already, or stop(hurry=True): its waits
        # end at once.
        hurry = self._hurry = threading.Event()
        # A run after an earlier one starts afresh: /readyz must not report the last
        # run's assignment and polls while this one connects.
        self._scheduler = self._poller = self._loop_runner = None
        self._publisher = self._committer = self._breaker = None
        self._link = None
        self._running = True
        self._loop_stuck_until = None
        spec = self.spec
        # Set up inside the try below: a start that fails here (no descriptor left for
        # the loop's epoll) must give SIGTERM back and not leave the service running.
        restore: Callable[[], None] | None = None
        loop: asyncio.AbstractEventLoop | None = None
        loop_thread: threading.Thread | None = None
        consumer: Consumer | None = None
        dead_letter_producer: Producer | None = None
        health: HealthServer | None = None
        # The consumer's and the first DLQ producer's librdkafka lines: while they wait
        # for the cluster, each kind once and the count of the rest (a cluster that is
        # down made each log a connect failure every backoff, hundreds of lines in
        # startup_timeout); once connected, each line.
        librdkafka_lines = RepeatsCollapsed(_librdkafka_log)
        try:
            if spec.options.release_memory:
                from streamguard.runtime.memory import hold_malloc_thresholds  # and ctypes

                hold_malloc_thresholds()
            restore = self._install_signal_handlers(stopping, hurry)
            loop, loop_thread = self._start_event_loop()
            if self._metrics_port is not None:
                # Served before the cluster is reached: a liveness probe must find a
                # process that waits for Kafka alive (and /readyz saying why it is not
                # ready), and a port in use must fail the start at once, not after a
                # connection and the DLQ's creation.
                health = HealthServer(
                    self.registry, self.health, self._metrics_host, self._metrics_port
                )
                health.start()
            # This run's: a close left to its thread (see _close_in_time) may serve a
            # commit's answer while the service runs again, whose committer it is not.
            commits_answered = _CommitAnswers()
            consumer = Consumer(
                {
                    **self._with_cluster_link(),
                    "logger": librdkafka_lines,
                    "on_commit": commits_answered,
                }
            )
            # Built before the cluster is reached, like the consumer: a DLQ setting
            # librdkafka refuses (acks=1 with idempotence, say) fails the start at
            # once, not after startup_timeout as BrokerUnavailable, nor after the DLQ
            # was created.
            dead_letter_producer = self._new_dead_letter_producer(librdkafka_lines)
            if (
                not self._connect(consumer, dead_letter_producer, stopping, librdkafka_lines)
                or stopping.is_set()
            ):
                # Stopped before it joined the group: nothing was fetched, nothing to
                # commit, and a join left at once would rebalance the other members.
                return
            # Served before the link watches and the lines pass through: what librdkafka
            # queued since the last wait's poll, in the wait the cluster answered (its
            # connect failures, and statistics of no broker up that the link, watching,
            # would take for an outage begun at once). The producer has no reports yet.
            consumer.poll(0)
            dead_letter_producer.poll(0)
            if self._link is not None:
                self._link.watch()  # reached: an outage from now on is one to report
            librdkafka_lines.pass_through()
            poller, scheduler = self._assemble(
                consumer, dead_letter_producer, loop, stopping, hurry
            )
            commits_answered.committer = self._committer
            dead_letter_producer = None  # the publisher's now, released with it
            poller.subscribe()
            try:
                self._hooks.on_start()
            except SystemExit as exc:
                _mark_exit(exc, "on_start")
                raise
            log.info(
                "service started",
                extra={**spec.dead_letter_names(), "group": spec.group_id},
            )
            # Said, or the time until the group's first rebalance (half of librdkafka's
            # 45 s session timeout on the embedded broker) looked like a hang.
            log.info(
                "waiting for partitions from the group",
                extra={
                    **spec.names(),
                    "group": spec.group_id,
                    # A number in the line, also when -X gave it as text.
                    "session_timeout_ms": int(
                        self.consumer_config.get("session.timeout.ms", 45000)
                    ),
                },
            )
            try:
                scheduler.run()
            except BaseException:
                # Also on failure: settle, commit, stop the workers, call on_stop.
                self._wind_down(poller, scheduler, failing=True)
                raise
            self._wind_down(poller, scheduler, failing=False)
            if scheduler.failure is not None:  # a handler in flight crashed as it stopped
                raise scheduler.failure
        finally:
            # The close serves statistics, maybe after run() returned (left to its
            # thread): an outage they show is not this run's to report or act on.
            if self._link is not None:
                self._link.end()
            # A worker still inside a poll (a rebalance callback past the stop's wait)
            # uses the consumer and the DLQ producer: both are left to it, unclosed.
            owned = self._poller is None or self._poller.take_consumer()
            names = spec.names()
            if consumer is not None and not owned:
                # A close() under the poll could crash the process: closed once it ends.
                log.error(
                    "consumer left unclosed: a worker is still inside a poll of it",
                    extra=names,
                )
                if self._poller is not None:
                    _close_when_free(self._poller, self._publisher, names)
            elif consumer is not None:
                _close_in_time(consumer, hurry, names)
            librdkafka_lines.flush()  # a start-up's counts, before the error run() raises
            if health is not None:
                health.stop()
            # Held by the registry, which may outlive this service: its gauges' functions
            # would keep this run's clients alive. Gone before the producer they read.
            self.metrics.untrack(spec.topic)
            if self._loop_runner is not None:
                self._loop_runner.shutdown()
            if loop is not None and loop_thread is not None:
                from streamguard.runtime.eventloop import stop_event_loop

                until = self._loop_stuck_until
                wait = LOOP_STOP_WAIT if until is None else max(0.0, until - time.monotonic())
                stop_event_loop(loop, loop_thread, wait, hurry)
            if self._publisher is not None and owned:
                self._publisher.release()  # last: nothing of the run publishes any more
            # One never handed to a publisher (the run stopped or failed first) has
            # nothing queued: dropped here, not kept alive by a traceback's frames.
            dead_letter_producer = None
            if restore is not None:
                restore()
            log.info("service stopped", extra=names)
            # This run's stop request is spent: a stop() from here on is the next run's.
            self._stopping = threading.Event()
            self._running = False

    def _wind_down(self, poller: Poller, scheduler: Scheduler, *, failing: bool) -> None:
        """Settle and commit, stop the workers, then call ``on_stop``, which releases
        what ``on_start`` acquired, whatever ended the run.

        When the run is failing, an error of ``on_stop`` is logged rather than raised:
        it would replace the run's own error, the one the operator has to see.
        """
        options = self.spec.options
        poller.shutdown(
            scheduler.stopping,
            options.revoke_timeout + options.shutdown_timeout,
            clean=not failing and scheduler.failure is None,
        )
        deadline = poller.assignment.stop_deadline

        def left() -> float:
            """What is left of the stop's bound (twice shutdown_timeout), at most the
            wait for a crash to be recorded."""
            if deadline is None:
                return CRASH_RECORD_WAIT
            return min(CRASH_RECORD_WAIT, max(0.0, deadline - time.monotonic()))

        # A handler that crashed as the service stopped is recorded just after its lane
        # turned idle: wait for that (bounded), so that run() raises it. A hurried stop
        # (a second signal) gives that up: it waited its whole bound for a stuck handler.
        hurry = poller.assignment.hurry
        scheduler.await_workers(left(), hurry)
        # A loop that answers does so within milliseconds: 50 ms at least, so that one
        # is not taken for blocked when the DLQ's wait used up the bound.
        if (
            self._loop_runner is not None
            and not self._loop_runner.barrier(max(0.05, left()), hurry)
            # Hurried, not taken for blocked: the loop thread's join is short then
            # anyway, and a loop that ends in it is closed.
            and not hurry.is_set()
        ):
            # A handler blocks the loop's thread (a blocking call inside async def, not
            # an await: cancelling cannot stop it). Its record stays uncommitted; the
            # thread is joined only for what is left of the bound, then left, a daemon.
            self._loop_stuck_until = time.monotonic() if deadline is None else deadline
        if not failing and scheduler.failure is None:
            try:
                self._hooks.on_stop()
            except SystemExit as exc:
                _mark_exit(exc, "on_stop")
                raise
            return
        try:
            self._hooks.on_stop()
        except BaseException as exc:
            # The user's code: its text may quote a record it held, so class and frames.
            log.error(
                "on_stop failed; run() raises the error that ended the run",
                extra={
                    **self.spec.names(),
                    "error_class": type(exc).__name__,
                    "traceback": frames(exc),
                },
            )

    def _new_dead_letter_producer(
        self, logger: logging.Logger | RepeatsCollapsed = _librdkafka_log
    ) -> Producer:
        return Producer({**self.dead_letter_config, "logger": logger})

    def _assemble(
        self,
        consumer: Consumer,
        dead_letter_producer: Producer,
        loop: asyncio.AbstractEventLoop | None,
        stopping: threading.Event,
        hurry: threading.Event,
    ) -> tuple[Poller, Scheduler]:
        spec, metrics, options = self.spec, self.metrics, self.spec.options
        publisher = DeadLetterPublisher(
            spec, self._new_dead_letter_producer, metrics, dead_letter_producer
        )
        pipeline = Pipeline(spec, publisher, metrics)
        flow = FlowControl(consumer, spec.topic, options, service=spec.name)
        committer = Committer(consumer, spec.topic, metrics, service=spec.name)
        lag = LagMonitor(
            consumer,
            spec.topic,
            metrics,
            offset_reset=str(self.consumer_config.get("auto.offset.reset", "earliest")),
        )
        hooks = self._hooks
        new_lane: Callable[[int], PartitionLane] | None = None
        give_up: Callable[[], None] | None = None
        finish: Callable[[float, threading.Event], None] | None = None
        FinishLanes = Callable[[list[PartitionLane], float, threading.Event], None]
        finish_revoked: FinishLanes | None = None
        if loop is not None:
            from streamguard.runtime.eventloop import LoopLane, LoopRunner

            runner = LoopRunner(pipeline, loop, spec.ordering, options.max_in_flight)
            self._loop_runner = runner
            new_lane = partial(LoopLane, pipeline=pipeline, runner=runner)
            give_up = runner.cancel_all
            if runner.keyed:
                # Under partition order nothing is handled past a record still waiting:
                # dropping it at the stop redelivers nothing else.
                finish = runner.finish_fetched
                finish_revoked = runner.finish_revoked
            metrics.track_handlers(
                spec.topic,
                lambda: float(runner.slots.running),
                lambda: float(runner.waiting),
                options.max_in_flight,
            )
        assignment = Assignment(
            pipeline,
            publisher,
            options,
            flow,
            committer,
            lag,
            _marking_exit(hooks.on_assign, "on_assign"),
            _marking_exit(hooks.on_revoke, "on_revoke"),
            new_lane=new_lane,
            give_up=give_up,
            finish=finish,
            finish_revoked=finish_revoked,
            hurry=hurry,
            rebalanced=metrics.rebalances_of(spec.topic),
        )
        poller = Poller(
            consumer,
            spec.topic,
            options,
            assignment,
            publisher,
            flow,
            committer,
            lag,
            pipeline.breaker,
            service=spec.name,
        )
        self._breaker = pipeline.breaker
        loop_runner = self._loop_runner
        if loop_runner is None:
            scheduler = Scheduler(poller, options.workers, stopping=stopping, service=spec.name)
        else:
            # Four partitions' buffers, every handler the loop may run and a batch: on up
            # to four partitions the lanes' own limits bind first, as before (with one
            # buffer's worth, the loop polled more itself on three, and did 6% less);
            # on 128, at most about 9,000 records are held instead of 27,000 (see
            # Scheduler._supervise).
            refill_below = 4 * options.max_buffered + options.max_in_flight + options.batch_size
            scheduler = Scheduler(
                poller,
                options.workers,
                lambda: loop_runner.busy,
                stopping,
                refill_below,
                service=spec.name,
            )
            loop_runner.attach(poller, scheduler.stopping, scheduler.wake, scheduler.fail)
        pipeline.fail = scheduler.fail
        pipeline.stopping = scheduler.stopping
        metrics.track(
            spec.topic,
            assignment.inflight,
            lambda: float(len(flow.paused)),
            lambda: float(len(assignment.lanes)),
        )
        self._publisher, self._committer = publisher, committer
        self._poller, self._scheduler = poller, scheduler
        return poller, scheduler

    def stop(self, hurry: bool = False) -> None:
        """Ask ``run()`` to finish: stop fetching, settle in-flight work, commit, close.

        It applies to the run in progress, also one that is connecting or returning;
        made while no ``run()`` is in progress, to the next one, which then returns at
        once (a thread told to stop before it got to ``run()`` must not run on). Called
        again, it changes nothing unless ``hurry``, which ends the stop's waits at once,
        as a second signal does (see ``_install_signal_handlers``); a hurry made while
        no run is in progress is the last run's, spent.
        """
        # One read picks the run, and its scheduler stops on the same event: a stop()
        # that lands as a run returns sets that run's event, never the next run's.
        self._stopping.set()
        if hurry:
            self._hurry.set()

    def health(self) -> dict[str, Any]:
        """Readiness and its reasons, as ``/readyz`` reports it."""
        poller, publisher = self._poller, self._publisher
        checks = {
            "running": self._running and not self._stopping.is_set(),
            "assigned": bool(poller and poller.assignment.assigned_once),
            "polling": bool(poller and time.monotonic() - poller.polled_at() < POLL_STALE_AFTER),
            "dlq_writable": bool(publisher and publisher.writable),
            # Open or probing: a dependency failed most recent calls; nothing is handled.
            "breaker_closed": self._breaker is None or self._breaker.closed,
            "broker_reachable": bool(self._link and self._link.reachable),
        }
        report: dict[str, Any] = {"ready": all(checks.values()), "checks": checks}
        if publisher and not publisher.writable:
            report["dlq_error"] = publisher.last_error
        if self._breaker is not None and not self._breaker.closed:
            report["breaker"] = self._breaker.state_name
        return report

    def _with_cluster_link(self) -> dict[str, Any]:
        """The consumer config, with statistics feeding a new ``ClusterLink``.

        A ``stats_cb`` of the user's still gets every report.
        """
        options = self.spec.options
        link = ClusterLink(
            options.broker_silence,
            options.broker_timeout,
            self._lost_cluster,
            service=self.spec.name,
            topic=self.spec.topic,
            watching=False,
        )
        self._link = link
        config = dict(self.consumer_config)
        user_cb = config.pop("stats_cb", None)

        def on_stats(stats: str) -> None:
            link.on_stats(stats)
            if user_cb is not None:
                user_cb(stats)

        config.setdefault("statistics.interval.ms", STATS_INTERVAL_MS)
        config["stats_cb"] = on_stats
        return config

    def _lost_cluster(self, away: float) -> None:
        """``broker_timeout`` passed without the cluster: stop, and fail ``run()``."""
        error = BrokerUnavailable(
            f"lost the cluster at {self.consumer_config['bootstrap.servers']} for "
            f"{away:.0f}s (ServiceOptions.broker_timeout); stopping so that a supervisor "
            "restarts the service"
        )
        log.error(
            "giving up on the cluster",
            extra={**self.spec.names(), "away_seconds": round(away, 1)},
        )
        if self._scheduler is not None:
            self._scheduler.fail(error)

    def _connect(
        self,
        consumer: Consumer,
        dead_letter_producer: Producer,
        stopping: threading.Event,
        librdkafka_lines: RepeatsCollapsed,
    ) -> bool:
        """Reach the cluster and make the DLQ; False if ``stop()`` came first.

        The cluster is asked in short waits, not one of ``startup_timeout``: a signal's
        handler runs only between them (librdkafka holds the main thread meanwhile).
        Between two, the consumer and the DLQ producer are polled: their librdkafka lines
        (and statistics) are handed over only then, and came all at once at the end of
        the wait.
        """
        spec = self.spec
        timeout = spec.options.startup_timeout
        deadline = time.monotonic() + timeout
        # Said before the wait: against a cluster that is down, the service was silent
        # for all of startup_timeout, and an operator could not tell what it waited for.
        log.info(
            "connecting to the cluster",
            extra={
                **spec.names(),
                "bootstrap_servers": self.consumer_config["bootstrap.servers"],
                "startup_timeout": timeout,
            },
        )
        while True:
            try:
                metadata = consumer.list_topics(
                    timeout=max(0.001, min(CONNECT_WAIT, deadline - time.monotonic()))
                )
                break
            except KafkaException as exc:
                # Not subscribed yet: nothing is fetched, only events come (an error
                # event's message is the connect failure the lines already tell).
                consumer.poll(0)
                dead_letter_producer.poll(0)
                if stopping.is_set():
                    # Else a stop while the cluster is down left only librdkafka's
                    # connect failures to tell what the service had been doing. Their
                    # counts first: this line is the one to end on.
                    librdkafka_lines.flush()
                    log.warning(
                        "stopped before reaching the cluster",
                        extra={
                            **spec.names(),
                            "bootstrap_servers": self.consumer_config["bootstrap.servers"],
                            "waited_seconds": round(timeout - (deadline - time.monotonic()), 1),
                        },
                    )
                    return False
                if time.monotonic() >= deadline:
                    # Both forms of each setting, as resolve_bootstrap's error: the same
                    # runtime serves code and `streamguard run`, whose options these are.
                    raise BrokerUnavailable(
                        f"could not reach Kafka at {self.consumer_config['bootstrap.servers']} "
                        f"within {timeout:g}s ({exc.args[0].str()}); check the servers "
                        f"(--bootstrap-servers or ${BOOTSTRAP_ENV}; in Python, "
                        "bootstrap_servers), the network and the security settings (-X; in "
                        "Python, kafka_config)"
                    ) from None
        topics = metadata.topics
        if spec.topic not in topics:
            log.warning("topic does not exist yet; waiting for it", extra=spec.names())
        # The DLQ lives where its producer writes: another cluster when dead_letter_config
        # says so, which the consumer's metadata knows nothing of.
        servers = self.dead_letter_config.get(
            "bootstrap.servers", self.consumer_config["bootstrap.servers"]
        )
        admin_config = _admin_config(self.dead_letter_config)
        elsewhere = servers != self.consumer_config["bootstrap.servers"]
        dead_letter_topics = topics
        if elsewhere:
            # Another cluster may be down: start consuming after a short wait (dead
            # letters then wait, see DeadLetterPublisher), and ask before creating, so
            # that a principal allowed to write the DLQ but not create topics starts
            # without a warning.
            try:
                admin = AdminClient({"bootstrap.servers": servers, **admin_config})
                wait_until = time.monotonic() + DLQ_CREATE_WAIT
                try:
                    while True:
                        # In short waits, as for the source's cluster: one wait of 5 s
                        # held the main thread, and a SIGTERM, for all of it.
                        wait = max(0.001, min(CONNECT_WAIT, wait_until - time.monotonic()))
                        try:
                            dead_letter_topics = admin.list_topics(timeout=wait).topics
                            break
                        except KafkaException:
                            if stopping.is_set():
                                return False
                            if time.monotonic() >= wait_until:
                                raise
                finally:
                    admin.poll(0)  # nothing else serves it: its log lines, now or never
            except KafkaException as exc:
                log.warning(
                    "dead-letter cluster not reachable at start-up; dead letters wait for it",
                    extra={**self.spec.dead_letter_names(), "error": str(exc.args[0].str())},
                )
                return True
        # A dead letter is its record plus sg-dlq-* headers: a DLQ at the broker's default
        # size limit could not take the largest records of a source that allows more, and
        # one of them would hold its partition. Read on the source's cluster, with the
        # consumer's security settings.
        source_limit = (
            max_message_bytes(
                self.consumer_config["bootstrap.servers"],
                spec.topic,
                config=_admin_config(self.consumer_config),
                timeout=DLQ_CREATE_WAIT,
            )
            if spec.topic in topics
            else None
        )
        needed = dead_letter_max_message_bytes(source_limit, self.dead_letter_config)
        if spec.dead_letter_topic in dead_letter_topics:
            self._check_dead_letter_size(servers, admin_config, needed)
        else:
            partitions = len(topics[spec.topic].partitions) if spec.topic in topics else 1
            topic_config = {"max.message.bytes": str(needed)} if source_limit is not None else {}
            try:
                create_topics(  # a topic made meanwhile counts as created
                    servers,
                    [spec.dead_letter_topic],
                    partitions=partitions,
                    timeout=DLQ_CREATE_WAIT if elsewhere else 15.0,
                    config=admin_config,
                    topic_config=topic_config,
                )
                created: dict[str, Any] = {
                    **self.spec.dead_letter_names(),
                    "bootstrap_servers": servers,
                }
                # Only a size the DLQ was given: with none (the source's could not be
                # read) it has the broker's default, which a null would not say.
                if "max.message.bytes" in topic_config:
                    created["max_message_bytes"] = topic_config["max.message.bytes"]
                log.info("created dead-letter topic", extra=created)
            except (ConfigurationError, BrokerUnavailable) as exc:
                log.warning(
                    "could not create the dead-letter topic; create it before the "
                    "first dead letter",
                    extra={**self.spec.dead_letter_names(), "error": str(exc)},
                )
        return True

    def _check_dead_letter_size(
        self, servers: str, admin_config: Mapping[str, Any], needed: int
    ) -> None:
        """Warn once when the existing DLQ takes less than the service would have made
        it with (``warn_if_dead_letter_topic_small``)."""
        dlq = self.spec.dead_letter_topic
        size = max_message_bytes(servers, dlq, config=admin_config, timeout=DLQ_CREATE_WAIT)
        warn_if_dead_letter_topic_small(log, self.spec.dead_letter_names(), servers, size, needed)

    def _install_signal_handlers(
        self, stopping: threading.Event, hurry: threading.Event
    ) -> Callable[[], None]:
        """SIGTERM and SIGINT stop the run; one while it stops already (a second
        Ctrl-C) hurries the stop: its waits for handlers, fetched records and dead
        letters end at once, and what has no outcome yet stays uncommitted."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        names = self.spec.names()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            name = signal.Signals(signum).name
            if stopping.is_set():
                log.warning("stop hurried by signal", extra={"signal": name, **names})
                hurry.set()
                return
            log.info("stop requested by signal", extra={"signal": name, **names})
            self.stop()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

    def _start_event_loop(
        self,
    ) -> tuple[asyncio.AbstractEventLoop | None, threading.Thread | None]:
        if not self.spec.on_event_loop:
            return None, None
        from streamguard.runtime.eventloop import new_event_loop

        loop = new_event_loop(self.spec.options.event_loop)
        thread = threading.Thread(target=loop.run_forever, name="streamguard-loop", daemon=True)
        thread.start()
        return loop, thread


def _admin_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of an admin client of the same cluster as a client's ``config``
    (bootstrap servers aside): its TLS and SASL settings, and librdkafka's lines through
    the logger the service's other clients use."""
    security = {
        k: v for k, v in config.items() if k.startswith(_SECURITY_PREFIXES) or k == "oauth_cb"
    }
    return {**security, "logger": _librdkafka_log}


# Not only ``sasl.*`` and ``ssl.*``: ``enable.ssl.certificate.verification``,
# ``enable.sasl.oauthbearer.unsecure.jwt``, the OIDC token endpoint's ``https.*``, and
# confluent-kafka's ``oauth_cb`` (OAUTHBEARER tokens, as for AWS MSK IAM) decide whether
# a client gets in too; without them the admin clients failed where the others connect.
_SECURITY_PREFIXES = ("security.", "sasl.", "ssl.", "enable.ssl.", "enable.sasl.", "https.")

"""Prometheus metrics of a consumer service, cheap enough for the hot path.

Names are listed in docs/operations.md; labels stay low-cardinality (topic, outcome, reason,
partition). Every family also carries ``runtime`` (``consumer`` for a ``ConsumerService``,
``faust`` for a guarded Faust agent), so both kinds of service share one dashboard and
can still be told apart. (``kind`` was taken: the drift counter uses it for the drift
kind.) The runtime counts per batch, not per message: a prometheus-client
``Counter.inc`` costs about 0.45 µs and ``Histogram.observe`` about 0.7 µs here, which
next to a 4 µs validation would cost a fifth of the throughput. So the worker keeps
plain ints and a local bucket array, and folds them into the metrics once per batch
(and every half second while slow handlers work through one).
"""

from __future__ import annotations

import bisect
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar, cast

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

M = TypeVar("M", Counter, Gauge)
F = TypeVar("F")
T = TypeVar("T")

HANDLER_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class BatchHistogram(Collector):
    """A histogram fed in bulk: ``observe_many`` takes a batch's durations at once.

    Exposed in the standard Prometheus histogram format (``_bucket``, ``_sum``,
    ``_count``), so dashboards and ``histogram_quantile`` work as usual. A series is
    named by its label values, in the order of ``labels``.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str],
        buckets: Sequence[float] = HANDLER_BUCKETS,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._name = name
        self._doc = documentation
        self._labels = list(labels)
        self._bounds = list(buckets)
        self._lock = threading.Lock()
        self._series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}
        if registry is not None:
            registry.register(self)

    def observe_many(self, labels: tuple[str, ...], durations: Iterable[float]) -> None:
        bounds = self._bounds
        values = durations if isinstance(durations, list) else list(durations)
        total = sum(values)
        if not values or max(values) <= bounds[0]:
            # Handlers that do not wait: every value in the first bucket, which max()
            # tells in a fraction of a sort (a batch's worth, or ~1k from the event loop).
            local = [len(values)]
        else:
            # Sorting once and bisecting per bucket costs far less than a bisect per value.
            ordered = sorted(values)
            local, below = [], 0
            for bound in bounds:
                upto = bisect.bisect_right(ordered, bound, lo=below)
                local.append(upto - below)
                below = upto
            local.append(len(ordered) - below)
        with self._lock:
            counts, sums = self._series.setdefault(labels, ([0] * (len(bounds) + 1), [0.0]))
            for i, n in enumerate(local):
                counts[i] += n
            sums[0] += total

    def start(self, labels: tuple[str, ...]) -> None:
        """Create the series with every bucket at zero, before its first observation."""
        self.observe_many(labels, ())

    def count(self, labels: tuple[str, ...]) -> int:
        with self._lock:
            series = self._series.get(labels)
            return sum(series[0]) if series else 0

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self._name, self._doc, labels=self._labels)]

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self._name, self._doc, labels=self._labels)
        with self._lock:
            snapshot = {k: (list(c), s[0]) for k, (c, s) in self._series.items()}
        for values, (counts, total) in snapshot.items():
            cumulative, running = [], 0
            for bound, n in zip([*self._bounds, float("inf")], counts, strict=True):
                running += n
                cumulative.append((_le(bound), float(running)))
            family.add_metric(list(values), cumulative, total)
        return [family]


class BoundHistogram:
    """A ``BatchHistogram`` with its ``runtime`` label filled in, as ``Bound`` does."""

    __slots__ = ("_histogram", "_runtime")

    def __init__(self, histogram: BatchHistogram, runtime: str) -> None:
        self._histogram = histogram
        self._runtime = runtime

    def observe_many(self, topic: str, durations: Iterable[float]) -> None:
        self._histogram.observe_many((self._runtime, topic), durations)

    def start(self, topic: str) -> None:
        self._histogram.start((self._runtime, topic))

    def count(self, topic: str) -> int:
        return self._histogram.count((self._runtime, topic))


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class Bound(Generic[M]):
    """A metric family with its ``runtime`` label filled in: callers pass the others.

    prometheus-client has no constant labels, and the runtime's call sites
    (``metrics.messages.labels(topic, "handled")``) should not all learn about the
    runtime label, so it is bound once here.
    """

    __slots__ = ("_metric", "_runtime")

    def __init__(self, metric: M, runtime: str) -> None:
        self._metric: M = metric
        self._runtime = runtime

    def labels(self, *values: str) -> M:
        return self._metric.labels(self._runtime, *values)

    def remove(self, *values: str) -> None:
        self._metric.remove(self._runtime, *values)


# Each registry's streamguard families, made by the first service (or agent) that uses
# the registry: prometheus-client refuses a second family of one name in a registry, and
# the services of one process that share a registry share its families (their topics,
# and the runtime label, tell their series apart). Kept on the registry itself, not in a
# map keyed by it: the gauges' callbacks reach the service, which holds its registry, so
# a global map would keep every service and its client alive.
_FAMILIES = "_streamguard_families"
_FAMILIES_LOCK = threading.Lock()

# The values of streamguard_rebalances_total's ``change`` label.
REBALANCE_CHANGES = ("assigned", "revoked", "lost")


class ServiceMetrics:
    """The metric families of one service, in one registry.

    Several services may share a registry (``ConsumerService(registry=...)``, a guarded
    Faust agent's ``registry=``): they share its families, each writing the series of
    its own topic, and ``streamguard_ready`` is 1 only while every one of them is ready.

    Args:
        runtime: the value of the ``runtime`` label on every series: ``consumer``
            (``ConsumerService``) or ``faust`` (``streamguard.faust.guarded_agent``).
    """

    def __init__(self, registry: CollectorRegistry, runtime: str = "consumer") -> None:
        with _FAMILIES_LOCK:
            families: dict[str, Any] | None = getattr(registry, _FAMILIES, None)
            if families is None:
                families = {}
                setattr(registry, _FAMILIES, families)
        self._families = families
        self._registry = weakref.ref(registry)
        self.runtime = runtime
        self.messages = self._bound(
            Counter,
            "streamguard_messages",
            "Messages that reached a final outcome (handled or dead_lettered).",
            "topic",
            "outcome",
        )
        self.dead_letters = self._bound(
            Counter,
            "streamguard_dead_letters",
            "Messages acknowledged by the dead-letter topic, by reason.",
            "topic",
            "reason",
        )
        self.retries = self._bound(
            Counter,
            "streamguard_retries",
            "Tries scheduled again after a transient failure, also one that makes the "
            "message wait for a dependency (a failed breaker probe, a suspected outage, a "
            "registry down); not the waits of messages an open breaker holds uncalled, nor "
            "a retry dropped as its partition closes (a revoke, a stop).",
            "topic",
        )
        self.handler_seconds = BoundHistogram(
            self._family(
                "streamguard_handler_seconds",
                lambda: BatchHistogram(
                    "streamguard_handler_seconds",
                    "Time in the handler (or handle_tombstone) per message it handled.",
                    ["runtime", "topic"],
                    registry=registry,
                ),
            ),
            runtime,
        )
        self.inflight = self._bound(
            Gauge,
            "streamguard_inflight",
            "Messages fetched but without a final outcome yet (buffered, in the handler "
            "or awaiting the dead-letter acknowledgement).",
            "topic",
        )
        self.paused_partitions = self._bound(
            Gauge,
            "streamguard_paused_partitions",
            "Partitions paused for backpressure, retry backoff, an unwritable DLQ or an "
            "open circuit breaker.",
            "topic",
        )
        self.consumer_lag = self._bound(
            Gauge,
            "streamguard_consumer_lag",
            "High watermark minus the position the next commit stores (the first message "
            "without a final outcome), per assigned partition.",
            "topic",
            "partition",
        )
        self.schema_drift = self._bound(
            Counter,
            "streamguard_schema_drift",
            "Messages whose writer schema differs from the contract, by kind.",
            "subject",
            "kind",
        )
        self.commit_failures = self._bound(
            Counter,
            "streamguard_commit_failures",
            "Offset commits the broker refused or that failed.",
        ).labels()
        self.ready = self._bound(
            Gauge,
            "streamguard_ready",
            "1 while /readyz would answer 200 (every check of its report passes), else 0.",
        ).labels()
        self.dead_letter_failures = self._bound(
            Counter,
            "streamguard_dead_letter_failures",
            "Dead-letter writes that failed and will be retried (the DLQ is unwritable).",
            "topic",
        )

        self.handlers_in_flight = self._bound(
            Gauge,
            "streamguard_handlers_in_flight",
            "Handlers running now on the event loop or its thread pool (async handlers, "
            "key or no ordering); at most ServiceOptions.max_in_flight.",
            "topic",
        )
        self.handlers_limit = self._bound(
            Gauge,
            "streamguard_handlers_limit",
            "ServiceOptions.max_in_flight: the most handlers that may run at once.",
            "topic",
        )
        self.waiting_for_key = self._bound(
            Gauge,
            "streamguard_waiting_for_key",
            "Records queued behind an earlier record of the same key (ordering = key).",
            "topic",
        )

        self.breaker_state = self._bound(
            Gauge,
            "streamguard_breaker_state",
            "The service's circuit breaker: 0 closed, 1 half-open (probing), 2 open.",
            "topic",
        )
        self.breaker_opened = self._bound(
            Counter,
            "streamguard_breaker_opened",
            "Times the circuit breaker opened (a dependency failed most calls).",
            "topic",
        )
        self.retries_deferred = self._bound(
            Counter,
            "streamguard_retries_deferred",
            "Retries that waited because the service-wide retry budget was spent (each once).",
            "topic",
        )
        self.assigned_partitions = self._bound(
            Gauge,
            "streamguard_assigned_partitions",
            "Partitions of the topic assigned to this member now (a ConsumerService).",
            "topic",
        )
        self.rebalances = self._bound(
            Counter,
            "streamguard_rebalances",
            "Changes of this member's assignment (a ConsumerService): assigned (each "
            "assignment the group gives it, an empty one included), revoked, and lost "
            "(its session expired: work in flight dropped, to be redelivered).",
            "topic",
            "change",
        )

    def _family(self, name: str, make: Callable[[], F]) -> F:
        """The registry's family ``name``, made by ``make`` if no service made it yet."""
        with _FAMILIES_LOCK:
            family = self._families.get(name)
            if family is None:
                family = self._families[name] = make()
        return cast(F, family)

    def _bound(self, kind: type[M], name: str, documentation: str, *labels: str) -> Bound[M]:
        """A family of this registry with the ``runtime`` label first and bound."""
        registry = self._registry()
        family = self._family(
            name, lambda: kind(name, documentation, ["runtime", *labels], registry=registry)
        )
        return Bound(family, self.runtime)

    def track_ready(self, owner: T, is_ready: Callable[[T], bool]) -> None:
        """Count ``owner`` in ``streamguard_ready``: 1 while ``is_ready(owner)`` holds for
        every owner of this registry and runtime. Held weakly, so that a service that is
        gone no longer counts (and with none left, 0: no service is ready); ``is_ready``
        must not refer to its owner itself."""
        owners: weakref.WeakKeyDictionary[Any, Callable[[Any], bool]] = self._family(
            f"ready owners {self.runtime}", weakref.WeakKeyDictionary
        )
        owners[owner] = is_ready

        def ready() -> float:
            tracked = list(owners.items())
            return 1.0 if tracked and all(check(o) for o, check in tracked) else 0.0

        self.ready.set_function(ready)

    def track(
        self,
        topic: str,
        inflight: Callable[[], float],
        paused: Callable[[], float],
        assigned: Callable[[], float] | None = None,
    ) -> None:
        """Compute the gauges at scrape time from the runtime's own state (``assigned``:
        a ConsumerService's partitions; a guarded Faust agent's are Faust's to report)."""
        self.inflight.labels(topic).set_function(inflight)
        self.paused_partitions.labels(topic).set_function(paused)
        if assigned is not None:
            self.assigned_partitions.labels(topic).set_function(assigned)

    def track_handlers(
        self,
        topic: str,
        running: Callable[[], float],
        waiting: Callable[[], float],
        limit: int,
    ) -> None:
        """The event loop's gauges: handlers running, records waiting for their key."""
        self.handlers_in_flight.labels(topic).set_function(running)
        self.waiting_for_key.labels(topic).set_function(waiting)
        self.handlers_limit.labels(topic).set(limit)

    def rebalances_of(self, topic: str) -> Callable[[str], None]:
        """A ConsumerService's count of its assignment's changes, each series at zero
        from its start (so that the first lost partition shows in ``increase()``)."""
        series = {change: self.rebalances.labels(topic, change) for change in REBALANCE_CHANGES}
        return lambda change: series[change].inc()

    def untrack(self, topic: str) -> None:
        """Drop the gauges ``track`` and ``track_handlers`` made for ``topic``, and the
        breaker's state, as a run ends.

        Their functions reach the run's state, and through it its Kafka clients: in a
        registry that outlives the service (shared, or the global one), each service
        that ran would keep its DLQ producer (its threads and connections) alive, and
        its gauges would go on reporting a run that is over (a breaker left open would
        keep StreamguardCircuitBreakerOpen firing).
        """
        for gauge in (
            self.inflight,
            self.paused_partitions,
            self.handlers_in_flight,
            self.waiting_for_key,
            self.handlers_limit,
            self.breaker_state,
            self.assigned_partitions,
        ):
            gauge.remove(topic)

    def start_series(self, topic: str, reasons: Iterable[str]) -> None:
        """Create each labelled series at zero before its first event.

        A counter series that appears only with its first increment is invisible to
        ``rate()`` and ``increase()`` for that increment, so an alert on "any dead
        letter" would miss the first one, and the handler latency panel and alert
        would see nothing until a second batch.
        """
        for outcome in ("handled", "dead_lettered"):
            self.messages.labels(topic, outcome)
        for reason in reasons:
            self.dead_letters.labels(topic, reason)
        self.retries.labels(topic)
        self.dead_letter_failures.labels(topic)
        self.breaker_opened.labels(topic)
        self.retries_deferred.labels(topic)
        # Closed: a ConsumerService's breaker sets it from here on; a guarded Faust
        # agent has none, and its breaker panel shows closed rather than no data.
        self.breaker_state.labels(topic)
        self.handler_seconds.start(topic)

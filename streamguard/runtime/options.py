"""Runtime tuning of a consumer service: a small value object, not fifty keywords.

Kafka client settings do not belong here: they pass through ``kafka_config`` to
librdkafka unchanged. These are the knobs of streamguard's own runtime.
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass, fields
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from streamguard.errors import ConfigurationError
from streamguard.runtime.drift import DRIFT_SAMPLE

# A day: far above any grace period a supervisor gives a stop, far below where the
# stop's waits overflow (see ServiceOptions.__post_init__).
MAX_SHUTDOWN_TIMEOUT = 86_400.0


@dataclass(frozen=True, slots=True)
class ServiceOptions:
    """How a service polls, buffers, commits and shuts down.

    Args:
        batch_size: records fetched per ``consume()`` call; work is handed to workers
            per batch, never per message, which is what keeps the overhead low.
        max_buffered: per-partition buffer. While a partition holds this many
            unprocessed messages the poll loop stops fetching (throttles); if it stays
            full for ``pause_after`` seconds, it is paused until it drains to half.
            Memory is bounded by this plus one batch, times the assigned partitions,
            plus librdkafka's own fetch queue.
        pause_after: seconds a partition may stay full before it is paused. Pausing
            makes librdkafka drop what it prefetched for that partition and fetch it
            again on resume, which cost a partition that is merely behind most of its
            throughput (measured: 36k against 125k msg/s); so a partition that keeps
            draining is throttled, and one that stopped draining is paused, letting
            the other partitions flow.
        drift_sample: under ``drift="count"``, check the writer schema of one record
            in this many: the first of each batch that decodes and every
            ``drift_sample``-th decoded after it (on the event loop, the first record
            run after each hand-over of batches, and every ``drift_sample``-th after
            it). A check reads the record's headers (1 µs for the five a guarded
            producer stamps) and, without the contract's fingerprint, parses the value
            for unknown fields (5 µs, a validation's cost); 256 keeps it under 1% of
            the per-record cost. 1 checks every message.
        workers: threads running sync handlers under partition order; partitions beyond
            this many wait their turn.
        commit_interval: seconds between periodic commits of final-outcome prefixes.
        revoke_timeout: seconds a rebalance waits for in-flight handlers of revoked
            partitions (and, under key or no ordering, records queued behind their
            keys). Must stay well under ``max.poll.interval.ms``: the rebalance
            callback blocks the thread that polls.
        shutdown_timeout: seconds ``stop()`` waits for in-flight handlers, then as long
            again for dead letters to be acknowledged; finite, at most a day.
        startup_timeout: seconds to reach the cluster before ``run()`` fails.
        dead_letter_backoff_max: seconds; the cap of the backoff between attempts to
            write a dead letter while the DLQ is unwritable.
        dead_letter_log_rate: ``dead-lettering message`` lines a second on average, in
            bursts of up to as many; past it lines are skipped, and counted in a
            ``dead-lettered messages not logged`` line as soon as the rate allows one
            (``not_logged``). Every dead letter is still counted and kept in the DLQ
            with its reason. A line
            each cost more than the dead letter itself in a poison flood, and would
            flood the logs too. None logs every one.
        broker_silence: seconds without a byte from any broker after which the cluster
            counts as unreachable (a refused, reset or stalled connection): ``/readyz``
            reports ``broker_reachable: false``. Above ``heartbeat.interval.ms`` and
            at or above ``statistics.interval.ms`` (set or librdkafka's defaults, 3 s
            and the runtime's 1 s; else refused), which bound the silence of a healthy
            consumer with every partition paused.
        broker_timeout: seconds without the cluster after which ``run()`` stops (after
            settling what it can) and raises ``BrokerUnavailable``, so that a supervisor
            restarts the service or alerts; None (the default) waits for the cluster
            forever, unready, without spinning.
        max_in_flight: handlers running at once, service-wide, on the event loop (async
            handlers, and any handler under ``ordering = "key"`` or ``"none"``); sync
            handlers there run on a thread pool of this size.
        event_loop: ``"auto"``: uvloop where installed (a dependency on Linux and
            macOS), else asyncio's loop; ``"asyncio"``: always asyncio's.
        release_memory: on glibc, hold malloc's trim and mmap thresholds at their
            defaults when the service starts, so that memory librdkafka frees goes
            back to the OS: RSS after a million records 52.5 MiB against 54-63 for a
            sync service, 54-55 against 60-64 for an async one (docs/consumer.md,
            *Memory*). The price is page faults: the freed buffers are mapped afresh,
            0.1-0.5 µs more kernel time per record (about 1% of a sync service's CPU
            with the 2 MiB fetch queue, 3% with the 4 MiB of before). Off by default
            for that price, and because it applies to the whole process, as
            ``MALLOC_TRIM_THRESHOLD_=131072`` would. Malloc tuning in the environment
            takes precedence; on another C library it does nothing.
    """

    batch_size: int = 500
    max_buffered: int = 2000
    pause_after: float = 0.25
    drift_sample: int = DRIFT_SAMPLE
    workers: int = 8
    commit_interval: float = 1.0
    revoke_timeout: float = 5.0
    shutdown_timeout: float = 10.0
    startup_timeout: float = 30.0
    dead_letter_backoff_max: float = 10.0
    dead_letter_log_rate: float | None = 10.0
    max_in_flight: int = 256
    event_loop: Literal["auto", "asyncio"] = "auto"
    broker_silence: float = 10.0
    broker_timeout: float | None = None
    release_memory: bool = False

    def __post_init__(self) -> None:
        for option in fields(self):
            value, hint = getattr(self, option.name), _HINTS[option.name]
            if not _fits(value, hint):
                given = repr(value) if get_origin(hint) is Literal else type(value).__name__
                raise ConfigurationError(
                    f"ServiceOptions.{option.name} must be {_describe(hint)}, not {given}"
                )
            # NaN passes every comparison below as false: a commit_interval of NaN
            # would never commit on time, and a NaN rate never log.
            if isinstance(value, float) and math.isnan(value):
                raise ConfigurationError(f"ServiceOptions.{option.name} must be a number, not NaN")
        for name in ("batch_size", "max_buffered", "workers", "drift_sample", "max_in_flight"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"ServiceOptions.{name} must be at least 1")
        if not 0 <= self.pause_after <= 5:
            raise ConfigurationError(
                "ServiceOptions.pause_after must be 0-5 seconds: while a full partition "
                "waits to be paused, nothing is fetched, and that must stay far below "
                "max.poll.interval.ms"
            )
        if self.revoke_timeout > self.shutdown_timeout:
            raise ConfigurationError(
                f"ServiceOptions.revoke_timeout ({self.revoke_timeout:g}) must not exceed "
                f"shutdown_timeout ({self.shutdown_timeout:g}): shutdown waits for a "
                "rebalance in progress before it closes the consumer; with a "
                "shutdown_timeout this short, set revoke_timeout too"
            )
        if self.dead_letter_log_rate is not None and self.dead_letter_log_rate <= 0:
            raise ConfigurationError(
                "ServiceOptions.dead_letter_log_rate must be positive lines a second, or "
                "None to log every dead letter"
            )
        if self.broker_timeout is not None and self.broker_timeout <= 0:
            raise ConfigurationError(
                "ServiceOptions.broker_timeout must be positive seconds, or None to wait "
                "for the cluster forever"
            )
        for name in (
            "commit_interval",
            "revoke_timeout",
            "shutdown_timeout",
            "startup_timeout",
            "broker_silence",
            "dead_letter_backoff_max",
        ):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"ServiceOptions.{name} must be positive seconds")
        # The stop's waits go to Python's lock waits, which overflow past
        # threading.TIMEOUT_MAX, and librdkafka's, in int milliseconds: an infinite
        # shutdown_timeout (or revoke_timeout, which may not exceed it) crashed the stop
        # with an OverflowError before it settled or committed anything.
        if self.shutdown_timeout > MAX_SHUTDOWN_TIMEOUT:
            raise ConfigurationError(
                f"ServiceOptions.shutdown_timeout must be finite seconds, at most "
                f"{MAX_SHUTDOWN_TIMEOUT:g}: a stop waits up to twice it for handlers and "
                "dead letters, and must end"
            )
        if math.isinf(self.commit_interval):
            raise ConfigurationError(
                "ServiceOptions.commit_interval must be finite seconds: offsets are committed "
                "every commit_interval, and never otherwise but on revoke and shutdown"
            )


# The annotations resolved once, for the type check in __post_init__.
_HINTS: dict[str, Any] = get_type_hints(ServiceOptions)


def _fits(value: object, hint: Any) -> bool:
    """Whether ``value`` is of the annotated type. A bool is no number here: ``True``
    as a batch size is a mistake, not 1; an int is a float, as in Python's typing."""
    if get_origin(hint) in (Union, types.UnionType):
        return any(_fits(value, arm) for arm in get_args(hint))
    if get_origin(hint) is Literal:
        return value in get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if hint is float:
        return isinstance(value, int | float)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    if get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_describe(arm) for arm in get_args(hint))
    if get_origin(hint) is Literal:
        return " or ".join(repr(v) for v in get_args(hint))
    if hint is type(None):
        return "None"
    names = {bool: "True or False", int: "an int", float: "a number"}
    return names.get(hint, str(hint.__name__))

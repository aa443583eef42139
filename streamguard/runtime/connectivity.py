"""Whether the service can reach its cluster, read from librdkafka's statistics.

librdkafka reconnects by itself and never tells the application that it is cut off: a
consumer behind a dead network simply fetches nothing, which looks like an idle topic.
Its statistics say more. Every connection reports its state and ``rxidle``, the time
since it last received a byte; a healthy consumer receives a fetch response at least
every ``fetch.wait.max.ms`` and a heartbeat response every ``heartbeat.interval.ms``.
So the cluster counts as reachable while some connection is up and heard from within
``ServiceOptions.broker_silence``; a refused, reset or stalled connection fails that
test, whichever way the network broke.

The statistics arrive through the consumer's own poll calls, so they keep coming while
the cluster is away, and ``ClusterLink`` can end the service after
``ServiceOptions.broker_timeout`` without the cluster (``BrokerUnavailable``).

Before the service first reached the cluster, ``startup_timeout`` decides and the
start-up says why it failed: a link made with ``watching=False`` only tracks
reachability until ``watch()``, neither logging an outage (its "fetching and
dead-lettering wait" would tell of a service that is about to exit) nor giving up.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from streamguard.errors import ConfigurationError

log = logging.getLogger("streamguard.runtime")

# How often librdkafka reports statistics: how soon a lost or regained cluster shows.
STATS_INTERVAL_MS = 1000
# librdkafka's default heartbeat.interval.ms and session.timeout.ms.
HEARTBEAT_MS = 3000
SESSION_TIMEOUT_MS = 45000


def check_link_settings(config: Mapping[str, Any], broker_silence: float) -> None:
    """Refuse the consumer settings that would blind ``ClusterLink`` or fool it.

    ``statistics.interval.ms``: at 0 librdkafka sends no statistics, so ``/readyz`` and
    ``broker_timeout`` would never learn that the cluster is gone; above
    ``broker_silence`` the link would call a healthy cluster unreachable between two
    reports. ``heartbeat.interval.ms``: with every partition paused (the DLQ or a
    dependency down) or none assigned, a healthy consumer hears from the cluster only at
    each heartbeat, so one of ``broker_silence`` or more made the link report an outage
    that was not there.
    """
    silence_ms = broker_silence * 1000
    # Unset, each has its default, which a short broker_silence can be under too: 2 s
    # with librdkafka's 3 s heartbeat had /readyz flap unready with nothing wrong.
    stats = _ms({"statistics.interval.ms": STATS_INTERVAL_MS, **config}, "statistics.interval.ms")
    if stats is not None and not 0 < stats <= silence_ms:
        raise ConfigurationError(
            f"kafka_config statistics.interval.ms={stats}: the runtime reads librdkafka's "
            "statistics to know whether the cluster is reachable, so it must be between 1 "
            f"and ServiceOptions.broker_silence ({silence_ms:.0f} ms); leave it out for the "
            f"default of {STATS_INTERVAL_MS} ms, or raise broker_silence"
        )
    heartbeat = _ms({"heartbeat.interval.ms": HEARTBEAT_MS, **config}, "heartbeat.interval.ms")
    if heartbeat is not None and heartbeat >= silence_ms:
        raise ConfigurationError(
            f"kafka_config heartbeat.interval.ms={heartbeat}: with every "
            "partition paused, the heartbeat is all a healthy consumer hears from the "
            f"cluster, so it must be below ServiceOptions.broker_silence ({silence_ms:.0f} "
            "ms); lower it, or raise broker_silence"
        )
    # librdkafka takes a session timeout at or under the heartbeat (Java's client
    # refuses it): the group then expires the member between two heartbeats, and the
    # service loses its partitions every session.timeout.ms, without an error.
    session = _ms({"session.timeout.ms": SESSION_TIMEOUT_MS, **config}, "session.timeout.ms")
    if heartbeat is not None and session is not None and heartbeat >= session:
        raise ConfigurationError(
            f"kafka_config session.timeout.ms={session} is not above heartbeat.interval.ms"
            f"={heartbeat}: the group would expire the consumer between two heartbeats; "
            "set heartbeat.interval.ms to at most a third of session.timeout.ms"
        )


def _ms(config: Mapping[str, Any], key: str) -> int | None:
    """A millisecond setting as a number; None when unset or not one (librdkafka, which
    takes strings too, says so when the consumer is made)."""
    try:
        return int(config.get(key))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


class ClusterLink:
    """Tracks reachability from statistics; calls ``give_up`` after ``timeout`` away."""

    def __init__(
        self,
        silence: float,
        timeout: float | None,
        give_up: Callable[[float], None],
        clock: Callable[[], float] = time.monotonic,
        *,
        service: str,
        topic: str,
        watching: bool = True,
    ) -> None:
        self._silence_us = silence * 1e6
        # Whose link each line is about: a process may run several services.
        self._names = {"service": service, "topic": topic}
        self._timeout = timeout
        self._give_up = give_up
        self._clock = clock
        self.reachable = True
        self.away_since: float | None = None
        self._gave_up = False
        self._watching = watching
        self._ended = False

    def watch(self) -> None:
        """The service reached the cluster: from now on, report outages and give up."""
        self.reachable, self.away_since = True, None
        self._watching = True

    def end(self) -> None:
        """The run is over: later statistics (served by a consumer's close, which may
        outlive ``run()`` on its thread) report no outage and give up on nothing."""
        self._ended = True

    def on_stats(self, stats: str) -> None:
        """librdkafka's ``stats_cb``: update reachability, give up when away too long."""
        if self._ended:
            return
        try:
            brokers: dict[str, Any] = json.loads(stats).get("brokers", {})
        except ValueError:
            return
        now = self._clock()
        up = any(
            b.get("state") == "UP" and 0 <= b.get("rxidle", -1) < self._silence_us
            for b in brokers.values()
        )
        if not self._watching:
            self.reachable = up
            return
        if up:
            if not self.reachable:
                log.info(
                    "cluster reachable again",
                    extra={
                        **self._names,
                        "away_seconds": round(now - (self.away_since or now), 1),
                    },
                )
            self.reachable, self.away_since = True, None
            return
        if self.reachable:
            log.error(
                "cannot reach the cluster: no connection answered recently; fetching and "
                "dead-lettering wait, and the service reports unready",
                extra={**self._names, "silence_seconds": self._silence_us / 1e6},
            )
            self.reachable, self.away_since = False, now
        away = now - (self.away_since if self.away_since is not None else now)
        if self._timeout is not None and away >= self._timeout and not self._gave_up:
            self._gave_up = True
            self._give_up(away)

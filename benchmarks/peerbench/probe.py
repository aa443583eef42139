"""What a contender's process measures about itself, from its first record to its last.

Group join, imports and start-up are excluded: the clock starts at the first record a
handler sees. CPU is the whole process's (every thread, ``time.process_time``), so a
framework's background threads count. After the last record the probe writes its
result and ends the process at once (``os._exit``): how a framework shuts down is not
measured, and every run uses a fresh consumer group, so nothing needs committing.
"""

from __future__ import annotations

import itertools
import json
import os
import resource
import statistics
import threading
import time
from typing import Any

from peerbench.events import IO_KEYS, MEASURED_AFTER

_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds of each thread of this process so far, with its name.

    librdkafka's threads (``rdk:broker*``, ``rdk:main``) show up here too, which is how
    the client's share of the CPU is told from the interpreter's.
    """
    found: dict[int, tuple[str, float]] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as stat:
                raw = stat.read()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        found[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / _TICK)
    return found


def cpu_by_thread_kind(before: dict[int, tuple[str, float]], total: float) -> dict[str, float]:
    """CPU seconds since ``before``, summed by kind of thread; what threads that ended
    meanwhile used is the process's ``total`` less the living threads' sum."""
    totals: dict[str, float] = {}
    for tid, (name, cpu) in thread_cpu().items():
        kind = name.rstrip("0123456789-").removeprefix("rdk:") or name
        if not name.startswith("rdk:"):
            kind = "python main" if tid == os.getpid() else "python threads"
        if name.startswith("rdk:"):
            kind = "librdkafka " + kind
        used = cpu - before.get(tid, (name, 0.0))[1]
        totals[kind] = round(totals.get(kind, 0.0) + used, 3)
    ended = total - sum(totals.values())
    if ended > 0.05:
        totals["threads that ended"] = round(ended, 3)
    return {k: v for k, v in sorted(totals.items(), key=lambda kv: -kv[1]) if v > 0}


def rss_mib() -> float:
    """This process's resident set size now (not its peak)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE / 2**20


class Probe:
    """Counts validated events; in io mode also checks per-key order.

    Contenders call ``handle(event)`` from sync handlers and ``await ahandle(event)``
    from async ones when ``work_s`` is set. Both are bound at construction, so the
    throughput path is one counter step per event.
    """

    def __init__(self, count: int, result_path: str, mode: str, work_s: float = 0.0) -> None:
        self.count = count
        self.mode = mode
        self.work_s = work_s
        self._path = result_path
        self._born = time.monotonic()
        self._next = itertools.count(1).__next__  # atomic under the GIL
        self._marks: dict[str, float] = {}
        self._latencies: list[int] = []
        self._ready = False
        self._in_flight: set[int] = set()
        self._last: dict[int, int] = {}
        self._violations = 0
        self._lock = threading.Lock()
        self._threads0: dict[int, tuple[str, float]] = {}
        self._switches0 = (0, 0)
        self.handle = {"throughput": self.hit, "io": self._io, "latency": self._latency}[mode]

    # -- the paths -------------------------------------------------------------------

    def hit(self, event: Any) -> None:
        n = self._next()
        if n == 1:
            self._first()
        if n == self.count:
            self._finish()

    def _latency(self, event: Any) -> None:
        # Warm-up records (sent until this process saw its first) have small order ids;
        # measured ones carry the producer's time.time_ns() at send.
        now = time.time_ns()
        sent = event.order_id.int
        if sent < MEASURED_AFTER:
            if not self._ready:
                self._ready = True
                with open(self._path + ".ready", "w"):
                    pass
            return
        self._latencies.append(now - sent)
        n = self._next()
        if n == 1:
            self._first()
        if n == self.count:
            self._finish()

    def _begin(self, event: Any) -> int:
        index = event.order_id.int - 1
        key = index % IO_KEYS
        with self._lock:
            if key in self._in_flight or self._last.get(key, -1) > index:
                self._violations += 1
            self._in_flight.add(key)
            self._last[key] = index
        return key

    def _end(self, key: int, event: Any) -> None:
        with self._lock:
            self._in_flight.discard(key)
        self.hit(event)

    def _io(self, event: Any) -> None:
        key = self._begin(event)
        time.sleep(self.work_s)
        self._end(key, event)

    async def ahandle(self, event: Any) -> None:
        import asyncio  # here: a sync contender's process never loads it

        key = self._begin(event)
        await asyncio.sleep(self.work_s)
        self._end(key, event)

    def _switches(self) -> dict[str, float]:
        """Context switches per 1,000 records: each handoff between threads is one."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        voluntary = usage.ru_nvcsw - self._switches0[0]
        forced = usage.ru_nivcsw - self._switches0[1]
        return {
            "voluntary_switches_per_1k": round(voluntary * 1000 / self.count, 1),
            "involuntary_switches_per_1k": round(forced * 1000 / self.count, 1),
        }

    # -- marks -----------------------------------------------------------------------

    def _first(self) -> None:
        self._marks["t0"] = time.perf_counter()
        self._marks["cpu0"] = time.process_time()
        self._marks["rss0"] = rss_mib()
        self._threads0 = thread_cpu()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self._switches0 = (usage.ru_nvcsw, usage.ru_nivcsw)
        self._marks["startup"] = time.monotonic() - self._born

    def _finish(self) -> None:
        wall = time.perf_counter() - self._marks["t0"]
        cpu = time.process_time() - self._marks["cpu0"]
        result: dict[str, Any] = {
            "count": self.count,
            "wall_s": round(wall, 4),
            "msg_per_s": round((self.count - 1) / wall, 1) if wall > 0 else None,
            "cpu_s": round(cpu, 4),
            "cpu_us_per_msg": round(cpu / self.count * 1e6, 2),
            "cpu_util": round(cpu / wall, 3) if wall > 0 else None,
            "rss_start_mib": round(self._marks["rss0"], 1),
            "rss_end_mib": round(rss_mib(), 1),
            "startup_s": round(self._marks["startup"], 2),
            "cpu_s_by_thread": cpu_by_thread_kind(self._threads0, cpu),
            **self._switches(),
        }
        if self.mode == "io":
            result["order_violations"] = self._violations
        if self.mode == "latency":
            lat = sorted(self._latencies)
            result["latency_n"] = len(lat)
            if len(lat) >= 100:
                cuts = statistics.quantiles(lat, n=100)
                result["p50_ms"] = round(cuts[49] / 1e6, 3)
                result["p99_ms"] = round(cuts[98] / 1e6, 3)
                result["max_ms"] = round(lat[-1] / 1e6, 3)
        tmp = self._path + ".tmp"
        with open(tmp, "w") as out:
            json.dump(result, out)
        os.replace(tmp, self._path)
        os._exit(0)

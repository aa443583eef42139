"""Runs the contenders, each in its own process, against one broker and one data set."""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peerbench import dataset, events
from peerbench.registry import Contender, Mode
from peerbench.render import TARGETS
from streamguard.devbroker import DevBroker
from streamguard.registry.server import RegistryServer
from streamguard.topics import create_topics

SCRIPT = Path(__file__).resolve().parent.parent / "peers.py"
PACKAGES = (
    "streamguard",
    "confluent-kafka",
    "pydantic",
    "pydantic-core",
    "fastavro",
    "prometheus-client",
    "faststream",
    "aiokafka",
    "quixstreams",
    "faust-streaming",
    "matplotlib",
)


@dataclass(frozen=True)
class Settings:
    records: int = 200_000
    rounds: int = 3
    io_records: int = 3000
    io_work_s: float = 0.002
    latency_rate: float = 1000.0
    latency_seconds: float = 10.0
    fetch_wait_ms: int = 10
    latency_rounds: int = 4
    rss_records: int = 1_000_000
    rss_rounds: int = 3
    modes: tuple[str, ...] = ("throughput", "io", "latency")  # and "rss"
    verbose: bool = True


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_1m_at_start": load,
    }


def source_commit() -> str:
    """The commit measured, ``+changes`` when the package or the benchmarks differ from
    it (results.json aside, which a run rewrites); "" outside a git checkout."""
    root = Path(__file__).resolve().parents[2]
    git = ["git", "-C", str(root)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        changed = subprocess.run(
            [*git, "status", "--porcelain", "--", "streamguard", "benchmarks",
             ":!benchmarks/results.json"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"{head}+changes" if changed else head


def versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    import confluent_kafka

    found["librdkafka"] = confluent_kafka.libversion()[0]
    return found


def run_worker(
    contender: Contender,
    mode: Mode,
    bootstrap: str,
    topic: str,
    count: int,
    settings: Settings,
    timeout: float,
    rate: float = 0.0,
    registry_url: str = "",
) -> dict[str, Any]:
    """One contender, one pass over ``count`` records, in a fresh process and group.

    With a ``rate`` (the latency pass), a thread sends the records at that rate once
    the contender has joined. ``registry_url``: the embedded schema registry, for rows
    that read Confluent-framed records.
    """
    with tempfile.TemporaryDirectory(prefix="peerbench-") as tmp:
        result = os.path.join(tmp, "result.json")
        log = os.path.join(tmp, "worker.log")
        argv = [
            sys.executable,
            str(SCRIPT),
            "--worker",
            contender.name,
            "--module",
            contender.run.__module__,
            "--mode",
            mode,
            "--bootstrap",
            bootstrap,
            "--topic",
            topic,
            "--group",
            f"{contender.name}-{mode}-{uuid.uuid4().hex[:8]}",
            "--count",
            str(count),
            "--result",
            result,
        ]
        if mode == "io":
            argv += [
                "--work-s",
                str(settings.io_work_s),
                "--concurrency",
                str(contender.concurrency),
            ]
        if mode == "latency" and settings.fetch_wait_ms:
            argv += ["--fetch-wait-ms", str(settings.fetch_wait_ms)]
        if registry_url:
            argv += ["--registry-url", registry_url]
        with open(log, "wb") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
            sender = None
            if rate:
                sender = threading.Thread(
                    target=dataset.produce_paced,
                    args=(bootstrap, topic, rate, count, result + ".ready"),
                    daemon=True,
                )
                sender.start()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if sender is not None:
                sender.join(timeout)
        if os.path.exists(result):
            return dict(json.loads(Path(result).read_text()))
        tail = Path(log).read_text(errors="replace")[-1500:]
        return {"error": f"exit {process.returncode} after at most {timeout:.0f}s", "log": tail}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and range of the runs that finished, with their CPU and memory."""
    good = [r for r in runs if "error" not in r]
    out: dict[str, Any] = {"runs": runs}
    if not good:
        return out
    rates = [r["msg_per_s"] for r in good]
    out["msg_per_s"] = round(statistics.median(rates))
    out["min"], out["max"] = round(min(rates)), round(max(rates))
    for key in ("cpu_us_per_msg", "cpu_util", "rss_start_mib", "rss_end_mib", "startup_s"):
        out[key] = round(statistics.median(r[key] for r in good), 2)
    for key in ("p50_ms", "p99_ms", "max_ms", "order_violations"):
        values = [r[key] for r in good if key in r]
        if values:
            out[key] = round(statistics.median(values), 3)
    return out


def alternating(
    jobs: list[Contender], rounds: int, settings: Settings, label: str
) -> Iterator[Contender]:
    """The rows of each round in turn, forward in the first, backward in the next, ...:
    no row always runs first or last, where the VM's speed of those minutes would
    favour or penalise it."""
    for r in range(rounds):
        say(settings, f"{label} {r + 1}/{rounds}")
        yield from jobs if r % 2 == 0 else reversed(jobs)


def say(settings: Settings, text: str) -> None:
    if settings.verbose:
        print(text, flush=True)


def _describe(run: dict[str, Any]) -> str:
    if "error" in run:
        return f"FAILED {run['error']}\n{run['log']}"
    text = (
        f"{run['msg_per_s']:>10,.0f} msg/s  cpu {run['cpu_us_per_msg']:.1f} us/msg "
        f"({run['cpu_util']:.2f} cores)  rss {run['rss_end_mib']:.0f} MiB"
    )
    if "p50_ms" in run:
        text += f"  p50 {run['p50_ms']:.2f} ms p99 {run['p99_ms']:.2f} ms"
    if "order_violations" in run:
        text += f"  order violations {run['order_violations']}"
    return text


def paired(jobs: list[Contender]) -> list[Contender]:
    """The throughput pass's order: each row held to a baseline (``TARGETS``) placed
    after the first of its baselines, and its other baselines right after the row: one
    sequence, so the first such row follows its baseline at once and the next ones a
    few rows later (loop-untuned, sg-sync, loop-tuned, sg-async, sg-dlq, ...).

    The VM's speed moves over minutes; in registration order the slow peers ran between
    a baseline and its streamguard rows (several minutes a round), so a ratio compared
    runs made at different speeds. Close together, a round's runs of a pair share one.
    """
    near: dict[str, list[str]] = {}  # a row's pairs: its baselines, or the rows held to it
    for row, base, _minimum in TARGETS:
        near.setdefault(base, []).append(row)
        near.setdefault(row, []).append(base)
    by_name = {c.name: c for c in jobs}
    order: list[Contender] = []

    def place(name: str) -> None:
        if name in by_name and by_name[name] not in order:
            order.append(by_name[name])
            for other in near.get(name, []):
                place(other)

    for c in jobs:
        place(c.name)
    return order


def run_all(contenders: list[Contender], settings: Settings) -> dict[str, Any]:
    """Start the broker, produce the data set, run every (contender, mode) and summarize."""
    started = dt.datetime.now(dt.UTC)
    results: dict[str, Any] = {
        "meta": {
            "date": started.isoformat(timespec="seconds"),
            "commit": source_commit(),
            "machine": machine(),
            "versions": versions(),
            "records": settings.records,
            "rounds": settings.rounds,
            "passes": list(settings.modes),
            "partitions": events.PARTITIONS,
            "line_items": events.LINE_ITEMS,
            "keys": events.KEYS,
            "io": {
                "records": settings.io_records,
                "work_ms": settings.io_work_s * 1000,
                "keys": events.IO_KEYS,
            },
            "latency": {
                "rate_per_s": settings.latency_rate,
                "seconds": settings.latency_seconds,
                "fetch_wait_ms": settings.fetch_wait_ms,
                "rounds": settings.latency_rounds,
            },
        },
        "contenders": {},
        "skipped": {},
    }
    runnable = []
    for c in contenders:
        reason = c.missing()
        if reason:
            results["skipped"][c.name] = reason
            say(settings, f"skip {c.name}: {reason}")
        else:
            runnable.append(c)
    for c in runnable:
        results["contenders"][c.name] = {
            "label": c.label,
            "data": c.data,
            "baseline": c.baseline,
            "keeps_order": c.keeps_order,
            "concurrency": c.concurrency,
            "note": c.note,
            "tags": list(c.tags),
        }
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(DevBroker())
        bootstrap = broker.bootstrap_servers
        run_id = uuid.uuid4().hex[:6]
        topics: dict[str, str] = {}
        sizes: dict[str, int] = {}
        wanted = set()
        if "throughput" in settings.modes:
            wanted = {c.data for c in runnable if "throughput" in c.modes}
        if "io" in settings.modes and any("io" in c.modes for c in runnable):
            wanted.add("io")
        for data in sorted(wanted):
            topics[data] = f"peers-{data}-{run_id}"
        registry_url = ""
        if "avro-registry" in wanted:  # Confluent framing: writer schemas by id
            registry_url = stack.enter_context(RegistryServer(port=0)).url
        create_topics(
            bootstrap,
            [*topics.values(), *(f"{t}.dlq" for t in topics.values())],
            partitions=events.PARTITIONS,
        )
        for data, topic in topics.items():
            count = settings.io_records if data == "io" else settings.records
            begin = time.monotonic()
            sizes[data] = dataset.produce(bootstrap, topic, data, count, registry_url)
            say(
                settings,
                f"produced {count} {data} records of {sizes[data]} B "
                f"in {time.monotonic() - begin:.1f}s",
            )
        results["meta"]["value_bytes"] = sizes

        def collect(c: Contender, mode: Mode, run: dict[str, Any]) -> None:
            entry = results["contenders"][c.name].setdefault(mode, {"runs": []})
            entry["runs"].append(run)
            say(settings, f"  {c.name:<22} {mode:<10} {_describe(run)}")

        if "throughput" in settings.modes:
            jobs = paired([c for c in runnable if "throughput" in c.modes])
            for c in alternating(jobs, settings.rounds, settings, "round"):
                timeout = 60 + settings.records / 1000
                collect(
                    c,
                    "throughput",
                    run_worker(
                        c,
                        "throughput",
                        bootstrap,
                        topics[c.data],
                        settings.records,
                        settings,
                        timeout,
                        registry_url=registry_url,
                    ),
                )
        if "io" in settings.modes:
            say(settings, "io rows")
            for c in [c for c in runnable if "io" in c.modes]:
                timeout = 60 + settings.io_records * settings.io_work_s * 2
                collect(
                    c,
                    "io",
                    run_worker(
                        c, "io", bootstrap, topics["io"], settings.io_records, settings, timeout
                    ),
                )
        if "latency" in settings.modes:
            say(settings, f"latency at {settings.latency_rate:.0f} msg/s")
            count = int(settings.latency_rate * settings.latency_seconds)
            jobs = [c for c in runnable if "latency" in c.modes]
            order = [
                (n, c)
                for n in range(settings.latency_rounds)
                for c in (jobs if n % 2 == 0 else jobs[::-1])
            ]
            for n, c in order:
                topic = f"peers-latency-{c.name}-{n}-{run_id}"
                create_topics(bootstrap, [topic, f"{topic}.dlq"], partitions=events.PARTITIONS)
                timeout = settings.latency_seconds + 90
                run = run_worker(
                    c, "latency", bootstrap, topic, count, settings, timeout, settings.latency_rate
                )
                collect(c, "latency", run)
        if "rss" in settings.modes:
            results["meta"]["rss_records"] = settings.rss_records
            results["meta"]["rss_rounds"] = settings.rss_rounds
            say(settings, f"rss over {settings.rss_records} records")
            topic = f"peers-rss-{run_id}"
            create_topics(bootstrap, [topic, f"{topic}.dlq"], partitions=events.PARTITIONS)
            dataset.produce(bootstrap, topic, "json", settings.rss_records)
            # Alternating rounds, as in the throughput pass: one run's end moves by
            # several MiB (glibc keeps or returns what was freed), so a row is a median.
            jobs = [c for c in runnable if "throughput" in c.modes and c.data == "json"]
            for c in alternating(jobs, settings.rss_rounds, settings, "rss round"):
                timeout = 60 + settings.rss_records / 1000
                collect(
                    c,
                    "rss",  # type: ignore[arg-type]  # a pass of its own, not a worker's mode
                    run_worker(
                        c, "throughput", bootstrap, topic, settings.rss_records, settings, timeout
                    ),
                )
    for entry in results["contenders"].values():
        for mode in ("throughput", "io", "latency", "rss"):
            if mode in entry:
                entry[mode] = summarize(entry[mode]["runs"])
    results["meta"]["duration_s"] = round((dt.datetime.now(dt.UTC) - started).total_seconds())
    return results

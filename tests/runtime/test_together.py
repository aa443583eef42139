"""``sg.run_services``: several services in one process, through the real broker.

One signal stops them all and each commits what it handled; a second one hurries every
stop; a service that fails stops the others and its error is what the call raises."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from streamguard.devbroker import free_port
from tests.conftest import FAST_GROUP
from tests.runtime.conftest import committed, order, wait_for

# Two services in one process, as a team's main() would run them: each handler writes
# "topic offset" lines; the record at $SG_TEST_HOLD of the second topic waits for the
# file "release" (at most 60 s).
SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path

    import streamguard as sg
    from streamguard.demo.contracts import OrderPlaced
    from streamguard.observe.logs import configure_logging

    OUT = Path(os.environ["SG_TEST_OUT"])
    HOLD = int(os.environ.get("SG_TEST_HOLD", "-1"))
    CONFIG = {"session.timeout.ms": 2000, "heartbeat.interval.ms": 500}


    def record(ctx):
        with OUT.open("a") as out:
            out.write(f"{ctx.topic} {ctx.offset}\\n")


    class Payments(sg.ConsumerService):
        topic = os.environ["SG_TEST_FIRST"]
        group_id = os.environ["SG_TEST_GROUP"] + "-payments"
        contract = OrderPlaced
        options = sg.ServiceOptions(shutdown_timeout=20)

        def handle(self, event, ctx):
            record(ctx)


    class Refunds(Payments):
        topic = os.environ["SG_TEST_SECOND"]
        group_id = os.environ["SG_TEST_GROUP"] + "-refunds"

        def handle(self, event, ctx):
            if ctx.offset == HOLD:
                deadline = time.monotonic() + 60
                while not (OUT.parent / "release").exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
            record(ctx)


    configure_logging("json")
    servers = sys.argv[1]
    sg.run_services(
        Payments(bootstrap_servers=servers, kafka_config=CONFIG),
        Refunds(bootstrap_servers=servers, kafka_config=CONFIG),
    )
    """
)


def _send(bootstrap: str, topic: str, count: int) -> None:
    producer = sg.GuardedProducer(bootstrap)
    for i in range(count):
        producer.send(topic, order(i), key=f"k{i}")
    producer.flush()


def _start(
    bootstrap: str, first: str, second: str, group: str, tmp_path: Path, hold: int = -1
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    script, out, logs = tmp_path / "both.py", tmp_path / "handled", tmp_path / "logs"
    script.write_text(SCRIPT)
    env = {
        **os.environ,
        "SG_TEST_OUT": str(out),
        "SG_TEST_FIRST": first,
        "SG_TEST_SECOND": second,
        "SG_TEST_GROUP": group,
        "SG_TEST_HOLD": str(hold),
    }
    with logs.open("w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, str(script), bootstrap],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    return proc, out, logs


def _handled(out: Path) -> list[str]:
    return out.read_text().splitlines() if out.exists() else []


def _ended(proc: subprocess.Popen[bytes], timeout: float) -> int:
    try:
        return proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_one_signal_stops_every_service_and_each_commits_what_it_handled(
    bootstrap: str, topic_factory: Callable[..., str], unique: Callable[[str], str], tmp_path: Path
) -> None:
    first, second = topic_factory("payments"), topic_factory("refunds")
    group = unique("g")
    _send(bootstrap, first, 5)
    _send(bootstrap, second, 7)
    proc, out, logs = _start(bootstrap, first, second, group, tmp_path)
    try:
        assert wait_for(lambda: len(_handled(out)) == 12, timeout=40), logs.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
    code = _ended(proc, 30)
    text = logs.read_text()
    assert code == 0, text
    assert text.count('"event": "stop requested by signal"') == 1
    assert text.count('"event": "service stopped"') == 2
    assert "Traceback" not in text
    assert sum(committed(bootstrap, f"{group}-payments", first).values()) == 5
    assert sum(committed(bootstrap, f"{group}-refunds", second).values()) == 7


def test_a_second_signal_hurries_every_service_and_the_held_record_stays_uncommitted(
    bootstrap: str, topic_factory: Callable[..., str], unique: Callable[[str], str], tmp_path: Path
) -> None:
    """The second service holds its record at offset 2 past the first signal: a second
    one ends its stop's wait at once (not after shutdown_timeout, 20 s), the process exits
    0, the first service's records are all committed and the second's stop before the
    held one. Without the shared handler, the second signal met Python's default and
    killed the process (exit 143) once the main thread's service had returned."""
    first, second = topic_factory("payments", partitions=1), topic_factory("refunds", partitions=1)
    group = unique("g")
    _send(bootstrap, first, 3)
    _send(bootstrap, second, 4)
    proc, out, logs = _start(bootstrap, first, second, group, tmp_path, hold=2)
    try:
        assert wait_for(
            lambda: len(_handled(out)) == 5 and f"{second} 1" in _handled(out), timeout=40
        ), logs.read_text()
        proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: "stop requested by signal" in logs.read_text(), timeout=10)
        assert wait_for(lambda: logs.read_text().count('"event": "service stopped"') == 1)
        time.sleep(0.5)
        assert proc.poll() is None  # the held record is waited for
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = _ended(proc, 15)
        took = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = logs.read_text()
    assert code == 0, text
    assert took < 8, took
    assert '"event": "stop hurried by signal"' in text
    assert committed(bootstrap, f"{group}-payments", first) == {0: 3}
    assert committed(bootstrap, f"{group}-refunds", second) == {0: 2}


class _Quiet(sg.ConsumerService):
    __abstract__ = True
    contract = OrderPlaced

    def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
        pass


class _Failing(_Quiet):
    __abstract__ = True

    def on_start(self) -> None:
        raise RuntimeError("the ledger's database is not there")


def quiet_and(
    other: type[sg.ConsumerService],
    name: str,
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
) -> list[sg.ConsumerService]:
    """A quiet service and one of class ``other`` (named ``name``), each on a topic and
    group of its own."""
    config: dict[str, Any] = dict(FAST_GROUP)
    return [
        type(cls_name, (base,), {"topic": topic_factory(cls_name), "group_id": unique("g")})(
            bootstrap_servers=bootstrap, kafka_config=config
        )
        for cls_name, base in (("Quiet", _Quiet), (name, other))
    ]


def run_services_noting(
    services: list[sg.ConsumerService], raised: list[BaseException | None]
) -> threading.Thread:
    """``run_services`` on a thread of its own (off the main thread: no signal handler),
    appending the error it raised, or None, to ``raised``."""

    def call() -> None:
        try:
            sg.run_services(*services)
        except BaseException as exc:
            raised.append(exc)
        else:
            raised.append(None)

    thread = threading.Thread(target=call)
    thread.start()
    return thread


def test_a_failing_service_stops_the_others_and_its_error_is_raised(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before, a run() that raised on its thread ended that service alone: the process
    ran on, reported ready, and exited 0 at the next SIGTERM."""
    services = quiet_and(_Failing, "Failing", bootstrap, topic_factory, unique)
    raised: list[BaseException | None] = []
    caller = run_services_noting(services, raised)
    caller.join(60)
    assert not caller.is_alive()
    assert len(raised) == 1
    assert isinstance(raised[0], RuntimeError)
    assert not services[0].health()["checks"]["running"]
    ended = [r for r in caplog.records if r.getMessage() == "service ended; stopping the others"]
    assert [(r.__dict__["service"], r.__dict__["error"]) for r in ended] == [
        ("Failing", "RuntimeError")
    ]


def test_run_services_refuses_no_service_and_a_service_twice(bootstrap: str) -> None:
    with pytest.raises(ValueError, match="at least one"):
        sg.run_services()
    service = type("Once", (_Quiet,), {"topic": "t", "group_id": "g"})(bootstrap_servers=bootstrap)
    with pytest.raises(ValueError, match="twice"):
        sg.run_services(service, service)


# Two service classes for `streamguard run`, from the environment's topics and group.
CLI_MODULE = textwrap.dedent(
    """
    import os

    import streamguard as sg
    from streamguard.demo.contracts import OrderPlaced


    class Payments(sg.ConsumerService):
        topic = os.environ["SG_TEST_FIRST"]
        group_id = os.environ["SG_TEST_GROUP"] + "-payments"
        contract = OrderPlaced

        def handle(self, event, ctx):
            pass


    class Refunds(Payments):
        topic = os.environ["SG_TEST_SECOND"]
        group_id = os.environ["SG_TEST_GROUP"] + "-refunds"
    """
)


def test_streamguard_run_runs_several_classes_with_one_readyz_for_all(
    bootstrap: str, topic_factory: Callable[..., str], unique: Callable[[str], str], tmp_path: Path
) -> None:
    """`streamguard run a:A b:B --metrics-port P`: one process, one /metrics with both
    topics' series, a /readyz ready once every service is (each one's report under its
    name), exit 0 on SIGTERM with each service's records committed."""
    import json
    import urllib.error
    import urllib.request

    first, second = topic_factory("payments"), topic_factory("refunds")
    group = unique("g")
    _send(bootstrap, first, 3)
    _send(bootstrap, second, 4)
    (tmp_path / "ledger_services.py").write_text(CLI_MODULE)
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path),
        "SG_TEST_FIRST": first,
        "SG_TEST_SECOND": second,
        "SG_TEST_GROUP": group,
    }
    logs = tmp_path / "logs"
    cmd = [
        sys.executable, "-m", "streamguard.cli", "run",
        "ledger_services:Payments", "ledger_services:Refunds",
        "--bootstrap-servers", bootstrap, "--metrics-port", str(port),
        "-X", "session.timeout.ms=2000", "-X", "heartbeat.interval.ms=500",
    ]  # fmt: skip

    def readyz() -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())
        except OSError:
            return 0, {}

    with logs.open("w") as log_file:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log_file)
    try:
        assert wait_for(lambda: readyz()[0] == 200, timeout=40), (readyz(), logs.read_text())
        report = readyz()[1]
        assert report["ready"] is True
        assert set(report["services"]) == {"Payments", "Refunds"}
        assert all(each["checks"]["assigned"] for each in report["services"].values())
        assert wait_for(
            lambda: (
                sum(committed(bootstrap, f"{group}-payments", first).values()) == 3
                and sum(committed(bootstrap, f"{group}-refunds", second).values()) == 4
            ),
            timeout=30,
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            metrics = r.read().decode()
        handled = {
            line.split('topic="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("streamguard_messages_total{") and 'outcome="handled"' in line
        }
        assert handled == {first: 3.0, second: 4.0}
    finally:
        proc.send_signal(signal.SIGTERM)
    code = _ended(proc, 30)
    assert code == 0, logs.read_text()
    assert logs.read_text().count('"event": "service stopped"') == 2


class _FailsOnce(_Quiet):
    __abstract__ = True
    failed = False

    def on_start(self) -> None:
        if not type(self).failed:
            type(self).failed = True
            raise RuntimeError("the ledger's database is not there yet")


def test_a_service_that_ended_first_runs_again_in_the_next_run_services(
    bootstrap: str, topic_factory: Callable[..., str], unique: Callable[[str], str]
) -> None:
    """run_services stopped every service once one had ended, the ended one too: that
    stop() came after its run() had returned, so it was its next run's, which then
    returned at once (and a main that called run_services again, as a retry, had the
    others stopped by it at once, for good)."""
    services = quiet_and(_FailsOnce, "Flaky", bootstrap, topic_factory, unique)
    raised: list[BaseException | None] = []
    first = run_services_noting(services, raised)
    first.join(60)
    assert not first.is_alive()
    assert isinstance(raised.pop(), RuntimeError)
    again = run_services_noting(services, raised)
    try:
        assert wait_for(
            lambda: all(service.health()["checks"]["running"] for service in services),
            timeout=20,
        ), raised
        time.sleep(1)
        assert again.is_alive()
        assert not raised
    finally:
        for service in services:
            service.stop()
        again.join(60)
    assert not again.is_alive()
    assert raised == [None]


# A service class of a module the refusal tests write: {name} on {topic}, group {group}.
REFUSED_CLASS = textwrap.dedent(
    """
    class {name}(sg.ConsumerService):
        topic = "{topic}"
        group_id = "{group}"
        contract = OrderPlaced
        options = sg.ServiceOptions(startup_timeout=1.0)

        def handle(self, event, ctx):
            pass
    """
)


@pytest.mark.parametrize(
    ("modules", "error"),
    [
        # Two classes named alike (``Billing`` of two modules) ran, and the /readyz
        # body, keyed by name, held one report: it answered 200 while the other was not
        # ready.
        (
            {
                "sg_eu_billing": [("Billing", "sg_eu_billing", "sg_eu_billing")],
                "sg_us_billing": [("Billing", "sg_us_billing", "sg_us_billing")],
            },
            "two services are named 'Billing'",
        ),
        # Two classes on one topic (two groups) ran with one registry, whose gauges are
        # per topic (in flight, paused, lag): each wrote the other's series, and the
        # first to stop removed both.
        (
            {
                "sg_one_topic": [
                    ("Billing", "sg-one-topic", "billing"),
                    ("Ledger", "sg-one-topic", "ledger"),
                ]
            },
            "two services consume 'sg-one-topic'",
        ),
    ],
)
def test_streamguard_run_refuses_two_services_of_one_name_or_topic(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    modules: dict[str, list[tuple[str, str, str]]],
    error: str,
) -> None:
    """A usage error (exit 2) naming the clash, before anything connects."""
    from streamguard.cli import main

    targets = []
    for module, classes in modules.items():
        source = "import streamguard as sg\nfrom streamguard.demo.contracts import OrderPlaced\n"
        for name, topic, group in classes:
            source += REFUSED_CLASS.format(name=name, topic=topic, group=group)
            targets.append(f"{module}:{name}")
        (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["run", *targets, "--bootstrap-servers", "127.0.0.1:1"]) == 2
    assert error in capsys.readouterr().err

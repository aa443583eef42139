"""A handler that raises what is no outcome (not an ``Exception``) stops the service,
and nothing from its record on is committed: a restart handles the record."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from streamguard.observe.logs import JsonFormatter, TextFormatter
from tests.conftest import FAST_GROUP
from tests.runtime.conftest import Running, committed, order, wait_for

pytestmark = pytest.mark.broker

CRASH_AT = 3


async def _await_a_task_cancelled_elsewhere() -> None:
    elsewhere = asyncio.ensure_future(asyncio.sleep(10))
    elsewhere.cancel()
    await elsewhere  # raises CancelledError in this task, which nobody cancelled


@pytest.mark.parametrize(
    ("kind", "mode", "error"),
    [
        ("sync", "partition", KeyboardInterrupt),
        ("async", "partition", asyncio.CancelledError),
        ("async", "key", asyncio.CancelledError),
        ("async", "none", asyncio.CancelledError),
        ("async", "partition", KeyboardInterrupt),
        ("async", "partition", GeneratorExit),
        ("async", "key", GeneratorExit),
    ],
)
def test_a_handler_raising_no_outcome_stops_the_service_and_loses_nothing(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    send_orders: Callable[..., None],
    kind: str,
    mode: str,
    error: type[BaseException],
) -> None:
    """Before, an async handler's own ``CancelledError`` ended its run silently: later
    records ran in a new run and the commit passed the dropped ones (lost), or, under
    key ordering, the partition stalled for good; a ``KeyboardInterrupt`` killed the
    event loop's thread while the service went on "running". A handler's own
    ``GeneratorExit`` was taken for the loop closing the run: the run vanished with its
    records, and later ones were handled and committed past them (lost)."""
    src = topic_factory("orders")
    send_orders(src, 6, key=lambda i: f"customer-{i % 2}")
    group = unique("billing")
    seen: list[int] = []
    stopped: list[str] = []

    def crash(ctx: sg.MessageContext) -> bool:
        seen.append(ctx.offset)
        return ctx.offset == CRASH_AT and seen.count(CRASH_AT) == 1

    class SyncCrash(sg.ConsumerService):
        topic, contract, group_id = src, OrderPlaced, group

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            if crash(ctx):
                raise error()

        def on_stop(self) -> None:
            stopped.append("on_stop")

    class AsyncCrash(sg.ConsumerService):
        topic, contract, group_id = src, OrderPlaced, group
        ordering = mode  # type: ignore[assignment]

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            await asyncio.sleep(0.01)  # the records of different keys overlap
            if crash(ctx):
                if error is asyncio.CancelledError:
                    await _await_a_task_cancelled_elsewhere()
                raise error()

        def on_stop(self) -> None:
            stopped.append("on_stop")

    cls: Any = SyncCrash if kind == "sync" else AsyncCrash
    crashed = start_service(cls)
    crashed.thread.join(30)
    assert not crashed.thread.is_alive(), "the service went on after the crash"
    assert [type(e) for e in crashed.error] == [error]
    assert committed(bootstrap, group, src).get(0, 0) <= CRASH_AT
    assert stopped == ["on_stop"]  # a failed run still releases what on_start took

    handled: list[int] = []

    class Healthy(sg.ConsumerService):
        topic, contract, group_id = src, OrderPlaced, group

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            handled.append(ctx.offset)

    start_service(Healthy)
    assert wait_for(lambda: committed(bootstrap, group, src).get(0) == 6, 30)
    assert CRASH_AT in handled


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_handler_crashing_while_the_service_stops_is_raised_by_run(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    send_orders: Callable[..., None],
    kind: str,
) -> None:
    """A stop waits for the handlers in flight; one that then raises what is no outcome
    stops the service as it would have while running: ``run()`` raises it, and its
    record stays uncommitted. Before, ``run()`` returned as from a clean stop."""
    src = topic_factory("orders", partitions=1)
    send_orders(src, 1)
    group = unique("billing")
    started = threading.Event()

    class SyncSlowCrash(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            started.set()
            time.sleep(0.5)
            raise KeyboardInterrupt

    class AsyncSlowCrash(SyncSlowCrash):
        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:  # type: ignore[override]
            started.set()
            await asyncio.sleep(0.5)
            raise KeyboardInterrupt

    running = start_service(SyncSlowCrash if kind == "sync" else AsyncSlowCrash)
    assert started.wait(30)
    running.stop()
    assert [type(e) for e in running.error] == [KeyboardInterrupt]
    assert committed(bootstrap, group, src).get(0, 0) == 0


@pytest.mark.parametrize(
    ("app", "error"),
    [("ExitsWithTheRecord", "SystemExit"), ("CancelledWithTheRecord", "CancelledError")],
)
def test_streamguard_run_exits_on_a_handler_crash_without_its_text(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    app: str,
    error: str,
) -> None:
    """``streamguard run`` ends a run a handler's ``SystemExit`` or ``CancelledError``
    crashed with exit 1 and a JSON line naming the class. Before, Python printed the
    exception's text (the record's customer here) below a plain traceback, or alone for
    ``SystemExit``: a field value in the logs, on lines that are not JSON."""
    src = topic_factory("orders")
    canary = unique("SECRET-customer")
    producer = sg.GuardedProducer(bootstrap)
    producer.send(src, order(customer_id=canary))
    producer.flush()
    env = {**os.environ, "SG_TEST_TOPIC": src, "SG_TEST_GROUP": unique("g")}
    cmd = [
        sys.executable, "-m", "streamguard.cli", "run", f"tests.runtime.apps:{app}",
        "--bootstrap-servers", bootstrap,
        *(arg for key, value in FAST_GROUP.items() for arg in ("-X", f"{key}={value}")),
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert canary not in output
    lines = [json.loads(line) for line in output.splitlines()]  # each line is JSON
    assert {"event": "service crashed; exiting", "error_class": error} in [
        {k: line.get(k) for k in ("event", "error_class")} for line in lines
    ]


class HookFailed(Exception):
    """What the test's ``on_stop`` raises."""


@pytest.mark.parametrize("ending", ["crash while running", "crash while stopping", "clean stop"])
def test_a_failing_on_stop_never_hides_the_error_that_ended_the_run(
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    send_orders: Callable[..., None],
    caplog: pytest.LogCaptureFixture,
    ending: str,
) -> None:
    """When the run is failing, ``run()`` raises the run's own error and an ``on_stop``
    that also fails is logged with the service's name; after a clean stop, the hook's
    error is what ``run()`` raises. Before, the hook's error replaced the run's, which
    the operator saw only as its ``__context__``."""
    src = topic_factory("orders", partitions=1)
    send_orders(src, 1)
    started = threading.Event()

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = unique("billing")

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            started.set()
            if ending == "crash while running":
                raise KeyboardInterrupt
            if ending == "crash while stopping":
                time.sleep(0.5)
                raise KeyboardInterrupt

        def on_stop(self) -> None:
            held = "-".join(("order", "4111"))  # a value the hook held, not in its source
            raise HookFailed(f"could not release the pool after {held}")

    running = start_service(Billing)
    assert started.wait(30)
    if ending == "crash while running":
        running.thread.join(30)  # it stops by itself
    running.stop()
    logged = [r for r in caplog.records if r.getMessage().startswith("on_stop failed")]
    if ending == "clean stop":
        assert [type(e) for e in running.error] == [HookFailed]
        assert logged == []
    else:
        assert [type(e) for e in running.error] == [KeyboardInterrupt]
        assert [(r.service, r.topic) for r in logged] == [("Billing", src)]  # type: ignore[attr-defined]
        assert logged[0].error_class == "HookFailed"  # type: ignore[attr-defined]
        assert "on_stop" in logged[0].traceback  # type: ignore[attr-defined]
        # The hook's text is not logged: it may quote a record the hook held.
        shown = JsonFormatter().format(logged[0])
        assert "order-4111" not in shown


class Abort(BaseException):
    """A handler's own BaseException, whose text quotes a field value."""


CANARY = "canary-7d2b51"


@pytest.mark.parametrize(
    ("kind", "lines"),
    [
        ("sync", {"partition lane crashed", "worker failed; stopping the service"}),
        ("async", {"event-loop lane crashed; stopping the service"}),
    ],
)
def test_a_handler_crash_is_logged_without_its_error_text(
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    send_orders: Callable[..., None],
    caplog: pytest.LogCaptureFixture,
    kind: str,
    lines: set[str],
) -> None:
    """The lines about a handler's crash name its class and frames, never its text,
    which may quote the record (as a handler's errors are logged). Before, they carried
    the text in their ``exception`` field. They name the service and topic: in a process
    of several services (``run_services``) a partition alone did not tell which stopped."""
    src = topic_factory("orders", partitions=1)
    send_orders(src, 1)

    class SyncCrash(sg.ConsumerService):
        topic, contract, group_id = src, OrderPlaced, unique("billing")

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            raise Abort(f"customer {CANARY}")

    class AsyncCrash(SyncCrash):
        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:  # type: ignore[override]
            raise Abort(f"customer {CANARY}")

    caplog.set_level(logging.INFO)
    crashed = start_service(SyncCrash if kind == "sync" else AsyncCrash)
    crashed.thread.join(30)
    assert [type(e) for e in crashed.error] == [Abort]
    logged = [r for r in caplog.records if r.getMessage() in lines]
    assert {r.getMessage() for r in logged} == lines
    for line in caplog.records:
        for formatter in (JsonFormatter(), TextFormatter()):
            assert CANARY not in formatter.format(line)
    name = "SyncCrash" if kind == "sync" else "AsyncCrash"
    for line in logged:
        assert vars(line).get("error_class", vars(line).get("error")) == "Abort"
        assert "handle" in line.traceback  # type: ignore[attr-defined]
        assert (vars(line).get("service"), vars(line).get("topic")) == (name, src)


def _run_app(bootstrap: str, app: str, log_format: str = "json", **env: str) -> tuple[int, str]:
    """``streamguard run tests.runtime.apps:APP`` (in JSON unless ``log_format`` says
    otherwise): its exit code and output."""
    cmd = [
        sys.executable, "-m", "streamguard.cli", "run", f"tests.runtime.apps:{app}",
        "--bootstrap-servers", bootstrap, "--log-format", log_format,
        *(arg for key, value in FAST_GROUP.items() for arg in ("-X", f"{key}={value}")),
    ]  # fmt: skip
    done = subprocess.run(
        cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )
    return done.returncode, done.stdout + done.stderr


def test_streamguard_run_in_json_ends_with_a_json_line_when_on_start_raises(
    bootstrap: str, topic_factory: Callable[..., str], unique: Callable[[str], str]
) -> None:
    """An ``on_start`` that raises a plain exception ends ``streamguard run`` with exit
    1 and a JSON line naming its class, with its frames, never its text. Before, Python
    printed a traceback quoting its text: lines that are not JSON, which a log pipeline
    could not parse."""
    canary = unique("SECRET-dsn")
    code, output = _run_app(
        bootstrap, "StartFails", SG_TEST_TOPIC=topic_factory("orders"),
        SG_TEST_GROUP=unique("g"), SG_TEST_SECRET=canary,
    )  # fmt: skip
    assert code == 1, output
    assert canary not in output
    lines = [json.loads(line) for line in output.splitlines()]  # each line is JSON
    last = lines[-1]
    assert last["event"] == "service failed; exiting", lines
    assert last["level"] == "error"
    assert last["error_class"] == "RuntimeError"
    assert last["exit_code"] == 1
    assert "in on_start" in last["traceback"]


@pytest.mark.parametrize(
    ("app", "error_class"),
    [("StartFails", "RuntimeError"), ("StartKafkaFails", "KafkaException")],
    ids=["plain", "kafka"],
)
def test_streamguard_run_in_text_ends_without_the_error_text_when_on_start_raises(
    app: str,
    error_class: str,
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
) -> None:
    """In the text format too, an ``on_start`` that raises a plain exception (or a
    ``KafkaException`` that is no refused setting) ends ``streamguard run`` with exit 1
    and the ``service failed; exiting`` line (class and frames), never its text:
    Python's traceback printed it there, which the JSON format leaves out because it
    may quote what the code held (a record, a secret)."""
    canary = unique("SECRET")
    code, output = _run_app(
        bootstrap, app, log_format="text", SG_TEST_TOPIC=topic_factory("orders"),
        SG_TEST_GROUP=unique("g"), SG_TEST_SECRET=canary,
    )  # fmt: skip
    assert code == 1, output
    assert canary not in output
    assert "Traceback (most recent call last)" not in output
    [line] = [line for line in output.splitlines() if "service failed; exiting" in line]
    assert f"error_class={error_class}" in line
    assert "exit_code=1" in line
    assert "in on_start" in output  # its frames


@pytest.mark.parametrize("exit_code", [0, 3])
def test_streamguard_run_exits_with_the_code_of_a_system_exit_from_on_start(
    bootstrap: str, topic_factory: Callable[..., str], unique: Callable[[str], str], exit_code: int
) -> None:
    """``sys.exit(n)`` in ``on_start`` ends ``streamguard run`` with n, as Python does,
    and a JSON line: it exited 1 like a handler's ``SystemExit``, whose code (maybe
    its text, which may quote the record) is not kept."""
    code, output = _run_app(
        bootstrap, "StartExits", SG_TEST_TOPIC=topic_factory("orders"),
        SG_TEST_GROUP=unique("g"), SG_TEST_EXIT_CODE=str(exit_code),
    )  # fmt: skip
    assert code == exit_code, output
    last = [json.loads(line) for line in output.splitlines()][-1]
    assert last["event"] == "on_start exited; exiting", last
    assert last["exit_code"] == exit_code


def test_streamguard_run_exits_with_the_code_of_a_system_exit_from_on_assign(
    bootstrap: str, topic_factory: Callable[..., str], unique: Callable[[str], str]
) -> None:
    """``sys.exit(n)`` in ``on_assign`` (run inside the consumer's poll, by a rebalance
    callback) ends ``streamguard run`` with n, as in ``on_start``: it exited 1 with
    "service crashed; exiting", as for a handler's."""
    code, output = _run_app(
        bootstrap, "AssignExits", SG_TEST_TOPIC=topic_factory("orders"),
        SG_TEST_GROUP=unique("g"), SG_TEST_EXIT_CODE="3",
    )  # fmt: skip
    assert code == 3, output
    last = [json.loads(line) for line in output.splitlines()][-1]
    assert last["event"] == "on_assign exited; exiting", last
    assert last["exit_code"] == 3


def test_a_system_exit_from_on_revoke_is_the_hook_s_own(
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
) -> None:
    """``sys.exit(4)`` in ``on_revoke`` (a second member's join revokes a partition)
    is what ``run()`` raises, marked as the hook's, so that ``streamguard run`` exits 4:
    it came out of the consumer's poll unmarked, as a handler's (exit 1)."""
    from streamguard.runtime.runner import exited_in

    src, group = topic_factory("orders", partitions=2), unique("g")
    assigned = threading.Event()

    class RevokeExits(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

        def on_assign(self, partitions: list[int]) -> None:
            if partitions:
                assigned.set()

        def on_revoke(self, partitions: list[int]) -> None:
            raise SystemExit(4)

    first = start_service(RevokeExits)
    assert assigned.wait(20)
    start_service(RevokeExits)  # joins: the group moves a partition to it
    first.thread.join(30)
    assert not first.thread.is_alive()
    [error] = first.error
    assert isinstance(error, SystemExit)
    assert error.code == 4
    assert exited_in(error) == "on_revoke"


@pytest.mark.parametrize("exit_code", [0, 3])
def test_streamguard_run_exits_with_the_code_of_a_system_exit_from_on_stop(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    send_orders: Callable[..., None],
    tmp_path: Path,
    exit_code: int,
) -> None:
    """``sys.exit(n)`` in ``on_stop`` after a clean stop (SIGTERM) ends ``streamguard
    run`` with n, as in ``on_start``: it exited 1 with "service crashed; exiting", as
    for a handler's. The stop committed first."""
    src, group, out = topic_factory("orders"), unique("g"), tmp_path / "handled.txt"
    send_orders(src, 2)
    cmd = [
        sys.executable, "-m", "streamguard.cli", "run", "tests.runtime.apps:StopExits",
        "--bootstrap-servers", bootstrap, "--log-format", "json",
        *(arg for key, value in FAST_GROUP.items() for arg in ("-X", f"{key}={value}")),
    ]  # fmt: skip
    env = {
        **os.environ, "SG_TEST_TOPIC": src, "SG_TEST_GROUP": group,
        "SG_TEST_OUT": str(out), "SG_TEST_EXIT_CODE": str(exit_code),
    }  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert wait_for(lambda: out.exists() and len(out.read_text().split()) == 2, 30)
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == exit_code, output
    last = [json.loads(line) for line in output.splitlines()][-1]
    assert last["event"] == "on_stop exited; exiting", last
    assert last["exit_code"] == exit_code
    assert committed(bootstrap, group, src) == {0: 2}

"""Offsets are committed only for final outcomes: crashes and rebalances lose nothing."""

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
from confluent_kafka.admin import AdminClient

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from streamguard.devbroker import DevBroker
from streamguard.topics import DEAD_LETTER_HEADROOM, create_topics, max_message_bytes
from tests.conftest import FAST_GROUP, port_of, refusing_port
from tests.runtime.conftest import (
    Running,
    check_dead_letter_size_warning,
    committed,
    dlq_headers,
    order,
    wait_for,
)


def _run_recorder(
    bootstrap: str, topic: str, group: str, out: Path, delay: str, app: str = "Recorder"
) -> Any:
    env = {
        **os.environ,
        "SG_TEST_TOPIC": topic,
        "SG_TEST_GROUP": group,
        "SG_TEST_OUT": str(out),
        "SG_TEST_DELAY": delay,
    }
    cmd = [
        sys.executable, "-m", "streamguard.cli", "run", f"tests.runtime.apps:{app}",
        "--bootstrap-servers", bootstrap,
        "--kafka-config", "session.timeout.ms=2000",
        "--kafka-config", "heartbeat.interval.ms=500",
    ]  # fmt: skip
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _handled(out: Path) -> list[tuple[int, int]]:
    """The ``partition:offset`` lines a running recorder has written whole.

    A read can catch an append half-done ("1:12" of "1:123\n"): what follows the last
    newline is not a record yet.
    """
    if not out.exists():
        return []
    lines = out.read_text().split("\n")[:-1]
    return [(int(p), int(o)) for p, o in (line.split(":") for line in lines)]


@pytest.mark.parametrize(
    "config",
    [
        {"enable.auto.commit": True, "enable.auto.offset.store": True},
        {"enable.auto.commit": "true", "enable.auto.offset.store": "1"},
    ],
)
def test_librdkafkas_automatic_commits_are_refused(config: dict[str, Any]) -> None:
    """A kafka_config turning on librdkafka's automatic offset store and commit, which
    would commit records before their outcome (measured: offset 5 committed while the
    first of five records was still in its handler), is refused when the service is
    built; either alone, which commits nothing, is not."""

    class Billing(sg.ConsumerService):
        topic = "orders"
        contract = OrderPlaced
        group_id = "billing"

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

    with pytest.raises(sg.ConfigurationError, match="would skip it"):
        Billing(bootstrap_servers="127.0.0.1:1", kafka_config=config)
    for key in config:
        Billing(bootstrap_servers="127.0.0.1:1", kafka_config={key: config[key]})


@pytest.mark.parametrize("group", ["", " "])
def test_an_empty_group_id_in_kafka_config_is_refused(group: str) -> None:
    """kafka_config (or `streamguard run -X group.id=`) with an empty group.id is a
    ConfigurationError when the service is built: run() aborted the process in
    confluent-kafka's C code (a failed assertion, exit 134, no message)."""

    class Billing(sg.ConsumerService):
        topic = "orders"
        contract = OrderPlaced
        group_id = "billing"

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

    with pytest.raises(sg.ConfigurationError, match=r"group\.id is empty"):
        Billing(bootstrap_servers="127.0.0.1:1", kafka_config={"group.id": group})


def test_sigkill_and_restart_loses_nothing(
    bootstrap: str, topic_factory: Callable[..., str], unique: Callable[[str], str], tmp_path: Path
) -> None:
    """A service killed with SIGKILL mid-stream and restarted handles every message at
    least once; duplicates are bounded by what was in flight."""
    src = topic_factory("orders", partitions=2)
    group = unique("g")
    producer = sg.GuardedProducer(bootstrap)
    total = 400
    for i in range(total):
        producer.send(src, order(i), key=f"c{i}")
    producer.flush()
    out = tmp_path / "handled.txt"
    first = _run_recorder(bootstrap, src, group, out, delay="0.005")
    try:
        assert wait_for(lambda: len(_handled(out)) >= 100, timeout=30)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    before = len(_handled(out))
    assert before < total, "the service finished before it could be killed"
    second = _run_recorder(bootstrap, src, group, out, delay="0")
    try:
        assert wait_for(lambda: len(set(_handled(out))) == total, timeout=40)
        assert wait_for(
            lambda: committed(bootstrap, group, src) == {0: _end(out, 0), 1: _end(out, 1)}
        )
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    handled = _handled(out)
    duplicates = len(handled) - len(set(handled))
    # Redelivered at most: what was buffered or in the handler, per partition.
    assert duplicates <= 2 * (sg.ServiceOptions().max_buffered + 20)


def _end(out: Path, partition: int) -> int:
    return max(o for p, o in _handled(out) if p == partition) + 1


def test_sigterm_stops_gracefully_with_exit_code_zero(
    send_orders: Callable[..., None],
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """SIGTERM: the service finishes in-flight work, commits, closes and exits 0."""
    src = topic_factory("orders")
    group = unique("g")
    send_orders(src, 30)
    out = tmp_path / "handled.txt"
    proc = _run_recorder(bootstrap, src, group, out, delay="0")
    try:
        assert wait_for(lambda: len(_handled(out)) == 30, timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert code == 0, stderr
    assert committed(bootstrap, group, src) == {0: 30}
    assert '"event": "service stopped"' in stderr


def test_rebalance_commits_revoked_work_and_loses_nothing(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
) -> None:
    """When a second member joins, the first settles and commits what it gives up; every
    message is handled by someone, and the final commits reach the end."""
    src = topic_factory("orders", partitions=4)
    group = unique("g")
    producer = sg.GuardedProducer(bootstrap)
    for i in range(200):
        producer.send(src, order(i), key=f"c{i}")
    producer.flush()
    seen: set[tuple[int, int]] = set()
    lock = threading.Lock()

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        options = sg.ServiceOptions(batch_size=10, commit_interval=0.2)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            threading.Event().wait(0.02)
            with lock:
                seen.add((ctx.partition, ctx.offset))

        def on_revoke(self, partitions: list[int]) -> None:
            revoked.extend(partitions)

    revoked: list[int] = []
    first = start_service(Billing)
    assert wait_for(lambda: len(seen) >= 20)
    second = start_service(Billing)
    assert wait_for(lambda: second.service.health()["checks"]["assigned"], timeout=20)
    assert revoked, "the first member gave up no partition to the second"
    for i in range(200, 300):
        producer.send(src, order(i), key=f"c{i}")
    producer.flush()
    assert wait_for(lambda: len(seen) == 300, timeout=40)
    assert wait_for(lambda: sum(committed(bootstrap, group, src).values()) == 300, timeout=20)
    assert first.service.health()["checks"]["assigned"]


def test_unwritable_dlq_holds_commits_and_recovers(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
) -> None:
    """While the DLQ cannot be written, the poison message and everything after it stay
    uncommitted and the service is unready; once the DLQ returns, it is written, the
    commit moves past it, and readiness comes back."""
    src = topic_factory("orders")
    group = unique("g")
    producer = sg.GuardedProducer(bootstrap)
    producer.send(src, order(1))
    producer.produce_raw(src, b"poison", key=b"k", headers=[])
    producer.send(src, order(2))
    producer.flush()
    down = refusing_port()  # the DLQ cluster is down; its port stays ours meanwhile
    dlq_port = port_of(down)

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            pass

    running = start_service(
        Billing,
        dead_letter_config={
            "bootstrap.servers": f"127.0.0.1:{dlq_port}",
            "message.timeout.ms": 1500,
            "enable.idempotence": False,
        },
    )
    assert wait_for(lambda: not running.service.health()["checks"]["dlq_writable"], timeout=20)
    assert not running.service.health()["ready"]
    assert wait_for(lambda: committed(bootstrap, group, src).get(0) == 1)
    threading.Event().wait(1.5)
    assert committed(bootstrap, group, src).get(0) == 1  # held at the poison message
    assert running.metric("streamguard_dead_letter_failures_total", topic=src) >= 1

    down.close()  # the DLQ cluster comes back, on its port
    with DevBroker(port=dlq_port) as dlq_cluster:
        assert wait_for(lambda: running.service.health()["ready"], timeout=40)
        assert wait_for(lambda: committed(bootstrap, group, src).get(0) == 3, timeout=20)
        from confluent_kafka import Consumer

        reader = Consumer(
            {
                "bootstrap.servers": dlq_cluster.bootstrap_servers,
                "group.id": "r",
                "auto.offset.reset": "earliest",
                **FAST_GROUP,
            }
        )
        reader.subscribe([f"{src}.dlq"])
        got: list[Any] = []
        deadline = threading.Event()
        for _ in range(100):
            got += [m for m in reader.consume(10, 0.2) if m.error() is None]
            if got or deadline.is_set():
                break
        reader.close()
        assert [dlq_headers(m)["sg-dlq-reason"] for m in got] == ["decode_error"]
        assert got[0].value() == b"poison"


def test_stuck_async_handler_does_not_keep_the_process_alive(
    bootstrap: str, topic_factory: Callable[..., str], unique: Callable[[str], str], tmp_path: Path
) -> None:
    """On SIGTERM, a handler still awaiting after shutdown_timeout is cancelled: the
    process exits 0 promptly and the message stays uncommitted for redelivery."""
    src = topic_factory("orders")
    group = unique("g")
    producer = sg.GuardedProducer(bootstrap)
    producer.send(src, order(1))
    producer.flush()
    out = tmp_path / "started.txt"
    env = {**os.environ, "SG_TEST_TOPIC": src, "SG_TEST_GROUP": group, "SG_TEST_OUT": str(out)}
    cmd = [
        sys.executable, "-m", "streamguard.cli", "run", "tests.runtime.apps:StuckAsync",
        "--bootstrap-servers", bootstrap, "-X", "session.timeout.ms=2000",
        "-X", "heartbeat.interval.ms=500",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert wait_for(out.exists, timeout=30)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0
    assert committed(bootstrap, group, src).get(0) is None


def test_an_async_handler_blocking_the_loop_thread_stops_within_twice_shutdown_timeout(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A blocking call inside ``async def`` (no await: cancelling cannot stop it) holds
    the event loop's thread: the stop still returns within twice shutdown_timeout, logs
    the handler still running, and leaves its record uncommitted. The loop's thread was
    joined for 5 s more, so the stop took shutdown_timeout + 0.5 + 5 s."""
    src = topic_factory("orders", partitions=1)
    group = unique("g")
    entered = threading.Event()
    released = threading.Event()

    class Blocking(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        options = sg.ServiceOptions(shutdown_timeout=1.0, revoke_timeout=1.0)

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            entered.set()
            released.wait(30)  # blocks the loop's thread; released at the test's end

    running = start_service(Blocking)
    try:
        producer = sg.GuardedProducer(bootstrap)
        producer.send(src, order(1))
        producer.flush()
        assert entered.wait(30)
        caplog.set_level(logging.WARNING, logger="streamguard.runtime")
        start = time.monotonic()
        running.stop()
        took = time.monotonic() - start
    finally:
        released.set()  # the loop's thread ends with the handler
    assert took < 2 * 1.0 + 0.5  # twice shutdown_timeout, and a margin for closing
    assert running.error == []
    assert any(r.getMessage().startswith("handler still running") for r in caplog.records)
    assert committed(bootstrap, group, src).get(0) is None


def test_paused_partition_given_back_after_a_rebalance_is_consumed(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
) -> None:
    """A partition revoked while paused (its head was waiting to be retried) and later
    assigned back is fetched again: librdkafka keeps the pause flag across rebalances."""
    src = topic_factory("orders", partitions=2)
    group = unique("g")
    producer = sg.GuardedProducer(bootstrap)
    for i in range(6):
        producer.send(src, order(i), partition=i % 2)
    producer.flush()
    healthy = threading.Event()
    handled: set[tuple[int, int]] = set()
    lock = threading.Lock()

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        retry = sg.RetryPolicy(attempts=1000, base_delay=0.2, max_delay=0.2, max_budget_ms=120_000)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            if not healthy.is_set():
                raise ConnectionError("downstream unavailable")
            with lock:
                handled.add((ctx.partition, ctx.offset))

    first = start_service(Billing)
    assert wait_for(lambda: first.metric("streamguard_paused_partitions", topic=src) == 2)
    second = start_service(Billing)
    assert wait_for(lambda: second.service.health()["checks"]["assigned"], timeout=20)
    second.stop()  # its partition goes back to the first member, paused there before
    assert wait_for(lambda: first.metric("streamguard_paused_partitions", topic=src) == 2, 20)
    healthy.set()
    assert wait_for(lambda: len(handled) == 6, timeout=30), sorted(handled)
    assert wait_for(lambda: committed(bootstrap, group, src) == {0: 3, 1: 3})


def test_one_failed_dead_letter_is_not_excused_by_a_later_success(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
) -> None:
    """A dead letter the DLQ refuses keeps the service unready and its partition's
    commit held, even after other dead letters were written successfully."""
    src = topic_factory("orders")
    group = unique("g")
    producer = sg.GuardedProducer(bootstrap)
    producer.send(src, order(1))
    producer.produce_raw(src, b"x" * 3000, key=b"big", headers=[])  # the DLQ refuses it
    producer.produce_raw(src, b"small poison", key=b"small", headers=[])
    producer.send(src, order(2))
    producer.flush()

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

    running = start_service(Billing, dead_letter_config={"message.max.bytes": 2000})
    assert wait_for(lambda: not running.service.health()["checks"]["dlq_writable"])
    assert wait_for(lambda: committed(bootstrap, group, src).get(0) == 1)
    threading.Event().wait(2.0)  # retries of the refused one come and fail
    assert not running.service.health()["ready"]
    assert committed(bootstrap, group, src).get(0) == 1  # held at the refused dead letter
    assert running.metric("streamguard_dead_letter_failures_total", topic=src) >= 2
    # The client's own refusal, as docs/operations.md tells it from the broker's.
    error = running.service.health()["dlq_error"]
    assert error == "Unable to produce message: Broker: Message size too large"


def test_a_dead_letter_written_again_is_logged_as_dead_lettered_once(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A dead letter whose write fails is sent again on backoff: one
    ``dead-lettering message`` line for the record, then a ``re-sending dead letter``
    line per write. Before, each write logged ``dead-lettering message`` again, and the
    record read as dead-lettered once per write."""
    caplog.set_level(logging.WARNING, logger="streamguard.runtime")
    src = topic_factory("orders", partitions=1)
    producer = sg.GuardedProducer(bootstrap)
    producer.produce_raw(src, b"x" * 3000, key=b"big", headers=[])  # the DLQ refuses it
    producer.flush()

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = unique("g")

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

    def lines(message: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage() == message and r.offset == 0]  # type: ignore[attr-defined]

    running = start_service(Billing, dead_letter_config={"message.max.bytes": 2000})
    failures = "streamguard_dead_letter_failures_total"
    assert wait_for(lambda: running.metric(failures, topic=src) >= 3, 20)  # two resends failed
    assert len(lines("dead-lettering message")) == 1
    writes = [r.write for r in lines("re-sending dead letter")]  # type: ignore[attr-defined]
    assert writes[:2] == [2, 3]


def start_until_assigned(
    start_service: Callable[..., Running], src: str, group: str, **kwargs: Any
) -> None:
    """Run an idle service of ``src`` until it is assigned partitions (its DLQ made or
    checked by then), and stop it."""

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

    running = start_service(Billing, **kwargs)
    assert wait_for(lambda: bool(running.service.health()["checks"]["assigned"]))
    running.stop()
    assert not running.error


def test_a_dlq_the_service_creates_takes_the_source_topics_record_size_and_headroom(
    bootstrap: str,
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A DLQ the service creates gets the source topic's max.message.bytes plus room
    for the sg-dlq-* headers, so the source's largest records can be dead-lettered; a
    source whose description gives no value leaves the DLQ at the broker's default.
    (The embedded broker describes only settings a topic was given, and enforces no
    size limit: what is checked is the DLQ's setting, read back from the broker.)
    The log line names the size it set, and no ``max_message_bytes`` when it set none."""
    caplog.set_level(logging.INFO, logger="streamguard")
    big, plain = unique("orders"), unique("orders")
    create_topics(bootstrap, [big], topic_config={"max.message.bytes": "5242880"})
    create_topics(bootstrap, [plain])
    for src in (big, plain):
        start_until_assigned(start_service, src, unique("g"))
    assert max_message_bytes(bootstrap, f"{big}.dlq") == 5242880 + DEAD_LETTER_HEADROOM
    assert max_message_bytes(bootstrap, f"{plain}.dlq") is None
    created = {
        r.dlq: r.__dict__ for r in caplog.records if r.getMessage() == "created dead-letter topic"
    }
    assert created[f"{big}.dlq"]["max_message_bytes"] == str(5242880 + DEAD_LETTER_HEADROOM)
    assert (created[f"{big}.dlq"]["service"], created[f"{big}.dlq"]["topic"]) == ("Billing", big)
    assert "max_message_bytes" not in created[f"{plain}.dlq"]


def test_a_dlq_the_service_creates_takes_a_whole_batch_of_its_producer(
    bootstrap: str,
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
) -> None:
    """A DLQ of a source with a small max.message.bytes still takes a batch of the DLQ
    producer: librdkafka batches small dead letters up to batch.size (1000000 by
    default) and never splits a batch the broker refuses, so a DLQ of the source's
    100000 plus the headroom refused every batch of a poison flood, for good. A smaller
    batch.size in dead_letter_config is what the DLQ must take then. (The embedded
    broker enforces no size limit: the DLQ's setting is read back from the broker.)"""
    default, small = unique("orders"), unique("orders")
    create_topics(bootstrap, [default, small], topic_config={"max.message.bytes": "100000"})
    for src, dlq_config in ((default, {}), (small, {"batch.size": 50000})):
        start_until_assigned(start_service, src, unique("g"), dead_letter_config=dlq_config)
    assert max_message_bytes(bootstrap, f"{default}.dlq") == 1_000_000 + DEAD_LETTER_HEADROOM
    assert max_message_bytes(bootstrap, f"{small}.dlq") == 100000 + DEAD_LETTER_HEADROOM


@pytest.mark.parametrize(
    ("source_size", "dlq_size", "needed"),
    [
        (None, 200_000, 1_000_000 + DEAD_LETTER_HEADROOM),  # below a producer's batch
        (5_242_880, 1_100_000, 5_242_880 + DEAD_LETTER_HEADROOM),  # below the source's
        (None, 1_000_000 + DEAD_LETTER_HEADROOM, None),  # what the service would make
    ],
)
def test_a_dlq_that_exists_smaller_than_the_service_would_make_it_is_warned_of(
    bootstrap: str,
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    caplog: pytest.LogCaptureFixture,
    source_size: int | None,
    dlq_size: int,
    needed: int | None,
) -> None:
    """A DLQ the operator made is not resized, and before nothing looked at it: one of
    200000 refused every batch of a poison flood for good (librdkafka never splits a
    batch), found only when the service stalled. Now the start-up reads its
    max.message.bytes and warns once, with the command that raises it, when it is below
    what the service would have created it with; the service starts anyway."""
    caplog.set_level(logging.INFO, logger="streamguard")
    src = unique("orders")
    given = {} if source_size is None else {"max.message.bytes": str(source_size)}
    create_topics(bootstrap, [src], topic_config=given)
    create_topics(bootstrap, [f"{src}.dlq"], topic_config={"max.message.bytes": str(dlq_size)})
    start_until_assigned(start_service, src, unique("g"))
    check_dead_letter_size_warning(caplog.records, bootstrap, src, dlq_size, needed)
    assert not any(r.getMessage() == "created dead-letter topic" for r in caplog.records)


def test_a_dlq_cluster_that_does_not_answer_at_start_only_warns(
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Creating the DLQ at start-up is a convenience: a cluster that does not answer
    then (``BrokerUnavailable`` since create_topics tells it from a refusal) leaves the
    service running and says so, as a refused creation does; dead letters wait for it."""
    src = topic_factory("orders")

    def silent(*args: Any, **kwargs: Any) -> None:
        raise sg.BrokerUnavailable("could not create topic: no answer from dlq:9092 within 15s")

    monkeypatch.setattr("streamguard.runtime.runner.create_topics", silent)

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = unique("g")

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

    with caplog.at_level(logging.WARNING, logger="streamguard"):
        running = start_service(Billing)
        assert wait_for(lambda: running.service.health()["checks"]["assigned"])
    assert "could not create the dead-letter topic" in caplog.text
    running.stop()


def test_a_missing_dlq_holds_commits_until_it_is_created(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A DLQ that does not exist and that the service may not create (no Create ACL)
    holds the poison message's commit and readiness, with the errors docs/operations.md
    lists; once an operator creates it, the next re-send writes it and the commit moves."""
    src = topic_factory("orders")
    group = unique("g")

    def forbidden(*args: Any, **kwargs: Any) -> None:
        # What the admin client reports for a principal without Create; Tansu has no
        # ACLs, so the creation the runtime attempts at start-up is refused here.
        raise sg.ConfigurationError("could not create topic: Broker: Cluster authorization failed")

    monkeypatch.setattr("streamguard.runtime.runner.create_topics", forbidden)

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        options = sg.ServiceOptions(dead_letter_backoff_max=0.5)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

    running = start_service(
        Billing,
        dead_letter_config={
            "allow.auto.create.topics": False,  # as a cluster with auto-creation off
            "topic.metadata.propagation.max.ms": 500,  # 30 s by default
        },
    )
    assert wait_for(lambda: running.service.health()["checks"]["assigned"])
    producer = sg.GuardedProducer(bootstrap)
    producer.send(src, order(1))
    producer.produce_raw(src, b"poison", key=b"k", headers=[])
    producer.send(src, order(2))
    producer.flush()
    assert wait_for(lambda: not running.service.health()["checks"]["dlq_writable"])
    assert wait_for(lambda: committed(bootstrap, group, src).get(0) == 1)
    assert wait_for(
        lambda: (
            running.service.health().get("dlq_error")
            == "Unable to produce message: Local: Unknown topic"
        )  # each re-send, refused at once
    )
    assert committed(bootstrap, group, src).get(0) == 1
    assert (
        f"{src}.dlq"
        not in AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
    )

    create_topics(bootstrap, [f"{src}.dlq"])
    assert wait_for(lambda: running.service.health()["ready"])
    assert wait_for(lambda: committed(bootstrap, group, src).get(0) == 3)


def test_a_stop_says_which_dead_letters_the_dlq_never_acknowledged(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stop while a dead letter awaits a DLQ that cannot take it waits the documented
    shutdown_timeout twice at most, commits nothing from the poison message on, and
    logs which partitions hold unacknowledged dead letters: it stopped silently."""
    src = topic_factory("orders", partitions=2)
    group = unique("g")

    def forbidden(*args: Any, **kwargs: Any) -> None:  # a principal without Create
        raise sg.ConfigurationError("could not create topic: Broker: Cluster authorization failed")

    monkeypatch.setattr("streamguard.runtime.runner.create_topics", forbidden)

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        options = sg.ServiceOptions(shutdown_timeout=1.0, revoke_timeout=1.0)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

    # The missing DLQ fails no write for 30 s (topic.metadata.propagation.max.ms):
    # the dead letter is still in flight when the stop comes.
    running = start_service(Billing, dead_letter_config={"allow.auto.create.topics": False})
    assert wait_for(lambda: running.service.health()["checks"]["assigned"])
    producer = sg.GuardedProducer(bootstrap)
    producer.send(src, order(1), partition=1)
    producer.produce_raw(src, b"poison", key=b"k", headers=[], partition=1)
    producer.send(src, order(2), partition=1)
    producer.flush()
    assert wait_for(lambda: running.metric("streamguard_inflight", topic=src) == 1)
    assert wait_for(lambda: committed(bootstrap, group, src).get(1) == 1)
    caplog.set_level(logging.WARNING, logger="streamguard.runtime")
    start = time.monotonic()
    running.stop()
    assert time.monotonic() - start < 2 * 1.0 + 1.5  # twice shutdown_timeout, and a margin
    assert committed(bootstrap, group, src).get(1) == 1
    [line] = [r for r in caplog.records if r.getMessage().startswith("dead letters not ack")]
    assert line.__dict__["partitions"] == [1]
    assert line.__dict__["dead_letters"] == 1
    assert line.__dict__["dlq"] == f"{src}.dlq"


def test_waiting_for_an_unwritable_dlq_does_not_spin(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
) -> None:
    """While the DLQ is unwritable and messages are buffered, the service waits without
    burning CPU (no worker claims a lane it may not process)."""
    src = topic_factory("orders")
    group = unique("g")
    producer = sg.GuardedProducer(bootstrap)
    producer.produce_raw(src, b"poison", key=b"k", headers=[])
    for i in range(500):
        producer.send(src, order(i))
    producer.flush()

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        options = sg.ServiceOptions(batch_size=20)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            threading.Event().wait(0.02)  # 10 s of work: some is buffered when the DLQ fails

    down = refusing_port()  # a DLQ cluster that is down
    running = start_service(
        Billing,
        dead_letter_config={
            "bootstrap.servers": f"127.0.0.1:{port_of(down)}",
            "message.timeout.ms": 1000,
            "enable.idempotence": False,
        },
    )
    assert wait_for(
        lambda: running.metric("streamguard_dead_letter_failures_total", topic=src) >= 1,
        timeout=20,
    )
    assert not running.service.health()["checks"]["dlq_writable"]
    assert running.metric("streamguard_inflight", topic=src) > 1  # work is buffered
    threading.Event().wait(0.5)  # the batch in hand finishes
    cpu = time.process_time()
    threading.Event().wait(1.5)
    assert time.process_time() - cpu < 0.75  # the whole test process, under half a core
    down.close()


@pytest.mark.parametrize("handler", ["sync", "async"])
def test_records_handled_before_a_stuck_handler_in_their_batch_are_committed(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    handler: str,
) -> None:
    """One batch of ten records; the handler of the sixth does not return. The five
    before it reached their outcome: they are committed on the commit interval while it
    runs and at the stop that gives up on it, so only the stuck record is delivered
    again (they waited for the batch to end, and were all redelivered)."""
    src = topic_factory("orders")
    group = unique("g")
    producer = sg.GuardedProducer(bootstrap)
    for i in range(10):
        producer.send(src, order(i))
    producer.flush()
    release = threading.Event()
    handled: list[int] = []

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        options = sg.ServiceOptions(commit_interval=0.2, shutdown_timeout=1.0, revoke_timeout=1.0)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            if ctx.offset == 5:
                release.wait(20)
            handled.append(ctx.offset)

        if handler == "async":

            async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:  # type: ignore[override]
                if ctx.offset == 5:
                    for _ in range(200):  # bounded: 20 s at most
                        if release.is_set():
                            break
                        await asyncio.sleep(0.1)
                handled.append(ctx.offset)

    running = start_service(Billing)
    try:
        assert wait_for(lambda: handled == [0, 1, 2, 3, 4], timeout=20), handled
        assert wait_for(lambda: committed(bootstrap, group, src).get(0) == 5, timeout=5)
        running.stop()
        assert committed(bootstrap, group, src) == {0: 5}
        assert handled == [0, 1, 2, 3, 4]
    finally:
        release.set()


def _end_of(bootstrap: str, topic: str) -> int:
    """Partition 0's end as a fetch reports it (partition EOF), transaction markers
    included: on the embedded broker ListOffsets is low after batched writes."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    reader = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "end-probe", "enable.partition.eof": True}
    )
    reader.assign([TopicPartition(topic, 0, 0)])
    try:
        for _ in range(100):  # 20 s at most
            for msg in reader.consume(500, 0.2):
                error = msg.error()
                if error is not None and error.code() == KafkaError._PARTITION_EOF:
                    return int(msg.offset())
    finally:
        reader.close()
    raise AssertionError(f"no partition EOF on {topic}")


@pytest.mark.parametrize("ordering", ["partition", "key"])
def test_a_transactional_topic_is_committed_to_its_end_and_shows_no_lag(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    ordering: str,
) -> None:
    """Records from a transactional producer are followed by commit markers that take
    an offset but are never delivered: once every record has its outcome, the group's
    commit reaches the partition's end, past the last marker, and the lag gauge shows
    0, as for any other topic (it stayed 1 and the commit one short)."""
    from confluent_kafka import Producer

    src = topic_factory("orders")
    group = unique("g")
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": unique("tx")})
    producer.init_transactions(10)
    encode = sg.JsonCodec().encode
    producer.begin_transaction()
    for i in range(3):
        producer.produce(src, encode(order(i)), key=b"a")
    producer.produce(src, b"poison", key=b"b")  # dead-lettered
    producer.commit_transaction(10)
    producer.begin_transaction()
    producer.produce(src, encode(order(3)), key=b"c")
    producer.commit_transaction(10)
    end = _end_of(bootstrap, src)
    handled: list[int] = []

    if ordering == "key":

        class Billing(sg.ConsumerService):
            topic = src
            contract = OrderPlaced
            group_id = group
            ordering = "key"

            async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
                handled.append(ctx.offset)

    else:

        class Billing(sg.ConsumerService):  # type: ignore[no-redef]
            topic = src
            contract = OrderPlaced
            group_id = group

            def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
                handled.append(ctx.offset)

    running = start_service(Billing)
    assert wait_for(lambda: committed(bootstrap, group, src).get(0) == end), (
        committed(bootstrap, group, src),
        end,
    )
    assert wait_for(
        lambda: running.metric("streamguard_consumer_lag", topic=src, partition="0") == 0
    )
    assert running.metric("streamguard_messages_total", topic=src, outcome="dead_lettered") == 1
    assert len(handled) == 4


def _run_holding(
    bootstrap: str, topic: str, group: str, tmp: Path, app: str, ordering: str, run: str, **env: str
) -> tuple[Any, Path, Path]:
    """``streamguard run`` of a Holding app; returns the process, its records file and
    its log file (read while it runs)."""
    out, logs = tmp / f"handled-{run}.txt", tmp / f"log-{run}.txt"
    environ = {
        **os.environ,
        "SG_TEST_TOPIC": topic,
        "SG_TEST_GROUP": group,
        "SG_TEST_OUT": str(out),
        "SG_TEST_ORDERING": ordering,
        "SG_TEST_RELEASE": str(tmp / "release"),
        **env,
    }
    cmd = [
        sys.executable, "-m", "streamguard.cli", "run", f"tests.runtime.apps:{app}",
        "--bootstrap-servers", bootstrap, "-X", "session.timeout.ms=2000",
        "-X", "heartbeat.interval.ms=500",
    ]  # fmt: skip
    with logs.open("w") as log_file:
        proc = subprocess.Popen(cmd, env=environ, stdout=subprocess.DEVNULL, stderr=log_file)
    return proc, out, logs


def _send_keyed(bootstrap: str, topic: str, count: int) -> None:
    """``count`` orders in one partition, keys k0..k3 in turn."""
    producer = sg.GuardedProducer(bootstrap)
    for i in range(count):
        producer.send(topic, order(i), key=f"k{i % 4}")
    producer.flush()


@pytest.mark.parametrize(
    ("app", "ordering", "second"),
    [
        ("Holding", "partition", "SIGTERM"),
        ("Holding", "key", "SIGINT"),
        ("HoldingAsync", "key", "SIGTERM"),
    ],
)
def test_a_second_signal_hurries_the_stop_and_commits_nothing_past_the_held_record(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    tmp_path: Path,
    app: str,
    ordering: str,
    second: str,
) -> None:
    """A signal while the service stops already (a second Ctrl-C) ends the wait for a
    handler still running at once, not after shutdown_timeout (20 s here): the process
    exits 0 within seconds, the commit stops at the held record (under key ordering the
    later records of other keys were handled), and the restart handles it and the rest.
    Before, the second signal was only logged and the stop waited the 20 s."""
    src = topic_factory("orders", partitions=1)
    group = unique("g")
    _send_keyed(bootstrap, src, 12)
    proc, out, logs = _run_holding(
        bootstrap, src, group, tmp_path, app, ordering, "first", SG_TEST_HOLD="2"
    )
    try:
        assert wait_for(lambda: out.exists() and "held" in out.read_text(), timeout=30)
        if ordering == "key":  # the records of the other keys pass the held one
            assert wait_for(lambda: (0, 11) in _handled_lines(out), timeout=10)
        proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: "stop requested by signal" in logs.read_text(), timeout=10)
        began = time.monotonic()
        proc.send_signal(signal.Signals[second])
        code = proc.wait(10)
        took = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = logs.read_text()
    assert code == 0, text
    assert took < 8, took
    assert '"event": "stop hurried by signal"' in text
    assert f'"signal": "{second}"' in text
    hurried = [json.loads(line) for line in text.splitlines() if "stop hurried by signal" in line]
    assert [(line["service"], line["topic"]) for line in hurried] == [(app, src)]
    requested = [json.loads(line) for line in text.splitlines() if "stop requested by" in line]
    assert [(line["service"], line["topic"]) for line in requested] == [(app, src)]
    assert "Traceback" not in text
    assert committed(bootstrap, group, src) == {0: 2}

    proc, out, logs = _run_holding(bootstrap, src, group, tmp_path, app, ordering, "second")
    try:
        assert wait_for(lambda: set(range(2, 12)) <= {o for _, o in _handled_lines(out)})
        assert min(o for _, o in _handled_lines(out)) == 2  # 0 and 1 were committed
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0, logs.read_text()
    assert committed(bootstrap, group, src) == {0: 12}


def test_without_a_second_signal_the_stop_waits_for_the_running_handler(
    bootstrap: str, topic_factory: Callable[..., str], unique: Callable[[str], str], tmp_path: Path
) -> None:
    """One SIGTERM: the held handler is waited for (within shutdown_timeout); once it
    ends the service commits past it and exits 0."""
    src = topic_factory("orders", partitions=1)
    group = unique("g")
    _send_keyed(bootstrap, src, 4)
    proc, out, logs = _run_holding(
        bootstrap, src, group, tmp_path, "Holding", "partition", "only", SG_TEST_HOLD="3"
    )
    try:
        assert wait_for(lambda: out.exists() and "held" in out.read_text(), timeout=30)
        proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: "stop requested by signal" in logs.read_text(), timeout=10)
        time.sleep(1.0)
        assert proc.poll() is None  # still waiting for the handler
        (tmp_path / "release").touch()
        code = proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert code == 0, logs.read_text()
    assert "stop hurried" not in logs.read_text()
    assert (0, 3) in _handled_lines(out)
    assert committed(bootstrap, group, src) == {0: 4}


def _handled_lines(out: Path) -> list[tuple[int, int]]:
    """``_handled``, skipping the ``held`` lines of a Holding app."""
    if not out.exists():
        return []
    lines = out.read_text().split("\n")[:-1]
    return [(int(p), int(o)) for p, o in (line.split(":") for line in lines if line != "held")]


def test_a_second_signal_stops_waiting_for_dead_letters_the_dlq_has_not_acknowledged(
    bootstrap: str, topic_factory: Callable[..., str], unique: Callable[[str], str], tmp_path: Path
) -> None:
    """A dead letter in flight to a DLQ cluster that is down is waited for up to twice
    shutdown_timeout (40 s here); a second signal ends that wait at once: the process
    exits within seconds and its record stays uncommitted. Before, the second signal
    was only logged."""
    src = topic_factory("orders", partitions=1)
    group = unique("g")
    producer = sg.GuardedProducer(bootstrap)
    producer.send(src, order(0))
    producer.produce_raw(src, b"poison", key=b"k", headers=[])
    producer.send(src, order(2))
    producer.flush()
    down = refusing_port()  # the DLQ cluster is down
    out, logs = tmp_path / "handled.txt", tmp_path / "log.txt"
    script = (
        "from streamguard.observe.logs import configure_logging\n"
        "from tests.runtime.apps import Holding\n"
        "configure_logging()\n"
        f"Holding(bootstrap_servers={bootstrap!r}, kafka_config={dict(FAST_GROUP)!r},"
        f" dead_letter_config={{'bootstrap.servers': '127.0.0.1:{port_of(down)}',"
        " 'message.timeout.ms': 60000, 'enable.idempotence': False}).run()\n"
    )
    env = {**os.environ, "SG_TEST_TOPIC": src, "SG_TEST_GROUP": group, "SG_TEST_OUT": str(out)}
    with logs.open("w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL, stderr=log_file
        )
    try:
        assert wait_for(lambda: (0, 2) in _handled_lines(out), timeout=30)
        proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: "stop requested by signal" in logs.read_text(), timeout=10)
        time.sleep(0.5)
        assert proc.poll() is None  # waiting for the dead letter
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(10)
        took = time.monotonic() - began
    finally:
        down.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = logs.read_text()
    assert code == 0, text
    assert took < 8, took
    (held,) = [
        line
        for line in map(json.loads, text.splitlines())
        if line["event"].startswith("dead letters not acknowledged by the DLQ")
    ]
    assert (held["service"], held["topic"], held["dlq"]) == ("Holding", src, f"{src}.dlq")
    assert committed(bootstrap, group, src) == {0: 1}

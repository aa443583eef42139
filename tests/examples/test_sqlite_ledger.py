"""The SQLite ledger example through the broker: half-way failures roll back, retries
succeed, and no row is ever written twice, even when every message comes again."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Message, TopicPartition

import streamguard as sg
from examples.sqlite_ledger.service import SqliteLedger
from streamguard.demo.contracts import LineItem, OrderPlaced
from streamguard.topics import create_topics
from tests.faults.workload import start
from tests.runtime.conftest import committed, order, wait_for

pytestmark = pytest.mark.broker

ORDERS = 30
LINES = 3


def _ledger(topic: str, group: str, db: Path, failures: list[str]) -> type[SqliteLedger]:
    """The example, with a failure injected after the first row of every third order's
    first attempt (the transaction then holds one uncommitted row)."""
    lock = threading.Lock()
    source = topic

    class Flaky(SqliteLedger):
        topic = source
        group_id = group
        database = str(db)
        retry = sg.RetryPolicy(attempts=5, base_delay=0.01, max_delay=0.05)

        def write_line(
            self,
            conn: sqlite3.Connection,
            event: OrderPlaced,
            line: int,
            item: LineItem,
            ctx: sg.MessageContext,
        ) -> None:
            super().write_line(conn, event, line, item, ctx)
            if line == 0 and ctx.attempt == 1 and ctx.offset % 3 == 0:
                with lock:
                    failures.append(str(event.order_id))
                raise sg.TransientError("the payment API timed out after the first row")

    return Flaky


def _rows(db: Path, sql: str) -> list[Any]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def _applied(db: Path) -> int:
    """Orders applied so far; -1 before ``on_start`` made the tables (its connect
    creates the file an instant before them)."""
    try:
        return int(_rows(db, "SELECT COUNT(*) FROM applied")[0][0]) if db.exists() else -1
    except sqlite3.OperationalError:
        return -1


def test_half_way_failures_roll_back_and_redelivery_writes_nothing(
    bootstrap: str, tmp_path: Path
) -> None:
    """Every third order fails after its first row on the first attempt: the retry
    writes all its rows once; then the whole topic is delivered again to a new group
    and no row is added."""
    topic = f"ledger-{uuid.uuid4().hex[:10]}"
    create_topics(bootstrap, [topic], partitions=2)
    producer = sg.GuardedProducer(bootstrap)
    for i in range(ORDERS):
        items = [{"sku": f"sku-{n}", "quantity": n + 1} for n in range(LINES)]
        producer.send(topic, order(i, items=items), key=f"c{i}")
    producer.flush()
    db = tmp_path / "ledger.db"
    failures: list[str] = []
    first = start(_ledger(topic, "ledger-a", db, failures), bootstrap)
    try:
        assert wait_for(
            lambda: _applied(db) == ORDERS,
            timeout=30,
        )
    finally:
        first.stop()
    assert not first.error
    assert len(failures) >= ORDERS // 3 - 2  # about every third record failed half-way
    # Every order has all its lines, once; the failed attempts left nothing behind.
    per_order = _rows(db, "SELECT order_id, COUNT(*) FROM ledger_lines GROUP BY order_id")
    assert len(per_order) == ORDERS
    assert {count for _, count in per_order} == {LINES}
    # Each order's lines add up to its amount (shared by quantity, rounding on the last).
    totals = _rows(db, "SELECT order_id, amount FROM ledger_lines")
    by_order: dict[str, Decimal] = {}
    for order_id, amount in totals:
        by_order[order_id] = by_order.get(order_id, Decimal(0)) + Decimal(amount)
    assert set(by_order.values()) == {Decimal("12.50")}
    # Everything again (a new group starts at the earliest offset): nothing is written.
    again = start(_ledger(topic, "ledger-b", db, []), bootstrap)
    try:
        assert wait_for(
            lambda: (
                again.metric("streamguard_messages_total", topic=topic, outcome="handled") == ORDERS
            ),
            timeout=30,
        )
    finally:
        again.stop()
    assert not again.error
    assert _rows(db, "SELECT COUNT(*) FROM ledger_lines")[0][0] == ORDERS * LINES
    assert _rows(db, "SELECT COUNT(*) FROM applied")[0][0] == ORDERS


def test_an_order_without_items_is_dead_lettered_not_marked_applied(
    bootstrap: str, tmp_path: Path, read_all: Callable[..., list[Message]]
) -> None:
    """``items`` is optional in ``OrderPlaced`` (the Faust example sends none): such an
    order has no line to book its amount on. Before, it was marked applied with no row,
    its amount lost and a replay unable to bring it back; now it is dead-lettered."""
    topic = f"ledger-{uuid.uuid4().hex[:10]}"
    create_topics(bootstrap, [topic, f"{topic}.dlq"], partitions=1)
    producer = sg.GuardedProducer(bootstrap)
    producer.send(topic, order(0, items=[{"sku": "sku-0", "quantity": 1}]), key="c0")
    producer.send(topic, order(1), key="c1")  # no items
    producer.send(topic, order(2, items=[{"sku": "sku-2", "quantity": 2}]), key="c2")
    producer.flush()
    db = tmp_path / "ledger.db"
    running = start(_ledger(topic, "ledger-empty", db, []), bootstrap)
    try:
        dead = read_all(f"{topic}.dlq", 1, timeout=30)
        assert wait_for(lambda: _applied(db) == 2, timeout=30)
    finally:
        running.stop()
    assert not running.error
    assert [dict(r.headers() or [])["sg-dlq-reason"] for r in dead] == [b"permanent_error"]
    assert _rows(db, "SELECT COUNT(*) FROM ledger_lines")[0][0] == 2
    assert _rows(
        db, "SELECT COUNT(*) FROM applied WHERE idempotency_key LIKE '%-000000000002'"
    ) == [(0,)]


def _run_ledger(bootstrap: str, topic: str, group: str, db: Path, delay: str) -> Any:
    """The example under ``streamguard run``, as its README starts it."""
    env = {
        **os.environ,
        "STREAMGUARD_LEDGER_DB": str(db),
        "SG_TEST_TOPIC": topic,
        "SG_TEST_GROUP": group,
        "SG_TEST_DELAY": delay,
    }
    cmd = [
        sys.executable, "-m", "streamguard.cli", "run", "tests.examples.ledger_app:SlowLedger",
        "--bootstrap-servers", bootstrap,
        "-X", "session.timeout.ms=2000", "-X", "heartbeat.interval.ms=500",
    ]  # fmt: skip
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkill_mid_run_and_restart_books_every_order_once(bootstrap: str, tmp_path: Path) -> None:
    """The README's crash claim, as a process: killed with SIGKILL while booking, the
    ledger restarted books every order with all its lines exactly once (what the dead
    process committed in SQLite but not in Kafka comes again and writes nothing), and
    a SIGTERM then exits 0 with the group's offsets at the end."""
    topic = f"ledger-{uuid.uuid4().hex[:10]}"
    create_topics(bootstrap, [topic, f"{topic}.dlq"], partitions=2)
    producer = sg.GuardedProducer(bootstrap)
    total = 300
    for i in range(total):
        items = [{"sku": f"sku-{n}", "quantity": n + 1} for n in range(LINES)]
        producer.send(topic, order(i, items=items), key=f"c{i}")
    producer.flush()
    db = tmp_path / "ledger.db"
    first = _run_ledger(bootstrap, topic, "ledger-crash", db, delay="0.003")
    try:
        assert wait_for(lambda: _applied(db) >= 40, timeout=60), "no progress"
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    at_kill = _applied(db)
    assert at_kill < total, "finished before the kill"
    again = _run_ledger(bootstrap, topic, "ledger-crash", db, delay="0")
    try:
        assert wait_for(lambda: _applied(db) == total, timeout=60)
        ends = {0: 0, 1: 0}
        for p, o in _rows(db, 'SELECT partition, MAX("offset") FROM applied GROUP BY partition'):
            ends[p] = o + 1
        assert wait_for(lambda: committed(bootstrap, "ledger-crash", topic) == ends, timeout=30)
    finally:
        again.send_signal(signal.SIGTERM)
        assert again.wait(30) == 0
    assert _rows(db, "SELECT COUNT(*) FROM ledger_lines")[0][0] == total * LINES
    counts = _rows(db, "SELECT COUNT(*) FROM ledger_lines GROUP BY order_id")
    assert {c for (c,) in counts} == {LINES}
    # A redelivered order wrote nothing: none failed on the rows' primary key either.
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": "ledger-crash-dlq"})
    try:
        dlq = [reader.get_watermark_offsets(TopicPartition(f"{topic}.dlq", p))[1] for p in (0, 1)]
    finally:
        reader.close()
    assert dlq == [0, 0]

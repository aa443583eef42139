"""Effectively-once effects: one SQLite transaction per message, keyed by the event.

Kafka consumers are at-least-once: after a crash or a rebalance, a message whose
offset was not committed is delivered again, and a handler that failed half-way is
called again. A handler gets effectively-once *effects* by making each message's
writes one database transaction that also records the message's idempotency key:

- a failure half-way rolls the whole transaction back, so a retry starts clean;
- a redelivered message finds its key and writes nothing;
- the key and the rows commit together, so there is no moment where one exists
  without the other.

Run it (``STREAMGUARD_LEDGER_DB`` names the database file, else ``ledger.db`` in the
current directory) once ``orders`` exists: a service started before its topic sees it
only at librdkafka's next metadata refresh, 5 minutes later. README.md here has the
steps::

    STREAMGUARD_LEDGER_DB=/tmp/ledger.db streamguard run \\
        examples.sqlite_ledger.service:SqliteLedger --bootstrap-servers 127.0.0.1:9092
"""

from __future__ import annotations

import os
import sqlite3
import threading
from decimal import Decimal
from typing import ClassVar

import streamguard as sg
from streamguard.demo.contracts import LineItem, OrderPlaced

SCHEMA = """
CREATE TABLE IF NOT EXISTS applied (
    idempotency_key TEXT PRIMARY KEY,   -- one per event, whatever the delivery
    topic TEXT NOT NULL, partition INTEGER NOT NULL, "offset" INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_lines (
    order_id TEXT NOT NULL, line INTEGER NOT NULL,
    customer_id TEXT NOT NULL, sku TEXT NOT NULL, quantity INTEGER NOT NULL,
    amount TEXT NOT NULL,
    PRIMARY KEY (order_id, line)        -- a second write of a line would fail loudly
);
"""


class SqliteLedger(sg.ConsumerService):
    """Books each order's lines in SQLite, exactly once per order."""

    topic = "orders"
    contract = OrderPlaced
    group_id = "sqlite-ledger"
    # A locked database is worth another try; anything else is a dead letter.
    transient = (sg.TransientError, sqlite3.OperationalError)
    retry = sg.RetryPolicy(attempts=5, base_delay=0.05, max_delay=1.0)

    database: ClassVar[str] = os.environ.get("STREAMGUARD_LEDGER_DB", "ledger.db")

    def on_start(self) -> None:
        self._local = threading.local()
        with sqlite3.connect(self.database) as conn:
            conn.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
            conn.executescript(SCHEMA)

    def _connection(self) -> sqlite3.Connection:
        """One connection per worker thread (sqlite3 connections are not shared)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: transactions are begun and ended here, explicitly.
            conn = sqlite3.connect(self.database, timeout=10, isolation_level=None)
            self._local.conn = conn
        return conn

    def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
        if not event.items:
            # The amount is shared by the lines: with none, nothing would be booked and
            # the key would still mark the order applied, losing it for good.
            raise sg.PermanentError("an order without line items cannot be booked")
        key = f"order:{event.order_id}"
        conn = self._connection()
        # IMMEDIATE takes the write lock now, so two workers never both read "not yet
        # applied" and then race to write.
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("SELECT 1 FROM applied WHERE idempotency_key = ?", (key,)).fetchone():
                conn.execute("ROLLBACK")  # applied by an earlier delivery: nothing to do
                return
            for line, item in enumerate(event.items):
                self.write_line(conn, event, line, item, ctx)
            conn.execute(
                'INSERT INTO applied (idempotency_key, topic, partition, "offset") '
                "VALUES (?, ?, ?, ?)",
                (key, ctx.topic, ctx.partition, ctx.offset),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def write_line(
        self,
        conn: sqlite3.Connection,
        event: OrderPlaced,
        line: int,
        item: LineItem,
        ctx: sg.MessageContext,
    ) -> None:
        """Write one ledger row (inside the message's transaction)."""
        # The order's amount shared by quantity: each line is the rounded running total
        # up to it less the rounded total before it, so no line is negative and the
        # lines add up to the amount exactly.
        units = sum(i.quantity for i in event.items)
        before = sum(i.quantity for i in event.items[:line])
        cent = Decimal("0.01")
        upto = (event.amount * (before + item.quantity) / units).quantize(cent)
        amount = upto - (event.amount * before / units).quantize(cent)
        conn.execute(
            "INSERT INTO ledger_lines VALUES (?, ?, ?, ?, ?, ?)",
            (
                str(event.order_id), line, event.customer_id, item.sku, item.quantity,
                str(amount.quantize(Decimal("0.01"))),
            ),
        )  # fmt: skip

"""The SQLite ledger example as ``streamguard run`` starts it in the crash test.

Configured by environment variables because ``streamguard run`` imports it by name;
the database is the example's own ``$STREAMGUARD_LEDGER_DB``.
"""

from __future__ import annotations

import os
import sqlite3
import time

import streamguard as sg
from examples.sqlite_ledger.service import SqliteLedger
from streamguard.demo.contracts import LineItem, OrderPlaced


class SlowLedger(SqliteLedger):
    """The example on $SG_TEST_TOPIC, a little slow per row so that a kill lands mid-run."""

    topic = os.environ.get("SG_TEST_TOPIC", "sg-test-unset")
    group_id = os.environ.get("SG_TEST_GROUP", "sg-test-unset")

    def write_line(
        self,
        conn: sqlite3.Connection,
        event: OrderPlaced,
        line: int,
        item: LineItem,
        ctx: sg.MessageContext,
    ) -> None:
        super().write_line(conn, event, line, item, ctx)
        time.sleep(float(os.environ.get("SG_TEST_DELAY", "0")))

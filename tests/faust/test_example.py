"""The Faust billing example does what its README says, against the real broker."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from examples.faust_billing.app import create_app
from examples.faust_billing.send_orders import send_orders
from streamguard.devbroker import free_port
from tests.faust.conftest import FAST_FAUST, run_app, until
from tests.runtime.conftest import committed

pytestmark = pytest.mark.broker


def test_example_bills_forwards_and_dead_letters(
    bootstrap: str,
    tmp_path: Path,
    read_all: Callable[..., list[Any]],
) -> None:
    """Valid and flaky orders are billed and invoiced; closed and down customers and
    poison input end in orders.dlq with the reasons the README lists."""
    send_orders(bootstrap)  # what the README runs: producing only
    port = free_port()
    web = {"web_enabled": True, "web_port": port, "web_host": "127.0.0.1", "web_bind": "127.0.0.1"}
    settings = {**FAST_FAUST, **web}  # web_bind, not web_host, keeps it off 0.0.0.0
    app, bill = create_app(f"kafka://{bootstrap}", datadir=str(tmp_path), **settings)
    scraped: list[str] = []

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            return str(reply.read().decode())

    handled = 'streamguard_messages_total{outcome="handled",runtime="faust",topic="orders"} 2.0'

    async def scenario() -> None:
        assert await until(lambda: sum(committed(bootstrap, app.conf.id, "orders").values()) == 6)
        # A lane counts what it handled shortly after it runs dry, not per event: the
        # commit may come first (under load it did), so scrape until the count is in.
        for _ in range(50):
            scraped.append(await asyncio.to_thread(scrape))  # the README's curl
            if handled in scraped[-1]:
                break
            await asyncio.sleep(0.1)

    run_app(app, scenario)
    assert handled in scraped[-1]
    invoices = read_all("invoices", 2, timeout=15)
    assert len(invoices) == 2
    dead = read_all("orders.dlq", 4)
    reasons = sorted(dict(r.headers())["sg-dlq-reason"] for r in dead)
    assert reasons == [
        b"contract_violation",
        b"decode_error",
        b"permanent_error",
        b"retries_exhausted",
    ]
    assert {dict(r.headers())["sg-dlq-service"] for r in dead} == {b"billing"}
    labels = {"runtime": "faust", "topic": "orders", "outcome": "handled"}
    assert bill.registry.get_sample_value("streamguard_messages_total", labels) == 2


def test_the_example_worker_reads_the_cluster_send_orders_writes_to(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``send_orders`` writes to ``$STREAMGUARD_BOOTSTRAP_SERVERS`` (what ``streamguard
    broker`` prints to export); the worker reads the same cluster. Before, it always
    read 127.0.0.1:9092, and saw none of the orders sent elsewhere."""
    monkeypatch.setenv("STREAMGUARD_BOOTSTRAP_SERVERS", "127.0.0.1:19092, 127.0.0.2:19093")
    app, _ = create_app(datadir=str(tmp_path))
    assert [str(url) for url in app.conf.broker] == [
        "kafka://127.0.0.1:19092",
        "kafka://127.0.0.2:19093",
    ]
    monkeypatch.delenv("STREAMGUARD_BOOTSTRAP_SERVERS")
    app, _ = create_app(datadir=str(tmp_path))
    assert [str(url) for url in app.conf.broker] == ["kafka://127.0.0.1:9092"]

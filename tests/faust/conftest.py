"""Fixtures for guarded Faust agents running in-process against the real broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.contrib.asgi import faust_app_running

# The runtime's fixtures, shared: the guarded agent is compared with a ConsumerService.
from tests.runtime.conftest import raw_producer, send_orders, start_service

__all__ = ["raw_producer", "run_app", "send_orders", "start_service", "until"]

# Faust's group join waits for half the session timeout: 2 s makes the worker ready in
# about 3 s instead of about 32 s (see docs/testing notes in tests/conftest.py).
FAST_FAUST = {
    "broker_session_timeout": 2,
    "broker_heartbeat_interval": 0.5,
    "broker_commit_interval": 0.2,
    "web_enabled": False,
    "topic_replication_factor": 1,
}


@pytest.fixture
def make_app(bootstrap: str, unique: Callable[[str], str], tmp_path: Path) -> Callable[..., Any]:
    """A fresh ``faust.App`` with its own group id, data dir and fast group settings."""

    def make(group: str | None = None, **settings: Any) -> Any:
        app_id = group or unique("faust")
        datadir = tmp_path / app_id
        return faust.App(
            app_id,
            broker=f"kafka://{bootstrap}",
            datadir=str(datadir),
            **{**FAST_FAUST, **settings},
        )

    return make


def run_app(app: Any, scenario: Callable[[], Awaitable[None]], timeout: float = 60.0) -> None:
    """Run ``app`` on a fresh event loop while ``scenario`` runs; stop it (bounded) after."""

    async def main() -> None:
        async with faust_app_running(app, stop_timeout=20):
            await asyncio.wait_for(scenario(), timeout)

    asyncio.run(main())


async def until(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Await ``predicate`` becoming true, checking every 50 ms, bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()

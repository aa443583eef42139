"""A guarded-agent worker whose handler raises ``SystemExit`` at one offset, once.

Configured by environment variables, so that it runs both as a module
(``python -m tests.faust.exit_worker``, under ``asyncio.run`` as ``tests.faust.worker``
does) and under Faust's own command line (``faust -A tests.faust.exit_worker worker``):

- ``SG_BOOTSTRAP``, ``SG_TOPIC``, ``SG_GROUP``, ``SG_DATADIR``: where and who;
- ``SG_OUTFILE``: "partition offset" is appended for every event handled (before its
  ack), so the file is what was handled, duplicates included;
- ``SG_FAIL_OFFSET`` and ``SG_MARKER``: at that offset the handler calls ``sys.exit()``
  if the marker file does not exist yet, creating it first: the first worker to reach
  the offset exits there, a restarted one handles it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import faust
from faust.contrib.asgi import faust_app_running

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from streamguard.faust import guarded_agent
from tests.faust.conftest import FAST_FAUST

env = os.environ

app = faust.App(
    env.get("SG_GROUP", "exit-worker"),
    broker=f"kafka://{env.get('SG_BOOTSTRAP', '127.0.0.1:9092')}",
    datadir=env.get("SG_DATADIR", "exit-worker-data"),
    **FAST_FAUST,
)
out = open(env.get("SG_OUTFILE", os.devnull), "a", buffering=1)  # noqa: SIM115  # the process's life
fail_offset = int(env.get("SG_FAIL_OFFSET", "-1"))
marker = Path(env.get("SG_MARKER", os.devnull))


@guarded_agent(app, env.get("SG_TOPIC", "orders"), contract=OrderPlaced)
async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> None:
    await asyncio.sleep(0.01)  # some work, so that later events wait in the lane
    if ctx.offset == fail_offset and not marker.exists():
        marker.touch()
        sys.exit(3)
    out.write(f"{ctx.partition} {ctx.offset}\n")


async def run() -> None:
    async with faust_app_running(app, stop_timeout=10):
        while not app.should_stop:  # until it crashes, stops or is terminated
            await asyncio.sleep(0.1)


if __name__ == "__main__":
    asyncio.run(run())

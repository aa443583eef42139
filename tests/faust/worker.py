"""A guarded-agent worker for the kill-and-restart test, run as a subprocess.

Usage: python -m tests.faust.worker BOOTSTRAP TOPIC GROUP DATADIR OUTFILE

Appends "partition offset" to OUTFILE for every event it handles, after the handler's
work and before the ack, so the file is what was handled, duplicates included.
"""

from __future__ import annotations

import asyncio
import sys

import faust
from faust.contrib.asgi import faust_app_running

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from streamguard.faust import guarded_agent
from tests.faust.conftest import FAST_FAUST


def main(bootstrap: str, topic: str, group: str, datadir: str, outfile: str) -> None:
    app = faust.App(group, broker=f"kafka://{bootstrap}", datadir=datadir, **FAST_FAUST)
    out = open(outfile, "a", buffering=1)  # noqa: SIM115  # open for the process's life

    @guarded_agent(app, topic, contract=OrderPlaced)
    async def bill(event: OrderPlaced, ctx: sg.MessageContext) -> None:
        await asyncio.sleep(0.01)  # some work, so that a kill lands mid-stream
        out.write(f"{ctx.partition} {ctx.offset}\n")

    async def run() -> None:
        async with faust_app_running(app, stop_timeout=10):
            await asyncio.Event().wait()  # until killed

    asyncio.run(run())


if __name__ == "__main__":
    main(*sys.argv[1:6])

"""A service loads what it runs: a sync one never loads the event-loop runtime.

Each check runs a service in a fresh process, since this one has loaded everything.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import fast_group_config

ROOT = Path(__file__).resolve().parents[2]

LATE = [
    "streamguard.runtime.eventloop",
    "streamguard.runtime.slots",
    "streamguard.runtime.memory",
    "streamguard.devbroker",
    "ctypes",
]

PROBE = """
import json, sys, threading
import streamguard as sg
from streamguard.demo.contracts import OrderPlaced

bootstrap, topic_name, kind, late = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[5:]
done = threading.Event()

class Drain(sg.ConsumerService):
    topic = topic_name
    contract = OrderPlaced
    group_id = topic_name

    if kind == "async":
        async def handle(self, event, ctx):
            done.set()
    else:
        def handle(self, event, ctx):
            done.set()

service = Drain(bootstrap_servers=bootstrap, kafka_config=json.loads(sys.argv[4]))
thread = threading.Thread(target=service.run, daemon=True)
thread.start()
assert done.wait(30), "no record handled in 30 s"
service.stop()
thread.join(30)
print([name for name in late if name in sys.modules])
"""


@pytest.mark.parametrize(
    ("kind", "loaded"),
    [
        ("sync", []),
        # The control: the check sees the modules when a service does load them.
        ("async", ["streamguard.runtime.eventloop", "streamguard.runtime.slots"]),
    ],
)
def test_a_service_loads_the_event_loop_runtime_only_for_async_handlers(
    kind: str,
    loaded: list[str],
    bootstrap: str,
    topic_factory: Callable[..., str],
    send_orders: Callable[..., None],
) -> None:
    """A sync service under partition order (the default) runs no event loop: its
    process never loads the event-loop lanes, ctypes (``release_memory`` only) or the
    embedded broker, about 1.5 MiB it would otherwise hold for nothing."""
    topic = topic_factory(f"lean-{kind}")
    send_orders(topic, 3)
    config = json.dumps(fast_group_config())
    done = subprocess.run(
        [sys.executable, "-c", PROBE, bootstrap, topic, kind, config, *LATE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().split("\n")[-1] == repr(loaded)

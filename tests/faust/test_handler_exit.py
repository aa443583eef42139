"""A handler's ``SystemExit`` stops a real worker process, and loses nothing.

In a worker process the loop runs again after a ``SystemExit`` escapes it (Faust's
``faust worker`` stops the app, ``asyncio.run`` cancels the tasks): the lane's event and
those queued behind it must neither be acked nor hold the shutdown.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faust.test_recovery import handled_lines
from tests.runtime.conftest import committed, wait_for

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[2]
TOTAL = 50
EXIT_AT = 5


@pytest.mark.parametrize("command", ["module", "faust-worker"])
def test_a_handlers_system_exit_stops_the_worker_and_loses_nothing(
    command: str,
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    send_orders: Callable[..., None],
    tmp_path: Path,
) -> None:
    """A handler calls ``sys.exit()`` at offset 5 of 50, once: the worker exits on its
    own with nothing committed past 5, and a restarted worker handles every event.
    Before, the lane re-raised the ``SystemExit`` with the 44 events queued behind it
    unacked, and the app's stop waited for them forever: the process never exited."""
    src = topic_factory("orders", partitions=1)
    send_orders(src, TOTAL)
    group = unique("billing")
    out = tmp_path / "handled.txt"
    marker = tmp_path / "exited"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SG_BOOTSTRAP": bootstrap,
        "SG_TOPIC": src,
        "SG_GROUP": group,
        "SG_DATADIR": str(tmp_path / "data"),
        "SG_OUTFILE": str(out),
        "SG_FAIL_OFFSET": str(EXIT_AT),
        "SG_MARKER": str(marker),
    }
    if command == "module":  # asyncio.run, as tests.faust.worker
        argv = [sys.executable, "-m", "tests.faust.exit_worker"]
    else:  # as examples/faust_billing is run
        faust_cli = str(Path(sys.executable).with_name("faust"))
        # without its web server, which would bind 0.0.0.0:6066: off loopback, and taken
        # by any other 'faust worker' on the machine (the worker then crashes at start)
        argv = [faust_cli, "-A", "tests.faust.exit_worker", "worker", "--without-web"]
        argv += ["-l", "warn"]
    log = tmp_path / "worker.log"

    def start() -> subprocess.Popen[bytes]:
        with log.open("ab") as stderr:  # the child keeps its own copy of the descriptor
            return subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr
            )

    first = start()
    try:
        first.wait(30)
    except subprocess.TimeoutExpired:
        first.kill()
        first.wait(10)
        pytest.fail(f"the worker did not exit after its handler's SystemExit:\n{tail(log)}")
    assert marker.exists(), tail(log)
    if command == "faust-worker":
        assert first.returncode == 3  # the handler's own code (the module's is its own choice)
    assert committed(bootstrap, group, src).get(0, 0) <= EXIT_AT
    assert EXIT_AT not in {o for _, o in handled_lines(out)}

    second = start()
    try:
        done = wait_for(lambda: committed(bootstrap, group, src).get(0) == TOTAL, 60)
        assert done, f"{committed(bootstrap, group, src)}\n{tail(log)}"
    finally:
        second.terminate()
        try:
            second.wait(15)
        except subprocess.TimeoutExpired:
            second.kill()
            second.wait(10)
    assert {o for _, o in handled_lines(out)} == set(range(TOTAL))


def tail(log: Path) -> str:
    """The worker's last log lines, librdkafka's connection noise left out."""
    lines = log.read_text(errors="replace").splitlines()
    return "\n".join([line for line in lines if not line.startswith("%")][-40:])

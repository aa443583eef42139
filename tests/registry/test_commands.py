"""``streamguard registry`` and ``streamguard run --schema-registry`` from the shell."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

import streamguard as sg
from streamguard.cli import main
from streamguard.registry.client import REGISTRY_URL_ENV
from tests.registry.conftest import PaymentV1, avro


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_registry_command_serves_until_sigterm(tmp_path: Path) -> None:
    """`streamguard registry --port P --dir D` serves the API, keeps its state in D, and
    exits 0 on SIGTERM."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamguard.cli",
            "registry",
            "--port",
            str(port),
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.strip() == f"streamguard registry listening on http://127.0.0.1:{port}"
        client = SchemaRegistryClient({"url": f"http://127.0.0.1:{port}"})
        assert client.register_schema("p-value", avro(PaymentV1)) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    assert (tmp_path / "registry.json").is_file()


def test_registry_command_refuses_a_busy_port() -> None:
    """A port already in use is a usage error (exit 2), not a crash."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["registry", "--port", str(busy.getsockname()[1])]) == 2


@pytest.mark.parametrize("where", ["a file", "its state file a folder"])
def test_a_state_directory_it_cannot_write_is_refused_at_start(
    tmp_path: Path, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--dir` naming a file (or holding a folder named registry.json) exits 2 naming it
    before serving: it used to start, say "state kept in ...", then answer every
    registration 50001 while keeping it in memory only."""
    directory = tmp_path / "state"
    if where == "a file":
        directory.write_text("")
    else:
        (directory / "registry.json").mkdir(parents=True)
    assert main(["registry", "--port", "0", "--dir", str(directory)]) == 2
    out, err = capsys.readouterr()
    assert "listening" not in out
    assert f"cannot keep the registry's state in {directory}" in err


@pytest.mark.parametrize(
    "argv", [["registry", "--port", "0", "--dir", ""], ["schema", "export", "--out", " "]]
)
def test_an_empty_folder_option_is_a_usage_error(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """`registry --dir ""` and `schema export --out ""` (an unset variable) exit 2 at
    argument parsing: they took Path(""), the current directory, and wrote there
    (registry.json; a folder per subject) instead of what leaving them out does."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "expected a folder, got an empty string" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["registry", "broker"])
def test_an_empty_host_is_a_usage_error(command: str, capsys: Any) -> None:
    """`registry --host ""` listened on every interface (0.0.0.0), and `broker --host ""`
    failed with "did not start on": both are refused at argument parsing, exit 2."""
    from streamguard.cli import build_parser

    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([command, "--host", ""])
    assert info.value.code == 2
    assert "expected an address" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "port"),
    [("registry", "99999"), ("registry", "-1"), ("broker", "70000"), ("broker", "0")],
)
def test_a_port_out_of_range_is_a_usage_error(
    command: str, port: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`streamguard registry` and `streamguard broker` refuse a port outside 0-65535 (1
    for the broker, which must advertise it) at argument parsing, exit 2 naming the
    range: not an OverflowError traceback, nor 'the embedded broker did not start'."""
    with pytest.raises(SystemExit) as info:
        main([command, "--port", port])
    assert info.value.code == 2
    assert "-65535)" in capsys.readouterr().err


class Ledger(sg.ConsumerService):
    """A service the run command builds; its run() is replaced to look at the result."""

    topic = "ledger-cmd"
    contract = PaymentV1
    group_id = "ledger-cmd"

    def handle(self, event: PaymentV1, ctx: sg.MessageContext) -> None:
        """Never called: the test stops before running."""


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Any]:
    """Services `streamguard run` built, recorded instead of run (no broker needed)."""
    seen: list[Any] = []
    monkeypatch.setattr(Ledger, "run", lambda self: seen.append(self))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(REGISTRY_URL_ENV, raising=False)
    return seen


def run_ledger(*extra: str) -> int:
    return main(
        ["run", "tests.registry.test_commands:Ledger", "--bootstrap-servers", "127.0.0.1:1", *extra]
    )


def test_run_takes_the_registry_from_flag_env_or_pyproject(
    built: list[Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`streamguard run --schema-registry URL` gives the service a registry codec; without
    the flag, $STREAMGUARD_SCHEMA_REGISTRY_URL, then pyproject's schema_registry_url."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))
    assert run_ledger() == 0
    assert not isinstance(built[-1]._spec().codec, sg.RegistryCodec)
    (tmp_path / "pyproject.toml").write_text(
        '[tool.streamguard]\nschema_registry_url = "http://toml:8081"\n'
    )
    assert run_ledger() == 0
    assert "http://toml:8081" in repr(built[-1]._spec().codec)
    monkeypatch.setenv(REGISTRY_URL_ENV, "http://env:8081")
    assert run_ledger() == 0
    assert "http://env:8081" in repr(built[-1]._spec().codec)
    assert run_ledger("--schema-registry", "http://u:pw-secret@flag:8081") == 0
    assert "http://u:***@flag:8081" in repr(built[-1])
    assert "pw-secret" not in repr(built[-1])
    assert os.environ[REGISTRY_URL_ENV] == "http://env:8081"

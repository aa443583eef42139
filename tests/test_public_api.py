"""The public surface: everything in __all__ exists, sorted, and nothing else leaks."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import streamguard as sg
from streamguard.cli import main


def test_all_names_exist_and_are_sorted() -> None:
    """Every name in streamguard.__all__ is importable, and the list is alphabetical."""
    assert sg.__all__ == sorted(sg.__all__)
    for name in sg.__all__:
        assert hasattr(sg, name), name


def test_design_api_names_are_public() -> None:
    """Every name of the documented public API is exported."""
    promised = {
        "Contract", "ConsumerService", "MessageContext", "RetryPolicy", "GuardedProducer",
        "TransientError", "PermanentError", "DecodeError", "ContractViolation",
        "RetriesExhausted", "StreamguardError",
    }  # fmt: skip
    assert promised <= set(sg.__all__)


def test_exported_classes_document_their_public_methods() -> None:
    """Every public method and property of an exported class has a docstring."""
    import inspect

    missing = []
    for name in sg.__all__:
        cls = getattr(sg, name)
        if not inspect.isclass(cls) or issubclass(cls, BaseException):
            continue
        for attr, value in vars(cls).items():
            if attr.startswith("_"):
                continue
            fn = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
            if (callable(fn) or isinstance(value, property)) and not getattr(fn, "__doc__", None):
                missing.append(f"{name}.{attr}")
    assert missing == []


def test_importing_the_package_leaves_out_what_a_json_service_never_uses() -> None:
    """Avro (fastavro), the embedded registry and the CLI's argparse load on first use:
    the import is 2.4 MiB smaller (1.8 MiB at a sync service's first record in the
    benchmark) and 35-40 ms shorter. So do the embedded broker (ctypes, subprocess) and
    the event-loop runtime (asyncio), which a sync service never runs: 1.5 MiB more, 3.1
    with a confluent-kafka older than 2.13 (newer ones import asyncio themselves, so the
    check is on what streamguard's modules import); and the schema checks and store,
    which are the CLI's and the registry's: 0.3 MiB and 12 ms more. The demo's contracts
    and billing service (which the benchmarks and deploy/ use) bring none of them."""
    probe = (
        "import sys, streamguard as sg, streamguard.demo.contracts, streamguard.demo.billing\n"
        "late = ['fastavro', 'streamguard.registry.server', 'streamguard.registry.state',"
        " 'tomllib', 'argparse', 'streamguard.devbroker', 'streamguard.runtime.eventloop',"
        " 'streamguard.demo.run', 'streamguard.schema.changes', 'streamguard.schema.store',"
        " 'streamguard.schema.jsonschema_compat']\n"
        "assert 'RegistryServer' in dir(sg) and 'RegistryServer' in dir(sg.registry)\n"
        "print([m for m in late if m in sys.modules])\n"
        "print(sorted(name for name, module in list(sys.modules.items())"
        " if name.startswith('streamguard') and module is not None"
        " and {'asyncio', 'ctypes', 'subprocess'} & vars(module).keys()))\n"
        "assert sg.RegistryServer.__name__ == 'RegistryServer'\n"
        "assert 'DevBroker' in dir(sg) and sg.DevBroker.__name__ == 'DevBroker'\n"
        "import streamguard.schema as schema\n"
        "assert schema.SchemaStore.__name__ == 'SchemaStore' and 'Change' in dir(schema)\n"
        "assert not hasattr(sg, 'RegistryServr'), 'a misspelt name must still fail'\n"
        "print('fastavro' in sys.modules, 'streamguard.registry.server' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split("\n")
    assert out[0] == "[]", out
    assert out[1] == "[]", out  # no module of the package imported them
    assert out[2] == "True True", out  # the embedded registry still loads, with its Avro


def test_the_version_is_the_projects_and_the_cli_says_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``streamguard.__version__`` and ``streamguard --version`` give pyproject.toml's
    version: a team can tell which release an image holds."""
    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert sg.__version__ == project["project"]["version"]
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"streamguard {sg.__version__}\n"

"""Fixtures for the deployment assets: the Prometheus tools, and the runtime fixtures.

``promtool`` and ``prometheus`` come from Debian's ``prometheus`` package. Without them
these tests skip with the install command, unless ``STREAMGUARD_REQUIRE_PROMETHEUS=1``
(set by ``.ci/run``), which turns the skip into a failure so CI cannot pass by not
checking.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.runtime.conftest import raw_producer, start_service  # noqa: F401  (re-exported fixtures)

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
REQUIRE_ENV = "STREAMGUARD_REQUIRE_PROMETHEUS"


def require_tool(name: str) -> str:
    """The path of ``name``; skip without it, or fail when the environment requires it."""
    path = shutil.which(name)
    if path is not None:
        return path
    reason = (
        f"{name} is not installed; install it with `apt-get install -y prometheus` "
        "(Debian's package provides promtool and the server)"
    )
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason}, and {REQUIRE_ENV}=1 forbids skipping", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def promtool() -> str:
    """The ``promtool`` binary."""
    return require_tool("promtool")


@pytest.fixture
def prometheus_binary() -> str:
    """The ``prometheus`` server binary."""
    return require_tool("prometheus")

"""Holding glibc's malloc thresholds, so that freed memory goes back to the OS.

Each measurement runs in a fresh process: the thresholds are process-wide, and the
test process's own heap history would blur what they change.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from streamguard.runtime.memory import hold_malloc_thresholds

ROOT = Path(__file__).resolve().parents[2]

glibc_only = pytest.mark.skipif(
    not hasattr(os, "confstr") or os.confstr("CS_GNU_LIBC_VERSION") is None,
    reason="the thresholds are glibc's",
)


def retained_mib(*args: str) -> float:
    """MiB a fresh process keeps after freeing 63 blocks of 512 KiB (malloc_probe)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    done = subprocess.run(
        [sys.executable, "-m", "tests.runtime.malloc_probe", *args],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return float(done.stdout.split()[-1])


@glibc_only
def test_held_thresholds_give_freed_blocks_back() -> None:
    """After a large block is freed, glibc keeps what later 512 KiB blocks free
    (about 31 MiB); with the thresholds held, it gives them back."""
    assert retained_mib() > 24
    assert retained_mib("--hold") < 4


@pytest.mark.parametrize(
    "tuning", [{"MALLOC_TRIM_THRESHOLD_": "262144"}, {"GLIBC_TUNABLES": "glibc.malloc.check=0"}]
)
def test_malloc_tuning_in_the_environment_wins(
    tuning: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator who tuned malloc keeps their settings: the runtime leaves them, and
    says so (or that this is not glibc)."""
    for name, value in tuning.items():
        monkeypatch.setenv(name, value)
    with caplog.at_level(logging.INFO, logger="streamguard.runtime"):
        assert hold_malloc_thresholds() is False
    assert "release_memory" in caplog.text


@glibc_only
def test_a_service_holds_the_thresholds_when_told_to(
    bootstrap: str,
    topic_factory: Callable[..., str],
    send_orders: Callable[..., None],
) -> None:
    """With ``release_memory=True`` a service run leaves its process giving freed
    memory back; by default it leaves glibc's dynamic thresholds alone."""
    topic = topic_factory("memory")
    send_orders(topic, 50)
    assert retained_mib("--service", bootstrap, topic, "50", "--release") < 4
    assert retained_mib("--service", bootstrap, topic, "50") > 24

"""benchmarks/latency_split.py runs a sync and an async service through the broker and
splits each record's latency in two. Nothing here is timed: the figures are only read."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_one_short_run_of_each_handler_kind_reports_both_parts() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "latency_split.py"),
         "--records", "300", "--rate", "500", "--runs", "1"],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    figure = r"\s*[\d.]+/\s*[\d.]+"
    rows = re.findall(rf"^(sync|async) ({figure}) \|({figure}) \|({figure})$", done.stdout, re.M)
    assert [row[0] for row in rows] == ["sync", "async"], done.stdout
    for _, broker, runtime, total in rows:
        p50 = [float(part.split("/")[0]) for part in (broker, runtime, total)]
        assert all(value > 0 for value in p50)
        assert p50[2] >= p50[0]  # the whole is no shorter than the broker's part

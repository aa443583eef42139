"""benchmarks/dlq_path.py runs each part of the dead-letter path on records fetched from
the embedded broker. Nothing here is timed: the figures are only read."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_short_run_reports_every_part_and_the_ratio() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "dlq_path.py"),
         "--records", "200", "--repeats", "1"],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    parts = re.findall(r"^ +([\d.]+) µs  (.+)$", done.stdout, re.M)
    assert [name.split(" ")[0] for _, name in parts] == [
        "hand-written", "PartitionLane._process", "model_validate_json,", "streamguard",
        "dead-letter", "the",
    ], done.stdout  # fmt: skip
    assert all(float(us) > 0 for us, _ in parts)
    assert re.search(r"^ +[\d.]+ +hand-written loop's µs over streamguard's", done.stdout, re.M)

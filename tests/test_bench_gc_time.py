"""benchmarks/gc_time.py consumes large events with the loop and a service and reads the
garbage collector's time per record. Nothing here is timed: the figures are only read."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_short_run_reports_the_collectors_time_for_each_consumer() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gc_time.py"),
         "--records", "300", "--line-items", "300", "--runs", "loop", "async"],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^300 records of [\d,]+ B \(300 line items\)", done.stdout, re.M)
    rows = re.findall(
        r"^(loop|async) +[\d,]+ msg/s +cpu +([\d.]+) µs/record +gc +([\d.]+) µs/record +"
        r"collections (\d+) young",
        done.stdout,
        re.M,
    )
    assert [row[0] for row in rows] == ["loop", "async"], done.stdout
    for _, cpu, collector, young in rows:
        # An event of 300 line items allocates some 600 tracked objects as it validates:
        # every consumer's decoding triggers young collections, and they take CPU time.
        assert int(young) > 0
        assert 0 < float(collector) < float(cpu)

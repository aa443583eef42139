"""benchmarks/latency_split.py runs a sync and an async service through the broker and
splits each record's latency in two, then the runtime's part in three. Nothing here is
timed: the figures are only read."""

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
    cut = r"\s*-?[\d.]+/\s*-?[\d.]+"
    rows = re.findall(
        rf"^(sync|async) ({figure}) \|({figure}) \|({figure})  \(runtime: "
        rf"tick ({cut}) \| wake ({cut}) \| in batch ({cut})\)$",
        done.stdout,
        re.M,
    )
    assert [row[0] for row in rows] == ["sync", "async"], done.stdout
    for _, *parts in rows:
        broker, runtime, total, tick, wake, batch = (float(p.split("/")[0]) for p in parts)
        assert min(broker, runtime, total) > 0
        assert total >= broker  # the whole is no shorter than the broker's part
        # The cuts are read, not bounded: with async handlers the event loop may take a
        # batch while the poll that fetched it still runs its tick.
        assert all(abs(ms) < 60_000 for ms in (tick, wake, batch))

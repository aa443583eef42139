"""benchmarks/instructions.py: each row consumes what it is asked to through the broker,
and the counts are read from callgrind's per-thread files. Nothing here is timed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "instructions.py"


@pytest.mark.parametrize("row", ["loop-tuned", "sg-sync"])
def test_each_row_consumes_the_records_it_is_asked_for(row: str) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--consume", row, "300"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_counts_are_read_per_thread_file_in_thread_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from instructions import totals

    for thread, count in [("02", 70), ("01", 1_000), ("03", 5)]:
        (tmp_path / f"row.4000-{thread}").write_text(f"events: Ir\nfn=x\ntotals: {count}\n")
    (tmp_path / "row.12000-01").write_text("summary: 9\n")
    assert totals(tmp_path / "row.4000") == [1_000, 70, 5]
    assert totals(tmp_path / "row.12000") == [9]

"""benchmarks/compiled.py: it starts, reads its rounds right, and refuses runs that would
measure the wrong form of the package. Nothing here is timed or compiled; the build and the
throughput pairs run only when the script is run by hand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "compiled.py"


def test_the_script_starts_and_parses_its_arguments() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "--pairs" in done.stdout
    assert "--build" in done.stdout


def _round(rates: dict[str, float]) -> dict[str, Any]:
    """One round's results as peers.py writes them, a run per row."""
    figures = {"cpu_util": 1.0, "rss_start_mib": 50.0, "rss_end_mib": 60.0, "startup_s": 1.1}
    return {
        "contenders": {
            row: {
                "throughput": {
                    "runs": [{"msg_per_s": rate, "cpu_us_per_msg": 1e6 / rate, **figures}]
                }
            }
            for row, rate in rates.items()
        }
    }


@pytest.fixture
def compiled(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import compiled

    return compiled


def test_ratios_are_the_median_of_each_rounds_own_ratio(compiled: Any) -> None:
    rounds = [
        _round({"loop-untuned": 100.0, "loop-tuned": 100.0, "sg-sync": 90.0}),
        _round({"loop-untuned": 50.0, "loop-tuned": 80.0, "sg-sync": 50.0}),
        _round({"loop-untuned": 100.0, "loop-tuned": 120.0, "sg-sync": 96.0}),
    ]
    rows = compiled.summary(rounds)
    assert rows["loop-untuned"]["msg_per_s"] == 100.0
    assert rows["sg-sync"]["msg_per_s"] == 90.0
    assert rows["sg-sync"]["cpu_us_per_msg"] == pytest.approx(1e6 / 90.0)
    # Round by round: 0.90, 1.00, 0.96 against the untuned loop; 0.90, 0.625, 0.80 tuned.
    assert rows["sg-sync"]["vs loop-untuned"] == pytest.approx(0.96)
    assert rows["sg-sync"]["vs loop-tuned"] == pytest.approx(0.80)


def test_a_failed_run_stops_the_summary_with_its_error(compiled: Any) -> None:
    failed = _round({"loop-untuned": 100.0, "loop-tuned": 100.0, "sg-sync": 90.0})
    failed["contenders"]["sg-sync"]["throughput"]["runs"] = [{"error": "exit -9 after 260s"}]
    with pytest.raises(SystemExit, match="exit -9"):
        compiled.summary([failed])


def test_a_missing_bench_venv_is_named(
    compiled: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compiled, "BENCH_PYTHON", tmp_path / "python")
    with pytest.raises(SystemExit, match=r"make \.venv-bench"):
        compiled.check_interpreters()


def test_runs_stop_unless_they_load_the_form_they_measure(
    compiled: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compiled, "BENCH_PYTHON", Path(sys.executable))
    compiled.check_loaded(None)  # the package as shipped: lane.py
    # A directory without compiled modules shadows nothing: the lane still loads from .py.
    with pytest.raises(SystemExit, match=r"compiled runs would load the lane from .*lane\.py"):
        compiled.check_loaded(tmp_path)

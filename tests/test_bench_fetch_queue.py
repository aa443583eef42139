"""benchmarks/fetch_queue.py: each setting consumes its data set through the broker, and
the slow-handler mode reads librdkafka's threads. Nothing here is timed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "fetch_queue.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=150
    )


def test_every_setting_reads_every_record_of_each_data_set() -> None:
    done = run("--data", "small,blob", "--records", "600", "--rounds", "1",
               "--settings", "4096:10,2048:1")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    sizes = re.findall(r"^(small|blob): 600 records of (\d+) B on 3 partitions$", done.stdout, re.M)
    assert [name for name, _ in sizes] == ["small", "blob"]
    assert int(sizes[1][1]) > 20_000 > int(sizes[0][1])
    rows = re.findall(r"^\s+(\S+)( \(default\))?: +([\d,]+) msg/s \[", done.stdout, re.M)
    # streamguard's own settings (CONSUMER_DEFAULTS) are marked
    assert [(setting, mark) for setting, mark, _ in rows] == [
        ("4096:10", ""),
        ("2048:1", " (default)"),
    ] * 2
    assert all(int(rate.replace(",", "")) > 0 for _, _, rate in rows)


def test_the_slow_handler_mode_reports_librdkafkas_cpu() -> None:
    # 5 ms a record: three partitions' workers take about 600 a second, so 8,000 records
    # outlast the 9 s the mode waits and measures.
    done = run("--data", "small", "--records", "8000", "--rounds", "1",
               "--settings", "2048:1", "--slow-ms", "5")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.search(
        r"2048:1 \(default\): (\d+) librdkafka threads, [\d.]+% of a core, ([\d,]+) msg/s",
        done.stdout,
    )
    assert found, done.stdout
    assert int(found[1]) >= 2  # the consumer's and the DLQ producer's, at least
    assert int(found[2].replace(",", "")) > 0


def test_a_malformed_setting_is_refused_before_the_broker_starts() -> None:
    done = run("--settings", "4096:fast")
    assert done.returncode != 0
    assert "invalid literal" in done.stderr
    assert "records of" not in done.stdout

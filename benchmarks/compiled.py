"""What the sync row would gain if the runtime's per-record modules were compiled.

The sync service spends a few thousand instructions per record more than the hand-written
loop, most of them the interpreter running streamguard's own Python (docs/benchmark-notes.md).
This measures how much of that a compiler takes away: it copies the package into a
scratch directory, compiles the modules every record passes through with mypyc (the
lane, its ``MessageContext``, the pipeline, the drift check, the verdicts, the poller
and the codecs), and runs ``peers.py``'s throughput pass of the two loops and the sync row
in alternating pairs, once on the package as shipped (pure Python) and once with the
compiled copy first on ``PYTHONPATH``. streamguard ships pure Python; this is a
measurement, not a build.

Needs the project's ``.venv`` (mypy, with mypyc, is a dev dependency), ``.venv-bench``
(``make .venv-bench/.installed``), setuptools (which mypyc builds with), a C compiler and
the interpreter's headers. About three minutes a pair on 2 cores:

    .venv/bin/python benchmarks/compiled.py --pairs 4
    .venv/bin/python benchmarks/compiled.py --build /tmp/sg-compiled   # compile only
    PYTHONPATH=/tmp/sg-compiled .venv/bin/python benchmarks/instructions.py --rows sg-sync
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from peerbench.runner import summarize

ROOT = Path(__file__).resolve().parent.parent
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
ROWS = ("loop-untuned", "loop-tuned", "sg-sync")
# A record's path in a sync service. Not the scheduler: mypyc cannot compile a ``break``
# inside ``try``/``finally``; nor the event loop, whose lane subclasses PartitionLane
# (an interpreted class cannot subclass a compiled one), which the async rows would need.
MODULES = (
    "streamguard/runtime/lane.py",
    "streamguard/runtime/context.py",
    "streamguard/runtime/pipeline.py",
    "streamguard/runtime/drift.py",
    "streamguard/runtime/outcomes.py",
    "streamguard/runtime/poller.py",
    "streamguard/codecs.py",
)


def build(dest: Path) -> None:
    """Copy the package to ``dest`` and compile MODULES there, next to their sources."""
    # A fresh copy: a compiled module left from an earlier build would shadow its source.
    shutil.rmtree(dest / "streamguard", ignore_errors=True)
    for stale in dest.glob("*__mypyc*"):
        stale.unlink()
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "streamguard", dest / "streamguard")
    # Run where no pyproject.toml is: mypyc's setuptools step would read the project's.
    done = subprocess.run(
        [sys.executable, "-m", "mypyc", *MODULES], cwd=dest, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"mypyc failed:\n{(done.stdout + done.stderr)[-3000:]}")
    missing = [m for m in MODULES if not list(dest.glob(m.removesuffix(".py") + ".*.so"))]
    if missing:
        raise SystemExit(f"mypyc left these uncompiled: {missing}")


def environment(compiled: Path | None) -> dict[str, str]:
    """The bench's environment: the compiled copy, when given, shadows the package."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if compiled is not None:
        env["PYTHONPATH"] = str(compiled)
    return env


def check_loaded(compiled: Path | None) -> None:
    """Fail unless the bench's interpreter loads the form of the lane it is meant to."""
    # From benchmarks/, as peers.py runs: from the root, "" on sys.path would find the
    # package's sources ahead of PYTHONPATH.
    loaded = subprocess.run(
        [str(BENCH_PYTHON), "-c", "import streamguard.runtime.lane as m; print(m.__file__)"],
        cwd=ROOT / "benchmarks", env=environment(compiled), capture_output=True, text=True,
        check=True,
    ).stdout.strip()  # fmt: skip
    if loaded.endswith(".so") != (compiled is not None):
        form = "compiled" if compiled is not None else "pure"
        raise SystemExit(f"the {form} runs would load the lane from {loaded}")


def throughput(out: Path, compiled: Path | None) -> dict[str, Any]:
    """One throughput round of ROWS; stops at a row that did not run to the end."""
    subprocess.run(
        [str(BENCH_PYTHON), str(ROOT / "benchmarks" / "peers.py"), "--only", *ROWS,
         "--modes", "throughput", "--rounds", "1", "--out", str(out), "--no-render", "--quiet"],
        cwd=ROOT, env=environment(compiled), check=True, timeout=1800,
    )  # fmt: skip
    results: dict[str, Any] = json.loads(out.read_text())
    for row in ROWS:
        finished(results, row, out.stem)
    return results


def finished(results: dict[str, Any], row: str, where: str = "a round") -> dict[str, Any]:
    """The row's run in one round's results; stops the script if it did not finish."""
    if row not in results["contenders"]:
        raise SystemExit(f"{row} did not run in {where}: {results.get('skipped', {}).get(row)}")
    run: dict[str, Any] = results["contenders"][row]["throughput"]["runs"][0]
    if "msg_per_s" not in run:
        raise SystemExit(f"{row} failed in {where}: {run.get('error')}")
    return run


def summary(rounds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per row, as the bench sums up its own rounds; for sg-sync, its median ratios."""
    runs = {row: [finished(r, row) for r in rounds] for row in ROWS}
    rows = {row: summarize(row_runs) for row, row_runs in runs.items()}
    for loop in ("loop-untuned", "loop-tuned"):
        rows["sg-sync"]["vs " + loop] = statistics.median(
            sg["msg_per_s"] / base["msg_per_s"]
            for sg, base in zip(runs["sg-sync"], runs[loop], strict=True)
        )
    return rows


def check_interpreters() -> None:
    """The compiled modules load only into the interpreter version that built them."""
    if not BENCH_PYTHON.exists():
        raise SystemExit(f"{BENCH_PYTHON} is missing: make .venv-bench/.installed")
    bench = subprocess.run(
        [str(BENCH_PYTHON), "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    if bench != str(sys.version_info[:2]):
        raise SystemExit(f".venv-bench runs Python {bench}, this one {sys.version_info[:2]}")


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("at least 1")
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--pairs", type=positive, default=4, help="pure/compiled pairs, in alternating order"
    )
    parser.add_argument("--build", type=Path, metavar="DIR", help="only compile into DIR")
    args = parser.parse_args()
    if args.build:
        build(args.build)
        print(f"compiled into {args.build}: put it first on PYTHONPATH")
        return 0
    check_interpreters()
    with tempfile.TemporaryDirectory() as scratch:
        compiled = Path(scratch) / "compiled"
        build(compiled)
        forms: list[tuple[str, Path | None]] = [("pure", None), ("compiled", compiled)]
        for _, path in forms:
            check_loaded(path)
        rounds: dict[str, list[dict[str, Any]]] = {"pure": [], "compiled": []}
        for pair in range(args.pairs):
            # pure first, then compiled first: neither always runs on a VM just warmed up
            for form, path in forms if pair % 2 == 0 else forms[::-1]:
                result = throughput(Path(scratch) / f"{form}-{pair + 1}.json", path)
                rounds[form].append(result)
                sg = finished(result, "sg-sync")["msg_per_s"]
                print(f"pair {pair + 1} {form:8} sg-sync {sg:,.0f} msg/s", flush=True)
        for form, results in rounds.items():
            print(f"{form}, median of {args.pairs}:")
            for row, figures in summary(results).items():
                ratios = "".join(
                    f"  {key} {value:.3f}x"
                    for key, value in figures.items()
                    if key.startswith("vs ")
                )
                print(
                    f"  {row:14} {figures['msg_per_s']:9,.0f} msg/s"
                    f"  {figures['cpu_us_per_msg']:5.2f} µs CPU/record{ratios}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""streamguard next to the other Python Kafka frameworks, on one data set, in one run.

Starts the embedded broker, writes one fixed data set (keyed order events of about
400 B on 3 partitions, JSON and Avro), and runs every contender in its own process over
it, alternating the order between rounds. Each reports throughput from its first
record to its last (group join excluded), the CPU and RSS of its own process, and in
the io and latency passes, per-key order and handler latency. Writes the results as
JSON and renders the table of docs/benchmarks.md and the chart next to it.

    python benchmarks/peers.py [--records N] [--rounds R] [--only NAME ...]
                               [--out benchmarks/results.json] [--rss] [--merge]
    python benchmarks/peers.py --render-only        # page and chart from --out
    python benchmarks/peers.py --list

The peers come from the ``bench`` extra (``make bench`` installs it into .venv-bench).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from peerbench import events
from peerbench.registry import CONTENDERS, Contender, Run

ROOT = Path(__file__).resolve().parent.parent
MODES = ("throughput", "io", "latency")
PASSES = (*MODES, "rss")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000, help="records per pass")
    parser.add_argument("--rounds", type=int, default=3, help="alternating throughput rounds")
    parser.add_argument(
        "--partitions",
        type=int,
        default=events.PARTITIONS,
        help="partitions of the data set's topics (3 for the published table)",
    )
    parser.add_argument(
        "--line-items",
        type=int,
        default=events.LINE_ITEMS,
        help="line items per event, which sets its size (6, about 390 B, for the published table)",
    )
    parser.add_argument("--only", nargs="+", metavar="NAME", help="these contenders only")
    parser.add_argument(
        "--modes", nargs="+", choices=PASSES, default=list(MODES), help="the passes to run"
    )
    parser.add_argument(
        "--io-records", type=int, default=3000, help="records per pass of the io mode"
    )
    parser.add_argument(
        "--latency-rate", type=float, default=1000.0, help="msg/s sent in the latency pass"
    )
    parser.add_argument(
        "--latency-seconds", type=float, default=10.0, help="how long each latency run sends"
    )
    parser.add_argument("--latency-rounds", type=int, default=4, help="latency runs of each row")
    parser.add_argument(
        "--fetch-wait-ms", type=int, default=10, help="every latency row's fetch wait cap"
    )
    parser.add_argument("--rss", action="store_true", help="add the rss pass (--rss-records)")
    parser.add_argument(
        "--rss-records", type=int, default=1_000_000, help="records of the rss pass"
    )
    parser.add_argument(
        "--rss-rounds", type=int, default=3, help="alternating runs of each row in the rss pass"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results.json",
        help="the results as JSON (default: the committed benchmarks/results.json)",
    )
    parser.add_argument(
        "--page",
        type=Path,
        default=ROOT / "docs" / "benchmarks.md",
        help="the page whose tables are rewritten, or created (default: docs/benchmarks.md)",
    )
    parser.add_argument(
        "--chart",
        type=Path,
        default=ROOT / "docs" / "img" / "benchmarks.png",
        help="the PNG chart (default: docs/img/benchmarks.png)",
    )
    parser.add_argument("--no-render", action="store_true", help="write the JSON only")
    parser.add_argument(
        "--merge", action="store_true", help="add this run's passes to the rows of --out"
    )
    parser.add_argument("--render-only", action="store_true", help="render --out, run nothing")
    parser.add_argument("--list", action="store_true", help="list the contenders and exit")
    parser.add_argument("--quiet", action="store_true", help="print no per-run lines")
    worker = parser.add_argument_group("worker (internal: one contender in this process)")
    worker.add_argument("--worker", metavar="NAME", help=argparse.SUPPRESS)
    worker.add_argument("--module", help=argparse.SUPPRESS)  # the one that registers it
    worker.add_argument("--mode", choices=MODES, default="throughput", help=argparse.SUPPRESS)
    worker.add_argument("--bootstrap", help=argparse.SUPPRESS)
    worker.add_argument("--topic", help=argparse.SUPPRESS)
    worker.add_argument("--group", help=argparse.SUPPRESS)
    worker.add_argument("--count", type=int, help=argparse.SUPPRESS)
    worker.add_argument("--result", help=argparse.SUPPRESS)
    worker.add_argument("--work-s", type=float, default=0.0, help=argparse.SUPPRESS)
    worker.add_argument("--concurrency", type=int, default=1, help=argparse.SUPPRESS)
    worker.add_argument("--registry-url", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.partitions < 1:
        parser.error("--partitions must be at least 1")
    if args.line_items < 0:
        parser.error("--line-items must be at least 0")
    if args.rss_rounds < 1:
        parser.error("--rss-rounds must be at least 1")
    # Read by every contender's process too (they inherit the environment).
    os.environ["PEERBENCH_PARTITIONS"] = str(args.partitions)
    os.environ["PEERBENCH_LINE_ITEMS"] = str(args.line_items)
    events.PARTITIONS = args.partitions
    events.LINE_ITEMS = args.line_items
    if not args.worker:
        import peerbench.contenders  # noqa: F401 (registers every row; a worker, its own)
    unknown = [n for n in args.only or [] if n not in CONTENDERS]
    if unknown:
        parser.error(f"unknown contender(s) {', '.join(unknown)}; --list shows them")
    return args


# The meta keys each pass's caption reads (peerbench/render.py).
PASS_SETTINGS: dict[str, tuple[str, ...]] = {
    "throughput": ("records", "rounds"),
    "io": ("io",),
    "latency": ("latency",),
    "rss": ("rss_records", "rss_rounds"),
}


def merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``new``, plus the passes of ``old`` that ``new`` did not run (kept with their date).

    The page then says which passes come from which run. Passes measured on another
    machine or with other versions are not kept: one table compares one setting.
    """
    mine, theirs = new["meta"], old["meta"]
    same_machine = all(
        mine["machine"].get(k) == theirs["machine"].get(k) for k in ("cpu", "cores", "python")
    )
    same_data = all(
        mine.get(k, default) == theirs.get(k, default)
        for k, default in (("partitions", 3), ("line_items", 6))
    )
    if not same_machine or mine["versions"] != theirs["versions"] or not same_data:
        print(
            "not merged: the earlier results were measured on another machine, with "
            "other versions or on another data set (partitions, line items); run the other "
            "passes again",
            file=sys.stderr,
        )
        return new
    # A pass this run made is this run's, whatever an earlier merge said of it; rows of
    # it that this run skipped (--only) are kept and named with their own date.
    made = set(mine.get("passes", ()))
    dated = theirs.get("earlier_passes", {})
    kept = {p: d for p, d in dated.items() if p not in made}
    rows: dict[str, dict[str, str]] = {}
    for name, row in old["contenders"].items():
        target = new["contenders"].setdefault(
            name, {k: v for k, v in row.items() if k not in PASSES}
        )
        for done in PASSES:
            if done in row and done not in target:
                target[done] = row[done]
                when = dated.get(done) or theirs["date"]
                if done in made:
                    rows.setdefault(done, {})[name] = when
                else:
                    kept[done] = kept.get(done) or when
    for done in kept:  # a kept pass's captions need the settings it was measured with
        # and its rows' own dates, when an earlier merge had kept some from further back
        if done in theirs.get("earlier_rows", {}):
            rows[done] = {**theirs["earlier_rows"][done], **rows.get(done, {})}
        for key in PASS_SETTINGS[done]:
            if key in theirs:
                mine[key] = theirs[key]
    mine["value_bytes"] = {**theirs.get("value_bytes", {}), **mine.get("value_bytes", {})}
    # Rows in the earlier results' order (a full run's), so a merge does not reshuffle them.
    rows_now = new["contenders"]
    new["contenders"] = {n: rows_now[n] for n in dict.fromkeys([*old["contenders"], *rows_now])}
    if kept:
        new["meta"]["earlier_passes"] = kept
    if rows:
        new["meta"]["earlier_rows"] = rows
    return new


def worker_contender(name: str, module: str | None) -> Contender:
    """Import only the module that registers row ``name`` (the runner passes it as
    ``--module``) and return the row, so that the process's RSS is the row's own: a
    peer's or a JSON loop's process never loads streamguard. With no module, every row's
    module is imported."""
    importlib.import_module(module or "peerbench.contenders")
    return CONTENDERS[name]


def work(args: argparse.Namespace) -> int:
    """Run one contender until its probe ends the process; returning is a failure."""
    from peerbench.probe import Probe

    contender = worker_contender(args.worker, args.module)
    probe = Probe(args.count, args.result, args.mode, args.work_s)
    contender.run(
        Run(
            bootstrap=args.bootstrap,
            topic=args.topic,
            group=args.group,
            count=args.count,
            probe=probe,
            work_s=args.work_s,
            concurrency=args.concurrency,
            fetch_wait_ms=args.fetch_wait_ms if args.mode == "latency" else 0,
            registry_url=args.registry_url,
        )
    )
    print(f"{contender.name} returned before its last record", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.worker:
        return work(args)
    from peerbench.runner import Settings, run_all

    if args.list:
        skipped = 0
        for c in CONTENDERS.values():
            missing = c.missing()
            skipped += bool(missing)
            state = f"  (skipped: {missing})" if missing else ""
            print(f"{c.name:<22} {'/'.join(c.modes):<26} {c.label}{state}")
        print(
            f"{len(CONTENDERS)} rows; " + (f"{skipped} skipped here" if skipped else "none skipped")
        )
        return 0
    if not args.render_only:
        settings = Settings(
            records=args.records,
            rounds=args.rounds,
            io_records=args.io_records,
            latency_rate=args.latency_rate,
            latency_seconds=args.latency_seconds,
            fetch_wait_ms=args.fetch_wait_ms,
            latency_rounds=args.latency_rounds,
            rss_records=args.rss_records,
            rss_rounds=args.rss_rounds,
            modes=tuple(dict.fromkeys([*args.modes, *(["rss"] if args.rss else [])])),
            verbose=not args.quiet,
        )
        chosen = [CONTENDERS[n] for n in args.only] if args.only else list(CONTENDERS.values())
        results = run_all(chosen, settings)
        if args.merge and args.out.exists():
            results = merge(json.loads(args.out.read_text()), results)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.out}")
    if not args.no_render:
        from peerbench.render import render

        render(json.loads(args.out.read_text()), args.page, args.chart)
        print(f"rendered {args.page} and {args.chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

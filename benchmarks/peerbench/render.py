"""The results as docs/benchmarks.md's tables (between markers) and a PNG bar chart."""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path
from typing import Any

BEGIN = "<!-- peers:begin (written by benchmarks/peers.py; edit the script, not this) -->"
END = "<!-- peers:end -->"

# What each row is held to, as (row, baseline row, minimum ratio); None: no target,
# shown for context (the DLQ path next to hand-written dead-letter loops). The guarded
# Faust agent is held to plain Faust: a peer, so it has to be ahead.
TARGETS: tuple[tuple[str, str, float | None], ...] = (
    ("sg-sync", "loop-untuned", 1.0),
    ("sg-sync", "loop-tuned", 0.95),
    ("sg-async", "loop-untuned", 0.8),
    ("sg-dlq", "loop-untuned", 0.5),
    ("sg-dlq", "loop-dlq", None),
    ("sg-dlq", "loop-dlq-envelope", None),
    ("sg-avro", "fastavro-loop", 0.6),
    ("sg-avro-registry", "fastavro-registry-loop", 0.6),
    ("sg-faust", "faust", 1.0),
)
# The "ahead of every peer in every row": per pass, a streamguard row against
# the best peer in it (the measure, and whether lower is better).
AHEAD: tuple[tuple[str, str, str, bool], ...] = (
    ("sg-sync", "throughput", "msg_per_s", False),
    ("sg-async", "throughput", "msg_per_s", False),
    ("sg-keyed", "io", "msg_per_s", False),
    ("sg-sync", "latency", "p50_ms", True),
    ("sg-sync", "latency", "p99_ms", True),
    ("sg-async", "latency", "p50_ms", True),
    ("sg-async", "latency", "p99_ms", True),
    ("sg-sync", "rss", "rss_end_mib", True),
    ("sg-async", "rss", "rss_end_mib", True),
)
MEASURES = {
    "msg_per_s": "msg/s",
    "p50_ms": "p50 ms",
    "p99_ms": "p99 ms",
    "rss_end_mib": "RSS MiB at the end",
}
# Fewer rounds than this, and the targets table says not to read a verdict from it.
FEW_ROUNDS = 3
GROUP_ORDER = {"baseline": 0, "streamguard": 1, "peer": 2}
COLOURS = {"baseline": "#9e9e9e", "streamguard": "#1f77b4", "peer": "#ff7f0e"}
LEGEND = {
    "baseline": "hand-written loop (baseline)",
    "streamguard": "streamguard",
    "peer": "other framework (peer)",
}


def group(name: str, row: dict[str, Any]) -> str:
    if "baseline" in row.get("tags", []):
        return "baseline"
    return "streamguard" if name.startswith("sg-") else "peer"


def ordered(contenders: dict[str, Any], mode: str) -> list[tuple[str, dict[str, Any]]]:
    """Baselines, then streamguard, then peers, each in registration order, except that
    a streamguard row held to a peer (the guarded Faust agent) comes last in its group,
    next to the peers."""

    def held_to_peer(row: dict[str, Any]) -> bool:
        base = row.get("baseline")
        return base in contenders and group(base, contenders[base]) == "peer"

    rows = [(n, r) for n, r in contenders.items() if mode in r]
    return sorted(rows, key=lambda item: (GROUP_ORDER[group(*item)], held_to_peer(item[1])))


def rounds_phrase(rounds: int) -> str:
    return "1 round" if rounds == 1 else f"{rounds} alternating rounds"


def provenance(meta: dict[str, Any]) -> str:
    """Machine, versions, date and commit: every table and the chart carry it."""
    m, v = meta["machine"], meta["versions"]
    libs = ", ".join(f"{k} {val}" for k, val in v.items())
    commit = f" (commit {meta['commit']})" if meta.get("commit") else ""
    return f"{meta['date']}{commit} on {_cores(m)}, {m['platform']}, Python {m['python']}; {libs}"


def _cores(machine: dict[str, Any]) -> str:
    """The CPU, its cores and how busy it was: ``AMD EPYC (2 cores, load 0.3 at start)``."""
    load = machine.get("load_1m_at_start")
    shared = f", load {load:.1f} at start" if load is not None else ""
    return f"{machine['cpu']} ({machine['cores']} cores{shared})"


def _rate(entry: dict[str, Any]) -> str:
    if "msg_per_s" not in entry:
        errors = [r.get("error", "") for r in entry.get("runs", [])]
        return f"failed ({errors[0] if errors else 'no runs'})"
    return f"{entry['msg_per_s']:,}"


def _range(entry: dict[str, Any]) -> str:
    """min-max over the rounds; empty for a single run, whose range says nothing."""
    return f"{entry['min']:,}-{entry['max']:,}" if len(entry.get("runs", ())) > 1 else ""


def _ratio(
    contenders: dict[str, Any], name: str, base: str, mode: str = "throughput"
) -> float | None:
    a = contenders.get(name, {}).get(mode, {}).get("msg_per_s")
    b = contenders.get(base, {}).get(mode, {}).get("msg_per_s")
    return a / b if a and b else None


def _round_ratios(results: dict[str, Any], name: str, base: str) -> list[float]:
    """``name``'s msg/s over ``base``'s in each throughput round where both finished.

    Only when both rows come from one run of the pass (a merge may keep rows of an
    earlier one): their round ``i`` runs were then made close together (see ``paired``).
    """
    earlier = results["meta"].get("earlier_rows", {}).get("throughput", {})
    if earlier.get(name) != earlier.get(base):
        return []
    contenders = results["contenders"]
    ours = contenders.get(name, {}).get("throughput", {}).get("runs", [])
    theirs = contenders.get(base, {}).get("throughput", {}).get("runs", [])
    return [
        a["msg_per_s"] / b["msg_per_s"]
        for a, b in zip(ours, theirs, strict=False)
        if "error" not in a and "error" not in b and b["msg_per_s"]
    ]


def _cpu_ratio(contenders: dict[str, Any], name: str, base: str) -> float | None:
    a = contenders.get(name, {}).get("throughput", {}).get("cpu_us_per_msg")
    b = contenders.get(base, {}).get("throughput", {}).get("cpu_us_per_msg")
    return b / a if a and b else None


def throughput_table(results: dict[str, Any]) -> list[str]:
    meta, contenders = results["meta"], results["contenders"]
    lines = [
        "| contender | data | msg/s (median) | range | ratio | CPU µs/msg | CPU cores "
        "| RSS MiB first → last |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in ordered(contenders, "throughput"):
        e = row["throughput"]
        ratio = _ratio(contenders, name, row["baseline"]) if row.get("baseline") else None
        ratio_text = f"{ratio:.2f}x {row['baseline']}" if ratio is not None else ""
        if "msg_per_s" in e:
            lines.append(
                f"| {row['label']} (`{name}`) | {row['data']} | {_rate(e)} "
                f"| {_range(e)} | {ratio_text} | {e['cpu_us_per_msg']:.1f} "
                f"| {e['cpu_util']:.2f} | {e['rss_start_mib']:.0f} → {e['rss_end_mib']:.0f} |"
            )
        else:
            lines.append(f"| {row['label']} (`{name}`) | {row['data']} | {_rate(e)} | | | | | |")
    sizes = {k: v for k, v in meta.get("value_bytes", {}).items() if k != "io"}
    lines += [
        "",
        f"{meta['records']:,} records per pass ({', '.join(f'{k} {v} B' for k, v in sizes.items())}"
        f" per value), {meta['partitions']} partitions, {meta['keys']} keys, "
        f"{rounds_phrase(meta['rounds'])}; ratio = this row's median over the named row's."
        f"{_earlier(results, 'throughput')}",
    ]
    return lines


def _verdict_ratio(ratio: float, minimum: float | None) -> str:
    """Two decimals, or three where two would round a miss up to the target (0.945x
    shown as 0.95x next to "no")."""
    two = f"{ratio:.2f}"
    if minimum is not None and (float(two) >= minimum) != (ratio >= minimum):
        return f"{ratio:.3f}"
    return two


def _ahead_text(ahead: float) -> str:
    """Two decimals, three at 1.00 (where the verdict turns on the third)."""
    two = f"{ahead:.2f}"
    return f"{ahead:.3f}" if two == "1.00" else two


def targets_table(results: dict[str, Any]) -> list[str]:
    contenders = results["contenders"]
    lines = [
        "| target | msg/s ratio (medians) | round by round | CPU-per-record ratio | met |",
        "| --- | ---: | ---: | ---: | :---: |",
    ]
    for name, base, minimum in TARGETS:
        ratio = _ratio(contenders, name, base)
        if ratio is None:
            continue
        cpu = _cpu_ratio(contenders, name, base)
        cpu_text = f"{cpu:.2f}x" if cpu is not None else ""
        rounds = _round_ratios(results, name, base)
        rounds_text = (
            f"{statistics.median(rounds):.2f}x ({min(rounds):.2f}-{max(rounds):.2f})"
            if len(rounds) > 1
            else f"{rounds[0]:.2f}x"
            if rounds
            else ""
        )
        figures = f"{_verdict_ratio(ratio, minimum)}x | {rounds_text} | {cpu_text}"
        if minimum is None:
            lines.append(f"| `{name}` next to `{base}` (context) | {figures} | |")
            continue
        met = "yes" if ratio >= minimum else "**no**"
        lines.append(f"| `{name}` ≥ {minimum:.2f}x `{base}` | {figures} | {met} |")
    lines += [
        "",
        "Met is read from the ratio of the medians. Round by round: in each round a row "
        "held to a baseline runs as close after it as one sequence allows (see How it "
        "measures), and this column gives the median and range of the two runs' ratio over "
        "the rounds; it differs from the ratio of the medians "
        "when the VM's speed changed between rounds (empty when the rows come from "
        "different runs). "
        "The CPU-per-record ratio is the baseline's CPU per record over the row's: it moves "
        "less than throughput when other work shares the machine. Where a target is not "
        "met, [the benchmark notes](benchmark-notes.md#where-the-time-goes-measured) say "
        "what the time is spent on (for the guarded Faust agent, [its own section]"
        "(benchmark-notes.md#guarded-faust-agent-against-a-plain-faust-agent)).",
    ]
    rounds = results["meta"]["rounds"]
    if rounds < FEW_ROUNDS:
        lines += [
            "",
            f"**{rounds_phrase(rounds).capitalize()} only: a ratio here compares {rounds} "
            f"run{'s' * (rounds != 1)} with as many, which this machine's noise can move by "
            f"a third. Read no target from fewer than {FEW_ROUNDS} rounds.**",
        ]
    return lines


def peers_table(results: dict[str, Any]) -> list[str]:
    """Each streamguard row of ``AHEAD`` against the best peer of its pass."""
    contenders = results["contenders"]
    lines = [
        "| streamguard row | pass | measure | streamguard | best peer | ahead by | met |",
        "| --- | --- | --- | ---: | ---: | ---: | :---: |",
    ]
    for name, mode, key, lower in AHEAD:
        ours = contenders.get(name, {}).get(mode, {}).get(key)
        theirs = [
            (row[mode][key], peer)
            for peer, row in contenders.items()
            if group(peer, row) == "peer" and row.get(mode, {}).get(key)
        ]
        if not ours or not theirs:
            continue
        best, peer = min(theirs) if lower else max(theirs)
        ahead = best / ours if lower else ours / best
        met = "yes" if ahead > 1 else "**no**"
        if _runs_overlap(contenders[name][mode], contenders[peer][mode], key):
            met += " (runs overlap)"
        lines.append(
            f"| `{name}` | {mode} | {MEASURES[key]} | {_figure(ours)} | {_figure(best)} "
            f"(`{peer}`) | {_ahead_text(ahead)}x | {met} |"
        )
    if len(lines) == 2:
        return []
    lines += [
        "",
        "Peers are the other frameworks' rows (not the hand-written `loop-*` baselines). "
        "Each of streamguard's sync and async services, default options, is held to the "
        "best of them in every measure of the throughput, latency and memory passes. In "
        "the I/O pass, where each framework runs its own concurrency setting, streamguard's "
        "is the key-ordered row (its sync and async rows there handle one partition per "
        "worker), held to every peer, those that reorder a key's records included. Ahead by: "
        "the best peer's figure over streamguard's where lower is better (latency, RSS "
        "after the memory pass's long run), streamguard's over the best peer's where "
        "higher is (msg/s), from the unrounded figures. Met: ahead, above 1.00x. *Runs "
        "overlap*: the two rows' runs (each a median's ingredients) span ranges that "
        "meet, so the verdict is within the pass's run-to-run noise. A pass's "
        "rows may come from different runs of it (merged with `--merge`): its own table's "
        "caption then gives their dates, and a caption without a date means the run named "
        "at the top.",
    ]
    return lines


def _runs_overlap(ours: dict[str, Any], theirs: dict[str, Any], key: str) -> bool:
    """True when both rows have several runs and their ranges of ``key`` meet."""
    spans = []
    for row in (ours, theirs):
        values = [run[key] for run in row.get("runs", ()) if key in run]
        if len(values) < 2:
            return False
        spans.append((min(values), max(values)))
    (low, high), (peer_low, peer_high) = spans
    return low <= peer_high and peer_low <= high


def _runs_phrase(runs: int) -> str:
    return "one run" if runs == 1 else f"{runs} runs"


def _figure(value: float) -> str:
    return f"{value:,.0f}" if value >= 1000 else f"{value:.1f}"


def io_table(results: dict[str, Any]) -> list[str]:
    meta, contenders = results["meta"], results["contenders"]
    io = meta["io"]
    lines = [
        "| contender | concurrency | msg/s | per-key order | order violations measured |",
        "| --- | --- | ---: | --- | ---: |",
    ]
    for name, row in ordered(contenders, "io"):
        e = row["io"]
        promise = {True: "kept", False: "not kept", None: "?"}[row.get("keeps_order")]
        setting = row.get("note", "").removeprefix("io: ").split(";")[0] or (
            f"one partition per worker ({meta['partitions']} partitions)"
        )
        violations = e.get("order_violations", "")
        lines.append(f"| `{name}` | {setting} | {_rate(e)} | {promise} | {violations} |")
    lines += [
        "",
        f"{io['records']:,} records, {io['keys']} keys, each handler call waits "
        f"{io['work_ms']:.0f} ms (`asyncio.sleep` or `time.sleep`). A violation is a record "
        "whose handler started while an earlier record of its key was still in a handler, "
        f"or after a later one.{_earlier(results, 'io')}",
    ]
    return lines


def latency_table(results: dict[str, Any]) -> list[str]:
    meta, contenders = results["meta"], results["contenders"]
    lat = meta["latency"]
    lines = [
        "| contender | p50 ms | p99 ms | max ms | p50 of each run | p99 of each run | samples |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in ordered(contenders, "latency"):
        e = row["latency"]
        if "p50_ms" not in e:
            lines.append(f"| `{name}` | {_rate(e)} | | | | | |")
            continue
        samples = sum(r.get("latency_n", 0) for r in e["runs"])
        p50s, p99s = (
            ", ".join(f"{r[key]:.1f}" for r in e["runs"] if key in r)
            for key in ("p50_ms", "p99_ms")
        )
        lines.append(
            f"| `{name}` | {e['p50_ms']:.1f} | {e['p99_ms']:.1f} | {e['max_ms']:.1f} | {p50s} "
            f"| {p99s} | {samples} |"
        )
    lines += [
        "",
        f"From the producer's send to the handler's call, at {lat['rate_per_s']:.0f} msg/s "
        f"for {lat['seconds']:.0f} s after the contender joined, fetch wait capped at "
        f"{lat.get('fetch_wait_ms', 10)} ms for everyone; the median over "
        f"{lat.get('rounds', 1)} run(s) of each percentile. A run's p50 moves by several "
        "milliseconds with the broker's fetch timing alone (each run is a new topic and "
        "consumer): read each row's runs as well as its median. The hand-written loops "
        "call `consume(500, timeout)`, which waits for a batch to fill (up to its 100 ms "
        "timeout, on top of the broker's fetch wait) before the first record is "
        f"handled.{_earlier(results, 'latency')}",
    ]
    return lines


def _earlier(results: dict[str, Any], done: str) -> str:
    """A caption's note when the pass comes from an earlier run (``peers.py --merge``)."""
    meta = results["meta"]
    when = meta.get("earlier_passes", {}).get(done)
    by_date: dict[str, list[str]] = {}
    for name, date in meta.get("earlier_rows", {}).get(done, {}).items():
        by_date.setdefault(date, []).append(f"`{name}`")
    if when and by_date:  # a kept pass, some of whose rows are older still
        older = "; ".join(f"{', '.join(names)} {date}" for date, names in by_date.items())
        return f" Measured {when}, but {older}; same machine and versions."
    if when:
        return f" Measured {when}, same machine and versions."
    return "".join(
        f" {', '.join(names)} measured {date}, same machine and versions."
        for date, names in by_date.items()
    )


def rss_table(results: dict[str, Any]) -> list[str]:
    contenders = results["contenders"]
    rows = ordered(contenders, "rss")
    if not rows:
        return []
    lines = [
        "| contender | RSS MiB at first record | after the last | the last, each run | records |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, row in rows:
        e = row["rss"]
        if "rss_end_mib" in e:
            good = [r for r in e["runs"] if "rss_end_mib" in r]
            each = ", ".join(f"{r['rss_end_mib']:.1f}" for r in good)
            lines.append(
                f"| `{name}` | {e['rss_start_mib']:.0f} | {e['rss_end_mib']:.1f} | {each} "
                f"| {good[0]['count']:,} |"
            )
    return lines


def section(results: dict[str, Any], chart: str) -> str:
    meta = results["meta"]
    parts = [
        BEGIN,
        "",
        f"Measured {provenance(meta)}.",
        "",
        f"![consume-and-validate throughput per contender]({chart})",
        "",
        "### Throughput (consume and validate, first record to last)",
        "",
        *throughput_table(results),
        "",
        "### Targets",
        "",
        *targets_table(results),
    ]
    ahead = peers_table(results)
    if ahead:
        parts += ["", "### Against the best peer in each pass", "", *ahead]
    if any("io" in r for r in results["contenders"].values()):
        parts += ["", "### I/O-bound handlers (2 ms wait per record)", "", *io_table(results)]
    if any("latency" in r for r in results["contenders"].values()):
        parts += ["", "### Handler latency below saturation", "", *latency_table(results)]
    rss = rss_table(results)
    if rss:
        parts += [
            "",
            "### Memory over a long run",
            "",
            *rss,
            "",
            f"RSS of the contender's process, the median of "
            f"{_runs_phrase(results['meta'].get('rss_rounds', 1))} a row, the rows' order "
            f"alternating between rounds: a process's growth over the run moves by several "
            f"MiB from one run to the next (glibc keeps or returns what the client's fetch "
            f"buffers free), so read each row's runs as well as its median."
            f"{_earlier(results, 'rss')}",
        ]
    if results.get("skipped"):
        parts += ["", "Not run (missing from this install):"]
        parts += [f"- `{n}`: {why}" for n, why in results["skipped"].items()]
    parts += ["", END]
    return "\n".join(parts)


STANDALONE = (
    "# Benchmarks\n\nWritten by benchmarks/peers.py. The sections the captions name are in "
    "the project's docs/benchmarks.md (How it measures) and docs/benchmark-notes.md (where "
    "the time goes); their links work from docs/.\n"
)


def write_page(results: dict[str, Any], page: Path, chart: Path) -> None:
    """Replace the text between the markers (or append it under a heading)."""
    relative = chart.relative_to(page.parent) if chart.is_relative_to(page.parent) else chart
    body = section(results, relative.as_posix())
    # A page of one's own (--page elsewhere) gets the tables alone; the sections their
    # captions name are in the project's page.
    text = page.read_text() if page.exists() else STANDALONE
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: body, text)
    else:
        text = text.rstrip("\n") + "\n\n## Against other Python Kafka frameworks\n\n" + body + "\n"
    page.write_text(text)


def write_chart(results: dict[str, Any], chart: Path) -> None:
    """A horizontal bar per contender: median msg/s, the range as an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [
        (name, row)
        for name, row in ordered(results["contenders"], "throughput")
        if "msg_per_s" in row["throughput"]
    ]
    # One block per data set, in the order the table first names it, so that each bar
    # sits next to the bars it is compared with (sg-sync with the loops and the peers).
    first: dict[str, int] = {}
    for index, (_, row) in enumerate(rows):
        first.setdefault(row["data"], index)
    rows.sort(key=lambda item: first[item[1]["data"]])
    names = [name for name, _ in rows]
    medians = [row["throughput"]["msg_per_s"] for _, row in rows]
    lows = [m - row["throughput"]["min"] for m, (_, row) in zip(medians, rows, strict=True)]
    highs = [row["throughput"]["max"] - m for m, (_, row) in zip(medians, rows, strict=True)]
    colours = [COLOURS[group(name, row)] for name, row in rows]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 2.2))
    y = range(len(rows))
    ax.barh(y, medians, xerr=[lows, highs], color=colours, capsize=3)
    ax.set_yticks(list(y), labels=[f"{n} ({rows[i][1]['data']})" for i, n in enumerate(names)])
    for i in range(1, len(rows)):
        if rows[i][1]["data"] != rows[i - 1][1]["data"]:
            ax.axhline(i - 0.5, color="#bbbbbb", linewidth=0.8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    # Whole decades, so that the bars start at a round figure, with room on the right
    # for the largest bar's label.
    ax.set_xlim(
        10 ** math.floor(math.log10(max(1, min(r["throughput"]["min"] for _, r in rows)))),
        max(m + high for m, high in zip(medians, highs, strict=True)) * 2.2,
    )
    ax.set_xlabel(
        "messages per second, consume + validate (log scale; bar = median, whisker = range)"
    )
    for i, (m, high) in enumerate(zip(medians, highs, strict=True)):
        ax.text((m + high) * 1.08, i, f"{m:,}", va="center", fontsize=8)
    meta = results["meta"]
    m, v = meta["machine"], meta["versions"]
    ax.set_title(
        f"streamguard and Python Kafka frameworks: {meta['records']:,} records per data "
        f"set, {meta['rounds']} round{'s' * (meta['rounds'] != 1)}",
        fontsize=11,
    )
    keep = (
        "streamguard",
        "confluent-kafka",
        "librdkafka",
        "pydantic",
        "faststream",
        "aiokafka",
        "quixstreams",
        "faust-streaming",
        "fastavro",
    )
    libs = ", ".join(f"{k} {v[k]}" for k in keep if k in v)
    fig.text(
        0.01,
        0.01,
        f"{meta['date']} · {_cores(m)} · {m['platform']} · Python {m['python']}\n{libs}",
        fontsize=7,
        color="#555555",
    )
    from matplotlib.patches import Patch

    ax.legend(
        handles=[Patch(color=c, label=LEGEND[g]) for g, c in COLOURS.items()],
        loc="lower right",
        fontsize=8,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    chart.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(chart, dpi=110)
    plt.close(fig)


def render(results: dict[str, Any], page: Path, chart: Path) -> None:
    write_chart(results, chart)
    write_page(results, page, chart)

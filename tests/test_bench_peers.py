"""benchmarks/peers.py starts, parses its arguments and runs a tiny untimed round.

Nothing here is timed: speed is read from the benchmark's own table, never from a test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "peers.py"


def peers(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def measured(tmp_path: Path, *args: str) -> dict[str, Any]:
    """The results of a run of the script with ``args`` (no page rendered), which
    must exit 0."""
    out = tmp_path / "results.json"
    done = peers(*args, "--out", str(out), "--no-render", "--quiet")
    assert done.returncode == 0, done.stdout + done.stderr
    return dict(json.loads(out.read_text()))


def test_lists_every_row_and_says_which_need_the_bench_extra() -> None:
    """--list names the baselines and streamguard's rows, marks any row whose
    framework is not installed as skipped with the module it needs, and ends with the
    count of rows and of those skipped."""
    done = peers("--list")
    assert done.returncode == 0, done.stderr
    *rows, summary = done.stdout.splitlines()
    names = {line.split()[0] for line in rows}
    assert {"loop-untuned", "loop-tuned", "loop-floor", "sg-sync", "sg-dlq"} <= names
    assert {"sg-avro-registry", "fastavro-registry-loop"} <= names
    skipped = [line for line in rows if "(skipped: " in line]
    assert all("needs " in line for line in skipped)
    assert summary == f"{len(rows)} rows; " + (
        f"{len(skipped)} skipped here" if skipped else "none skipped"
    )


def test_refuses_an_unknown_contender() -> None:
    """An unknown --only name exits 2 before starting a broker and points at --list."""
    done = peers("--only", "no-such-row", "--no-render")
    assert done.returncode == 2
    assert "no-such-row" in done.stderr
    assert "--list" in done.stderr


def test_peers_and_json_loops_validate_with_a_twin_of_the_contract(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The peers and the hand-written JSON loops use a plain pydantic model and settings
    written out, so that their processes need no streamguard; both are held here to
    streamguard's own (one JSON Schema, the same verdicts on the data set)."""
    from pydantic import ValidationError

    from streamguard.demo.contracts import OrderPlaced
    from streamguard.runtime.service import CONSUMER_DEFAULTS

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from peerbench import dataset, events
    from peerbench.baselines import TUNED

    assert events.OrderPlaced.model_json_schema() == OrderPlaced.model_json_schema()
    assert dict(CONSUMER_DEFAULTS) == TUNED
    # The tuned loop's twin parses as a contract does.
    cache = OrderPlaced.model_config["cache_strings"]
    assert events.TunedOrderPlaced.model_config["cache_strings"] == cache
    assert events.OrderPlaced.model_config.get("cache_strings", True) != cache
    valid = dataset.json_value(7)
    twin = events.OrderPlaced.model_validate_json(valid)
    assert twin.model_dump() == OrderPlaced.model_validate_json(valid).model_dump()
    with pytest.raises(ValidationError):
        events.OrderPlaced.model_validate_json(dataset.invalid_value(7))


def test_a_peer_or_json_loop_worker_loads_no_streamguard() -> None:
    """A worker imports only its row's module: streamguard's would otherwise count in
    the RSS of every peer's process."""
    code = (
        "import sys, peers\n"
        "peers.worker_contender('aiokafka', 'peerbench.frameworks')\n"
        "peers.worker_contender('loop-tuned', 'peerbench.baselines')\n"
        "import peerbench.probe\n"
        "print(sorted(m for m in sys.modules if m.startswith('streamguard')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT / "benchmarks",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.broker
def test_confluent_framed_rows_read_records_through_the_embedded_registry(
    tmp_path: Path,
) -> None:
    """The avro-registry data set is written through a registry the run starts, and
    both rows that read it (streamguard's and the hand-written one) get every record."""
    out = tmp_path / "results.json"
    done = peers(
        "--records", "2000", "--rounds", "1", "--modes", "throughput",
        "--only", "sg-avro-registry", "fastavro-registry-loop",
        "--out", str(out), "--no-render", "--quiet",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out.read_text())
    for name in ("sg-avro-registry", "fastavro-registry-loop"):
        run = results["contenders"][name]["throughput"]["runs"][0]
        assert "error" not in run, run
        assert run["count"] == 2000
    assert 150 < results["meta"]["value_bytes"]["avro-registry"] < 250


@pytest.mark.broker
def test_tiny_round_writes_results_and_the_page_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 2,000-record round of two contenders (one of them a hand-written loop, whose
    worker loads no streamguard) reports each one's rate, CPU and RSS, and the page
    renders a row between the markers."""
    results = measured(
        tmp_path, "--records", "2000", "--rounds", "1", "--modes", "throughput",
        "--only", "sg-sync", "loop-untuned",
    )  # fmt: skip
    loop = results["contenders"]["loop-untuned"]["throughput"]["runs"][0]
    assert "error" not in loop, loop  # a worker that loads no streamguard
    assert loop["count"] == 2000
    run = results["contenders"]["sg-sync"]["throughput"]["runs"][0]
    assert "error" not in run, run
    assert run["count"] == 2000
    assert run["msg_per_s"] > 0
    assert run["cpu_s"] > 0
    assert run["rss_end_mib"] > 0
    assert results["meta"]["value_bytes"]["json"] > 300
    assert "librdkafka" in results["meta"]["versions"]

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from peerbench.render import BEGIN, END, write_page

    page = tmp_path / "benchmarks.md"
    page.write_text(f"# Benchmarks\n\nbefore\n\n{BEGIN}\nold\n{END}\n\nafter\n")
    write_page(results, page, tmp_path / "img" / "chart.png")
    text = page.read_text()
    assert "old" not in text
    assert text.index("\nbefore\n") < text.index(BEGIN) < text.index(END) < text.index("\nafter\n")
    rate = results["contenders"]["sg-sync"]["throughput"]["msg_per_s"]
    assert f"(`sg-sync`) | json | {rate:,} |  |" in text  # one run: no range to give
    assert results["meta"]["date"] in text
    commit = results["meta"]["commit"]  # the checkout measured, as git names it
    git = shutil.which("git") or "git"
    assert commit == subprocess.run(
        [git, "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=True,
    ).stdout.strip() + ("+changes" if commit.endswith("+changes") else "")  # fmt: skip
    assert f"(commit {commit})" in text
    assert "1 round;" in text
    assert "Read no target from fewer than 3 rounds." in text


def test_the_memory_pass_runs_alternating_rounds_and_shows_each_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--rss-rounds 2 runs each row twice over the same records; the table gives the
    median after the last record, every run's figure, and says how many runs it took."""
    results = measured(
        tmp_path, "--modes", "rss", "--rss-records", "2000", "--rss-rounds", "2",
        "--only", "sg-sync", "loop-untuned",
    )  # fmt: skip
    assert results["meta"]["rss_rounds"] == 2
    for name in ("sg-sync", "loop-untuned"):
        runs = results["contenders"][name]["rss"]["runs"]
        assert [r.get("count") for r in runs] == [2000, 2000], runs

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from peerbench.render import rss_table, section

    row = next(line for line in rss_table(results) if line.startswith("| `sg-sync`"))
    first, second = (r["rss_end_mib"] for r in results["contenders"]["sg-sync"]["rss"]["runs"])
    assert f"| {first:.1f}, {second:.1f} | 2,000 |" in row
    assert "the median of 2 runs a row" in section(results, "chart.png")


def test_the_latency_table_gives_each_runs_p50_and_p99(monkeypatch: pytest.MonkeyPatch) -> None:
    """The peers' table may say a p99 verdict's runs overlap: the reader sees them."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from peerbench.render import latency_table

    runs = [
        {"p50_ms": 9.9, "p99_ms": 46.8, "max_ms": 60.0, "latency_n": 10},
        {"p50_ms": 8.2, "p99_ms": 35.5, "max_ms": 65.3, "latency_n": 10},
    ]
    results = {
        "meta": {"latency": {"rate_per_s": 1000.0, "seconds": 10.0, "rounds": 2}},
        "contenders": {
            "sg-sync": {"latency": {"p50_ms": 9.05, "p99_ms": 41.2, "max_ms": 65.3, "runs": runs}}
        },
    }
    row = next(line for line in latency_table(results) if line.startswith("| `sg-sync`"))
    assert row == "| `sg-sync` | 9.1 | 41.2 | 65.3 | 9.9, 8.2 | 46.8, 35.5 | 20 |"


def test_refuses_a_memory_pass_of_no_rounds() -> None:
    """--rss-rounds 0 would run no row and publish an empty memory table: exit 2."""
    done = peers("--modes", "rss", "--rss-rounds", "0", "--no-render")
    assert done.returncode == 2
    assert "--rss-rounds must be at least 1" in done.stderr


def test_a_page_of_its_own_and_the_row_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--page naming a new file gets the tables under a pointer to the project's page;
    rows come as baselines, streamguard, peers, with a streamguard row held to a peer
    (the guarded Faust agent) last among streamguard's, next to the peers."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from peerbench.render import BEGIN, STANDALONE, ordered, write_page

    def row(baseline: str | None = None, *tags: str) -> dict[str, Any]:
        entry = {"msg_per_s": 10, "min": 9, "max": 11, "cpu_us_per_msg": 1.0,
                 "cpu_util": 1.0, "rss_start_mib": 50.0, "rss_end_mib": 60.0,
                 "runs": [{"msg_per_s": n} for n in (9, 10, 11)]}  # fmt: skip
        return {"label": "x", "data": "json", "baseline": baseline, "tags": list(tags),
                "throughput": entry}  # fmt: skip

    contenders = {
        "loop-untuned": row(None, "baseline"),
        "faust": row("loop-untuned"),
        "sg-faust": row("faust"),
        "aiokafka": row("loop-untuned"),
        "sg-sync": row("loop-untuned"),
    }
    assert [name for name, _ in ordered(contenders, "throughput")] == [
        "loop-untuned", "sg-sync", "sg-faust", "faust", "aiokafka",
    ]  # fmt: skip
    results = json.loads((ROOT / "benchmarks" / "results.json").read_text())
    results["contenders"] = contenders
    page = tmp_path / "new" / "page.md"
    page.parent.mkdir()
    write_page(results, page, tmp_path / "chart.png")
    text = page.read_text()
    assert text.startswith(STANDALONE)
    assert "docs/benchmarks.md" in STANDALONE
    assert text.index(BEGIN) > len(STANDALONE)
    assert "| 10 | 9-11 |" in text  # three runs: their range


def test_a_ratio_is_never_rounded_across_its_target(monkeypatch: pytest.MonkeyPatch) -> None:
    """A miss that two decimals would round up to the target, or a lead that they would
    round to level, gets a third decimal, so a figure never reads as the target next to
    "no"."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from peerbench.render import _ahead_text, _verdict_ratio

    assert _verdict_ratio(0.9455, 0.95) == "0.946"
    assert _verdict_ratio(0.9449, 0.95) == "0.94"
    assert _verdict_ratio(0.9501, 0.95) == "0.95"
    assert _verdict_ratio(0.9455, None) == "0.95"  # context rows have no target
    assert _ahead_text(0.9991) == "0.999"
    assert _ahead_text(1.0013) == "1.001"
    assert _ahead_text(1.16) == "1.16"


def test_a_row_ahead_of_its_feature_is_skipped_with_what_it_needs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A contender whose `needs` names a missing attribute or module reports it, one
    whose needs are met reports nothing, and a name cannot be registered twice."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from peerbench.registry import CONTENDERS, Contender, Run, contender

    def run(_: Run) -> None:
        raise AssertionError("never started here")

    ahead = Contender("x", "x", run, needs=("streamguard:NoSuchFeature",))
    assert ahead.missing() == "needs streamguard:NoSuchFeature"
    assert Contender("y", "y", run, needs=("no_such_module_xyz",)).missing() == (
        "needs no_such_module_xyz"
    )
    assert Contender("z", "z", run, needs=("streamguard:ConsumerService",)).missing() is None

    monkeypatch.setitem(CONTENDERS, "taken", ahead)
    with pytest.raises(ValueError, match="registered twice"):
        contender("taken", "again")(run)


def test_merge_keeps_earlier_passes_of_the_same_machine_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--merge adds the passes a run did not make from the earlier results, with their
    date; results from another machine, other versions or another data set (partitions,
    line items) are never mixed in."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import peers

    def results(date: str, cpu: str, passes: dict[str, object]) -> dict[str, object]:
        return {
            "meta": {
                "date": date,
                "passes": list(passes),
                "machine": {"cpu": cpu, "cores": 2, "python": "3.11.7"},
                "versions": {"streamguard": "0.1.0"},
            },
            "contenders": {"sg-sync": {"label": "sync", **passes}},
        }

    earlier = results("2026-12-01", "cpu A", {"throughput": {"old": 1}, "io": {"old": 2}})
    merged = peers.merge(earlier, results("2026-12-02", "cpu A", {"throughput": {"new": 1}}))
    row = merged["contenders"]["sg-sync"]
    assert row["throughput"] == {"new": 1}
    assert row["io"] == {"old": 2}
    assert merged["meta"]["earlier_passes"] == {"io": "2026-12-01"}

    # A pass made again is the new run's, even where an earlier merge had dated it; a
    # kept pass keeps the settings its caption names.
    merged["meta"] |= {"rounds": 5, "value_bytes": {"json": 390}}
    io_only = results("2026-12-03", "cpu A", {"io": {"new": 2}})
    io_only["meta"] |= {"rounds": 3, "value_bytes": {"io": 390}}
    again = peers.merge(merged, io_only)
    assert again["contenders"]["sg-sync"]["io"] == {"new": 2}
    assert again["meta"]["earlier_passes"] == {"throughput": "2026-12-02"}
    assert again["meta"]["rounds"] == 5
    assert again["meta"]["value_bytes"] == {"json": 390, "io": 390}
    # Rows a pass skipped (--only) keep their own date, named in that pass's caption.
    both = {"throughput": {"old": 1}}
    earlier = results("2026-12-01", "cpu A", both)
    earlier["contenders"]["aiokafka"] = {"label": "aiokafka", **both}
    subset = peers.merge(earlier, results("2026-12-02", "cpu A", {"throughput": {"new": 1}}))
    assert subset["contenders"]["aiokafka"]["throughput"] == {"old": 1}
    assert subset["meta"]["earlier_rows"] == {"throughput": {"aiokafka": "2026-12-01"}}
    assert "earlier_passes" not in subset["meta"]
    from peerbench.render import _earlier

    assert _earlier(subset, "throughput") == (
        " `aiokafka` measured 2026-12-01, same machine and versions."
    )
    assert _earlier(again, "io") == ""
    # Merged again by a run of another pass, that pass keeps its rows' own dates.
    later = peers.merge(subset, results("2026-12-03", "cpu A", {"io": {"new": 2}}))
    assert later["meta"]["earlier_passes"] == {"throughput": "2026-12-02"}
    assert later["meta"]["earlier_rows"] == {"throughput": {"aiokafka": "2026-12-01"}}
    # A run listing its rows in another order leaves them in the earlier results' order.
    shuffled = results("2026-12-04", "cpu A", {"io": {"new": 3}})
    shuffled["contenders"] = {"aiokafka": {"io": {"new": 3}}, **shuffled["contenders"]}
    assert list(peers.merge(later, shuffled)["contenders"]) == ["sg-sync", "aiokafka"]
    assert _earlier(later, "throughput") == (
        " Measured 2026-12-02, but `aiokafka` 2026-12-01; same machine and versions."
    )

    elsewhere = results("2026-12-01", "cpu B", {"io": {"old": 2}})
    alone = peers.merge(elsewhere, results("2026-12-02", "cpu A", {"throughput": {"new": 1}}))
    assert "io" not in alone["contenders"]["sg-sync"]
    assert "earlier_passes" not in alone["meta"]
    # Nor a run on another number of partitions (--partitions).
    wider = results("2026-12-02", "cpu A", {"throughput": {"new": 1}})
    wider["meta"]["partitions"] = 48
    apart = peers.merge(results("2026-12-01", "cpu A", {"io": {"old": 2}}), wider)
    assert "io" not in apart["contenders"]["sg-sync"]
    # Nor one on larger events (--line-items); results from before the option had 6.
    larger = results("2026-12-02", "cpu A", {"throughput": {"new": 1}})
    larger["meta"]["line_items"] = 60
    apart = peers.merge(results("2026-12-01", "cpu A", {"io": {"old": 2}}), larger)
    assert "io" not in apart["contenders"]["sg-sync"]
    same = results("2026-12-02", "cpu A", {"throughput": {"new": 1}})
    same["meta"]["line_items"] = 6
    kept = peers.merge(results("2026-12-01", "cpu A", {"io": {"old": 2}}), same)
    assert kept["contenders"]["sg-sync"]["io"] == {"old": 2}


def test_streamguard_rows_are_held_to_the_best_peer_of_each_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Higher is better for msg/s, lower for latency and memory; a row with no peer
    in its pass is left out rather than called ahead."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from peerbench.render import peers_table

    contenders = {
        "sg-sync": {"throughput": {"msg_per_s": 120_000}, "rss": {"rss_end_mib": 60.0}},
        "sg-async": {"latency": {"p99_ms": 40.0}},
        "aiokafka": {"throughput": {"msg_per_s": 80_000}, "rss": {"rss_end_mib": 55.0}},
        "quix": {"throughput": {"msg_per_s": 50_000}, "latency": {"p99_ms": 60.0}},
        "loop-tuned": {"tags": ["baseline"], "throughput": {"msg_per_s": 150_000}},
    }
    rows = {
        line.split("|")[1].strip() + " " + line.split("|")[2].strip(): line
        for line in peers_table({"contenders": contenders})
        if line.startswith("| `")
    }
    assert rows.keys() == {"`sg-sync` throughput", "`sg-async` latency", "`sg-sync` rss"}
    assert "80,000 (`aiokafka`) | 1.50x | yes |" in rows["`sg-sync` throughput"]
    assert "60.0 (`quix`) | 1.50x | yes |" in rows["`sg-async` latency"]
    assert "55.0 (`aiokafka`) | 0.92x | **no** |" in rows["`sg-sync` rss"]


def test_a_verdict_within_the_runs_spread_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """Medians 7.2 against 7.3 ms, from runs of 6.5-7.6 and 5.9-7.6: ahead, but the
    runs overlap; runs that do not meet, or a single run, say nothing more."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from peerbench.render import peers_table

    def latency(p50: float, *runs: float) -> dict[str, Any]:
        return {"latency": {"p50_ms": p50, "runs": [{"p50_ms": r} for r in runs]}}

    def verdict(ours: dict[str, Any], peer: dict[str, Any]) -> str:
        table = peers_table({"contenders": {"sg-sync": ours, "aiokafka": peer}})
        return next(line for line in table if line.startswith("| `")).split("|")[-2].strip()

    assert verdict(latency(7.2, 6.5, 7.6), latency(7.3, 5.9, 7.6)) == "yes (runs overlap)"
    assert verdict(latency(7.5, 7.0, 8.6), latency(7.3, 5.9, 7.6)) == "**no** (runs overlap)"
    assert verdict(latency(5.0, 4.8, 5.2), latency(7.3, 5.9, 7.6)) == "yes"
    assert verdict(latency(5.0, 4.8), latency(7.3, 5.9, 7.6)) == "yes"


def test_rows_held_to_a_baseline_run_next_to_it_and_are_compared_round_by_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The throughput pass runs each row held to a baseline right after it (its other
    baselines right after the row), and the targets table gives the rounds' ratios, but
    only for two rows of one run."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from peerbench.contenders import CONTENDERS
    from peerbench.render import _round_ratios
    from peerbench.runner import paired

    order = [c.name for c in paired([c for c in CONTENDERS.values() if "throughput" in c.modes])]
    assert sorted(order) == sorted(n for n, c in CONTENDERS.items() if "throughput" in c.modes)
    at = order.index
    assert at("sg-sync") == at("loop-untuned") + 1
    assert at("loop-tuned") == at("sg-sync") + 1
    assert at("sg-faust") == at("faust") + 1
    assert at("sg-avro") == at("fastavro-loop") + 1

    def row(*rates: float) -> dict[str, object]:
        runs = [{"msg_per_s": r} if r else {"error": "exit 1"} for r in rates]
        return {"throughput": {"runs": runs}}

    results = {
        "meta": {},
        "contenders": {"sg-sync": row(90, 0, 120), "loop-untuned": row(100, 100, 100)},
    }
    assert _round_ratios(results, "sg-sync", "loop-untuned") == [0.9, 1.2]
    results["meta"] = {"earlier_rows": {"throughput": {"loop-untuned": "2026-12-01"}}}
    assert _round_ratios(results, "sg-sync", "loop-untuned") == []


def test_a_framework_import_warning_forced_on_is_not_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module that forces its own warning on at import (as authlib does in the bench
    venv) is imported by ``missing()`` and the rows without the warning escaping."""
    import warnings

    (tmp_path / "noisy_framework_xyz.py").write_text(
        "import warnings\n"
        "class Noisy(DeprecationWarning): pass\n"
        "warnings.simplefilter('always', Noisy)\n"
        "warnings.warn(Noisy('deprecated at import'))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.delitem(sys.modules, "noisy_framework_xyz", raising=False)
    from peerbench.registry import import_quietly

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        module = import_quietly("noisy_framework_xyz")
    assert module.__name__ == "noisy_framework_xyz"
    assert seen == []

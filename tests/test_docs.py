"""The Python code blocks of every documentation page run as written, the
guide's ServiceOptions table matches the dataclass, the runbook's metric and log tables
match what the runtime registers and logs, the docs' links find their pages, and the
pages that promise value-free error texts warn about a handler's own."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from streamguard.devbroker import DevBroker

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


# `<!-- docs-test: skip (why) -->` on the line before a fence (invisible when rendered)
# marks a block that cannot run on its own: a fragment continuing an earlier one, say.
SKIP = re.compile(r"^<!-- docs-test: skip \(.+\) -->\n```python\n", re.MULTILINE)
# The address `streamguard broker` listens on by default, as the pages write it.
LOCAL_BROKER = "127.0.0.1:9092"


def _blocks(page: str) -> list[str]:
    return BLOCK.findall((ROOT / page).read_text())


def _runnable_blocks(page: str) -> list[str]:
    """The page's python blocks but those marked to skip, each preceded by blank lines
    so that a traceback's line number is the page's."""
    text = (ROOT / page).read_text()
    assert text.count("<!-- docs-test: skip") == len(SKIP.findall(text)), (
        f"{page}: a docs-test skip marker without a reason or not right before a python block"
    )
    text = SKIP.sub("\n```skipped\n", text)  # the same lines, the block no longer python
    return ["\n" * text.count("\n", 0, m.start(1)) + m[1] for m in BLOCK.finditer(text)]


def _python_pages() -> list[str]:
    """Every page with a python block: the README, docs/, and the pages of benchmarks/,
    deploy/, examples/ and schemas/, so that a new page is run without being listed here."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for folder in ("benchmarks", "deploy", "examples", "schemas"):
        pages += sorted((ROOT / folder).glob("**/*.md"))
    found = [str(p.relative_to(ROOT)) for p in pages if "```python" in p.read_text()]
    assert {"README.md", "docs/consumer.md"} <= set(found)
    return found


@pytest.mark.parametrize("page", _python_pages())
def test_python_blocks_run(
    page: str, own_broker: DevBroker, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Each ```python block of the page executes without error against a real broker,
    the one the suite runs in place of the local broker the pages address. Pages import
    the README's quick start as `myapp`, as its reader saves it. A broker of the page's
    own: the pages write to fixed topics (`orders`), and the local broker guide's invalid
    records, left on the worker's broker, were dead-lettered by the Faust example's test
    in the same worker."""
    bootstrap = own_broker.bootstrap_servers
    monkeypatch.setenv("STREAMGUARD_BOOTSTRAP_SERVERS", bootstrap)
    (tmp_path / "myapp.py").write_text(_blocks("README.md")[0])
    monkeypatch.syspath_prepend(str(tmp_path))
    blocks = _runnable_blocks(page)
    assert blocks, f"{page} has no python block that runs"
    try:
        for code in blocks:
            namespace: dict[str, object] = {"__name__": "__main__"}  # as `python file.py`
            code = code.replace(LOCAL_BROKER, bootstrap)
            exec(compile(code, page, "exec"), namespace)  # noqa: S102  # our own documentation
    finally:
        sys.modules.pop("myapp", None)


def test_readme_quick_start_delivers_a_stamped_event(
    bootstrap: str,
    monkeypatch: pytest.MonkeyPatch,
    read_all: Callable[..., list[Any]],
    unique: Callable[[str], str],
) -> None:
    """The quick start's producer really delivers one event with the schema headers."""
    monkeypatch.setenv("STREAMGUARD_BOOTSTRAP_SERVERS", bootstrap)
    topic = unique("shop.orders")
    code = _blocks("README.md")[0].replace('"shop.orders"', f'"{topic}"')
    exec(compile(code, "README.md", "exec"), {"__name__": "__main__"})  # noqa: S102
    (record,) = read_all(topic, 1)
    headers = dict(record.headers())
    assert headers["sg-subject"] == b"shop.OrderPlaced"
    assert headers["sg-version"] == b"1"
    assert record.key() == b"customer-7"


def test_testing_guide_integration_example_passes(tmp_path: Path) -> None:
    """The integration example of docs/testing.md passes under pytest as written, with
    its own embedded broker (a test module of a user's project)."""
    (tmp_path / "test_refunds.py").write_text(_blocks("docs/testing.md")[1])
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "1 passed" in done.stdout


def test_testing_guide_example_tests_pass() -> None:
    """The example tests of docs/testing.md run and pass, with no broker."""
    code = _blocks("docs/testing.md")[0]
    namespace: dict[str, Any] = {"__name__": "docs_testing"}
    exec(compile(code, "docs/testing.md", "exec", dont_inherit=True), namespace)  # noqa: S102
    tests = [fn for name, fn in namespace.items() if name.startswith("test_")]
    assert len(tests) == 5
    for test in tests:
        test()


def test_consumer_guide_lists_every_service_option_with_its_default() -> None:
    """docs/consumer.md's ServiceOptions table names each option once, with the default
    the dataclass has: a new option, or a changed default, fails here until documented."""
    from dataclasses import fields

    import streamguard as sg

    page = (ROOT / "docs" / "consumer.md").read_text()
    section = page.split("## ServiceOptions\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| `([^`]+)` \|", section, re.MULTILINE)
    documented = dict(rows)
    assert len(rows) == len(documented), "an option is listed twice"
    expected = {f.name: repr(f.default).replace("'", '"') for f in fields(sg.ServiceOptions)}
    assert documented == expected


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"```.*?```", re.DOTALL)


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = FENCE.sub("", page.read_text())
    headings = re.findall(r"^#+ (.+)$", text, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def _pages() -> list[Path]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [*pages, *sorted((ROOT / "deploy").glob("**/*.md"))]


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    """Every link to a file of the repository, and to a heading in it, finds its target:
    pages move between files (the benchmark notes did), and a link must move with them."""
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        headed = linked.suffix == ".md" and linked.exists()
        if not linked.exists() or (anchor and headed and anchor not in _anchors(linked)):
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: links to nothing: {broken}"


@pytest.mark.parametrize("page", ["docs/consumer.md", "docs/security.md"])
def test_docs_warn_that_a_raised_streamguard_errors_text_is_written_as_is(page: str) -> None:
    """A handler's ``sg.PermanentError(f"... {event.email}")`` puts the value in the DLQ
    with default settings (tests/test_deadletter.py pins it): the pages that promise
    value-free error texts must say so, and promise nothing broader."""
    text = " ".join((ROOT / page).read_text().split())
    assert "is written as is" in text or "written to `sg-dlq-error-message` as is" in text
    assert "Never put field values in it" in text
    assert "Error texts never contain field values" not in text


def _runbook_section(title: str) -> str:
    page = (ROOT / "docs" / "operations.md").read_text()
    return page.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_runbook_lists_every_metric_the_runtime_registers() -> None:
    """docs/operations.md's metric table names each family a service registers, once, with
    its type: a new metric fails here until the runbook has it."""
    from prometheus_client import CollectorRegistry

    from streamguard.observe.metrics import ServiceMetrics

    registry = CollectorRegistry()
    ServiceMetrics(registry)
    exported = {
        f"{family.name}_total" if family.type == "counter" else family.name: family.type
        for family in registry.collect()
    }
    rows = re.findall(
        r"^\| `(streamguard_\w+)` \| (\w+) \|", _runbook_section("Health endpoints"), re.MULTILINE
    )
    assert len(rows) == len(dict(rows)), "a metric is listed twice"
    assert dict(rows) == exported


def _logged_events(package: str = "runtime") -> set[str]:
    """The text of every log line the consumer runtime (or another package of
    streamguard's, without the shared modules) writes at info level or above."""
    import ast

    sources = [*sorted((ROOT / "streamguard" / package).glob("*.py"))]
    if package == "runtime":
        sources += [ROOT / "streamguard" / "deadletter.py", ROOT / "streamguard" / "headers.py"]
        # The drift check of Confluent-framed records, on the runtime's logger.
        sources.append(ROOT / "streamguard" / "registry" / "drift.py")
        # The DLQ size warning, which guarded Faust agents write too.
        sources.append(ROOT / "streamguard" / "topics.py")
    events = set()
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in {"info", "warning", "error", "exception", "critical"}
                and isinstance(node.func.value, ast.Name | ast.Attribute)
                and (
                    getattr(node.func.value, "id", None) == "log"
                    or getattr(node.func.value, "attr", None) == "_log"
                )
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                events.add(node.args[0].value)
    return events


def test_runbook_lists_every_log_line_of_the_runtime() -> None:
    """docs/operations.md's log table names each event the runtime logs (info and up),
    and only those: an operator greps for these texts."""
    rows = re.findall(
        r"^\| `([^`]+)`(?: / `([^`]+)`)?", _runbook_section("Structured logs"), re.MULTILINE
    )
    documented = {event for row in rows for event in row if event} - {"event"}
    assert documented == _logged_events()


def test_runbook_lists_every_log_line_of_the_faust_agents() -> None:
    """The guarded Faust agents' own log lines have a table of their own: their line for
    an unwritable DLQ is worded unlike the service's, and an operator greps for it."""
    rows = re.findall(
        r"^\| `([^`]+)`", _runbook_section("Structured logs of guarded Faust agents"), re.M
    )
    assert set(rows) - {"event"} == _logged_events("faust")


def test_no_install_hint_fetches_the_unrelated_pypi_project() -> None:
    """``streamguard`` on PyPI is someone else's package (a voice-stream tool): a doc or
    an error message saying ``pip install 'streamguard[faust]'`` installs it. Extras are
    installed from a checkout (``pip install -e '.[faust]'``)."""
    texts = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "deploy").rglob("*")]
    texts += [*(ROOT / "examples").rglob("*"), *(ROOT / "streamguard").rglob("*.py")]
    hint = re.compile(r"pip install\s+['\"]?streamguard\b")
    offending = [
        str(path.relative_to(ROOT))
        for path in texts
        if path.is_file() and path.suffix != ".pyc" and hint.search(path.read_text())
    ]
    assert offending == []

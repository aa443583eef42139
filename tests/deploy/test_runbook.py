"""docs/operations.md names every metric the service exports and every line it logs.

The on-call reader looks a metric or a log line up in the runbook's tables: one the
code emits and the tables leave out is a dead end at the worst time.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from streamguard.observe.metrics import ServiceMetrics
from tests.deploy.conftest import ROOT

RUNBOOK = (ROOT / "docs" / "operations.md").read_text()
LEVELS = {"info", "warning", "error", "exception", "critical"}  # debug is off by default


def section(heading: str) -> str:
    """The text of a ``## heading`` section of the runbook."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", RUNBOOK, re.M | re.S)
    assert match, f"docs/operations.md has no section {heading}"
    return match.group(1)


def table_names(text: str) -> set[str]:
    """The backticked names in the first column of a Markdown table."""
    cells = re.findall(r"^\| ([^|]+) \|", text, re.M)
    return {name for cell in cells for name in re.findall(r"`([^`]+)`", cell)}


def logged_events(path: Path) -> set[str]:
    """The constant messages a module passes to ``log.<level>(...)``."""
    events = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in LEVELS
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "log"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            events.add(node.args[0].value)
    return events


def test_the_metrics_table_lists_every_family_a_service_exports() -> None:
    """Each family ServiceMetrics registers has a row in the runbook's metrics table."""
    registry = CollectorRegistry()
    ServiceMetrics(registry)
    exported = set()
    for family in registry.collect():
        suffix = "_total" if family.type == "counter" else ""
        exported.add(family.name + suffix)
    listed = table_names(section("Health endpoints"))
    assert exported - listed == set(), "metrics missing from docs/operations.md"
    assert {name for name in listed if name.startswith("streamguard_")} <= exported


def test_the_log_table_lists_every_line_the_runtime_logs() -> None:
    """Each constant log message of the consumer runtime has a row in the log table."""
    events = set()
    for path in sorted((ROOT / "streamguard" / "runtime").glob("*.py")):
        events |= logged_events(path)
    assert len(events) > 20
    listed = table_names(section("Structured logs"))
    assert events - listed == set(), "log lines missing from docs/operations.md"

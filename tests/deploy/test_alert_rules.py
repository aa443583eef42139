"""The alert rules are valid, their unit tests pass, and each links its runbook section."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry

from streamguard.observe.metrics import ServiceMetrics
from tests.deploy.conftest import PROMETHEUS_DIR, ROOT

ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERT_TESTS = PROMETHEUS_DIR / "alerts.test.yml"
RUNBOOK = ROOT / "docs" / "operations.md"
RUNBOOK_URL = "https://github.com/streamguard/streamguard/blob/main/docs/operations.md"

EXPECTED_ALERTS = {
    "StreamguardDeadLettersArriving",
    "StreamguardDeadLetterQueueUnwritable",
    "StreamguardCommitFailures",
    "StreamguardPartitionsPausedLong",
    "StreamguardConsumerLagGrowing",
    "StreamguardHandlerLatencyHigh",
    "StreamguardSchemaDrift",
    "StreamguardTargetDown",
    "StreamguardNotReady",
    "StreamguardCircuitBreakerOpen",
    "StreamguardHandlersAtLimit",
    "StreamguardPartitionsLost",
    "StreamguardRebalancing",
}


@dataclass
class Rule:
    """One alert rule as written in alerts.yml: its name, annotation keys and raw text."""

    name: str
    text: list[str] = field(default_factory=list)

    def annotation(self, key: str) -> str | None:
        for line in self.text:
            match = re.match(rf"\s+{key}:\s*(.*)$", line)
            if match:
                return match.group(1).strip().strip("\"'")
        return None


def parse_rules(path: Path) -> list[Rule]:
    """Split alerts.yml into its alert rules (the file has one group of flat rules).

    PyYAML is not a dependency, so this reads the layout alerts.yml keeps; the count is
    checked against promtool's own in ``test_rules_file_is_valid``.
    """
    rules: list[Rule] = []
    for line in path.read_text().splitlines():
        match = re.match(r"\s+- alert:\s*(\S+)\s*$", line)
        if match:
            rules.append(Rule(match.group(1)))
        elif rules:
            rules[-1].text.append(line)
    return rules


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def runbook_anchors() -> set[str]:
    headings = re.findall(r"^#{1,6} (.+)$", RUNBOOK.read_text(), flags=re.MULTILINE)
    return {github_anchor(h) for h in headings}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def test_rules_file_is_valid(promtool: str) -> None:
    """`promtool check rules` accepts alerts.yml and counts as many rules as we parse."""
    result = run(promtool, "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(parse_rules(ALERTS))} rules found" in result.stdout


def test_rule_unit_tests_pass(promtool: str) -> None:
    """`promtool test rules` passes every firing and non-firing case in alerts.test.yml."""
    result = run(promtool, "test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_example_prometheus_config_is_valid(promtool: str) -> None:
    """`promtool check config` accepts the example prometheus.yml and its rule file."""
    result = run(promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_expected_alerts_exist() -> None:
    """alerts.yml defines exactly the alerts the runbook documents, each once."""
    names = [rule.name for rule in parse_rules(ALERTS)]
    assert sorted(names) == sorted(EXPECTED_ALERTS)


def test_every_alert_links_an_existing_runbook_section() -> None:
    """Each alert's runbook_url is docs/operations.md#<its name>, and that heading exists."""
    anchors = runbook_anchors()
    for rule in parse_rules(ALERTS):
        url = rule.annotation("runbook_url")
        assert url == f"{RUNBOOK_URL}#{rule.name.lower()}", rule.name
        assert rule.name.lower() in anchors, f"docs/operations.md has no section {rule.name}"


def test_every_alert_has_summary_description_and_severity() -> None:
    """Each alert carries a summary, a description and a severity label for routing."""
    for rule in parse_rules(ALERTS):
        assert rule.annotation("summary"), rule.name
        assert rule.annotation("description"), rule.name
        assert rule.annotation("severity") in {"critical", "warning", "info"}, rule.name


def test_alerts_use_only_metrics_streamguard_exports() -> None:
    """Every streamguard_* series an alert queries is one ServiceMetrics registers."""
    registry = CollectorRegistry()
    ServiceMetrics(registry)
    exported = {sample.name for family in registry.collect() for sample in family.samples} | {
        family.name for family in registry.collect()
    }
    for rule in parse_rules(ALERTS):
        used = set(re.findall(r"\bstreamguard_[a-z_]+", "\n".join(rule.text)))
        # Labelled families have no samples until first use; their names end in _total.
        missing = {
            name
            for name in used
            if name not in exported
            and name.removesuffix("_total") not in exported
            and name.removesuffix("_bucket") not in exported
        }
        assert not missing, f"{rule.name} queries unknown metrics {sorted(missing)}"


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    """alerts.test.yml expects each alert to fire in one case and stay silent in another."""
    text = ALERT_TESTS.read_text()
    cases = re.findall(r"alertname:\s*(\S+)\s*\n\s*exp_alerts:\s*(\[\])?", text)
    firing = {name for name, empty in cases if not empty}
    silent = {name for name, empty in cases if empty}
    assert firing == EXPECTED_ALERTS
    assert silent == EXPECTED_ALERTS


def kept_labels(expr: str) -> set[str] | None:
    """The labels an alert's series keep: those every ``by (...)`` of its expression
    keeps (``le`` is spent by ``histogram_quantile``); None when nothing aggregates, so
    the selected series keep all of theirs."""
    clauses = [
        {label.strip() for label in group.split(",") if label.strip()}
        for group in re.findall(r"\bby\s*\(([^)]*)\)", expr)
    ]
    if not clauses:
        return None
    kept = set.intersection(*clauses)
    return kept - {"le"} if "histogram_quantile" in expr else kept


def test_annotations_name_only_labels_their_expression_keeps() -> None:
    """A ``$labels.X`` its expression aggregates away renders ``<no value>`` in every
    alert: each one must be in the labels every ``by (...)`` keeps."""
    checked = 0
    for rule in parse_rules(ALERTS):
        expr_lines: list[str] = []
        annotations: list[str] = []
        section = ""
        for line in rule.text:
            key = re.match(r"\s{8}(\w+):", line)
            if key:
                section = key.group(1)
            if section == "expr":
                expr_lines.append(line)
            elif section == "annotations":
                annotations.append(line)
        kept = kept_labels(" ".join(expr_lines))
        if kept is None:
            continue
        used = set(re.findall(r"\$labels\.(\w+)", " ".join(annotations)))
        assert used, rule.name
        assert used <= kept, f"{rule.name}: {sorted(used - kept)} aggregated away"
        checked += 1
    assert checked >= 8  # the aggregating rules were found

"""Rendering compatibility results: text for people, JSON for machines, GitHub annotations.

The report is what a developer reads when CI refuses their change, so each breaking
change says the subject, the versions compared, where (as the data is addressed:
``customer.tier``), the stable rule id, who breaks on what, and how to fix it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from streamguard.schema.checks import Comparison, SubjectResult
from streamguard.schema.modes import directions

FORMATS = ("text", "json", "github")


def _entries(
    comparisons: Iterable[Comparison], mode: str | None, everything: bool
) -> list[dict[str, Any]]:
    out = []
    for comp in comparisons:
        wanted = comp.changes if (everything or mode is None) else comp.breaking(mode)
        for change in wanted:
            required = directions(mode) if mode else change.breaking_in
            is_breaking = bool(change.breaking_in & required)
            out.append(
                {
                    "subject": comp.subject,
                    "old_version": comp.old,
                    "new_version": comp.new,
                    "path": change.field_path,
                    "pointer": change.pointer,
                    "rule": change.rule,
                    "breaking": is_breaking,
                    "breaking_in": sorted(change.breaking_in),
                    "message": change.message(comp.old, comp.new),
                    "hint": change.hint,
                }
            )
    return out


def result_groups(results: Iterable[SubjectResult]) -> list[tuple[str, list[Comparison]]]:
    """``render``'s groups for checked subjects: each one's version problems (``ALWAYS``),
    then its comparisons in its mode."""
    groups: list[tuple[str, list[Comparison]]] = []
    for r in results:
        if r.problems:
            groups.append(("ALWAYS", r.problems))
        groups.append((r.mode, r.comparisons))
    return groups


def render(
    groups: list[tuple[str, list[Comparison]]],
    fmt: str,
    *,
    everything: bool = False,
) -> str:
    """Render ``(mode, comparisons)`` groups; ``everything`` lists non-breaking changes too.

    A mode of ``"ALWAYS"`` marks comparisons whose changes break regardless of mode
    (a schema changed without a version bump).
    """
    entries: list[dict[str, Any]] = []
    for mode, comps in groups:
        for entry in _entries(comps, None if mode == "ALWAYS" else mode, everything):
            entry["mode"] = mode
            entries.append(entry)
    if fmt == "json":
        return json.dumps(entries, indent=2)
    if fmt == "github":
        return "\n".join(_github(e) for e in entries if e["breaking"])
    return _text(groups, entries)


def _escape(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _github(entry: dict[str, Any]) -> str:
    title = _escape(f"{entry['subject']} {entry['rule']}").replace(",", "%2C").replace(":", "%3A")
    body = f"{entry['old_version']} -> {entry['new_version']} ({entry['mode']}): {entry['message']}"
    if entry["hint"]:
        body += f" Fix: {entry['hint']}."
    return f"::error title={title}::{_escape(body)}"


def _text(groups: list[tuple[str, list[Comparison]]], entries: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    for mode, comps in groups:
        for comp in comps:
            mine = [
                e
                for e in entries
                if e["subject"] == comp.subject
                and e["old_version"] == comp.old
                and e["new_version"] == comp.new
                and e["mode"] == mode
            ]
            bad = [e for e in mine if e["breaking"]]
            verdict = f"{len(bad)} breaking change(s)" if bad else "compatible"
            label = "version check" if mode == "ALWAYS" else mode
            lines.append(f"{comp.subject}: {comp.old} -> {comp.new} [{label}]: {verdict}")
            for e in mine:
                mark = "BREAKING" if e["breaking"] else "ok"
                lines.append(f"  {mark:8} {e['path']}  {e['rule']}")
                lines.append(f"           {e['message']}")
                if e["breaking"] and e["hint"]:
                    lines.append(f"           hint: {e['hint']}")
    return "\n".join(lines)

"""Rendering compatibility results: text for people, JSON for machines, GitHub annotations.

The report is what a developer reads when CI refuses their change, so each breaking
change says the subject, the versions compared, where (as the data is addressed:
``customer.tier``), the stable rule id, who breaks on what, and how to fix it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from streamguard.config import MODES
from streamguard.schema.changes import Change
from streamguard.schema.checks import Comparison, SubjectResult
from streamguard.schema.modes import directions

FORMATS = ("text", "json", "github")
# A version problem lists the changes behind it up to this many in text and github;
# json lists all. A rewrite beyond it is better read with `schema diff`.
LISTED = 20


def _typed(entry: dict[str, Any], change: Change) -> dict[str, Any]:
    """``entry`` with ``old_type`` and ``new_type`` for a change of type (the keys are
    absent otherwise, so the entries of other rules read as before)."""
    if change.types:
        entry["old_type"], entry["new_type"] = change.old_type, change.new_type
    return entry


def _types(entry: dict[str, Any]) -> str:
    """`` old -> new`` after a rule, for a change of type."""
    return f" {entry['old_type']} -> {entry['new_type']}" if "old_type" in entry else ""


def _changed(detail: Comparison) -> list[dict[str, Any]]:
    """The changes behind a version problem, by field, rule and (for a change of type)
    types only: never a value or a default, so that a CI log cannot leak data."""
    return [
        _typed(
            {
                "path": c.field_path,
                "pointer": c.pointer,
                "rule": c.rule,
                "breaking_in": sorted(c.breaking_in),
            },
            c,
        )
        for c in detail.changes
    ]


def _changed_label(entry: dict[str, Any]) -> str:
    """``what changed``, naming the versions where they differ from the entry's (the
    wire formats of a ``__wire_format__`` switch)."""
    old, new = entry["changed_versions"]
    if (old, new) == (entry["old_version"], entry["new_version"]):
        return "what changed"
    return f"what changed ({old} -> {new})"


def _changed_items(entry: dict[str, Any], sep: str = "  ") -> list[str]:
    """One short item per change behind a version problem (``path  RULE (breaks ...)``),
    capped at ``LISTED``; what the developer acts on when CI refuses an unbumped change."""
    changed: list[dict[str, Any]] = entry["changed"]
    if not changed:
        # The fingerprint covers what the differ ignores, as it never changes which values
        # are valid: annotations (a docstring is a description) and an Avro field order.
        return [
            "nothing that changes which values are valid: a default, title, description "
            "(docstring) or example, or the Avro field order; compare the stored file with "
            "`streamguard schema export`"
        ]
    items = [
        f"{c['path']}{sep}{c['rule']}{_types(c)}"
        + (f" (breaks {' and '.join(c['breaking_in'])})" if c["breaking_in"] else "")
        for c in changed[:LISTED]
    ]
    if len(changed) > LISTED:
        items.append(
            f"(+{len(changed) - LISTED} more: `streamguard schema diff {entry['subject']}`)"
        )
    return items


def _entries(
    comparisons: Iterable[Comparison], mode: str | None, everything: bool
) -> list[dict[str, Any]]:
    out = []
    for comp in comparisons:
        wanted = comp.changes if (everything or mode is None) else comp.breaking(mode)
        for change in wanted:
            required = directions(mode) if mode else change.breaking_in
            is_breaking = bool(change.breaking_in & required)
            entry: dict[str, Any] = {
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
            _typed(entry, change)
            if comp.detail is not None:
                entry["changed"] = _changed(comp.detail)
                entry["changed_versions"] = [comp.detail.old, comp.detail.new]
            out.append(entry)
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


def _annotation(level: str, title: str, message: str) -> str:
    """A GitHub Actions workflow command, its title and message escaped as it reads them."""
    title = _escape(title).replace(",", "%2C").replace(":", "%3A")
    return f"::{level} title={title}::{_escape(message)}"


def github_error(title: str, message: str) -> str:
    """A GitHub Actions ``::error`` annotation: a check that could not run shows on the
    run's summary as a failed comparison does, not only in the step's log."""
    return _annotation("error", title, message)


def github_warning(title: str, message: str) -> str:
    """A GitHub Actions ``::warning`` annotation: shown on the run, without failing it."""
    return _annotation("warning", title, message)


def _github(entry: dict[str, Any]) -> str:
    title = f"{entry['subject']} {entry['rule']}".strip()  # two files name no subject
    body = f"{entry['old_version']} -> {entry['new_version']} ({entry['mode']}): {entry['message']}"
    if "changed" in entry:
        label = _changed_label(entry).replace("what", "What", 1)
        body += f" {label}: {'; '.join(_changed_items(entry, ' '))}."
    if entry["hint"]:
        body += f" Fix: {entry['hint']}."
    return _annotation("error", title, body)


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
            subject = f"{comp.subject}: " if comp.subject else ""
            lines.append(f"{subject}{comp.old} -> {comp.new} [{label}]: {verdict}")
            for e in mine:
                mark = "BREAKING" if e["breaking"] else "ok"
                lines.append(f"  {mark:8} {e['path']}  {e['rule']}{_types(e)}")
                message = e["message"]
                if not e["breaking"] and e["breaking_in"] and mode in MODES:
                    # An ok line whose sentence says which consumers reject what read
                    # like a failure: say why the mode lets it pass.
                    broken = " or ".join(e["breaking_in"])
                    message += f" Allowed under {mode}, which does not check {broken}."
                lines.append(f"           {message}")
                if "changed" in e:
                    label = f"{_changed_label(e)}: "
                    for i, item in enumerate(_changed_items(e)):
                        lines.append(" " * 11 + (label if i == 0 else " " * len(label)) + item)
                if e["breaking"] and e["hint"]:
                    lines.append(f"           hint: {e['hint']}")
    return "\n".join(lines)

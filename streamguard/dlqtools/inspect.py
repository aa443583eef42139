"""What a DLQ holds, grouped so an operator sees the few causes behind many records.

Records are grouped by original topic, reason, error class and expected contract; each
group shows its count, when its first and last record was dead-lettered, how many came
back after a replay (``sg-replay-count``), and one example: where it sits in the DLQ
and the original topic, and pydantic's error locations. Field values (the record's key
and value, and a handler's free-form error text, which may quote them) are shown only
when asked for with ``show_values``. A decode
error's text is shown always: streamguard's codecs build it from positions, sizes,
limits, schema ids and exception class names, never from the input, and ``dlq replay
--revalidate`` prints the same text for the same record.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from streamguard import headers as h
from streamguard.dlqtools.reader import DlqRecord
from streamguard.dlqtools.replay import replay_count
from streamguard.dlqtools.selection import Selection, dead_lettered_ms, format_ms
from streamguard.errors import DecodeError
from streamguard.observe.untrusted import cut, escaped, printable, quoted
from streamguard.topics import dead_letter_topic_for, is_dead_letter_topic

MAX_SHOWN_VALUE = 200
# A table cell holds header text anyone can write: one forged value of megabytes would
# widen every row of the table to its length. JSON shows the values whole.
MAX_SHOWN_CELL = 100
MAX_SHOWN_ERRORS = 3
# Distinct error locations tallied per group. A location may hold a dict key (a SKU, an
# id) or a forged name, so each record can bring new ones: untallied, 50,000 records of
# 60 such errors each took 890 MB. Occurrences past the cap are only counted.
MAX_LOCATIONS = 1000
# The dead letters whose error text holds no input: a codec's DecodeError, the one error
# the runtime gives these reasons. Other texts may quote data: a handler's exception kept
# with include_error_text, a violation described by a codec with include_input=True.
DECODE_REASONS = frozenset({"decode_error", "oversize"})
DECODE_ERROR_CLASS = f"{DecodeError.__module__}.{DecodeError.__qualname__}"


@dataclass(frozen=True, order=True, slots=True)
class GroupKey:
    """What records of one group have in common."""

    original_topic: str
    reason: str
    error_class: str
    expected: str  # "subject v<version>"


@dataclass
class Group:
    """Counts, time span and the first record of one group."""

    key: GroupKey
    count: int = 0
    first_ms: int = -1
    last_ms: int = -1
    example: dict[str, Any] = field(default_factory=dict)
    # How often each error location occurs in the group: one cause often hides two.
    locations: Counter[str] = field(default_factory=Counter)
    # Occurrences of locations left out of ``locations`` once it held MAX_LOCATIONS.
    locations_left_out: int = 0
    # Records dead-lettered again after a replay (sg-replay-count set): a fix that did
    # not hold, or a loop on its way to the replay limit. An unreadable count counts.
    replayed: int = 0
    max_replay_count: int = 0


@dataclass
class Summary:
    """The whole DLQ (or its first ``limit`` records) as groups, largest first."""

    topic: str
    records: int = 0
    groups: dict[GroupKey, Group] = field(default_factory=dict)
    ends: dict[int, int] = field(default_factory=dict)
    stopped_idle: bool = False
    # ``limit`` stopped the read with records left: ``read_to`` says where, per partition.
    limited: bool = False
    read_to: dict[int, int] = field(default_factory=dict)
    # The records between the start and the ends: how many the DLQ holds, unlimited.
    total: int | None = None
    # Records with no ``sg-dlq-*`` header at all: streamguard did not write them, so
    # they are no dead letters, and the topic read is most likely not a DLQ.
    without_dlq_headers: int = 0
    # --where/--since/--until: the records read that it left out of the groups.
    selection: Selection = field(default_factory=Selection)
    not_selected: int = 0

    def ordered(self) -> list[Group]:
        return sorted(self.groups.values(), key=lambda g: (-g.count, g.key))


def _shown(data: bytes | None) -> str | None:
    return None if data is None else escaped(data, MAX_SHOWN_VALUE)


def _loc(error: dict[str, Any]) -> str:
    loc = error.get("loc", [])
    return ".".join(str(p) for p in loc) if isinstance(loc, list) and loc else "<root>"


def _example(record: DlqRecord, show_values: bool) -> dict[str, Any]:
    letter = record.letter
    example: dict[str, Any] = {
        "dlq": f"{letter.dlq_partition}@{letter.dlq_offset}",
        "original": (
            f"{letter.context.get(h.DLQ_ORIGINAL_PARTITION, '?')}"
            f"@{letter.context.get(h.DLQ_ORIGINAL_OFFSET, '?')}"
        ),
        "errors": [
            {"loc": _loc(e), "type": e.get("type", "")}
            for e in letter.errors
            if isinstance(e, dict)
        ],
        "service": letter.context.get(h.DLQ_SERVICE, ""),
        "attempts": letter.int_context(h.DLQ_ATTEMPTS, 0),
    }
    if show_values or (
        letter.reason in DECODE_REASONS and letter.error_class == DECODE_ERROR_CLASS
    ):
        example["error_message"] = letter.context.get(h.DLQ_ERROR_MESSAGE, "")
    if show_values:
        example["key"] = _shown(letter.key)
        example["value"] = _shown(letter.value)
    return example


def summarize(
    topic: str,
    records: Iterable[DlqRecord],
    *,
    show_values: bool = False,
    limit: int | None = None,
    selection: Selection | None = None,
) -> Summary:
    """Group the ``records`` that ``selection`` matches (at most ``limit`` of them, the
    first ones) into a ``Summary``; the selection is the one ``dlq replay`` applies."""
    summary = Summary(topic, selection=selection or Selection())
    filtering = summary.selection.filters()
    for record in records:
        if limit is not None and summary.records >= limit:
            summary.limited = True
            break
        letter = record.letter
        summary.read_to[letter.dlq_partition] = letter.dlq_offset + 1
        if not letter.context:  # of every record read: a filter must not hide a wrong topic
            summary.without_dlq_headers += 1
        if filtering and not summary.selection.matches(record):
            summary.not_selected += 1
            continue
        subject = letter.context.get(h.DLQ_EXPECTED_SUBJECT, "")
        version = letter.context.get(h.DLQ_EXPECTED_VERSION, "")
        key = GroupKey(
            letter.original_topic or "?",
            letter.reason,
            letter.error_class or "?",
            f"{subject} v{version}" if subject else "?",
        )
        group = summary.groups.get(key)
        if group is None:
            group = summary.groups[key] = Group(key, example=_example(record, show_values))
        moment = dead_lettered_ms(record)
        locations = group.locations
        for found in {
            f"{_loc(e)} ({e.get('type', '')})" for e in letter.errors if isinstance(e, dict)
        }:
            if found in locations or len(locations) < MAX_LOCATIONS:
                locations[found] += 1
            else:
                group.locations_left_out += 1
        group.count += 1
        # Only a dead letter was dead-lettered again after a replay: a replayed record
        # in its source topic (``inspect orders``) carries the count but no sg-dlq-*.
        replays = replay_count(letter.original_headers) if letter.context else 0
        if replays != 0:
            group.replayed += 1
            group.max_replay_count = max(group.max_replay_count, replays or 0)
        if moment >= 0:  # a record without any time leaves the group's span alone
            group.first_ms = moment if group.first_ms < 0 else min(group.first_ms, moment)
            group.last_ms = max(group.last_ms, moment)
        summary.records += 1
    return summary


def to_json(summary: Summary) -> str:
    """The summary for machines: one object, groups largest first."""
    return json.dumps(
        {
            "topic": summary.topic,
            "records": summary.records,
            "limited": summary.limited,
            "total": summary.total,
            "stopped_idle": summary.stopped_idle,
            "without_dlq_headers": summary.without_dlq_headers,
            "selection": summary.selection.describe(),
            "not_selected": summary.not_selected,
            "groups": [
                {
                    "original_topic": g.key.original_topic,
                    "reason": g.key.reason,
                    "error_class": g.key.error_class,
                    "expected": g.key.expected,
                    "count": g.count,
                    "first": format_ms(g.first_ms),
                    "last": format_ms(g.last_ms),
                    "error_locations": dict(g.locations.most_common()),
                    "error_locations_left_out": g.locations_left_out,
                    "replayed": g.replayed,
                    "max_replay_count": g.max_replay_count,
                    "example": g.example,
                }
                for g in summary.ordered()
            ],
        },
        indent=2,
    )


def _cell(text: str) -> str:
    """A table cell of record text: printable, and cut to ``MAX_SHOWN_CELL``."""
    return printable(cut(text, MAX_SHOWN_CELL))


def _short_class(name: str) -> str:
    # Module paths make the table wide; the class name is what an operator recognises.
    return name.rsplit(".", 1)[-1]


def render_table(summary: Summary) -> str:
    """A plain-text table: one row per group, its example indented beneath it."""
    ends = ", ".join(f"p{p}<{o}" for p, o in sorted(summary.ends.items()))
    counted = f"{summary.records} dead-lettered record(s)"
    filtered = summary.selection.filters()
    if summary.limited:
        # Of the DLQ's total only when every record read counts; a selection's total
        # is not known before the whole DLQ is read.
        of = f" of {summary.total}" if summary.total is not None and not filtered else ""
        counted = f"the first {summary.records}{of} dead-lettered record(s)"
    lines = [
        f"{summary.topic}: {counted} in {len(summary.groups)} group(s) "
        f"(read up to offsets {ends or '-'}{', stopped by --limit' if summary.limited else ''})"
    ]
    if filtered:
        read = summary.records + summary.not_selected
        lines.append(
            printable(
                f"  selected: {summary.selection.describe()}: {summary.records} of the {read} "
                f"record(s) read ({summary.not_selected} not selected)"
            )
        )
    if summary.stopped_idle:
        lines.append("  note: stopped after an idle period before reaching those offsets")
    if summary.without_dlq_headers:
        lines.append(_not_a_dlq_note(summary))
    if not summary.groups:
        return "\n".join(lines)
    header = ("COUNT", "ORIGINAL TOPIC", "REASON", "ERROR", "EXPECTED", "FIRST", "LAST")
    # Every cell and line below may hold text from records (error locations keep the
    # names of undeclared fields; a forged DLQ header says anything): shown printable.
    rows = [
        (
            str(g.count),
            _cell(g.key.original_topic),
            _cell(g.key.reason),
            _cell(_short_class(g.key.error_class)),
            _cell(g.key.expected),
            format_ms(g.first_ms),
            format_ms(g.last_ms),
        )
        for g in summary.ordered()
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        first = cells[0].rjust(widths[0])
        rest = [c.ljust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    lines += ["", line(header)]
    for group, row in zip(summary.ordered(), rows, strict=True):
        lines.append(line(row))
        if group.locations:
            ranked = sorted(group.locations.items(), key=lambda item: (-item[1], item[0]))
            top = ", ".join(f"{loc} x{n}" for loc, n in ranked[:4])  # ties by name: stable
            more = len(group.locations) - 4
            left_out = (
                f" (+{group.locations_left_out} occurrence(s) of locations past the first "
                f"{MAX_LOCATIONS}, not tallied)"
                if group.locations_left_out
                else ""
            )
            lines.append(
                printable(
                    f"      error locations: {top}"
                    + (f" +{more} more" if more > 0 else "")
                    + left_out
                )
            )
        if group.replayed:
            most = f", sg-replay-count up to {group.max_replay_count}"
            lines.append(
                f"      replayed before: {group.replayed} of these record(s)"
                f"{most if group.max_replay_count else ''}: dead-lettered again after a replay"
            )
        lines.extend("      " + printable(text) for text in _example_lines(group.example))
    return "\n".join(lines)


def _not_a_dlq_note(summary: Summary) -> str:
    """Say that records without any ``sg-dlq-*`` header are no dead letters: the table
    alone shows them as an ``unknown`` reason from topic ``?``, which reads like a DLQ
    whose headers were lost rather than the wrong topic."""
    read = summary.records + summary.not_selected
    if summary.without_dlq_headers < read:
        # Dead letters too: a DLQ that also holds records another writer put there.
        what = "no dead letters, written to the topic by something else"
    else:
        what = f"{summary.topic!r} is probably not a dead-letter topic"
        if not is_dead_letter_topic(summary.topic):
            dlq = dead_letter_topic_for(summary.topic)
            what += f" (by default, dead letters of {summary.topic!r} go to {dlq!r})"
    return printable(
        f"  note: {summary.without_dlq_headers} of the {read} record(s) carry no "
        f"streamguard dead-letter headers ({h.DLQ_REASON}, {h.DLQ_ORIGINAL_TOPIC}, ...): "
        f"{what}"
    )


def _example_lines(example: dict[str, Any]) -> list[str]:
    out = [
        f"e.g. dlq {example['dlq']}, original {example['original']}, "
        f"service {example['service'] or '?'}, attempts {example['attempts']}"
    ]
    errors = example["errors"]
    if errors:
        shown = ", ".join(f"{e['loc']} ({e['type']})" for e in errors[:MAX_SHOWN_ERRORS])
        more = f" +{len(errors) - MAX_SHOWN_ERRORS} more" if len(errors) > MAX_SHOWN_ERRORS else ""
        out.append(f"example errors: {shown}{more}")
    if "error_message" in example:
        out.append(f"message: {example['error_message']}")
    if "value" in example:
        out.append(f"key: {quoted(example['key'])}  value: {quoted(example['value'])}")
    return out

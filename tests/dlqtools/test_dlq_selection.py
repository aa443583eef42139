"""Replay selection, replay-count parsing and the progress bar, without a broker."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest

from streamguard import headers as h
from streamguard.deadletter import DeadLetter
from streamguard.dlqtools.progress import Progress
from streamguard.dlqtools.reader import DlqRecord
from streamguard.dlqtools.replay import replay_count
from streamguard.dlqtools.selection import Selection, parse_time
from streamguard.errors import ConfigurationError

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def record(reason: str, dead_lettered_ms: int, topic: str = "orders") -> DlqRecord:
    letter = DeadLetter.from_record(
        topic="orders.dlq",
        partition=0,
        offset=0,
        key=None,
        value=b"{}",
        headers=[
            (h.DLQ_REASON, reason.encode()),
            (h.DLQ_ORIGINAL_TOPIC, topic.encode()),
            (h.DLQ_DEAD_LETTERED_MS, str(dead_lettered_ms).encode()),
        ],
    )
    return DlqRecord(letter, timestamp_ms=0)


def test_times_are_iso_relative_or_epoch_ms() -> None:
    """--since/--until accept ISO 8601 (UTC when no zone), durations ago and epoch ms."""
    assert parse_time("2026-11-27T12:00:00Z") == int(NOW.timestamp() * 1000)
    assert parse_time("2026-11-27T12:00:00") == int(NOW.timestamp() * 1000)
    assert parse_time("2h", now=NOW) == int(NOW.timestamp() * 1000) - 2 * 3600 * 1000
    assert parse_time("1795788000000") == 1795788000000
    with pytest.raises(ConfigurationError, match="cannot read time"):
        parse_time("yesterday")


@pytest.mark.parametrize("text", ["99999999999d", "10000000w", "9" * 5000])
def test_a_time_out_of_range_is_refused_like_an_unreadable_one(text: str) -> None:
    """A duration reaching before year 1, or epoch milliseconds of more digits than
    Python converts (4,300), is a usage error with the accepted forms, not a traceback."""
    with pytest.raises(ConfigurationError, match="cannot read time"):
        parse_time(text)


def test_an_error_class_selects_by_the_name_inspect_shows_or_in_full() -> None:
    """--where error-class= takes the class name as `inspect` shows it (KeyError) as
    well as the header's qualified name (builtins.KeyError), and no partial name."""
    letter = DeadLetter.from_record(
        topic="orders.dlq",
        partition=0,
        offset=0,
        key=None,
        value=b"{}",
        headers=[(h.DLQ_ERROR_CLASS, b"builtins.KeyError")],
    )
    found = DlqRecord(letter, timestamp_ms=0)
    assert Selection.parse(["error-class=KeyError"]).matches(found)
    assert Selection.parse(["error-class=builtins.KeyError"]).matches(found)
    assert not Selection.parse(["error-class=Error"]).matches(found)
    assert not Selection.parse(["error-class=TimeoutError"]).matches(found)


def test_where_keys_combine_with_and_across_keys_or_within_one() -> None:
    """Repeating a key widens it; different keys must all match."""
    selection = Selection.parse(["reason=decode_error", "reason=oversize", "topic=orders"])
    assert selection.matches(record("oversize", 1))
    assert not selection.matches(record("oversize", 1, topic="payments"))
    assert not selection.matches(record("contract_violation", 1))


def test_an_unknown_reason_is_refused_with_the_known_ones() -> None:
    """--where reason=bogus selected nothing, silently; a reason is one of six, so a typo
    is refused naming them."""
    with pytest.raises(ConfigurationError, match="retries_exhausted"):
        Selection.parse(["reason=retries-exhausted"])
    assert Selection.parse(["reason=retries_exhausted"]).filters()


@pytest.mark.parametrize("value", ["1_0", "\u0663", "+3", "-0", "3.0", "9" * 5000])
def test_a_number_in_a_form_no_header_holds_is_refused(value: str) -> None:
    """Integer headers are written as decimal digits: "1_0", which int() reads as 10, or
    an Arabic-Indic digit selected a version the operator did not type; refused. So is
    one of more digits than int() converts, which raised a ValueError (a traceback)."""
    with pytest.raises(ConfigurationError, match="expected a contract version"):
        Selection.parse([f"expected-version={value}"])
    assert Selection.parse(["expected-version=03"]).where == {
        h.DLQ_EXPECTED_VERSION: frozenset({"3"})
    }


def test_unknown_where_key_is_refused_with_the_known_ones() -> None:
    """A typo in --where is a usage error that lists what is accepted."""
    with pytest.raises(ConfigurationError, match="reason"):
        Selection.parse(["reasn=oversize"])


@pytest.mark.parametrize(
    ("since", "until"),
    [("1795788000000", "2026-11-27T14:00:00Z"), ("1h", "1h"), ("30m", "1800s")],
)
def test_an_empty_window_is_refused_like_a_reversed_one(since: str, until: str) -> None:
    """--since is inclusive and --until exclusive: the same time for both selects
    nothing, a usage error as --since after --until is (relative times share one now)."""
    with pytest.raises(ConfigurationError, match="is not before --until"):
        Selection.parse([], since=since, until=until)


def test_time_window_uses_the_dead_lettered_time() -> None:
    """--since is inclusive and --until exclusive, on sg-dlq-dead-lettered-ms."""
    selection = Selection.parse([], since="1795788000000", until="1795788001000")
    assert selection.matches(record("oversize", 1795788000000))
    assert not selection.matches(record("oversize", 1795788001000))
    assert not selection.matches(record("oversize", 1795787999999))


def test_replay_count_reads_the_last_header_and_distrusts_garbage() -> None:
    """A missing count is 0; an unreadable or negative one is None (treated as over the limit)."""
    assert replay_count([]) == 0
    assert replay_count([(h.REPLAY_COUNT, b"1"), (h.REPLAY_COUNT, b"2")]) == 2
    assert replay_count([(h.REPLAY_COUNT, b"x")]) is None
    assert replay_count([(h.REPLAY_COUNT, b"-1")]) is None


def test_progress_draws_nothing_off_a_terminal() -> None:
    """Piped or redirected stderr gets no progress bar, only the final summary on stdout."""
    stream = io.StringIO()
    progress = Progress(10, stream)
    progress.update(5, "replayed 5", force=True)
    progress.close()
    assert stream.getvalue() == ""


def test_progress_draws_a_bar_on_a_terminal() -> None:
    """On a terminal the bar shows done/total and the counts."""

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    progress = Progress(10, stream)
    progress.update(5, "replayed 5", force=True)
    assert "5/10  replayed 5" in stream.getvalue()
    assert "#" * 15 in stream.getvalue()


@pytest.mark.parametrize(
    ("headers", "count"),
    [
        ([], 0),
        ([("sg-replay-count", b"2")], 2),
        ([("sg-replay-count", b"9"), ("sg-replay-count", b"0")], 9),  # the highest wins
        ([("sg-replay-count", b"9"), ("sg-replay-count", None)], None),  # null: unreadable
        ([("sg-replay-count", b"")], None),
        ([("sg-replay-count", b"-1")], None),
        ([("sg-replay-count", b"two")], None),
        ([("sg-replay-count", b"123456789")], 123456789),
        ([("sg-replay-count", b"9" * 5000)], None),  # beyond what int() reads: forged
    ],
)
def test_replay_count_cannot_be_reset_by_forged_headers(
    headers: list[tuple[str, bytes | None]], count: int | None
) -> None:
    """Every sg-replay-count header counts: a null, empty or non-numeric one makes the count
    unreadable (over the limit), and of several the highest wins."""
    from streamguard.dlqtools.replay import replay_count

    assert replay_count(headers) == count


def test_a_filtered_replay_gets_a_group_of_its_own() -> None:
    """Runs with filters commit under their own group, so records they skipped stay
    available to an unfiltered run (and to a run with other filters)."""
    from streamguard.dlqtools.replay import default_group

    everything = Selection.parse((), None, None)
    recent = Selection.parse((), "2026-11-27T00:00:00Z", None)
    decode = Selection.parse(["reason=decode_error"], None, None)
    assert default_group("orders.dlq", everything) == "streamguard-replay.orders.dlq"
    assert default_group("orders.dlq", recent).startswith("streamguard-replay.orders.dlq.")
    assert len({default_group("orders.dlq", s) for s in (everything, recent, decode)}) == 3


def test_a_relative_window_names_the_same_group_on_every_run() -> None:
    """``--since 1d`` resolves to a new time on every run, but names one filter: its group
    stays the same (else a second run would send everything again). Absolute times keep
    the group they had."""
    from streamguard.dlqtools.replay import default_group

    earlier = Selection.parse(["reason=decode_error"], "1d", "2h")
    later = Selection.parse(["reason=decode_error"], " 01d", "2h")
    other = Selection.parse(["reason=decode_error"], "2d", "2h")
    assert default_group("orders.dlq", earlier) == default_group("orders.dlq", later)
    assert default_group("orders.dlq", earlier) != default_group("orders.dlq", other)
    assert "1d ago" in earlier.identity()
    assert "1d ago" not in earlier.describe()
    absolute = Selection.parse((), "2026-11-27T00:00:00Z", None)
    assert absolute.identity() == absolute.describe()


def test_windows_that_differ_within_a_second_get_groups_of_their_own() -> None:
    """Two --until times in the same second select different records, so they name
    different groups (and say their milliseconds): otherwise the second run would resume
    past every record the first left unselected, and replay none of them."""
    from streamguard.dlqtools.replay import default_group

    first = Selection.parse((), None, "1795788000100")
    second = Selection.parse((), None, "2026-11-27T14:00:00.900Z")
    assert default_group("orders.dlq", first) != default_group("orders.dlq", second)
    assert first.describe() == "dead-lettered before 2026-11-27T14:00:00.100Z"
    whole = Selection.parse((), None, "1795788000000")
    assert whole.describe() == "dead-lettered before 2026-11-27T14:00:00Z"


def test_a_time_past_the_year_9999_is_shown_as_the_number_given() -> None:
    """Epoch milliseconds no date can show are said as they are; they were cut to the
    second and glued to their milliseconds ('99999999999999999000.999Z')."""
    far = Selection.parse((), None, "99999999999999999999")
    assert far.describe() == "dead-lettered before 99999999999999999999"


def test_the_summary_counts_every_refused_record_beyond_those_listed() -> None:
    """Past the MAX_REPORTED records listed in the report, the summary's "more refused"
    still counts them all."""
    from collections import Counter

    from streamguard.dlqtools.commands import SHOWN_REFUSED, render_report
    from streamguard.dlqtools.replay import MAX_REPORTED, ReplayReport

    report = ReplayReport("orders.dlq", "g", dry_run=False, skipped=Counter(replay_limit=1500))
    report.refused = [
        {"dlq": f"0@{i}", "reason": "replay_limit", "detail": "-"} for i in range(MAX_REPORTED)
    ]
    assert f"... and {1500 - SHOWN_REFUSED} more refused" in render_report(report)


def test_a_huge_refusal_detail_is_cut_in_the_summary() -> None:
    """A forged sg-dlq-original-topic of 200 kB made the summary a 200 kB line: the
    detail is cut, as inspect cuts its table cells."""
    from streamguard.dlqtools.commands import MAX_SHOWN_DETAIL, render_report
    from streamguard.dlqtools.replay import INVALID_TOPIC, ReplayReport

    detail = f"sg-dlq-original-topic {'o' * 200_000 + '!'!r} is not a legal topic name"
    report = ReplayReport("orders.dlq", "g", dry_run=True)
    report.refused = [{"dlq": "0@0", "reason": INVALID_TOPIC, "detail": detail}]
    (line,) = [x for x in render_report(report).splitlines() if "refused dlq" in x]
    assert line == f"  refused dlq 0@0: invalid_topic: {detail[:MAX_SHOWN_DETAIL]}..."

"""``dlq replay`` through the real broker: selection, safety, idempotence, failures."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition

import streamguard as sg
from streamguard import exitcodes
from streamguard import headers as h
from streamguard.cli import main
from streamguard.deadletter import DeadLetter, Failure, dead_letter_headers
from streamguard.dlqtools.commands import render_report
from streamguard.dlqtools.reader import DlqReader, existing_topics
from streamguard.dlqtools.replay import (
    INVALID_TOPIC,
    MISSING_TOPIC,
    NO_ORIGINAL_TOPIC,
    REFUSED_TOPIC,
    REPLAY_LIMIT,
    Replayer,
    ReplayOptions,
    ReplayReport,
    default_group,
)
from streamguard.dlqtools.revalidate import Revalidator
from streamguard.dlqtools.selection import Selection
from streamguard.errors import RegistryUnavailable
from tests.conftest import fast_group_config
from tests.dlqtools.dlqcases import (
    FIXABLE,
    HOPELESS,
    Closed,
    OrderV2,
    Sent,
    closed_dead_letter,
    encode,
)

pytestmark = pytest.mark.broker


def replay(
    bootstrap: str,
    dlq: str,
    *,
    group: str | None = None,
    out: io.StringIO | None = None,
    **opts: Any,
) -> ReplayReport:
    with DlqReader(bootstrap, dlq, group_id=group or default_group(dlq), idle_timeout=5) as reader:
        return Replayer(reader, ReplayOptions(**opts), out=out or io.StringIO()).run()


def committed(bootstrap: str, topic: str, group: str) -> list[int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        return [tp.offset for tp in consumer.committed([TopicPartition(topic, 0)], timeout=10)]
    finally:
        consumer.close()


def headers_of(msg: Message) -> list[tuple[str, bytes | None]]:
    return list(msg.headers() or [])


@pytest.fixture
def incident(
    topic_factory: Callable[..., str], dead_letters: Callable[..., list[Sent]]
) -> tuple[str, str, list[Sent]]:
    """A DLQ with 3 records the contract fix makes valid and 2 it does not."""
    orders, dlq = topic_factory("orders"), topic_factory("orders.dlq")
    sent = dead_letters(dlq, [FIXABLE, HOPELESS, FIXABLE, FIXABLE, HOPELESS], original_topic=orders)
    return orders, dlq, sent


def test_dry_run_writes_and_commits_nothing(
    bootstrap: str, incident: tuple[str, str, list[Sent]], read_all: Callable[..., list[Message]]
) -> None:
    """A dry run prints each record it would send, and writes and commits nothing."""
    orders, dlq, _ = incident
    out = io.StringIO()
    report = replay(
        bootstrap, dlq, dry_run=True, out=out, revalidator=Revalidator({"dlqtest.Order": OrderV2})
    )
    lines = out.getvalue().splitlines()
    assert report.replayed == 3
    assert report.still_invalid == 2
    assert [line.split()[3] for line in lines] == ["0@0", "0@2", "0@3"]
    assert all(f"-> {orders}[0] " in line and "sg-replay-count=1" in line for line in lines)
    assert "GBP" not in out.getvalue()  # values are digested unless --show-values
    assert all(" key=<" in line for line in lines), lines  # keys too: may be personal data
    assert read_all(orders, 1, timeout=3) == []
    assert committed(bootstrap, dlq, default_group(dlq)) == [-1001]


def test_revalidating_without_the_subjects_contract_stops_and_commits_nothing(
    bootstrap: str, incident: tuple[str, str, list[Sent]], read_all: Callable[..., list[Message]]
) -> None:
    """--revalidate run where the project's contracts are not configured: every record
    was "still invalid" and committed past, so the run from the right directory found
    nothing to replay. A subject without a contract now stops the run (exit 2 from the
    CLI), nothing committed, and the next run replays what the fix makes valid."""
    orders, dlq, _ = incident
    with pytest.raises(sg.ConfigurationError, match=r"no contract for subject 'dlqtest\.Order'"):
        replay(bootstrap, dlq, revalidator=Revalidator({}))
    assert committed(bootstrap, dlq, default_group(dlq))[0] in (-1001, 0)  # nothing past 0
    report = replay(bootstrap, dlq, revalidator=Revalidator({"dlqtest.Order": OrderV2}))
    assert (report.replayed, report.still_invalid) == (3, 2)
    assert len(read_all(orders, 3)) == 3


def test_dry_run_lines_start_clear_of_the_progress_bar_on_a_terminal(
    bootstrap: str, incident: tuple[str, str, list[Sent]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal the bar (stderr) and the dry-run lines (stdout) share the screen:
    each line is printed where the bar was, erased, never after the bar's text."""
    _, dlq, _ = incident
    screen: list[str] = []

    class Terminal(io.StringIO):
        def write(self, text: str) -> int:
            screen.append(text)
            return len(text)

        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    report = replay(bootstrap, dlq, dry_run=True, out=Terminal())
    assert report.replayed == 5
    rows: list[list[str]] = [[]]
    column = 0
    for char in "".join(screen).replace("\x1b[K", "\x00"):  # a terminal, drawn
        if char == "\n":
            rows.append([])
            column = 0
        elif char == "\r":
            column = 0
        elif char == "\x00":  # erase to the end of the line
            del rows[-1][column:]
        else:
            rows[-1][column : column + 1] = [char]
            column += 1
    lines = ["".join(row) for row in rows if "would send" in "".join(row)]
    assert len(lines) == 5, rows
    assert all(line.startswith("would send") for line in lines), lines


def refused_headers(
    orders: str, original: list[tuple[str, bytes | None]] | None = None
) -> list[tuple[str, bytes | None]]:
    """The dead-letter headers of a record of ``orders`` its handler refused."""
    return dead_letter_headers(
        original_headers=original or [],
        topic=orders,
        partition=0,
        offset=0,
        timestamp_ms=None,
        failure=Failure("permanent_error", sg.PermanentError("refused")),
        group_id="billing",
        service="billing-svc",
        expected_subject="dlqtest.Order",
        expected_version=1,
    )


def test_dry_run_shows_no_value_of_a_producers_own_headers_and_nothing_unsafe(
    bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    """A dry run shows values only of streamguard's own headers, reduced to safe
    characters: an original producer's "sg-"-named header of personal data stays
    hidden, and a newline or terminal escape in a header cannot forge a line."""
    orders, dlq = topic_factory("orders"), topic_factory("orders.dlq")
    hostile: list[tuple[str, bytes | None]] = [
        (h.PRODUCER, b"shop\nwould send dlq 0@9 -> payments \x1b[2J"),
        ("sg-customer-email", b"jane.doe@example.com"),
        ("trace\n\x1b]0;title\x07", b"jane.doe@example.com"),
    ]
    headers = refused_headers(orders, hostile)
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(dlq, b"{}", key=b"k", headers=headers)
    assert producer.flush(10) == 0
    out = io.StringIO()
    assert replay(bootstrap, dlq, dry_run=True, out=out).replayed == 1
    text = out.getvalue()
    assert "jane.doe" not in text
    assert "\x1b" not in text
    assert "\x07" not in text
    assert len(text.splitlines()) == 1, text
    assert "sg-producer=shop?would?send" in text
    assert "sg-replay-count=1" in text


def test_dry_run_shown_values_tell_a_typed_backslash_from_a_byte_that_is_no_utf8(
    bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    """With --show-values a backslash of the data is shown as \\\\: the byte 0xff and the
    four characters \\xff typed in a value (or key) read apart."""
    orders, dlq = topic_factory("orders"), topic_factory("orders.dlq")
    headers = refused_headers(orders)
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(dlq, b"\xff", key=b"k\\xff", headers=headers)
    producer.produce(dlq, b"\\xff", key=b"k\xff", headers=headers)
    assert producer.flush(10) == 0
    out = io.StringIO()
    assert replay(bootstrap, dlq, dry_run=True, out=out, show_values=True).replayed == 2
    first, second = out.getvalue().splitlines()
    assert "key='k\\\\xff' value='\\xff'" in first
    assert "key='k\\xff' value='\\\\xff'" in second


def test_replay_sends_exactly_the_fixable_ones_once(
    bootstrap: str, incident: tuple[str, str, list[Sent]], read_all: Callable[..., list[Message]]
) -> None:
    """With --revalidate only records that pass the fixed contract are sent, byte for byte."""
    orders, dlq, sent = incident
    report = replay(bootstrap, dlq, revalidator=Revalidator({"dlqtest.Order": OrderV2}))
    assert (report.replayed, report.still_invalid, report.failed) == (3, 2, 0)
    assert {r["dlq"] for r in report.refused} == {"0@1", "0@4"}
    assert all("amount" in r["detail"] for r in report.refused)
    got = read_all(orders, 4, timeout=5)
    assert len(got) == 3
    for msg, original in zip(got, [sent[0], sent[2], sent[3]], strict=True):
        assert (msg.key(), msg.value()) == (original.key, original.value)
        replayed = headers_of(msg)
        assert replayed[: len(original.original_headers)] == original.original_headers
        names = [k for k, _ in replayed]
        assert not any(k.startswith(h.DLQ_PREFIX) for k in names)
        assert h.last(replayed, h.REPLAY_COUNT) == "1"
        assert int(h.last(replayed, h.REPLAY_AT) or 0) > 1_700_000_000_000
    assert committed(bootstrap, dlq, default_group(dlq)) == [5]


def test_second_replay_sends_nothing(
    bootstrap: str, incident: tuple[str, str, list[Sent]], read_all: Callable[..., list[Message]]
) -> None:
    """Running the same replay again resumes after the committed position and sends nothing."""
    orders, dlq, _ = incident
    first = replay(bootstrap, dlq)
    second = replay(bootstrap, dlq)
    assert (first.replayed, second.replayed, second.read) == (5, 0, 0)
    assert len(read_all(orders, 6, timeout=4)) == 5


def test_limit_walks_the_dlq_in_chunks_without_duplicates(
    bootstrap: str, incident: tuple[str, str, list[Sent]], read_all: Callable[..., list[Message]]
) -> None:
    """Runs with --limit pick up where the previous one stopped, so each record goes once;
    the summary of a run the limit stopped says so, and that of the run that reached the
    end does not."""
    orders, dlq, _ = incident
    reports = [replay(bootstrap, dlq, limit=2) for _ in range(4)]
    assert [r.replayed for r in reports] == [2, 2, 1, 0]
    assert [r.limit_reached for r in reports] == [True, True, False, False]
    assert "stopped at --limit" in render_report(reports[0])
    assert "stopped at --limit" not in render_report(reports[2])
    got = read_all(orders, 6, timeout=4)
    assert sorted(m.key() for m in got) == [f"customer-{i}".encode() for i in range(5)]


def test_record_over_the_replay_limit_is_skipped(
    bootstrap: str,
    topic_factory: Callable[..., str],
    dead_letters: Callable[..., list[Sent]],
    read_all: Callable[..., list[Message]],
) -> None:
    """A record replayed max-replays times already is refused; one below it is counted up."""
    orders, dlq = topic_factory("orders"), topic_factory("orders.dlq")
    dead_letters(dlq, [FIXABLE], original_topic=orders, replay_count=3, key_prefix="looped")
    dead_letters(dlq, [FIXABLE], original_topic=orders, replay_count=1, key_prefix="once")
    dead_letters(dlq, [FIXABLE], original_topic=orders, replay_count="x", key_prefix="forged")
    report = replay(bootstrap, dlq, max_replays=3)
    assert report.replayed == 1
    assert report.skipped[REPLAY_LIMIT] == 2
    (msg,) = read_all(orders, 2, timeout=4)
    assert msg.key() == b"once-0"
    assert h.last(headers_of(msg), h.REPLAY_COUNT) == "2"


def test_forged_original_topics_are_refused(
    bootstrap: str,
    topic_factory: Callable[..., str],
    dead_letters: Callable[..., list[Sent]],
    unique: Callable[[str], str],
) -> None:
    """Illegal, missing, internal, other-DLQ and self-referencing original topics are never
    written to."""
    dlq = topic_factory("orders.dlq")
    missing = unique("never-created")
    dead_letters(dlq, [FIXABLE], original_topic="bad name!")
    dead_letters(dlq, [FIXABLE], original_topic=missing)
    dead_letters(dlq, [FIXABLE], original_topic="__consumer_offsets")
    dead_letters(dlq, [FIXABLE], original_topic="_schemas")  # Schema Registry's store
    dead_letters(dlq, [FIXABLE], original_topic="payments.dlq")  # another DLQ
    dead_letters(dlq, [FIXABLE], original_topic=dlq)
    report = replay(bootstrap, dlq)
    assert report.replayed == 0
    assert report.skipped == {INVALID_TOPIC: 1, MISSING_TOPIC: 1, REFUSED_TOPIC: 4}
    with DlqReader(bootstrap, dlq, group_id="check") as reader:
        assert missing not in existing_topics(reader.admin)
        assert reader.plan()[0].end == 6  # nothing was written back into the DLQ either


def test_to_topic_takes_records_whose_original_topic_is_gone(
    bootstrap: str,
    topic_factory: Callable[..., str],
    dead_letters: Callable[..., list[Sent]],
    unique: Callable[[str], str],
    read_all: Callable[..., list[Message]],
) -> None:
    """With --to, a valid but missing original topic is no obstacle; an illegal one still is."""
    dlq, target = topic_factory("orders.dlq"), topic_factory("orders.retry")
    dead_letters(dlq, [FIXABLE], original_topic=unique("deleted"))
    dead_letters(dlq, [FIXABLE], original_topic="bad name!")
    report = replay(bootstrap, dlq, to=target)
    assert report.replayed == 1
    assert report.skipped == {INVALID_TOPIC: 1}
    assert len(read_all(target, 2, timeout=4)) == 1


def test_to_topic_takes_records_whose_original_topic_is_protected(
    bootstrap: str,
    topic_factory: Callable[..., str],
    dead_letters: Callable[..., list[Sent]],
    read_all: Callable[..., list[Message]],
) -> None:
    """A record whose original topic is another DLQ or an internal topic is refused
    with the advice to choose a target with --to; with --to it goes there. It was
    refused (and committed past) with --to too, whatever the operator did."""
    dlq, target = topic_factory("orders.dlq.dlq"), topic_factory("orders.retry")
    dead_letters(dlq, [FIXABLE], original_topic="orders.dlq")
    dead_letters(dlq, [FIXABLE], original_topic="_schemas")
    refused = replay(bootstrap, dlq, dry_run=True)
    assert refused.skipped == {REFUSED_TOPIC: 2}
    assert all("use --to" in r["detail"] for r in refused.refused)
    report = replay(bootstrap, dlq, to=target)
    assert (report.replayed, report.skipped) == (2, {})
    assert len(read_all(target, 2)) == 2


def test_where_selects_by_reason_and_keeps_the_rest(
    bootstrap: str,
    topic_factory: Callable[..., str],
    dead_letters: Callable[..., list[Sent]],
    read_all: Callable[..., list[Message]],
) -> None:
    """--where reason=... replays only matching records; the others are not selected."""
    orders, dlq = topic_factory("orders"), topic_factory("orders.dlq")
    dead_letters(dlq, [FIXABLE, FIXABLE], original_topic=orders)
    dead_letters(dlq, [FIXABLE], original_topic=orders, reason="retries_exhausted", key_prefix="r")
    selection = Selection.parse(["reason=retries_exhausted"])
    report = replay(bootstrap, dlq, selection=selection)
    assert (report.replayed, report.not_selected) == (1, 2)
    assert [m.key() for m in read_all(orders, 2, timeout=4)] == [b"r-0"]


def test_original_partition_is_kept(
    bootstrap: str,
    topic_factory: Callable[..., str],
    dead_letters: Callable[..., list[Sent]],
    read_all: Callable[..., list[Message]],
) -> None:
    """A record goes back to the partition it came from, whatever the client's partitioner."""
    orders, dlq = topic_factory("orders", partitions=3), topic_factory("orders.dlq")
    dead_letters(dlq, [FIXABLE, FIXABLE], original_topic=orders, original_partition=2)
    replay(bootstrap, dlq)
    assert [m.partition() for m in read_all(orders, 2)] == [2, 2]


def test_publish_failure_exits_1_and_commits_nothing_after_it(
    bootstrap: str,
    topic_factory: Callable[..., str],
    dead_letters: Callable[..., list[Sent]],
    read_all: Callable[..., list[Message]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A record the producer refuses stops the run with exit 1; the next run sends it."""
    orders, dlq = topic_factory("orders"), topic_factory("orders.dlq")
    big = {**FIXABLE, "order_id": "o" * 5000}
    dead_letters(dlq, [FIXABLE, big, FIXABLE], original_topic=orders)
    args = ["dlq", "replay", dlq, "--bootstrap-servers", bootstrap]
    assert main([*args, "-X", "message.max.bytes=2000"]) == 1
    out = capsys.readouterr().out
    assert "replayed 1; skipped 0; still invalid 0; not selected 0; failed to publish 1" in out
    assert "committed under group" in out
    assert committed(bootstrap, dlq, default_group(dlq)) == [1]
    assert main(args) == 0
    keys = [m.key() for m in read_all(orders, 4, timeout=5)]
    assert keys == [b"customer-0", b"customer-1", b"customer-2"]


@pytest.mark.usefixtures("cluster_goes_quiet")
def test_a_replay_that_stopped_short_of_the_end_exits_1(
    bootstrap: str,
    incident: tuple[str, str, list[Sent]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A replay whose cluster went quiet before the end recorded at start commits what
    it sent but fails: exit 0 would tell a script that the DLQ was replayed, and the
    records after the stop would be purged with it."""
    _, dlq, _ = incident
    assert main(["dlq", "replay", dlq, "--bootstrap-servers", bootstrap]) == 1
    out = capsys.readouterr().out
    assert "replayed 2; skipped 0;" in out
    assert "stopped: nothing arrived from the cluster for the idle timeout" in out
    assert committed(bootstrap, dlq, default_group(dlq)) == [2]


class _FirstFlushTimesOut:
    """A flush timeout that runs out at once the first time, then is long enough: a
    broker that answers only after the replay stopped waiting for it."""

    def __init__(self) -> None:
        self.used = 0

    def __float__(self) -> float:
        self.used += 1
        return 0.0 if self.used == 1 else 10.0


def test_a_run_stopped_by_a_flush_timeout_fails_even_if_the_record_lands_later(
    bootstrap: str,
    topic_factory: Callable[..., str],
    dead_letters: Callable[..., list[Sent]],
    read_all: Callable[..., list[Message]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A record not acknowledged in time stops the run short of the end with a failure,
    even when the final flush then sees it acknowledged: the next run sends the rest."""
    orders, dlq = topic_factory("orders"), topic_factory("orders.dlq")
    dead_letters(dlq, [FIXABLE] * 3, original_topic=orders)
    monkeypatch.setattr("streamguard.dlqtools.replay.BATCH_SIZE", 1)  # settle after each
    monkeypatch.setattr("streamguard.dlqtools.replay.FLUSH_TIMEOUT", _FirstFlushTimesOut())
    report = replay(bootstrap, dlq)
    assert (report.read, report.replayed) == (1, 1)  # stopped at the first settle
    assert not report.ok
    assert "failed to publish 1" in render_report(report)
    monkeypatch.undo()
    assert replay(bootstrap, dlq).replayed == 2
    keys = [m.key() for m in read_all(orders, 4, timeout=4)]
    assert keys == [b"customer-0", b"customer-1", b"customer-2"]


def test_cli_revalidate_reads_contracts_from_config(
    bootstrap: str,
    incident: tuple[str, str, list[Sent]],
    tmp_path: Any,
    unique: Callable[[str], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--revalidate --config uses the project's current contracts and reports the rest."""
    _orders, dlq, _ = incident
    module = unique("fixed_contracts").replace("-", "_")
    (tmp_path / f"{module}.py").write_text(
        "from typing import Literal\nfrom pydantic import Field\nimport streamguard as sg\n"
        "class Order(sg.Contract):\n"
        "    __subject__ = 'dlqtest.Order'\n    __version__ = 3\n"
        "    order_id: str\n    amount: int = Field(gt=0)\n"
        "    currency: Literal['EUR', 'USD', 'GBP']\n"
    )
    (tmp_path / "pyproject.toml").write_text(f'[tool.streamguard]\ncontracts = ["{module}"]\n')
    code = main(
        [
            "dlq",
            "replay",
            dlq,
            "--bootstrap-servers",
            bootstrap,
            "--revalidate",
            "--config",
            str(tmp_path / "pyproject.toml"),
            "--group",
            unique("g"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "replayed 3; skipped 0; still invalid 2;" in out
    assert "refused dlq 0@1: still_invalid: amount: Input should be greater than 0" in out


def test_cli_replay_with_the_registry_down_says_the_run_stopped_not_that_records_wait(
    bootstrap: str,
    topic_factory: Callable[..., str],
    dead_letters: Callable[..., list[Sent]],
    tmp_path: Any,
    unique: Callable[[str], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--revalidate --schema-registry with the registry down printed the service's text,
    "records needing it wait and are retried", though the replay stops there: the CLI
    says what failed, and stdout says to run the replay again."""
    orders, dlq = topic_factory("orders"), topic_factory("orders.dlq")
    dead_letters(dlq, [b"\x00\x00\x00\x00\x01" + encode(FIXABLE)], original_topic=orders)
    module = unique("fixed_contracts").replace("-", "_")
    (tmp_path / f"{module}.py").write_text(
        "import streamguard as sg\nclass Order(sg.Contract):\n"
        "    __subject__ = 'dlqtest.Order'\n    __version__ = 3\n"
        "    order_id: str\n    amount: int\n    currency: str\n"
    )
    (tmp_path / "pyproject.toml").write_text(f'[tool.streamguard]\ncontracts = ["{module}"]\n')
    args = ["dlq", "replay", dlq, "--bootstrap-servers", bootstrap, "--revalidate"]
    args += ["--config", str(tmp_path / "pyproject.toml"), "--group", unique("g")]
    assert main([*args, "--schema-registry", "http://127.0.0.1:9"]) == exitcodes.FAILED
    out, err = capsys.readouterr()
    assert "stopped by the error below: run the same replay again to continue" in out
    assert "RegistryUnavailable: schema registry at http://127.0.0.1:9 is unavailable" in err
    assert "wait" not in err


def test_cli_replay_stopped_by_a_missing_contract_says_to_fix_it_first(
    bootstrap: str,
    topic_factory: Callable[..., str],
    dead_letters: Callable[..., list[Sent]],
    tmp_path: Any,
    unique: Callable[[str], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A record whose subject has no contract under --revalidate stops the run (exit 2):
    stdout said "run the same replay again to continue", which stops at the same record
    again. It now says to fix the error first; the error says what to fix."""
    orders, dlq = topic_factory("orders"), topic_factory("orders.dlq")
    dead_letters(dlq, [FIXABLE, FIXABLE], original_topic=orders)
    module = unique("other_contracts").replace("-", "_")
    (tmp_path / f"{module}.py").write_text(
        "import streamguard as sg\nclass Parcel(sg.Contract):\n"
        "    __subject__ = 'dlqtest.Parcel'\n    __version__ = 1\n    parcel_id: str\n"
    )
    (tmp_path / "pyproject.toml").write_text(f'[tool.streamguard]\ncontracts = ["{module}"]\n')
    args = ["dlq", "replay", dlq, "--bootstrap-servers", bootstrap, "--revalidate"]
    args += ["--config", str(tmp_path / "pyproject.toml"), "--group", unique("g")]
    assert main(args) == exitcodes.USAGE
    out, err = capsys.readouterr()
    assert "stopped by the error below: fix it, then run the same replay again" in out
    assert "no contract for subject 'dlqtest.Order'" in err


def test_rate_paces_the_replay(
    bootstrap: str, incident: tuple[str, str, list[Sent]], read_all: Callable[..., list[Message]]
) -> None:
    """--rate 10 spreads 5 records over at least 0.4 s (the first goes at once)."""
    orders, dlq, _ = incident
    started = time.monotonic()
    report = replay(bootstrap, dlq, rate=10.0)
    assert report.replayed == 5
    assert time.monotonic() - started >= 0.4
    assert len(read_all(orders, 5)) == 5


def test_a_slow_rate_commits_each_record_before_the_next_ones_turn(
    bootstrap: str, topic_factory: Callable[..., str], dead_letters: Callable[..., list[Sent]]
) -> None:
    """Under --rate 0.4 (2.5 s a record) the first record is committed while the run
    waits for the second's turn, not after it: a crash in the wait does not send it twice."""
    import threading

    orders, dlq = topic_factory("orders"), topic_factory("orders.dlq")
    dead_letters(dlq, [FIXABLE, FIXABLE], original_topic=orders)
    done: list[ReplayReport] = []
    runner = threading.Thread(target=lambda: done.append(replay(bootstrap, dlq, rate=0.4)))
    runner.start()
    try:
        seen = [-1001]
        deadline = time.monotonic() + 20
        while seen == [-1001] and time.monotonic() < deadline:
            seen = committed(bootstrap, dlq, default_group(dlq))
            time.sleep(0.1)
    finally:
        runner.join(30)
    assert seen == [1], "the first commit came only after the second record's turn"
    assert done[0].replayed == 2
    assert committed(bootstrap, dlq, default_group(dlq)) == [2]


class _SlowFirstCheck(Revalidator):
    """Passes every record; the first check takes a second (a registry's first schema
    fetch over a slow link, say), so the run starts behind --rate's schedule."""

    def __init__(self) -> None:
        super().__init__({"dlqtest.Order": OrderV2})
        self.calls = 0

    def problems(self, letter: DeadLetter) -> Any:
        self.calls += 1
        if self.calls == 1:
            time.sleep(1.0)
        return []


def test_rate_is_a_cap_that_never_bursts_to_catch_up(
    bootstrap: str,
    topic_factory: Callable[..., str],
    dead_letters: Callable[..., list[Sent]],
    read_all: Callable[..., list[Message]],
) -> None:
    """--rate 10 keeps records a tenth of a second apart even after a stall: a run that
    fell behind does not send what it "owes" at once."""
    orders, dlq = topic_factory("orders"), topic_factory("orders.dlq")
    dead_letters(dlq, [FIXABLE] * 8, original_topic=orders)
    report = replay(bootstrap, dlq, rate=10.0, revalidator=_SlowFirstCheck())
    assert report.replayed == 8
    sent_ms = sorted(m.timestamp()[1] for m in read_all(orders, 8))
    assert sent_ms[-1] - sent_ms[0] >= 600, sent_ms  # 7 intervals of 100 ms


def test_cli_time_window_and_missing_to_topic(
    bootstrap: str,
    incident: tuple[str, str, list[Sent]],
    unique: Callable[[str], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--until before the incident selects nothing; a missing --to topic is a usage error,
    refused before the command says that it replays (it said so, then refused)."""
    _, dlq, _ = incident
    args = ["dlq", "replay", dlq, "--bootstrap-servers", bootstrap, "--group", unique("g")]
    assert main([*args, "--until", "2020-01-01", "--dry-run"]) == 0
    assert "would replay 0; skipped 0; still invalid 0; not selected 5;" in capsys.readouterr().out
    assert main([*args, "--to", unique("missing")]) == 2
    out, err = capsys.readouterr()
    assert "does not exist: create it first" in err
    assert "replaying" not in out
    assert main([*args, "--since", "last tuesday"]) == 2
    assert "cannot read time" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("original-partition=x", "expected a partition number, 0 or more"),
        ("original-partition=-1", "expected a partition number, 0 or more"),
        ("expected-version=v1", "expected a contract version, 1 or more"),
        ("expected-version=0", "expected a contract version, 1 or more"),
        ("error-class=", "expected a value after the ="),
        ("topic= ", "expected a value after the ="),
    ],
)
def test_cli_where_refuses_values_no_dead_letter_has(
    bootstrap: str,
    incident: tuple[str, str, list[Sent]],
    unique: Callable[[str], str],
    capsys: pytest.CaptureFixture[str],
    where: str,
    expected: str,
) -> None:
    """A --where value streamguard never writes (a partition that is no number, an empty
    value) selected nothing, silently, and the report showed it as "in {x}": a usage
    error, as a reason's typo is."""
    _, dlq, _ = incident
    args = ["dlq", "replay", dlq, "--bootstrap-servers", bootstrap, "--group", unique("g")]
    assert main([*args, "--dry-run", "--where", where]) == 2
    out, err = capsys.readouterr()
    assert f"--where {where!r}: {expected}" in err
    assert "replaying" not in out


def test_cli_where_selects_partitions_and_versions_as_written(
    bootstrap: str,
    incident: tuple[str, str, list[Sent]],
    unique: Callable[[str], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Numbers select as the headers write them (07 is partition 7); an error class that
    no record has yet is a filter that selects nothing, not an error."""
    _, dlq, _ = incident
    args = ["dlq", "replay", dlq, "--bootstrap-servers", bootstrap, "--dry-run"]
    where = ["--where", "original-partition=00", "--where", "expected-version=01"]
    assert main([*args, "--group", unique("g"), *where]) == 0
    out = capsys.readouterr().out
    assert "expected-version in {1}; original-partition in {0}" in out
    assert "would replay 5; skipped 0; still invalid 0; not selected 0;" in out
    assert main([*args, "--group", unique("g"), "--where", "error-class=NoSuchError"]) == 0
    assert "not selected 5;" in capsys.readouterr().out


class _StopsAtThird(Revalidator):
    """Passes every record, and on the third one raises ``stop`` (or arms a Ctrl-C)."""

    def __init__(self, stop: BaseException | None) -> None:
        super().__init__({"dlqtest.Order": OrderV2})
        self.stop = stop
        self.calls = 0
        self.armed = False

    def problems(self, letter: DeadLetter) -> Any:
        self.calls += 1
        if self.calls == 3:
            if self.stop is not None:
                raise self.stop
            self.armed = True  # Ctrl-C in the wait for --rate's schedule that comes next
        return []


@pytest.mark.parametrize(
    "stop",
    [RegistryUnavailable("registry down"), None],
    ids=["registry-unreachable", "ctrl-c-in-rate-wait"],
)
def test_a_run_stopped_before_a_records_outcome_commits_short_of_it(
    bootstrap: str,
    topic_factory: Callable[..., str],
    dead_letters: Callable[..., list[Sent]],
    read_all: Callable[..., list[Message]],
    stop: BaseException | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever stops a run while a record is being decided or paced leaves that record
    uncommitted: the next run sends it, and nothing is lost or sent twice."""
    orders, dlq = topic_factory("orders"), topic_factory("orders.dlq")
    dead_letters(dlq, [FIXABLE] * 5, original_topic=orders)
    expected = RegistryUnavailable if stop is not None else KeyboardInterrupt
    revalidator = _StopsAtThird(stop)
    sleep = time.sleep

    def ctrl_c_when_armed(seconds: float) -> None:
        # Ctrl-C as it lands in the rate's wait: deterministic, where a timer's signal
        # arrived after a loaded machine had caught up with the schedule and sent on.
        if revalidator.armed:
            raise KeyboardInterrupt
        sleep(seconds)

    monkeypatch.setattr("streamguard.dlqtools.replay.time.sleep", ctrl_c_when_armed)
    with pytest.raises(expected):
        # 0.5 a second: the third record's turn comes 4 s after the start, so the run
        # waits for it even when reading the first records was slow.
        replay(bootstrap, dlq, rate=0.5, revalidator=revalidator)
    assert committed(bootstrap, dlq, default_group(dlq)) == [2]
    assert replay(bootstrap, dlq).replayed == 3
    keys = [m.key() for m in read_all(orders, 6, timeout=4)]
    assert keys == [f"customer-{i}".encode() for i in range(5)]


def test_ctrl_c_during_a_delivery_report_loses_no_acknowledgement(
    bootstrap: str,
    topic_factory: Callable[..., str],
    dead_letters: Callable[..., list[Sent]],
    read_all: Callable[..., list[Message]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C that lands while flush() runs a delivery report: the report stopped before
    its bookkeeping, so a record the broker acknowledged stayed open, nothing after it in
    its partition was committed (the next run sent them all again) and the run ended
    in a SystemError from flush(), exit 1. The signal now waits for the reports."""
    orders, dlq = topic_factory("orders"), topic_factory("orders.dlq")
    dead_letters(dlq, [FIXABLE] * 5, original_topic=orders)
    report = Replayer._report
    signalled: list[bool] = []

    def ctrl_c_in_the_first_report(self: Replayer, letter: DeadLetter, prefix: Any) -> Any:
        on_delivery = report(self, letter, prefix)

        def deliver(err: Any, msg: Message) -> None:
            if not signalled:
                signalled.append(True)
                signal.raise_signal(signal.SIGINT)  # as a real Ctrl-C lands: in the report
            on_delivery(err, msg)

        return deliver

    monkeypatch.setattr(Replayer, "_report", ctrl_c_in_the_first_report)
    with pytest.raises(KeyboardInterrupt):
        replay(bootstrap, dlq)
    assert signalled
    assert committed(bootstrap, dlq, default_group(dlq)) == [5]
    monkeypatch.undo()
    assert replay(bootstrap, dlq).replayed == 0
    keys = [m.key() for m in read_all(orders, 6, timeout=4)]
    assert keys == [f"customer-{i}".encode() for i in range(5)]


def test_sigterm_stops_a_replay_like_ctrl_c_committing_what_was_sent(
    bootstrap: str,
    topic_factory: Callable[..., str],
    dead_letters: Callable[..., list[Sent]],
    read_all: Callable[..., list[Message]],
) -> None:
    """SIGTERM (a container, a CI job or `timeout` stopping a replay) commits every
    record acknowledged so far before exiting: the next run sends none of them again."""
    orders, dlq = topic_factory("orders"), topic_factory("orders.dlq")
    dead_letters(dlq, [FIXABLE] * 20, original_topic=orders)
    # No periodic commit can happen before the signal: only the stop itself commits.
    script = (
        "import sys; import streamguard.dlqtools.replay as r; r.COMMIT_INTERVAL = 1e6; "
        "from streamguard.cli import main; sys.exit(main())"
    )
    cmd = [sys.executable, "-c", script, "dlq", "replay", dlq, "--bootstrap-servers", bootstrap]
    proc = subprocess.Popen([*cmd, "--rate", "10"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert len(read_all(orders, 3, timeout=30)) >= 3  # it is sending
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == exitcodes.INTERRUPTED, proc.stderr.read() if proc.stderr else ""
    assert proc.stdout is not None
    summary = proc.stdout.read().decode()
    assert "interrupted: run the same replay again" in summary
    assert "committed under group" in summary  # where the next run starts
    assert replay(bootstrap, dlq).replayed < 20
    keys = [m.key() for m in read_all(orders, 21, timeout=4)]
    assert sorted(keys) == sorted(f"customer-{i}".encode() for i in range(20))


# Sends SIGTERM to itself once the replay has finished: as its summary is printed, and
# again in Python's own exit (atexit), the ~0.2 s a stop from outside may land in.
SIGTERM_WHEN_DONE = """
import atexit, os, signal, sys
import streamguard.dlqtools.commands as commands
render = commands.render_report
def render_then_sigterm(report):
    text = render(report)
    os.kill(os.getpid(), signal.SIGTERM)
    return text
commands.render_report = render_then_sigterm
atexit.register(os.kill, os.getpid(), signal.SIGTERM)
from streamguard.cli import main
sys.exit(main())
"""


def test_a_sigterm_after_a_finished_replay_leaves_its_exit_status(
    bootstrap: str,
    topic_factory: Callable[..., str],
    dead_letters: Callable[..., list[Sent]],
) -> None:
    """The replay finished and committed: a SIGTERM while it prints its summary or while
    Python exits changes nothing, so the status is the replay's (was 143, killed)."""
    orders, dlq = topic_factory("orders"), topic_factory("orders.dlq")
    dead_letters(dlq, [FIXABLE] * 2, original_topic=orders)
    cmd = [sys.executable, "-c", SIGTERM_WHEN_DONE, "dlq", "replay", dlq]
    done = subprocess.run(
        [*cmd, "--bootstrap-servers", bootstrap], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == exitcodes.OK, done.stderr
    assert f"{dlq}: replayed 2; skipped 0;" in done.stdout


def test_ctrl_c_in_the_teardown_of_a_finished_replay_leaves_its_exit_status(
    bootstrap: str,
    topic_factory: Callable[..., str],
    dead_letters: Callable[..., list[Sent]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C (or SIGTERM, raised as Ctrl-C) while the reader closes after the run: the
    summary is printed and the status is the replay's, not 130."""
    orders, dlq = topic_factory("orders"), topic_factory("orders.dlq")
    dead_letters(dlq, [FIXABLE] * 2, original_topic=orders)
    close = DlqReader.close

    def close_then_ctrl_c(self: DlqReader) -> None:
        close(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(DlqReader, "close", close_then_ctrl_c)
    assert main(["dlq", "replay", dlq, "--bootstrap-servers", bootstrap]) == exitcodes.OK
    assert f"{dlq}: replayed 2; skipped 0;" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("stop", "code", "why"),
    [
        (KeyboardInterrupt(), exitcodes.INTERRUPTED, "interrupted"),
        (
            sg.RegistryUnavailable("schema registry at http://127.0.0.1:9 unreachable"),
            exitcodes.FAILED,
            "stopped by the error below",
        ),
    ],
    ids=["ctrl-c", "error"],
)
def test_a_stop_in_the_rate_wait_reports_only_what_was_sent(
    bootstrap: str,
    topic_factory: Callable[..., str],
    dead_letters: Callable[..., list[Sent]],
    read_all: Callable[..., list[Message]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    stop: BaseException,
    code: int,
    why: str,
) -> None:
    """Ctrl-C while the third record waits for its turn under --rate (where a paced run
    spends its time): the summary said "replayed 3; ... failed to publish 1" and that
    the run stopped at a record that failed to publish, though two were sent and none
    failed. It says what the broker acknowledged, and the next run sends the rest. An
    error there (the schema registry out of reach as --revalidate reads the record)
    printed only the error: the same summary now comes first, then the error."""
    orders, dlq = topic_factory("orders"), topic_factory("orders.dlq")
    dead_letters(dlq, [FIXABLE] * 5, original_topic=orders)
    pace = Replayer._pace
    turns: list[float] = []

    def stop_at_the_third_turn(self: Replayer, rate: float) -> None:
        turns.append(rate)
        if len(turns) == 3:
            raise stop  # deterministic: a real signal lands where it lands
        pace(self, rate)

    monkeypatch.setattr(Replayer, "_pace", stop_at_the_third_turn)
    args = ["dlq", "replay", dlq, "--bootstrap-servers", bootstrap]
    assert main([*args, "--rate", "20"]) == code
    out, err = capsys.readouterr()
    assert "replayed 2; skipped 0; still invalid 0; not selected 0; failed to publish 0" in out
    assert "failed to publish 1" not in out
    assert "stopped early at a record that failed" not in out
    assert f"{why}: run the same replay again to continue" in out
    assert f"committed under group {default_group(dlq)}: p0=2" in out
    if not isinstance(stop, KeyboardInterrupt):
        assert f"RegistryUnavailable: {stop}" in err
    monkeypatch.undo()
    assert main(args) == exitcodes.OK
    assert "replayed 3;" in capsys.readouterr().out
    keys = [m.key() for m in read_all(orders, 6, timeout=4)]
    assert keys == [f"customer-{i}".encode() for i in range(5)]


def test_a_commit_the_broker_refuses_ends_the_run_with_its_summary_and_exit_1(
    bootstrap: str,
    topic_factory: Callable[..., str],
    dead_letters: Callable[..., list[Sent]],
    unique: Callable[[str], str],
    read_all: Callable[..., list[Message]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--group naming a group a live consumer belongs to (the service's own, say): the
    broker refuses the replay's commit. That was a traceback, with no word of the
    records already sent; it is a failed run (exit 1) whose summary says what was sent
    and that its progress was not committed."""
    import threading

    orders, dlq, busy = topic_factory("orders"), topic_factory("orders.dlq"), topic_factory("t")
    dead_letters(dlq, [FIXABLE] * 3, original_topic=orders)
    group = unique("billing")
    member = Consumer(fast_group_config(**{"bootstrap.servers": bootstrap, "group.id": group}))
    member.subscribe([busy])
    deadline = time.monotonic() + 20
    while not member.assignment() and time.monotonic() < deadline:
        member.poll(0.1)
    assert member.assignment(), "the consumer never joined its group"
    stop = threading.Event()

    def stay_in_the_group() -> None:
        while not stop.is_set():
            member.poll(0.1)

    heartbeat = threading.Thread(target=stay_in_the_group)
    heartbeat.start()
    try:
        args = ["dlq", "replay", dlq, "--bootstrap-servers", bootstrap, "--group", group]
        assert main(args) == exitcodes.FAILED
    finally:
        stop.set()
        heartbeat.join(10)
        member.close()
    out = capsys.readouterr().out
    assert "replayed 3; skipped 0; still invalid 0; not selected 0; failed to publish 0" in out
    assert f"  not committed under group {group}: " in out
    assert "committed under group" not in out.replace("not committed under group", "")
    assert committed(bootstrap, dlq, group) == [-1001]
    assert len(read_all(orders, 4, timeout=4)) == 3


def test_a_forged_replay_count_too_long_to_read_counts_as_over_the_limit(
    bootstrap: str,
    topic_factory: Callable[..., str],
    dead_letters: Callable[..., list[Sent]],
    read_all: Callable[..., list[Message]],
) -> None:
    """A count of thousands of digits (past what int() reads) is refused, not a crash."""
    orders, dlq = topic_factory("orders"), topic_factory("orders.dlq")
    dead_letters(dlq, [FIXABLE], original_topic=orders, replay_count="9" * 5000)
    dead_letters(dlq, [FIXABLE], original_topic=orders, key_prefix="fine")
    report = replay(bootstrap, dlq)
    assert (report.replayed, report.skipped[REPLAY_LIMIT]) == (1, 1)
    assert [m.key() for m in read_all(orders, 2, timeout=4)] == [b"fine-0"]


def test_a_relative_time_window_resumes_under_the_same_group(
    bootstrap: str,
    incident: tuple[str, str, list[Sent]],
    read_all: Callable[..., list[Message]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--since 1d names the same filter on every run: the second run sends nothing."""
    orders, dlq, _ = incident
    args = ["dlq", "replay", dlq, "--bootstrap-servers", bootstrap, "--since", "1d"]
    assert main(args) == 0
    first = capsys.readouterr().out
    time.sleep(1.1)  # a resolved --since has moved by now
    assert main(args) == 0
    second = capsys.readouterr().out
    group = first.split(" as group ")[1].split()[0]
    assert group == second.split(" as group ")[1].split()[0]
    assert "replayed 5;" in first
    assert "replayed 0;" in second
    assert len(read_all(orders, 6, timeout=4)) == 5


def test_a_still_invalid_records_forging_field_name_is_reported_escaped(
    bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    """The report of a record still invalid names its undeclared field, with the
    newline, line separator and terminal escape in that name shown escaped."""
    orders, dlq = topic_factory("orders"), topic_factory("orders.dlq")
    closed_dead_letter(bootstrap, dlq, orders)
    report = replay(
        bootstrap, dlq, dry_run=True, revalidator=Revalidator({Closed.__subject__: Closed})
    )
    assert report.still_invalid == 1
    out = render_report(report)
    assert "\x1b" not in out
    assert "\u2028" not in out
    assert not any(line.startswith("FORGED") for line in out.splitlines())
    assert "still_invalid: evil\\nFORGED 9 orders decode_error \\x1b[2J\\u2028:" in out


def test_records_without_dead_letter_headers_are_never_replayed(
    bootstrap: str, topic_factory: Callable[..., str], unique: Callable[[str], str]
) -> None:
    """A topic that is no DLQ (its records carry no sg-dlq-* header) has nothing to send
    a record back to: every record is refused by name, even with --to, and nothing is
    written."""
    parcels, target = topic_factory("parcels"), topic_factory("parcels-fixed")
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(3):
        producer.produce(parcels, b'{"id": 1}', key=f"p-{i}".encode())
    assert producer.flush(10) == 0
    for to in (None, target):
        report = replay(bootstrap, parcels, group=unique("g"), to=to)
        assert (report.replayed, report.skipped) == (0, {NO_ORIGINAL_TOPIC: 3})
        assert report.refused[0]["detail"] == f"no {h.DLQ_ORIGINAL_TOPIC} header"
    with DlqReader(bootstrap, parcels, group_id="check") as reader:
        assert reader.plan()[0].end == 3  # nothing written back into the topic read
    with DlqReader(bootstrap, target, group_id="check") as reader:
        assert reader.plan()[0].end == 0


def test_a_signal_a_callers_handler_lets_pass_leaves_the_next_one_held() -> None:
    """A library caller's SIGTERM handler that only sets a flag lets the replay go on:
    the next SIGTERM is held like the first, not passed on inside a delivery report
    (after one signal, every later one went straight through)."""
    from streamguard.dlqtools.replay import _HeldSignals

    calls: list[int] = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    try:
        held = _HeldSignals()
        with held.installed():
            for expected in (1, 2):
                held.holding = True
                signal.raise_signal(signal.SIGTERM)
                assert len(calls) == expected - 1  # held while reports run
                held.release()
                assert len(calls) == expected  # passed on at the end of the stretch
    finally:
        signal.signal(signal.SIGTERM, before)


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--config", "pyproject.toml"], "--config only applies"),
        (["--schema-registry", "http://127.0.0.1:9"], "--schema-registry only applies"),
        (
            ["--config", "pyproject.toml", "--schema-registry", "http://127.0.0.1:9"],
            "--config and --schema-registry only apply",
        ),
    ],
)
def test_cli_refuses_revalidate_options_without_revalidate(
    capsys: pytest.CaptureFixture[str], flags: list[str], named: str
) -> None:
    """--config and --schema-registry are read only by --revalidate: without it they
    were ignored, and the replay sent records unchecked. A usage error, before any
    client is made (no broker listens on the bootstrap address). One flag alone is
    named in the singular: it said "--config only apply ... leave them out"."""
    args = ["dlq", "replay", "orders.dlq", "--bootstrap-servers", "127.0.0.1:9", *flags]
    assert main(args) == exitcodes.USAGE
    out, err = capsys.readouterr()
    assert f"{named} with --revalidate" in err
    assert ("leave them out" in err) == (" and " in named)
    assert "replaying" not in out


def test_a_second_run_under_the_same_group_at_once_stops_at_the_others_commit(
    bootstrap: str,
    incident: tuple[str, str, list[Sent]],
    read_all: Callable[..., list[Message]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two operators run the same replay at once (same default group): each sent every
    record and exited 0, replaying the whole DLQ twice. A run now sees the other's
    commit at its next settle, stops there without committing over it, and fails."""
    from streamguard.dlqtools import replay as replay_module

    orders, dlq, _ = incident
    monkeypatch.setattr(replay_module, "COMMIT_INTERVAL", 0.0)  # settle after each record
    with DlqReader(bootstrap, dlq, group_id=default_group(dlq), idle_timeout=5) as reader:
        read = reader.read

        def the_other_operator_runs_after_the_first_record(ranges: Any) -> Any:
            for i, record in enumerate(read(ranges)):
                if i == 1:
                    assert replay(bootstrap, dlq).ok  # the other run, to the end
                yield record

        reader.read = the_other_operator_runs_after_the_first_record  # type: ignore[method-assign]
        report = Replayer(reader, ReplayOptions(), out=io.StringIO()).run()
    assert not report.ok
    assert report.group_moved == "p0=5"
    assert "another run committed under it meanwhile (p0=5)" in render_report(report)
    assert report.replayed == 2  # its first record, and the one read before it stopped
    assert committed(bootstrap, dlq, default_group(dlq)) == [5]  # the other run's
    assert len(read_all(orders, 7, timeout=4)) == 6  # one record sent twice, not five


def test_ctrl_c_before_the_dlq_is_read_does_not_say_it_held_nothing(
    bootstrap: str,
    incident: tuple[str, str, list[Sent]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C while the run still found the DLQ's end (its first second): the summary
    said "read 0 of the 0 record(s) between the position of group ... and the end",
    as if nothing were left to replay. It says the run stopped before reading."""
    _, dlq, _ = incident

    def interrupted(self: DlqReader, start: Any = None) -> Any:
        raise KeyboardInterrupt  # deterministic: a real signal lands where it lands

    monkeypatch.setattr(DlqReader, "plan", interrupted)
    assert main(["dlq", "replay", dlq, "--bootstrap-servers", bootstrap]) == exitcodes.INTERRUPTED
    out = capsys.readouterr().out
    assert "read 0 of the 0" not in out
    assert "stopped before reading the DLQ: nothing was read, sent or committed" in out
    assert "interrupted: run the same replay again to continue" in out
    monkeypatch.undo()
    assert main(["dlq", "replay", dlq, "--bootstrap-servers", bootstrap]) == exitcodes.OK
    assert "read 5 of the 5 record(s)" in capsys.readouterr().out

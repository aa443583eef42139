"""``dlq inspect`` and the group-less reader under it, through the real broker."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

import streamguard as sg
from streamguard.cli import main
from streamguard.codecs import JsonCodec
from streamguard.deadletter import Failure, dead_letter_headers
from streamguard.dlqtools.commands import INSPECT_GROUP, _rate
from streamguard.dlqtools.reader import DlqReader
from tests.conftest import port_of, refusing_port
from tests.dlqtools.dlqcases import (
    FIXABLE,
    HOPELESS,
    OrderV1,
    Sent,
    closed_dead_letter,
    encode,
)

pytestmark = pytest.mark.broker


def test_reader_finds_the_true_end_after_a_batched_produce(
    bootstrap: str, topic_factory: Callable[..., str], dead_letters: Callable[..., list[Sent]]
) -> None:
    """The end is right although the local broker's ListOffsets is wrong after batching."""
    dlq = topic_factory("orders.dlq")
    dead_letters(dlq, [FIXABLE] * 10, original_topic="orders")
    with DlqReader(bootstrap, dlq, group_id="unused") as reader:
        (listed,) = [
            reader._consumer.get_watermark_offsets(TopicPartition(dlq, 0), cached=False)[1]
        ]
        ranges = reader.plan()
        assert [(r.start, r.end) for r in ranges] == [(0, 10)]
        assert (
            listed < 10
        )  # the local broker's ListOffsets (docs/local-broker.md, item 1): what the probe corrects
        assert len(list(reader.read(ranges))) == 10
        assert not reader.stopped_idle


def test_reader_stops_at_the_end_recorded_at_start(
    bootstrap: str, topic_factory: Callable[..., str], dead_letters: Callable[..., list[Sent]]
) -> None:
    """Records written after the plan was made are not read, so a busy DLQ cannot run forever."""
    dlq = topic_factory("orders.dlq", partitions=2)
    dead_letters(dlq, [FIXABLE] * 6, original_topic="orders")
    with DlqReader(bootstrap, dlq, group_id="unused") as reader:
        ranges = reader.plan()
        producer = Producer({"bootstrap.servers": bootstrap})
        for i in range(5):
            producer.produce(dlq, b"late", partition=i % 2)
        producer.flush(10)
        got = list(reader.read(ranges))
    assert len(got) == 6
    assert all(r.letter.value != b"late" for r in got)


def test_inspect_groups_by_cause_without_values(
    bootstrap: str,
    topic_factory: Callable[..., str],
    dead_letters: Callable[..., list[Sent]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The table has one row per cause with counts and error locations, and no field values."""
    orders, dlq = topic_factory("orders"), topic_factory("orders.dlq")
    dead_letters(dlq, [FIXABLE, HOPELESS, FIXABLE, b"{not json"], original_topic=orders)
    assert main(["dlq", "inspect", dlq, "--bootstrap-servers", bootstrap]) == 0
    out = capsys.readouterr().out
    assert f"{dlq}: 4 dead-lettered record(s) in 2 group(s)" in out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("1 ", "3 "))]
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in rows] == [
        ("3", orders, "contract_violation", "ContractViolation", "dlqtest.Order"),
        ("1", orders, "decode_error", "DecodeError", "dlqtest.Order"),
    ]
    assert "error locations: currency (literal_error) x2, amount (greater_than) x1" in out
    assert "e.g. dlq 0@0, original 0@100, service billing-svc" in out
    assert "GBP" not in out
    assert "customer-" not in out


def test_inspect_json_shows_values_only_when_asked(
    bootstrap: str,
    topic_factory: Callable[..., str],
    dead_letters: Callable[..., list[Sent]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--format json is machine-readable; --show-values adds key and value to examples."""
    dlq = topic_factory("orders.dlq")
    dead_letters(dlq, [FIXABLE, FIXABLE, b"{not json"], original_topic="orders")
    args = ["dlq", "inspect", dlq, "--bootstrap-servers", bootstrap, "--format", "json"]
    assert main(args) == 0
    plain = json.loads(capsys.readouterr().out)
    assert [g["count"] for g in plain["groups"]] == [2, 1]
    assert plain["groups"][0]["example"]["dlq"] == "0@0"
    assert plain["groups"][0]["error_locations"] == {"currency (literal_error)": 2}
    assert "value" not in plain["groups"][0]["example"]
    assert main([*args, "--show-values", "--limit", "1"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["records"] == 1
    assert shown["groups"][0]["example"]["key"] == "customer-0"
    assert "GBP" in shown["groups"][0]["example"]["value"]


def test_inspect_commits_nothing(
    bootstrap: str,
    topic_factory: Callable[..., str],
    dead_letters: Callable[..., list[Sent]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Inspecting leaves no committed offsets behind under any group it could have used."""
    dlq = topic_factory("orders.dlq")
    dead_letters(dlq, [FIXABLE], original_topic="orders")
    assert main(["dlq", "inspect", dlq, "--bootstrap-servers", bootstrap]) == 0
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": INSPECT_GROUP})
    try:
        (tp,) = consumer.committed([TopicPartition(dlq, 0)], timeout=10)
    finally:
        consumer.close()
    assert tp.offset < 0


def test_inspect_of_a_missing_topic_is_a_usage_error(
    bootstrap: str, unique: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A mistyped DLQ name exits 2 with a hint, and the topic is not created by asking."""
    name = unique("no-such.dlq")
    assert main(["dlq", "inspect", name, "--bootstrap-servers", bootstrap]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["dlq", "inspect", name, "--bootstrap-servers", bootstrap]) == 2


@pytest.mark.parametrize("command", [["inspect"], ["replay", "--dry-run"], ["replay"]])
def test_a_cluster_that_is_down_fails_in_bounded_time_naming_it(command: list[str]) -> None:
    """Against a closed port, inspect and replay exit 1 after the documented 10 s, with a
    message naming the address and what to check, not librdkafka's bare error object.

    And that message is not buried: librdkafka printed a connect failure at every
    backoff, some 200 lines before it. The failure is shown once, with its count."""
    sock = refusing_port()
    try:
        address = f"127.0.0.1:{port_of(sock)}"
        cli = [sys.executable, "-m", "streamguard.cli", "dlq", *command, "orders.dlq"]
        started = time.monotonic()
        done = subprocess.run(
            [*cli, "--bootstrap-servers", address], capture_output=True, text=True, timeout=60
        )
        took = time.monotonic() - started
    finally:
        sock.close()
    err = done.stderr
    assert done.returncode == 1, err
    assert 9 < took < 20
    assert f"could not reach Kafka at {address} within 10s" in err
    assert "check --bootstrap-servers" in err
    failures = [line for line in err.splitlines() if f"Connect to ipv4#{address} failed" in line]
    # The first failure, then the count of the rest: visible, and not 200 times.
    assert 1 <= len(failures) <= 3, err
    assert re.search(r"FAIL: \d+ more line\(s\) like this not shown: .*Connection refused", err)
    assert len(err.splitlines()) <= 5, err


def test_inspect_shows_a_forging_field_name_escaped(
    bootstrap: str, topic_factory: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    """An undeclared field's name stays in the error locations, but its newline, line
    separator and terminal escape are shown escaped: no forged line, no escape sent."""
    orders, dlq = topic_factory("orders"), topic_factory("orders.dlq")
    closed_dead_letter(bootstrap, dlq, orders)
    assert main(["dlq", "inspect", dlq, "--bootstrap-servers", bootstrap]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "\u2028" not in out
    assert not any(line.startswith("FORGED") for line in out.splitlines())
    assert "error locations: evil\\nFORGED 9 orders decode_error \\x1b[2J\\u2028" in out


def test_inspect_survives_an_errors_header_nested_too_deep(
    bootstrap: str, topic_factory: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A forged or garbled sg-dlq-errors header nested deeper than json can parse is
    shown as no errors, and the record is still counted, instead of a crash."""
    dlq = topic_factory("orders.dlq")
    producer = Producer({"bootstrap.servers": bootstrap})
    headers = [
        ("sg-dlq-original-topic", b"orders"),
        ("sg-dlq-reason", b"contract_violation"),
        ("sg-dlq-errors", b"[" * 100_000),
    ]
    producer.produce(dlq, b"v", key=b"k", headers=headers)
    assert producer.flush(10) == 0
    assert main(["dlq", "inspect", dlq, "--bootstrap-servers", bootstrap]) == 0
    out = capsys.readouterr().out
    assert f"{dlq}: 1 dead-lettered record(s) in 1 group(s)" in out
    assert "contract_violation" in out


def test_inspect_reads_a_garbled_dead_lettered_time_as_missing(
    bootstrap: str, topic_factory: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    """An sg-dlq-dead-lettered-ms header past the year 9999 or negative counts as
    missing (the DLQ record's own timestamp is used), instead of crashing the table or
    moving the group's first and last times."""
    dlq = topic_factory("orders.dlq")
    producer = Producer({"bootstrap.servers": bootstrap})
    base = [("sg-dlq-original-topic", b"orders"), ("sg-dlq-reason", b"permanent_error")]
    for header, timestamp in (
        (b"1795000000000", 1_795_000_045_000),  # 2026-11-18T11:06:40Z, from the header
        (b"99999999999999999999", 1_795_000_060_000),  # 11:07:40Z, the record's own
        (b"-5", 1_795_000_030_000),  # 11:07:10Z, the record's own
    ):
        headers = [*base, ("sg-dlq-dead-lettered-ms", header)]
        producer.produce(dlq, b"v", key=b"k", headers=headers, timestamp=timestamp)
    assert producer.flush(10) == 0
    for fmt in ("table", "json"):
        args = ["dlq", "inspect", dlq, "--bootstrap-servers", bootstrap, "--format", fmt]
        assert main(args) == 0
        out = capsys.readouterr().out
        assert "2026-11-18T11:06:40Z" in out
        assert "2026-11-18T11:07:40Z" in out


def test_inspect_with_a_limit_says_how_far_it_read(
    bootstrap: str,
    topic_factory: Callable[..., str],
    dead_letters: Callable[..., list[Sent]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With --limit, the first line says the records shown are the first few of more,
    and where reading stopped, not the DLQ's end as if all of it had been read."""
    dlq = topic_factory("orders.dlq")
    dead_letters(dlq, [FIXABLE] * 5, original_topic="orders")
    base = ["dlq", "inspect", dlq, "--bootstrap-servers", bootstrap]
    assert main([*base, "--limit", "2"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == (
        f"{dlq}: the first 2 of 5 dead-lettered record(s) in 1 group(s) "
        "(read up to offsets p0<2, stopped by --limit)"
    )
    assert main([*base, "--limit", "2", "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["records"], shown["limited"], shown["total"]) == (2, True, 5)
    assert main([*base, "--limit", "5"]) == 0  # a limit that reads everything: no note
    assert capsys.readouterr().out.splitlines()[0] == (
        f"{dlq}: 5 dead-lettered record(s) in 1 group(s) (read up to offsets p0<5)"
    )


def test_inspect_counts_the_records_a_replay_did_not_fix(
    bootstrap: str,
    topic_factory: Callable[..., str],
    dead_letters: Callable[..., list[Sent]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Records dead-lettered again after a replay (sg-replay-count set) are counted per
    group, with the highest count: a fix that did not hold, or a loop on its way to the
    replay limit, is seen without reading headers one by one."""
    dlq = topic_factory("orders.dlq")
    dead_letters(dlq, [HOPELESS] * 2, original_topic="orders")
    dead_letters(dlq, [HOPELESS], original_topic="orders", replay_count=1)
    dead_letters(dlq, [HOPELESS], original_topic="orders", replay_count=3)
    dead_letters(dlq, [FIXABLE], original_topic="orders", reason="permanent_error")
    base = ["dlq", "inspect", dlq, "--bootstrap-servers", bootstrap]
    assert main(base) == 0
    out = capsys.readouterr().out
    assert out.count("replayed before:") == 1  # the group that was never replayed: no line
    assert "replayed before: 2 of these record(s), sg-replay-count up to 3" in out
    assert main([*base, "--format", "json"]) == 0
    groups = json.loads(capsys.readouterr().out)["groups"]
    counts = {g["reason"]: (g["count"], g["replayed"], g["max_replay_count"]) for g in groups}
    assert counts == {"contract_violation": (4, 2, 3), "permanent_error": (1, 0, 0)}


def test_inspect_selects_the_records_a_replay_with_the_same_filters_would(
    bootstrap: str,
    topic_factory: Callable[..., str],
    dead_letters: Callable[..., list[Sent]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--where/--since/--until summarise only the records `dlq replay` with the same
    flags selects, and say how many of those read they left out."""
    dlq = topic_factory("orders.dlq")
    dead_letters(dlq, [FIXABLE, HOPELESS, b"{not json"], original_topic="orders")
    boundary = str(int(time.time() * 1000) + 1)
    time.sleep(0.01)
    dead_letters(dlq, [FIXABLE] * 2, original_topic="orders", original_partition=3)
    base = ["dlq", "inspect", dlq, "--bootstrap-servers", bootstrap]
    assert main([*base, "--where", "reason=contract_violation"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[:2] == [
        f"{dlq}: 4 dead-lettered record(s) in 1 group(s) (read up to offsets p0<5)",
        "  selected: reason in {contract_violation}: 4 of the 5 record(s) read (1 not selected)",
    ]
    assert "decode_error" not in out
    json_args = [*base, "--format", "json", "--where", "original-partition=3"]
    assert main([*json_args, "--where", "error-class=ContractViolation"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["records"], shown["not_selected"]) == (2, 3)
    assert shown["groups"][0]["example"]["dlq"] == "0@3"
    assert main([*base, "--format", "json", "--since", boundary]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 2
    assert main([*base, "--format", "json", "--until", boundary]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 3
    # --limit counts selected records: the first one, found after one left out.
    assert main([*base, "--where", "reason=decode_error", "--limit", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        f"{dlq}: the first 1 dead-lettered record(s) in 1 group(s) "
        "(read up to offsets p0<3, stopped by --limit)"
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--where", "reason=contract_violaton"], "no such reason"),
        (["--where", "partition=1"], "expected KEY=VALUE with KEY one of"),
        (["--where", "original-partition=-1"], "a partition number, 0 or more"),
        (["--since", "1h", "--until", "2h"], "is not before --until"),
        (["--since", "yesterday"], "cannot read time"),
    ],
)
def test_inspect_refuses_a_selection_as_replay_does(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A selection that can match nothing is a usage error before any cluster is asked."""
    assert main(["dlq", "inspect", "orders.dlq", "--bootstrap-servers", "127.0.0.1:1", *flags]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [
        ["dlq", "inspect", "orders.dlq"],
        ["dlq", "replay", "orders.dlq", "--dry-run"],
        ["run", "tests.runtime.apps:Recorder", "--log-format", "text"],
    ],
)
def test_a_callable_setting_on_the_command_line_is_a_usage_error(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """``-X error_cb=x`` ended in the client's TypeError traceback: one line, exit 2."""
    args = [*command, "--bootstrap-servers", "127.0.0.1:1", "-X", "error_cb=Hunter2Secret"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "error_cb: this setting takes a Python callable" in err
    assert "Hunter2Secret" not in err
    assert "Traceback" not in err


@pytest.mark.usefixtures("cluster_goes_quiet")
def test_inspect_that_stopped_short_of_the_end_exits_1(
    bootstrap: str,
    topic_factory: Callable[..., str],
    dead_letters: Callable[..., list[Sent]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Counts read before the cluster went quiet are not the DLQ's: the note says so and
    the exit status fails, so a script does not take them for the whole DLQ."""
    dlq = topic_factory("orders.dlq")
    dead_letters(dlq, [FIXABLE] * 3, original_topic="orders")
    base = ["dlq", "inspect", dlq, "--bootstrap-servers", bootstrap]
    assert main(base) == 1
    out = capsys.readouterr().out
    assert "2 dead-lettered record(s)" in out
    assert "note: stopped after an idle period before reaching those offsets" in out
    assert main([*base, "--format", "json"]) == 1
    assert json.loads(capsys.readouterr().out)["stopped_idle"] is True


@pytest.mark.parametrize("rate", ["abc", "0", "-1"])
def test_a_rate_that_is_no_positive_number_is_named_plainly(
    rate: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """argparse names the type function when it raises ValueError ('invalid
    _positive_float value'); the message says what is expected instead."""
    with pytest.raises(SystemExit) as exited:
        main(["dlq", "replay", "orders.dlq", "--rate", rate])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"expected a positive number, got {rate}" in err
    assert "_positive_float" not in err


def test_a_rate_too_low_to_wait_for_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """A rate whose interval no sleep can wait (1e-300 a second) is a usage error, not
    an OverflowError traceback at the second record."""
    with pytest.raises(SystemExit) as exited:
        main(["dlq", "replay", "orders.dlq", "--rate", "1e-300"])
    assert exited.value.code == 2
    assert "argument --rate: expected at least 2.2e-10 messages a second" in capsys.readouterr().err


def test_a_rate_whose_wait_overflows_the_clock_is_refused() -> None:
    """An interval just under threading.TIMEOUT_MAX was accepted, but time.sleep()
    waits until monotonic() plus it, which then no longer fits: OSError (EINVAL) at
    the second record, a traceback after the first was sent."""
    with pytest.raises(argparse.ArgumentTypeError, match="expected at least"):
        _rate(repr(1.0 / (threading.TIMEOUT_MAX - 1.0)))


@pytest.mark.parametrize(
    ("command", "option"),
    [(["inspect"], "--limit"), (["replay"], "--limit"), (["replay"], "--max-replays")],
)
@pytest.mark.parametrize("value", ["abc", "1.5", "0"])
def test_a_count_that_is_no_positive_integer_is_named_plainly(
    command: list[str], option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--limit and --max-replays, as --rate: argparse named the type function when it
    raised ValueError ('invalid _positive_int value: 'abc'')."""
    with pytest.raises(SystemExit) as exited:
        main(["dlq", *command, "orders.dlq", option, value])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: expected a positive integer, got {value}" in err
    assert "_positive_int" not in err


SENTINEL = "sentinel-7c41e9"
# Cut short: a decode error, whose text names a position and never the bytes.
UNDECODABLE = b'{"order_id": "' + SENTINEL.encode() + b'", "amount": 1, "currency": "EUR"'
FIXED_CONTRACT = (
    "from typing import Literal\nfrom pydantic import Field\nimport streamguard as sg\n"
    "class Order(sg.Contract):\n"
    "    __subject__ = 'dlqtest.Order'\n    __version__ = 2\n"
    "    order_id: str\n    amount: int = Field(gt=0)\n"
    "    currency: Literal['EUR', 'USD', 'GBP']\n"
)


def test_inspect_and_a_dry_run_show_the_same_decode_error_and_no_input(
    bootstrap: str,
    topic_factory: Callable[..., str],
    dead_letters: Callable[..., list[Sent]],
    unique: Callable[[str], str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A decode error's text holds no input, so inspect shows it by default as replay
    --revalidate --dry-run does (inspect hid it behind --show-values); a handler's error
    text may quote input and stays hidden without --show-values. The sentinel in the
    undecodable value and in the handler's text is in neither command's default output."""
    orders, dlq = topic_factory("orders"), topic_factory("orders.dlq")
    dead_letters(dlq, [UNDECODABLE], original_topic=orders)
    quoting = dead_letter_headers(
        original_headers=[],
        topic=orders,
        partition=0,
        offset=7,
        timestamp_ms=None,
        failure=Failure("permanent_error", ValueError(f"no customer {SENTINEL}")),
        group_id="billing",
        service="billing-svc",
        expected_subject=OrderV1.__subject__,
        expected_version=OrderV1.__version__,
        include_error_text=True,  # the service opted in: the text may quote data
    )
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(dlq, encode(FIXABLE), key=b"k", headers=quoting)
    assert producer.flush(10) == 0
    with pytest.raises(sg.DecodeError) as info:
        JsonCodec().decode(UNDECODABLE, OrderV1)
    text = str(info.value)
    assert text.startswith("Invalid JSON: ")

    module = unique("fixed_contracts").replace("-", "_")
    (tmp_path / f"{module}.py").write_text(FIXED_CONTRACT)
    (tmp_path / "pyproject.toml").write_text(f'[tool.streamguard]\ncontracts = ["{module}"]\n')
    replay = ["dlq", "replay", dlq, "--bootstrap-servers", bootstrap, "--dry-run"]
    replay += ["--revalidate", "--config", str(tmp_path / "pyproject.toml"), "--group", unique("g")]
    assert main(replay) == 0
    replayed = capsys.readouterr().out
    assert f"refused dlq 0@0: still_invalid: <root>: {text}" in replayed

    inspect = ["dlq", "inspect", dlq, "--bootstrap-servers", bootstrap]
    assert main(inspect) == 0
    table = capsys.readouterr().out
    assert f"message: {text}" in table
    assert main([*inspect, "--format", "json"]) == 0
    examples = {g["reason"]: g["example"] for g in json.loads(capsys.readouterr().out)["groups"]}
    assert examples["decode_error"]["error_message"] == text
    assert "error_message" not in examples["permanent_error"]
    for out in (replayed, table, json.dumps(examples)):
        assert SENTINEL not in out

    assert main([*inspect, "--show-values"]) == 0  # asked for: the handler's text too
    assert f"message: no customer {SENTINEL}" in capsys.readouterr().out


def test_inspect_of_a_topic_that_is_no_dlq_says_so(
    bootstrap: str,
    topic_factory: Callable[..., str],
    dead_letters: Callable[..., list[Sent]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Records without any sg-dlq-* header are named as such, not shown as bare dead
    letters of reason 'unknown': the operator most likely gave the source topic."""
    parcels = topic_factory("parcels")
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(3):
        producer.produce(parcels, encode(FIXABLE), key=f"p-{i}".encode())
    assert producer.flush(10) == 0
    args = ["dlq", "inspect", parcels, "--bootstrap-servers", bootstrap]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert (
        f"note: 3 of the 3 record(s) carry no streamguard dead-letter headers "
        f"(sg-dlq-reason, sg-dlq-original-topic, ...): '{parcels}' is probably not a "
        f"dead-letter topic (by default, dead letters of '{parcels}' go to '{parcels}.dlq')"
    ) in out
    assert main([*args, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["without_dlq_headers"] == 3
    # A filter that selects none of them does not hide it.
    assert main([*args, "--where", "reason=decode_error"]) == 0
    assert "note: 3 of the 3 record(s) carry no streamguard" in capsys.readouterr().out
    # A real DLQ gets no such note, and says 0 in JSON.
    dlq = topic_factory("parcels.dlq")
    dead_letters(dlq, [FIXABLE], original_topic=parcels)
    assert main(["dlq", "inspect", dlq, "--bootstrap-servers", bootstrap]) == 0
    assert "dead-letter headers" not in capsys.readouterr().out
    assert main(["dlq", "inspect", dlq, "--bootstrap-servers", bootstrap, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["without_dlq_headers"] == 0


def test_a_dlq_holding_a_few_records_of_another_writer_is_still_called_a_dlq() -> None:
    """Records without any sg-dlq-* header among real dead letters (a test record produced
    by hand, say) are counted and named as no dead letters, but the topic is not said to
    be probably no DLQ: that is said only when none of the records read is a dead letter."""
    from streamguard.deadletter import DeadLetter
    from streamguard.dlqtools.inspect import render_table, summarize
    from streamguard.dlqtools.reader import DlqRecord

    def record(offset: int, headers: list[tuple[str, bytes | None]]) -> DlqRecord:
        letter = DeadLetter.from_record(
            topic="orders.dlq", partition=0, offset=offset, key=None, value=b"{}", headers=headers
        )
        return DlqRecord(letter, 1_700_000_000_000)

    dead = [("sg-dlq-reason", b"decode_error"), ("sg-dlq-original-topic", b"orders")]
    mixed = [record(i, dead) for i in range(98)] + [record(98, []), record(99, [("trace", b"1")])]
    table = render_table(summarize("orders.dlq", mixed))
    assert "note: 2 of the 100 record(s) carry no streamguard dead-letter headers" in table
    assert "probably not a dead-letter topic" not in table
    assert "no dead letters" in table
    none = render_table(summarize("orders.dlq", [record(0, []), record(1, [])]))
    assert "'orders.dlq' is probably not a dead-letter topic" in none


def test_replayed_records_of_a_source_topic_are_not_called_dead_lettered_again() -> None:
    """``inspect`` given the source topic, which holds replayed records (sg-replay-count,
    no sg-dlq-* header): they are no dead letters, so no line says they were
    dead-lettered again after a replay, and JSON counts none as replayed."""
    from streamguard.deadletter import DeadLetter
    from streamguard.dlqtools.inspect import render_table, summarize, to_json
    from streamguard.dlqtools.reader import DlqRecord

    def record(offset: int, headers: list[tuple[str, bytes | None]]) -> DlqRecord:
        letter = DeadLetter.from_record(
            topic="orders", partition=0, offset=offset, key=None, value=b"{}", headers=headers
        )
        return DlqRecord(letter, 1_700_000_000_000)

    replayed = [record(i, [("sg-replay-count", b"1"), ("sg-replay-at", b"1")]) for i in range(3)]
    summary = summarize("orders", [record(3, []), *replayed])
    table = render_table(summary)
    assert "note: 4 of the 4 record(s) carry no streamguard dead-letter headers" in table
    assert "replayed before" not in table
    (group,) = json.loads(to_json(summary))["groups"]
    assert (group["replayed"], group["max_replay_count"]) == (0, 0)
    # A dead letter with the same count is still counted as dead-lettered again.
    dead = [("sg-dlq-reason", b"decode_error"), ("sg-dlq-original-topic", b"orders")]
    again = render_table(
        summarize("orders.dlq", [record(0, [*replayed[0].letter.original_headers, *dead])])
    )
    assert "replayed before: 1 of these record(s), sg-replay-count up to 1" in again


def test_a_huge_forged_header_widens_no_row_of_the_table() -> None:
    """A forged sg-dlq-* header of 200 KB is cut in its table cell, so the other groups'
    rows stay readable; JSON keeps the value whole."""
    from streamguard.deadletter import DeadLetter
    from streamguard.dlqtools.inspect import render_table, summarize, to_json
    from streamguard.dlqtools.reader import DlqRecord

    huge = "x" * 200_000
    records = [
        DlqRecord(
            DeadLetter.from_record(
                topic="orders.dlq",
                partition=0,
                offset=offset,
                key=None,
                value=b"{}",
                headers=[("sg-dlq-reason", reason.encode()), ("sg-dlq-original-topic", b"orders")],
            ),
            1_700_000_000_000,
        )
        for offset, reason in enumerate(["permanent_error", huge])
    ]
    summary = summarize("orders.dlq", records)
    table = render_table(summary)
    assert max(len(line) for line in table.splitlines()) < 400, table[:500]
    assert "xxx..." in table
    assert [line for line in table.splitlines() if "permanent_error" in line]
    assert huge in [g["reason"] for g in json.loads(to_json(summary))["groups"]]


def test_shown_values_tell_a_typed_backslash_from_a_byte_that_is_no_utf8() -> None:
    """With --show-values, the byte 0xff and the four characters ``\\xff`` in a value
    are shown differently, in the table and in JSON; a terminal escape still is not."""
    from streamguard.deadletter import DeadLetter
    from streamguard.dlqtools.inspect import render_table, summarize, to_json
    from streamguard.dlqtools.reader import DlqRecord
    from streamguard.observe.untrusted import escaped

    values = {"permanent_error": b"\xff", "decode_error": b"\\xff", "oversize": b"\x1b[2J"}
    records = [
        DlqRecord(
            DeadLetter.from_record(
                topic="orders.dlq",
                partition=0,
                offset=offset,
                key=b"k'ey",
                value=value,
                headers=[("sg-dlq-reason", reason.encode()), ("sg-dlq-original-topic", b"orders")],
            ),
            1_700_000_000_000,
        )
        for offset, (reason, value) in enumerate(values.items())
    ]
    summary = summarize("orders.dlq", records, show_values=True)
    examples = {g.key.reason: g.example["value"] for g in summary.ordered()}
    assert examples == {
        "permanent_error": "\\xff",
        "decode_error": "\\\\xff",
        "oversize": "\\x1b[2J",
    }
    shown = [g["example"]["value"] for g in json.loads(to_json(summary))["groups"]]
    assert sorted(shown) == sorted(examples.values())
    table = render_table(summary)
    assert "key: 'k\\'ey'  value: '\\xff'" in table
    assert "key: 'k\\'ey'  value: '\\\\xff'" in table
    assert "value: '\\x1b[2J'" in table
    assert "\x1b" not in table
    # Nor do the byte 0x85 and the character U+0085 (a control, so escaped too).
    assert (escaped(b"\x85"), escaped("\x85".encode())) == ("\\x85", "\\u0085")


def test_locations_that_differ_in_every_record_keep_memory_bounded() -> None:
    """A location may hold a dict key (a SKU), so every record can bring new ones: each
    was tallied, and 50,000 dead letters of 60 such errors took 890 MB. A group tallies
    its first 1,000 distinct locations, and counts the occurrences of the rest."""
    from streamguard.deadletter import DeadLetter
    from streamguard.dlqtools.inspect import render_table, summarize, to_json
    from streamguard.dlqtools.reader import DlqRecord

    def record(offset: int) -> DlqRecord:
        errors = [
            {"loc": ["prices", f"sku-{offset}-{j}", "amount"], "type": "greater_than", "msg": ""}
            for j in range(10)
        ]
        headers = [
            ("sg-dlq-reason", b"contract_violation"),
            ("sg-dlq-original-topic", b"orders"),
            ("sg-dlq-errors", json.dumps(errors).encode()),
        ]
        letter = DeadLetter.from_record(
            topic="orders.dlq", partition=0, offset=offset, key=None, value=b"{}", headers=headers
        )
        return DlqRecord(letter, 1_700_000_000_000)

    summary = summarize("orders.dlq", (record(i) for i in range(300)))
    (group,) = summary.groups.values()
    assert len(group.locations) == 1000
    assert sum(group.locations.values()) + group.locations_left_out == 3000
    assert "+996 more (+2000 occurrence(s) of locations past the first 1000" in render_table(
        summary
    )
    assert json.loads(to_json(summary))["groups"][0]["error_locations_left_out"] == 2000

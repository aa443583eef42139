"""Both log formats carry the time: a text line without it could not be timed."""

from __future__ import annotations

import datetime
import json
import logging
import re
import warnings

import pytest
from pydantic import BaseModel

from streamguard.observe.logs import JsonFormatter, TextFormatter, configure_logging


def record() -> logging.LogRecord:
    entry = logging.LogRecord(
        "streamguard.runtime", logging.INFO, "", 0, "partitions assigned", (), None
    )
    entry.created, entry.msecs = 1_796_500_000.25, 250.0
    entry.partitions = [0, 1]
    return entry


def test_text_lines_start_with_the_json_lines_time() -> None:
    text = TextFormatter().format(record())
    assert text == (
        "2026-12-05T19:46:40.250Z INFO    streamguard.runtime: partitions assigned "
        "partitions=[0, 1]"
    )
    stamp = json.loads(JsonFormatter().format(record()))["ts"]
    assert text.startswith(stamp)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp)


def test_a_record_faust_logged_ends_with_no_empty_extra() -> None:
    """Faust's worker installs mode's formatter on the root logger, before any handler
    passed to it: formatting a record, that formatter sets ``record.extra`` to the text
    of its ``data``, empty unless a flight recorder adds some. A streamguard handler
    formatting the record after it showed that as a stray ``extra=``."""
    from mode.utils.logging import DefaultFormatter

    entry = record()
    DefaultFormatter("%(message)s %(extra)s").format(entry)
    assert entry.extra == ""  # what mode leaves on the record
    assert TextFormatter().format(entry).endswith("partitions assigned partitions=[0, 1]")
    assert "extra" not in json.loads(JsonFormatter().format(entry))
    entry.data = {"topic": "orders"}  # what mode's flight recorder passes in ``extra``
    DefaultFormatter("%(message)s %(extra)s").format(entry)
    assert "extra=topic='orders'" in TextFormatter().format(entry)  # not empty: shown


def test_a_json_line_is_written_whatever_the_extra_values() -> None:
    """Values JSON cannot hold made the formatter raise: logging then printed a
    traceback to stderr, which is no JSON line, and the line was lost. Each such value
    is now its text, the others are kept, and the line is strict JSON (no NaN)."""
    cyclic: list[object] = []
    cyclic.append(cyclic)
    entry = record()
    entry.by_pair = {(0, 1): 3}  # keys JSON cannot hold
    entry.cyclic = cyclic
    entry.ratio = float("nan")
    line = JsonFormatter().format(entry)
    assert "\n" not in line
    parsed = json.loads(line, parse_constant=lambda name: pytest.fail(f"not JSON: {name}"))
    assert parsed["by_pair"] == "{(0, 1): 3}"
    assert parsed["cyclic"] == "[[...]]"
    assert parsed["ratio"] == "nan"
    assert parsed["partitions"] == [0, 1]
    assert parsed["event"] == "partitions assigned"


def test_a_json_line_with_an_unwritable_value_keeps_the_values_str_writes() -> None:
    """The fallback for a value JSON cannot hold dumped the line again without
    ``default=str``: a datetime beside a NaN then raised TypeError, and the line was
    lost to a logging traceback."""
    entry = record()
    entry.when = datetime.datetime(2026, 1, 2, 3, 4, 5)
    entry.ratio = float("nan")
    parsed = json.loads(JsonFormatter().format(entry))
    assert parsed["when"] == "2026-01-02 03:04:05"
    assert parsed["ratio"] == "nan"


def test_both_formats_keep_the_stack_a_caller_asked_for() -> None:
    """``log.warning(..., stack_info=True)`` adds where it was called from, which both
    formatters left out as they build their lines themselves."""
    entry = record()
    entry.stack_info = 'Stack (most recent call last):\n  File "app.py", line 3, in main'
    assert json.loads(JsonFormatter().format(entry))["stack"] == entry.stack_info
    assert TextFormatter().format(entry).endswith("\n" + entry.stack_info)


def test_an_extra_never_takes_the_place_of_a_json_lines_own_keys() -> None:
    """``extra={"level": ..., "event": ...}`` replaced the line's level and message: an
    error line read as info. The line's keys stay; the context's go beside them."""
    entry = record()
    entry.levelname = "ERROR"
    entry.level, entry.event, entry.exception = "info", "forged", "none"
    parsed = json.loads(JsonFormatter().format(entry))
    assert (parsed["level"], parsed["event"]) == ("error", "partitions assigned")
    assert "exception" not in parsed
    assert parsed["context.level"] == "info"
    assert parsed["context.event"] == "forged"
    assert parsed["context.exception"] == "none"


class _Line(BaseModel):
    sku: str


class _Order(BaseModel):
    amount: int
    line: _Line | int = 0


def test_pydantic_warnings_reach_the_logs_without_the_input_values(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``configure_logging`` routes Python's warnings through logging, and pydantic's
    serializer warnings quote the value they met (``input_value='...'``): a handler that
    dumped a model built with ``model_construct`` wrote a record's field into its logs.
    The value is masked; the category, the field's name and the types stay."""
    configure_logging("json")
    order = _Order.model_construct(amount="SECRET-4242", line={"sku": "SECRET-SKU"})
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        order.model_dump_json()
    (line,) = [json.loads(text) for text in capsys.readouterr().err.splitlines()]
    assert line["logger"] == "py.warnings"
    assert "SECRET" not in line["event"], line
    assert "UserWarning: Pydantic serializer warnings" in line["event"]
    assert "[field_name='amount', input_value=***, input_type=str]" in line["event"]
    assert "input_type=dict" in line["event"]

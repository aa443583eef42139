"""The dead-letter envelope keeps the original record and says, value-free, why it was rejected."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

import streamguard as sg
from streamguard import headers as h
from streamguard.deadletter import MAX_ERROR_MESSAGE, REDACTED, dead_letter_headers, error_text
from streamguard.errors import error_details

SECRET = "SECRET-4242"

DLQ_HEADERS = [
    h.DLQ_ORIGINAL_TOPIC,
    h.DLQ_ORIGINAL_PARTITION,
    h.DLQ_ORIGINAL_OFFSET,
    h.DLQ_ORIGINAL_TIMESTAMP,
    h.DLQ_CONSUMER_GROUP,
    h.DLQ_SERVICE,
    h.DLQ_HOST,
    h.DLQ_REASON,
    h.DLQ_ERROR_CLASS,
    h.DLQ_ERROR_MESSAGE,
    h.DLQ_ERRORS,
    h.DLQ_EXPECTED_SUBJECT,
    h.DLQ_EXPECTED_VERSION,
    h.DLQ_ATTEMPTS,
    h.DLQ_FIRST_FAILURE_MS,
    h.DLQ_DEAD_LETTERED_MS,
]


class Payment(BaseModel):
    amount: int
    iban: str


def violation() -> sg.ContractViolation:
    """A ContractViolation as the codec builds it, from input holding the secret."""
    try:
        Payment.model_validate({"amount": SECRET})
    except ValidationError as exc:
        return sg.ContractViolation("payments.Payment", error_details(exc))
    raise AssertionError("the payload was expected to be invalid")


def envelope(failure: sg.Failure, **overrides: Any) -> list[tuple[str, bytes | None]]:
    kwargs: dict[str, Any] = {
        "original_headers": [("sg-subject", b"payments.Payment"), ("trace", b"t-1")],
        "topic": "payments",
        "partition": 3,
        "offset": 1234567890123,
        "timestamp_ms": 1700000000000,
        "failure": failure,
        "group_id": "billing",
        "service": "billing-svc",
        "expected_subject": "payments.Payment",
        "expected_version": 4,
        "host": "worker-1",
    }
    kwargs.update(overrides)
    return dead_letter_headers(**kwargs)


def test_original_headers_come_first_in_order() -> None:
    """The original headers, repeats and nulls included, are kept byte for byte and in order."""
    original = [("a", b"1"), ("b", None), ("a", b"\xff\x00"), ("c", b"")]
    headers = envelope(
        sg.Failure("permanent_error", sg.PermanentError("no")), original_headers=original
    )
    assert headers[: len(original)] == original
    assert [k for k, _ in headers[len(original) :]] == DLQ_HEADERS


def test_stale_dlq_headers_are_dropped() -> None:
    """sg-dlq-* headers from an earlier dead-lettering are replaced by the latest failure's."""
    original = [("trace", b"t"), (h.DLQ_REASON, b"oversize"), (h.DLQ_ATTEMPTS, b"9"), ("x", b"y")]
    headers = envelope(sg.Failure("decode_error", sg.DecodeError("bad")), original_headers=original)
    assert headers[:2] == [("trace", b"t"), ("x", b"y")]
    assert [v for k, v in headers if k == h.DLQ_REASON] == [b"decode_error"]
    assert [v for k, v in headers if k == h.DLQ_ATTEMPTS] == [b"1"]


def test_context_headers_are_utf8_text_with_decimal_numbers() -> None:
    """Every sg-dlq-* header is present once, as UTF-8 text, numbers in decimal."""
    before = int(time.time() * 1000)
    failure = sg.Failure(
        "contract_violation", violation(), attempts=2, first_failure_ms=1700000000500
    )
    headers = envelope(failure)
    after = int(time.time() * 1000)

    context = {k: v.decode("utf-8") for k, v in headers if k.startswith(h.DLQ_PREFIX) and v}
    assert sorted(context) == sorted(DLQ_HEADERS)
    assert context[h.DLQ_ORIGINAL_TOPIC] == "payments"
    assert context[h.DLQ_ORIGINAL_PARTITION] == "3"
    assert context[h.DLQ_ORIGINAL_OFFSET] == "1234567890123"
    assert context[h.DLQ_ORIGINAL_TIMESTAMP] == "1700000000000"
    assert context[h.DLQ_CONSUMER_GROUP] == "billing"
    assert context[h.DLQ_SERVICE] == "billing-svc"
    assert context[h.DLQ_HOST] == "worker-1"
    assert context[h.DLQ_REASON] == "contract_violation"
    assert context[h.DLQ_ERROR_CLASS] == "streamguard.errors.ContractViolation"
    assert context[h.DLQ_ERROR_MESSAGE].startswith("payments.Payment: 2 validation error(s)")
    assert context[h.DLQ_EXPECTED_SUBJECT] == "payments.Payment"
    assert context[h.DLQ_EXPECTED_VERSION] == "4"
    assert context[h.DLQ_ATTEMPTS] == "2"
    assert context[h.DLQ_FIRST_FAILURE_MS] == "1700000000500"
    assert before <= int(context[h.DLQ_DEAD_LETTERED_MS]) <= after


def test_missing_timestamp_is_minus_one() -> None:
    """A record without a timestamp is marked -1, as Kafka does."""
    headers = dict(envelope(sg.Failure("oversize", sg.DecodeError("big")), timestamp_ms=None))
    assert headers[h.DLQ_ORIGINAL_TIMESTAMP] == b"-1"


def test_errors_header_is_value_free_json() -> None:
    """sg-dlq-errors is a JSON list of {loc, type, msg}, and no header quotes the input."""
    headers = envelope(sg.Failure("contract_violation", violation()))
    errors = json.loads(dict(headers)[h.DLQ_ERRORS] or b"null")
    assert errors == [
        {
            "loc": ["amount"],
            "type": "int_parsing",
            "msg": "Input should be a valid integer, unable to parse string as an integer",
        },
        {"loc": ["iban"], "type": "missing", "msg": "Field required"},
    ]
    assert all(SECRET.encode() not in (v or b"") for _, v in headers)


def test_errors_header_is_empty_list_for_other_failures() -> None:
    """A failure without structured errors still carries a valid, empty JSON list."""
    headers = dict(envelope(sg.Failure("permanent_error", sg.PermanentError("no"))))
    assert headers[h.DLQ_ERRORS] == b"[]"


def test_retries_exhausted_names_the_last_error_class() -> None:
    """For retries_exhausted, the error class is that of the last failure, not the wrapper."""
    last = TimeoutError(f"lookup of {SECRET} timed out")
    failure = sg.Failure("retries_exhausted", sg.RetriesExhausted(3, 900, last), attempts=3)
    headers = dict(envelope(failure))
    assert headers[h.DLQ_ERROR_CLASS] == b"builtins.TimeoutError"
    message = headers[h.DLQ_ERROR_MESSAGE]
    assert message is not None
    assert b"gave up after 3 attempt(s)" in message
    assert SECRET.encode() not in message


def test_long_error_messages_are_capped() -> None:
    """The error message header is cut at MAX_ERROR_MESSAGE characters."""
    headers = dict(envelope(sg.Failure("permanent_error", sg.PermanentError("x" * 5000))))
    assert headers[h.DLQ_ERROR_MESSAGE] == b"x" * MAX_ERROR_MESSAGE


def test_a_streamguard_error_raised_by_a_handler_reaches_the_dlq_as_written() -> None:
    """With default settings the text of a streamguard exception a handler raises is
    written as is, field value included: it is the author's text, as docs/consumer.md
    and docs/security.md warn, so the author must keep values out of it."""
    failure = sg.Failure("permanent_error", sg.PermanentError(f"too heavy for {SECRET}"))
    assert dict(envelope(failure))[h.DLQ_ERROR_MESSAGE] == f"too heavy for {SECRET}".encode()


def test_error_text_keeps_streamguard_texts() -> None:
    """Streamguard's own errors keep their text: it is value-free or written for operators."""
    assert error_text(sg.PermanentError("card expired")) == "card expired"
    assert error_text(sg.DecodeError("Invalid JSON at line 1")) == "Invalid JSON at line 1"
    assert error_text(violation()).startswith("payments.Payment: 2 validation error(s)")


@pytest.mark.parametrize(
    "error", [KeyError(SECRET), ValueError(f"no customer {SECRET}"), RuntimeError(SECRET)]
)
def test_error_text_redacts_other_exceptions(error: Exception) -> None:
    """Other exceptions are reduced to their class name, since their text may quote data."""
    text = error_text(error)
    assert SECRET not in text
    assert text == f"{type(error).__name__} (text redacted: not a streamguard error)"


def test_error_text_redacts_inside_retries_exhausted() -> None:
    """RetriesExhausted keeps its own summary but redacts the last error's text, naming
    the last error's class once: the summary already ends with it."""
    text = error_text(sg.RetriesExhausted(2, 10, KeyError(SECRET)))
    assert (
        text
        == "gave up after 2 attempt(s) in 10 ms: KeyError (text redacted: not a streamguard error)"
    )
    failure = sg.Failure("retries_exhausted", sg.RetriesExhausted(3, 34, TimeoutError(SECRET)))
    assert dict(envelope(failure))[h.DLQ_ERROR_MESSAGE] == (
        b"gave up after 3 attempt(s) in 34 ms: TimeoutError"
        b" (text redacted: not a streamguard error)"
    )


def test_error_text_keeps_a_streamguard_last_errors_text_after_retries() -> None:
    """A streamguard error that exhausted the retries keeps its text, in the header too."""
    exhausted = sg.RetriesExhausted(3, 34, sg.TransientError("bank down"))
    assert (
        error_text(exhausted) == "gave up after 3 attempt(s) in 34 ms: TransientError (bank down)"
    )
    failure = sg.Failure("retries_exhausted", exhausted, attempts=3)
    assert dict(envelope(failure))[h.DLQ_ERROR_MESSAGE] == (
        b"gave up after 3 attempt(s) in 34 ms: TransientError (bank down)"
    )


def test_error_text_opt_in_keeps_the_last_errors_text_after_retries() -> None:
    """With include_error_text, a retries_exhausted dead letter carries the text of the
    error that exhausted them, not only its class."""
    exhausted = sg.RetriesExhausted(3, 40, TimeoutError(f"no answer for {SECRET}"))
    text = error_text(exhausted, include_any=True)
    assert text == f"gave up after 3 attempt(s) in 40 ms: TimeoutError (no answer for {SECRET})"
    failure = sg.Failure("retries_exhausted", exhausted, attempts=3)
    message = dict(envelope(failure, include_error_text=True))[h.DLQ_ERROR_MESSAGE]
    assert message is not None
    assert SECRET.encode() in message


def test_error_text_opt_in_keeps_any_text() -> None:
    """include_any=True keeps every exception's text, and the envelope honours the flag."""
    assert SECRET in error_text(KeyError(SECRET), include_any=True)
    failure = sg.Failure("permanent_error", RuntimeError(SECRET))
    message = dict(envelope(failure, include_error_text=True))[h.DLQ_ERROR_MESSAGE]
    assert message == SECRET.encode()


def test_dead_letter_reads_back_the_envelope() -> None:
    """DeadLetter.from_record splits original headers from the sg-dlq-* context."""
    original = [("trace", b"t-1"), ("blank", None)]
    headers = envelope(
        sg.Failure("contract_violation", violation(), attempts=2), original_headers=original
    )
    letter = sg.DeadLetter.from_record(
        topic="payments.dlq",
        partition=0,
        offset=7,
        key=b"customer-7",
        value=b'{"amount": 1}',
        headers=headers,
    )
    assert (letter.dlq_topic, letter.dlq_partition, letter.dlq_offset) == ("payments.dlq", 0, 7)
    assert (letter.key, letter.value) == (b"customer-7", b'{"amount": 1}')
    assert letter.original_headers == original
    assert letter.reason == "contract_violation"
    assert letter.original_topic == "payments"
    assert letter.error_class == "streamguard.errors.ContractViolation"
    assert [e["loc"] for e in letter.errors] == [["amount"], ["iban"]]
    assert letter.int_context(h.DLQ_ORIGINAL_OFFSET) == 1234567890123
    assert letter.int_context(h.DLQ_ATTEMPTS) == 2


def test_dead_letter_tolerates_a_foreign_record() -> None:
    """A record without context reads as reason unknown, with no errors and default numbers."""
    letter = sg.DeadLetter.from_record(
        topic="x.dlq",
        partition=0,
        offset=0,
        key=None,
        value=None,
        headers=[(h.DLQ_ERRORS, b"{not json"), (h.DLQ_ATTEMPTS, b"many")],
    )
    assert letter.reason == "unknown"
    assert letter.original_topic is None
    assert letter.errors == []
    assert letter.int_context(h.DLQ_ATTEMPTS) == -1
    assert letter.int_context(h.DLQ_ORIGINAL_OFFSET, default=0) == 0


class _Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


class _Record:
    def topic(self) -> str:
        return "orders"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 7


def test_dead_letter_lines_are_rate_limited_and_account_for_every_skip(caplog: Any) -> None:
    """A burst of ``per_second`` lines, then none until the bucket refills; the next
    line (or ``flush``) reports how many were skipped, so no dead letter goes unsaid."""
    import logging

    from streamguard.deadletter import DeadLetterLog, Failure

    clock = _Clock()
    lines = DeadLetterLog(
        logging.getLogger("tests.dlq"), per_second=3, clock=clock, service="billing", topic="orders"
    )
    failure = Failure("decode_error", sg.DecodeError("bad bytes"))
    caplog.set_level("WARNING", logger="tests.dlq")
    for _ in range(10):
        lines(_Record(), failure)
    written = [r for r in caplog.records if r.getMessage() == "dead-lettering message"]
    assert len(written) == 3
    assert lines.not_logged == 7
    assert [r.not_logged for r in written] == [0, 0, 0]  # type: ignore[attr-defined]
    lines.flush()  # no token yet: nothing written, nothing lost
    assert lines.not_logged == 7
    assert len(caplog.records) == 3
    clock.now += 1 / 3  # one line's worth
    lines(_Record(), failure)
    assert caplog.records[-1].not_logged == 7  # type: ignore[attr-defined]
    assert caplog.records[-1].reason == "decode_error"  # type: ignore[attr-defined]
    for _ in range(4):
        lines(_Record(), failure)
    clock.now += 1.0
    lines.flush()
    assert caplog.records[-1].getMessage() == "dead-lettered messages not logged"
    assert caplog.records[-1].not_logged == 4  # type: ignore[attr-defined]
    # Each line says whose dead letters: a process may run several services.
    assert {(r.service, r.topic) for r in caplog.records} == {("billing", "orders")}  # type: ignore[attr-defined]
    assert lines.not_logged == 0


def test_unlimited_dead_letter_lines_log_every_one(caplog: Any) -> None:
    import logging

    from streamguard.deadletter import DeadLetterLog, Failure

    lines = DeadLetterLog(
        logging.getLogger("tests.dlq.all"), per_second=None, service="s", topic="t"
    )
    caplog.set_level("WARNING", logger="tests.dlq.all")
    for _ in range(50):
        lines(_Record(), Failure("decode_error", sg.DecodeError("bad bytes")))
    assert len(caplog.records) == 50
    with pytest.raises(ValueError, match="positive"):
        DeadLetterLog(logging.getLogger("x"), per_second=0, service="s", topic="t")
    with pytest.raises(sg.ConfigurationError, match="dead_letter_log_rate"):
        sg.ServiceOptions(dead_letter_log_rate=-1)


def test_one_builder_writes_the_same_headers_for_every_record() -> None:
    """The builder a service keeps gives each record its own coordinates and failure,
    and the same bytes as building one dead letter's headers alone."""
    from streamguard.deadletter import DeadLetterHeaders, Failure

    build = DeadLetterHeaders(
        group_id="g", service="s", expected_subject="payments.Payment", expected_version=3
    )
    failures = [
        Failure("decode_error", sg.DecodeError("not JSON"), first_failure_ms=5),
        Failure("permanent_error", KeyError(SECRET), attempts=2, first_failure_ms=6),
        Failure("permanent_error", ValueError(SECRET), first_failure_ms=7),
    ]
    for offset, failure in enumerate(failures):
        args: dict[str, Any] = {
            "original_headers": [("trace", b"t")],
            "topic": "payments",
            "partition": 2,
            "offset": offset,
            "timestamp_ms": 1000 + offset,
            "failure": failure,
        }
        built = dict(build.build(**args))
        alone = dict(
            dead_letter_headers(
                **args,
                group_id="g",
                service="s",
                expected_subject="payments.Payment",
                expected_version=3,
            )
        )
        built.pop(h.DLQ_DEAD_LETTERED_MS)
        alone.pop(h.DLQ_DEAD_LETTERED_MS)
        assert built == alone
        assert built[h.DLQ_ORIGINAL_OFFSET] == str(offset).encode()
        assert built[h.DLQ_ERROR_CLASS] == (
            f"builtins.{type(failure.error).__name__}".encode()
            if not isinstance(failure.error, sg.DecodeError)
            else b"streamguard.errors.DecodeError"
        )
        assert SECRET.encode() not in b"".join(v or b"" for v in built.values())


def test_a_repeated_violation_is_described_like_the_first() -> None:
    """A flood's twins (``ContractViolation.again``) get the first one's reason, class,
    text and details, each with its own coordinates; a twin whose details were
    replaced, or read and edited, is described by its own."""
    from streamguard.deadletter import DeadLetterHeaders, Failure

    build = DeadLetterHeaders(
        group_id="g", service="s", expected_subject="payments.Payment", expected_version=3
    )
    template = violation().again()
    why = (h.DLQ_REASON, h.DLQ_ERROR_CLASS, h.DLQ_ERROR_MESSAGE, h.DLQ_ERRORS)

    def headers(error: sg.ContractViolation, offset: int) -> dict[str, bytes | None]:
        return dict(
            build.build(
                original_headers=None,
                topic="payments",
                partition=0,
                offset=offset,
                timestamp_ms=None,
                failure=Failure("contract_violation", error),
            )
        )

    seen = []
    for offset in range(3):
        built = headers(template.again(), offset)
        assert built[h.DLQ_ORIGINAL_OFFSET] == str(offset).encode()
        seen.append(tuple(built[name] for name in why))
    assert seen[0] == seen[1] == seen[2]
    assert json.loads(seen[0][3] or b"")[0]["loc"] == ["amount"]
    assert SECRET.encode() not in b"".join(v or b"" for v in seen[0])
    replaced = template.again()
    replaced.errors = [{"loc": ["elsewhere"], "type": "custom", "msg": "replaced"}]
    edited = template.again()
    edited.errors[0]["msg"] = "edited in place"
    assert json.loads(headers(replaced, 9)[h.DLQ_ERRORS] or b"") == [
        {"loc": ["elsewhere"], "type": "custom", "msg": "replaced"}
    ]
    built = headers(edited, 10)
    assert json.loads(built[h.DLQ_ERRORS] or b"")[0]["msg"] == "edited in place"


def test_an_error_text_with_a_lone_surrogate_is_written_as_valid_utf8() -> None:
    """A handler's error text may hold a lone surrogate (bytes decoded with
    ``surrogateescape``, a JSON ``"\\udcff"`` parsed by the json module): the header is
    still built, as valid UTF-8 with the surrogate escaped, instead of raising
    UnicodeEncodeError, which refused the dead letter and retried it for good."""
    text = b"no customer \xff".decode("utf-8", "surrogateescape")
    message = dict(envelope(sg.Failure("permanent_error", sg.PermanentError(text))))[
        h.DLQ_ERROR_MESSAGE
    ]
    assert message is not None
    assert message.decode("utf-8") == "no customer \\udcff"


class _NoText(sg.PermanentError):
    def __str__(self) -> str:
        raise AttributeError("no text")


def test_an_error_whose_str_raises_is_described_by_its_class() -> None:
    """An exception whose ``__str__`` raises still gets its headers, the message naming
    its class and what its ``__str__`` raised: before, building them raised, and the
    dead letter was refused and retried for good (a DLQ counted as unwritable)."""
    assert error_text(_NoText()) == "_NoText (no text: its __str__ raised AttributeError)"
    assert error_text(KeyError(SECRET)) == f"KeyError ({REDACTED})"
    headers = dict(envelope(sg.Failure("permanent_error", _NoText())))
    assert headers[h.DLQ_ERROR_MESSAGE] == b"_NoText (no text: its __str__ raised AttributeError)"
    exhausted = sg.RetriesExhausted(3, 10, _NoText())
    assert error_text(exhausted).endswith("(_NoText (no text: its __str__ raised AttributeError))")

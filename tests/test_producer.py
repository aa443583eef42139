"""The guarded producer validates, stamps schema identity, and never loses a record silently."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import pytest
from confluent_kafka import KafkaError, Message
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator

import streamguard as sg
from streamguard.devbroker import DevBroker
from streamguard.errors import ConfigurationError
from tests.conftest import suspend

pytestmark = pytest.mark.broker

Reader = Callable[..., list[Message]]


class OrderPlaced(sg.Contract):
    __subject__ = "orders.OrderPlaced"
    __version__ = 2

    order_id: int
    currency: str


class Refund(sg.Contract):
    __subject__ = "orders.Refund"
    __version__ = 1

    order_id: int


def value_of(record: Message) -> Any:
    """The record's value, parsed as JSON."""
    value = record.value()
    assert isinstance(value, bytes)
    return json.loads(value)


def headers_of(record: Message) -> list[tuple[str, str | bytes | None]]:
    """The record's headers as a list (confluent-kafka types them loosely)."""
    headers = record.headers()
    assert isinstance(headers, list)
    return headers


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_headers_round_trip(
    bootstrap: str, topic_factory: Callable[..., str], read_all: Reader
) -> None:
    """A sent record carries the schema identity headers first, then the caller's, in order."""
    topic = topic_factory("orders")
    producer = sg.GuardedProducer(bootstrap, service_name="checkout")
    producer.send(
        topic,
        OrderPlaced(order_id=1, currency="EUR"),
        key="customer-7",
        headers=[("trace-id", "abc"), ("raw", b"\x00\x01")],
    )
    producer.flush()

    [record] = read_all(topic, 1)
    assert headers_of(record) == [
        ("sg-subject", b"orders.OrderPlaced"),
        ("sg-version", b"2"),
        ("sg-fingerprint", OrderPlaced.fingerprint().encode()),
        ("sg-producer", b"checkout"),
        ("content-type", b"application/json"),
        ("trace-id", b"abc"),
        ("raw", b"\x00\x01"),
    ]
    assert record.key() == b"customer-7"
    assert value_of(record) == {"order_id": 1, "currency": "EUR"}


def test_mapping_headers_are_appended(
    bootstrap: str, topic_factory: Callable[..., str], read_all: Reader
) -> None:
    """Headers given as a mapping follow streamguard's own, and the name defaults to client.id."""
    topic = topic_factory("orders")
    producer = sg.GuardedProducer(bootstrap, kafka_config={"client.id": "billing-7"})
    producer.send(topic, OrderPlaced(order_id=1, currency="EUR"), headers={"tenant": "t1"})
    producer.flush()

    [record] = read_all(topic, 1)
    assert dict(headers_of(record))["sg-producer"] == b"billing-7"
    assert headers_of(record)[-1] == ("tenant", b"t1")


@pytest.mark.parametrize(
    "headers",
    [
        [("trace-id", "abc"), ("sg-subject", b"spoof")],
        {"SG-Version": "7"},
        [("sg-dlq-reason", b"permanent_error")],
        [("Content-Type", b"text/plain")],
    ],
    ids=["stamp", "upper-case", "namespace", "content-type"],
)
def test_a_callers_sg_header_is_refused(
    bootstrap: str, topic_factory: Callable[..., str], read_all: Reader, headers: Any
) -> None:
    """Consumers read a header's last value, and a caller's headers follow the stamps:
    an sg-* or content-type header of the caller's would override them (a record passed
    off as another contract's), so send() refuses it, naming it, and sends nothing."""
    topic = topic_factory("orders")
    producer = sg.GuardedProducer(bootstrap)
    name = [*headers][-1] if isinstance(headers, dict) else headers[-1][0]
    with pytest.raises(ConfigurationError, match=f"header '{name}' is streamguard's own"):
        producer.send(topic, OrderPlaced(order_id=1, currency="EUR"), headers=headers)
    producer.send(topic, OrderPlaced(order_id=2, currency="EUR"), headers={"tenant": "t1"})
    producer.flush()

    [record] = read_all(topic, 1)
    assert value_of(record)["order_id"] == 2
    assert headers_of(record)[0] == ("sg-subject", b"orders.OrderPlaced")


@pytest.mark.parametrize("where", ["key", "header"])
def test_text_utf8_cannot_encode_is_refused_without_its_value(
    bootstrap: str, topic_factory: Callable[..., str], read_all: Reader, where: str
) -> None:
    """A key or header value with a lone surrogate (bytes decoded with surrogateescape)
    is refused with a ConfigurationError that neither quotes it nor chains Python's
    UnicodeEncodeError, which quoted the character and held the whole text; nothing is
    sent."""
    topic = topic_factory("orders")
    producer = sg.GuardedProducer(bootstrap)
    text = b"customer-secret-\xff".decode("utf-8", "surrogateescape")
    extra: dict[str, Any] = {"key": text} if where == "key" else {"headers": {"tenant": text}}
    with pytest.raises(ConfigurationError, match="lone surrogate") as info:
        producer.send(topic, OrderPlaced(order_id=1, currency="EUR"), **extra)
    assert "secret" not in str(info.value)
    assert "\udcff" not in str(info.value)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__
    producer.send(topic, OrderPlaced(order_id=2, currency="EUR"))
    producer.flush()
    assert [value_of(r)["order_id"] for r in read_all(topic, 2, timeout=5)] == [2]


# Sends with a header name UTF-8 cannot encode, then a valid record; exits 0 if refused.
SURROGATE_HEADER_SENDER = """
import sys
import streamguard as sg

class Order(sg.Contract):
    __subject__ = "orders.Surrogate"
    __version__ = 1
    order_id: int

producer = sg.GuardedProducer(sys.argv[1])
try:
    producer.send(sys.argv[2], Order(order_id=1), headers={"ten\\udcffant": "t1"})
except sg.ConfigurationError as exc:
    assert "lone surrogate" in str(exc), str(exc)
else:
    sys.exit("sent")
producer.send(sys.argv[2], Order(order_id=2))
producer.flush()
"""


def test_a_header_name_utf8_cannot_encode_is_refused(
    bootstrap: str, topic_factory: Callable[..., str], read_all: Reader
) -> None:
    """A caller's header name with a lone surrogate is refused and nothing is sent:
    confluent-kafka does not check its encoding, and the process died of a segfault.
    (In a child process, which the crash would kill, not the test run.)"""
    topic = topic_factory("orders")
    run = subprocess.run(
        [sys.executable, "-c", SURROGATE_HEADER_SENDER, bootstrap, topic],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    assert [value_of(r)["order_id"] for r in read_all(topic, 2, timeout=5)] == [2]


# produce_raw with a header name UTF-8 cannot encode, then a valid record; exits 0 if refused.
SURROGATE_RAW_SENDER = """
import sys
import streamguard as sg

producer = sg.GuardedProducer(sys.argv[1])
try:
    producer.produce_raw(sys.argv[2], b"1", key=None, headers=[("ten\\udcffant", b"t1")])
except sg.ConfigurationError as exc:
    assert "lone surrogate" in str(exc), str(exc)
else:
    sys.exit("queued")
producer.produce_raw(sys.argv[2], b"2", key=None, headers=[("tenant", b"t1")])
producer.flush()
"""


def test_produce_raw_refuses_a_header_name_utf8_cannot_encode(
    bootstrap: str, topic_factory: Callable[..., str], read_all: Reader
) -> None:
    """``produce_raw`` checks no contract or stamp, but a header name with a lone
    surrogate crashed the process in confluent-kafka (a segfault): it is refused, and
    nothing is sent. (In a child process, which the crash would kill.)"""
    topic = topic_factory("orders")
    run = subprocess.run(
        [sys.executable, "-c", SURROGATE_RAW_SENDER, bootstrap, topic],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    assert [r.value() for r in read_all(topic, 2, timeout=5)] == [b"2"]


def test_dict_event_is_validated_against_the_contract(
    bootstrap: str, topic_factory: Callable[..., str], read_all: Reader
) -> None:
    """A mapping is validated (and coerced) by the given contract before it is sent."""
    topic = topic_factory("orders")
    producer = sg.GuardedProducer(bootstrap)
    producer.send(topic, {"order_id": "42", "currency": "USD"}, contract=OrderPlaced)
    producer.flush()

    [record] = read_all(topic, 1)
    assert value_of(record) == {"order_id": 42, "currency": "USD"}
    assert dict(headers_of(record))["sg-subject"] == b"orders.OrderPlaced"


def test_contract_violation_sends_nothing(
    bootstrap: str, topic_factory: Callable[..., str], read_all: Reader
) -> None:
    """A mapping that breaks the contract raises ContractViolation and no record leaves."""
    topic = topic_factory("orders")
    producer = sg.GuardedProducer(bootstrap)
    with pytest.raises(sg.ContractViolation) as info:
        producer.send(topic, {"order_id": "SECRET-4242"}, contract=OrderPlaced)
    assert info.value.subject == "orders.OrderPlaced"
    assert {e["type"] for e in info.value.errors} == {"int_parsing", "missing"}
    assert "SECRET-4242" not in str(info.value)

    producer.send(topic, OrderPlaced(order_id=2, currency="EUR"))
    producer.flush()
    records = read_all(topic, 2, timeout=5.0)
    assert [value_of(r)["order_id"] for r in records] == [2]


class Tally(sg.Contract):
    __subject__ = "tests.Tally"
    __version__ = 1
    counts: dict[int, int]


def test_a_violation_hides_the_int_keys_of_a_mapping(bootstrap: str) -> None:
    """A mapping sent with contract= is validated as Python data, where a map's keys may
    be ints: an int key is hidden like a text one (it was taken for a list index)."""
    producer = sg.GuardedProducer(bootstrap)
    with pytest.raises(sg.ContractViolation) as info:
        producer.send("tally", {"counts": {4111111111111111: "x"}}, contract=Tally)
    assert [e["loc"] for e in info.value.errors] == [["counts", "*"]]
    assert "4111111111111111" not in str(info.value) + info.value.errors_json().decode()


class Payout(sg.Contract):
    """A contract whose validators quote the value they were given."""

    __subject__ = "tests.Payout"
    __version__ = 1
    payout_id: UUID
    amount: Decimal
    due: datetime

    @field_validator("payout_id", "amount", "due")
    @classmethod
    def refused(cls, value: Any) -> Any:
        raise ValueError(f"refused {value}")


def test_a_validators_message_loses_the_python_values_of_a_mapping(bootstrap: str) -> None:
    """A mapping sent with contract= holds Python values (a UUID, a Decimal, a datetime),
    and the contract's validators get them as they are: where a validator's message
    quotes one, it is cut, as the text of a consumed record is."""
    producer = sg.GuardedProducer(bootstrap)
    event = {
        "payout_id": UUID(int=0x4242424242),
        "amount": Decimal("4242.42"),
        "due": datetime(2042, 4, 2, 4, 2, 42),
    }
    with pytest.raises(sg.ContractViolation) as info:
        producer.send("payouts", event, contract=Payout)
    shown = str(info.value) + info.value.errors_json().decode()
    assert [e["msg"] for e in info.value.errors] == ["Value error, refused <redacted>"] * 3
    for value in event.values():
        assert str(value) not in shown


class Referral(sg.Contract):
    """A contract whose field validator quotes another field's value (``info.data``)."""

    __subject__ = "tests.Referral"
    __version__ = 1
    email: str
    code: str

    @field_validator("code")
    @classmethod
    def refused(cls, value: str, info: ValidationInfo) -> str:
        raise ValueError(f"code refused for {info.data['email']}")


def test_a_validators_message_loses_the_other_fields_of_a_mapping(bootstrap: str) -> None:
    """A mapping's other fields, quoted by a field's validator from ``info.data``, are
    cut from the violation as the field's own value is."""
    producer = sg.GuardedProducer(bootstrap)
    with pytest.raises(sg.ContractViolation) as info:
        producer.send("referrals", {"email": "zq-4242@example.org", "code": "x"}, contract=Referral)
    shown = str(info.value) + info.value.errors_json().decode()
    assert info.value.errors[0]["msg"] == "Value error, code refused for <redacted>"
    assert "4242" not in shown


class Settlement(sg.Contract):
    """A contract whose validators quote what pydantic made of a mapping's Python values."""

    __subject__ = "tests.Settlement"
    __version__ = 1
    booked_on: date
    cents: int
    rate: float

    @field_validator("booked_on", "cents", "rate")
    @classmethod
    def refused(cls, value: Any) -> Any:
        raise ValueError(f"refused {value}")


def test_a_validators_message_loses_what_a_mappings_python_values_became(
    bootstrap: str,
) -> None:
    """A mapping's datetime reaches a date field's validator as a date, a Decimal an int
    or float field's as an int or float: not the value's own text, and cut all the same."""
    producer = sg.GuardedProducer(bootstrap)
    event = {
        "booked_on": datetime(2042, 4, 2),
        "cents": Decimal("424242.0"),
        "rate": Decimal("-4242.50"),
    }
    with pytest.raises(sg.ContractViolation) as info:
        producer.send("settlements", event, contract=Settlement)
    shown = str(info.value) + info.value.errors_json().decode()
    assert [e["msg"] for e in info.value.errors] == ["Value error, refused <redacted>"] * 3
    for quoted in ("2042-04-02", "424242", "4242.5"):
        assert quoted not in shown


class Placed(sg.Contract):
    """A contract whose validators quote the value pydantic parsed from the input."""

    __subject__ = "tests.Placed"
    __version__ = 1
    placed_at: datetime
    payout_id: UUID
    amount: Decimal

    @field_validator("placed_at")
    @classmethod
    def recent(cls, value: datetime) -> datetime:
        raise ValueError(f"placed_at {value} ({value!r}, {value.isoformat()}) is too old")

    @field_validator("payout_id", "amount")
    @classmethod
    def refused(cls, value: Any) -> Any:
        raise ValueError(f"refused {value} ({value!r})")


def test_a_validators_message_loses_what_pydantic_parsed_the_input_as(bootstrap: str) -> None:
    """A validator is given what pydantic parsed a string into, whose text is not the
    input's ("1999-01-01T00:00:00Z" becomes a datetime shown as "1999-01-01
    00:00:00+00:00", an upper-case UUID a lower-case one): that is cut too."""
    producer = sg.GuardedProducer(bootstrap)
    event = {
        "placed_at": "1999-01-01T00:00:00Z",
        "payout_id": "4242ABCD-0000-4000-8000-00000000ABCD",
        "amount": "4242.4200",
    }
    with pytest.raises(sg.ContractViolation) as info:
        producer.send("placed", event, contract=Placed)
    shown = str(info.value) + info.value.errors_json().decode()
    assert [e["msg"] for e in info.value.errors] == [
        "Value error, placed_at <redacted> (<redacted>, <redacted>) is too old",
        "Value error, refused <redacted> (<redacted>)",
        "Value error, refused <redacted> (<redacted>)",
    ]
    for text in ("1999", "4242", "abcd", "ABCD"):
        assert text not in shown


def test_mapping_without_contract_is_a_configuration_error(bootstrap: str) -> None:
    """send() refuses a mapping without contract=, saying what to pass."""
    producer = sg.GuardedProducer(bootstrap)
    with pytest.raises(ConfigurationError, match="contract=YourContract"):
        producer.send("orders", {"order_id": 1, "currency": "EUR"})


def test_event_of_another_contract_is_refused(bootstrap: str) -> None:
    """An event whose type is not the contract given is refused."""
    producer = sg.GuardedProducer(bootstrap)
    with pytest.raises(ConfigurationError, match="not the Refund"):
        producer.send("orders", OrderPlaced(order_id=1, currency="EUR"), contract=Refund)


def test_plain_model_is_refused(bootstrap: str) -> None:
    """A plain pydantic model has no subject or version to stamp, so it is refused."""

    class Loose(BaseModel):
        x: int

    producer = sg.GuardedProducer(bootstrap)
    with pytest.raises(ConfigurationError, match=r"not an sg\.Contract"):
        producer.send("orders", Loose(x=1))


@pytest.mark.parametrize("value", [1, "not a number"], ids=["valid", "invalid"])
def test_a_plain_model_as_contract_of_a_mapping_is_refused(bootstrap: str, value: Any) -> None:
    """A plain pydantic model given as contract= for a mapping is refused as a plain
    model event is, whether or not the mapping fits it (an AssertionError and an
    AttributeError came out of send())."""

    class Loose(BaseModel):
        x: int

    producer = sg.GuardedProducer(bootstrap)
    with pytest.raises(ConfigurationError, match=r"not an sg\.Contract"):
        producer.send("orders", {"x": value}, contract=Loose)  # type: ignore[arg-type]


@pytest.mark.parametrize("topic", ["bad name!", "", ".", "..", "a" * 250, "orders/eu"])
def test_illegal_topic_name_is_refused(bootstrap: str, topic: str) -> None:
    """A topic name Kafka would refuse is refused before anything is queued."""
    producer = sg.GuardedProducer(bootstrap)
    with pytest.raises(ConfigurationError, match="not a valid Kafka topic name"):
        producer.send(topic, OrderPlaced(order_id=1, currency="EUR"))
    producer.flush(5)


def test_record_over_message_max_bytes_fails_at_flush(
    bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    """A record larger than message.max.bytes surfaces as DeliveryFailed naming its topic."""
    topic = topic_factory("big")
    producer = sg.GuardedProducer(bootstrap, kafka_config={"message.max.bytes": 1000})
    producer.send(topic, OrderPlaced(order_id=1, currency="E" * 2000))
    with pytest.raises(sg.DeliveryFailed, match=topic) as info:
        producer.flush(10)
    [(failed_topic, text)] = info.value.failures
    assert failed_topic == topic
    assert "too large" in text.lower()


def test_a_record_larger_than_the_local_queue_fails_at_flush(
    bootstrap: str, topic_factory: Callable[..., str], read_all: Reader
) -> None:
    """A record over queue.buffering.max.kbytes (but within message.max.bytes) can never
    be queued: send() returns and flush() reports it. send() used to wait for room in
    the empty queue forever."""
    topic = topic_factory("queue-big")
    producer = sg.GuardedProducer(bootstrap, kafka_config={"queue.buffering.max.kbytes": 1})
    done = threading.Event()
    codes: list[int] = []

    def send() -> None:
        producer.send(
            topic,
            OrderPlaced(order_id=1, currency="E" * 5000),
            on_delivery=lambda err, msg: codes.append(err.code() if err else 0),
        )
        done.set()

    threading.Thread(target=send, daemon=True).start()  # daemon: it hung without the fix
    assert done.wait(10), "send() waited forever for room the record can never have"
    producer.send(topic, OrderPlaced(order_id=2, currency="EUR"))
    with pytest.raises(sg.DeliveryFailed) as info:
        producer.flush(10)
    [(failed_topic, text)] = info.value.failures
    assert failed_topic == topic
    assert "queue.buffering.max.kbytes" in text
    assert codes == [KafkaError.MSG_SIZE_TOO_LARGE]  # permanent: not worth a retry
    assert [value_of(r)["order_id"] for r in read_all(topic, 1)] == [2]


def test_unreachable_broker_fails_at_flush() -> None:
    """When the broker never acknowledges, flush() raises DeliveryFailed naming the topic."""
    producer = sg.GuardedProducer(
        f"127.0.0.1:{closed_port()}", kafka_config={"message.timeout.ms": 500}
    )
    producer.send("orders-nowhere", OrderPlaced(order_id=1, currency="EUR"))
    with pytest.raises(sg.DeliveryFailed, match="orders-nowhere") as info:
        producer.flush(10)
    assert info.value.failures == [("orders-nowhere", "Local: Message timed out")]


def test_threads_sharing_a_producer_can_send_a_new_contract_at_once() -> None:
    """A contract's first sends from several threads all pass: the producer publishes a
    contract's set-up only once its decoder exists (a thread used to find the headers
    stamped and the decoder missing, a bare KeyError)."""
    failures: list[BaseException] = []
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, as a loaded machine does
    try:
        for round_ in range(5):
            namespace: dict[str, Any] = {
                "__module__": __name__,
                "__subject__": f"tests.Wide{round_}",
                "__version__": 1,
                "__wire_format__": "avro",  # a slow decoder to build: a wide window
                "__annotations__": {"x": int, **{f"f{i}": int | None for i in range(40)}},
                **{f"f{i}": None for i in range(40)},
            }
            contract = type(f"Wide{round_}", (sg.Contract,), namespace)
            producer = sg.GuardedProducer(
                f"127.0.0.1:{closed_port()}", kafka_config={"message.timeout.ms": 200}
            )

            def send(producer: sg.GuardedProducer = producer, contract: Any = contract) -> None:
                try:
                    producer.send("tests.wide", contract(x=1))
                except BaseException as exc:
                    failures.append(exc)

            threads = [threading.Thread(target=send) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(10)
    finally:
        sys.setswitchinterval(switch)
    assert failures == []


def test_failures_are_reported_once() -> None:
    """After flush() reported a failure, the next flush() has nothing left to report."""
    producer = sg.GuardedProducer(
        f"127.0.0.1:{closed_port()}", kafka_config={"message.timeout.ms": 200}
    )
    producer.send("orders-nowhere", OrderPlaced(order_id=1, currency="EUR"))
    with pytest.raises(sg.DeliveryFailed):
        producer.flush(10)
    producer.flush(1)
    assert producer._failures == []


def test_on_delivery_sees_each_report(bootstrap: str, topic_factory: Callable[..., str]) -> None:
    """on_delivery is called once per record with the broker's report."""
    topic = topic_factory("orders")
    reports: list[tuple[KafkaError | None, str | None]] = []
    producer = sg.GuardedProducer(bootstrap)
    for i in range(3):
        producer.send(
            topic,
            OrderPlaced(order_id=i, currency="EUR"),
            on_delivery=lambda err, msg: reports.append((err, msg.topic())),
        )
    producer.flush()
    assert reports == [(None, topic)] * 3


def test_a_failing_on_delivery_does_not_fail_a_later_send(
    bootstrap: str,
    topic_factory: Callable[..., str],
    read_all: Reader,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The callback runs inside the client's poll(): what it raised came out of the next
    send(), whose record had been queued (a caller retrying it sent it twice), and out of
    flush() instead of its report. It is logged, by class: its text may quote a record."""
    topic = topic_factory("orders")

    def failing(err: KafkaError | None, msg: Message | None) -> None:
        raise RuntimeError("callback for customer-secret-7")

    producer = sg.GuardedProducer(bootstrap)
    producer.send(topic, OrderPlaced(order_id=1, currency="EUR"), on_delivery=failing)
    producer.flush()  # the first report, and its callback, run here
    producer.send(topic, OrderPlaced(order_id=2, currency="EUR"), on_delivery=failing)
    with caplog.at_level("ERROR", logger="streamguard.producer"):
        producer.send(topic, OrderPlaced(order_id=3, currency="EUR"))  # polls the report
        producer.flush()
    assert len(read_all(topic, 3)) == 3
    failed = [r for r in caplog.records if r.getMessage() == "on_delivery callback failed"]
    assert [r.error_class for r in failed] == ["RuntimeError"] * 2  # type: ignore[attr-defined]
    assert "customer-secret-7" not in caplog.text


def test_a_failing_block_keeps_its_own_exception() -> None:
    """Leaving a with-block by an exception still flushes, but a DeliveryFailed (the
    broker down, say) took the place of the block's own exception."""

    def block() -> None:
        with sg.GuardedProducer(
            f"127.0.0.1:{closed_port()}", kafka_config={"message.timeout.ms": 200}
        ) as producer:
            producer.send("orders-nowhere", OrderPlaced(order_id=1, currency="EUR"))
            raise KeyError("the block's own")

    with pytest.raises(KeyError):
        block()


def test_a_failing_blocks_log_counts_pending_records_apart_from_failed_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A record still queued when the failing block's flush times out is pending, not
    failed; the log counted the pair that stands for the pending records as a failure."""

    class QuickClose(sg.GuardedProducer):
        def close(self, timeout: float = 1.0) -> None:  # the block's flush, shortened
            super().close(timeout)

    def block() -> None:
        with QuickClose(
            f"127.0.0.1:{closed_port()}", kafka_config={"message.timeout.ms": 60_000}
        ) as producer:
            producer.send("orders-nowhere", OrderPlaced(order_id=1, currency="EUR"))
            raise KeyError("the block's own")

    with caplog.at_level("WARNING", logger="streamguard.producer"), pytest.raises(KeyError):
        block()
    [record] = [r for r in caplog.records if r.getMessage().startswith("records not delivered")]
    assert (record.failed, record.pending) == (0, 1)  # type: ignore[attr-defined]


def test_context_manager_flushes(
    bootstrap: str, topic_factory: Callable[..., str], read_all: Reader
) -> None:
    """Leaving the with-block flushes, so every record is delivered."""
    topic = topic_factory("orders")
    with sg.GuardedProducer(bootstrap) as producer:
        for i in range(5):
            producer.send(topic, OrderPlaced(order_id=i, currency="EUR"))
    assert len(read_all(topic, 5)) == 5


# A process that sends and exits without close(): linger.ms keeps the records queued.
EXITING_SENDER = """
import sys
import streamguard as sg

class Order(sg.Contract):
    __subject__ = "orders.Exit"
    __version__ = 1
    order_id: int

producer = sg.GuardedProducer(
    sys.argv[1], kafka_config={"linger.ms": 1000, "message.timeout.ms": 3000}
)
for i in range(20):
    producer.send(sys.argv[2], Order(order_id=i))
"""


def test_records_queued_at_exit_are_delivered(
    bootstrap: str, topic_factory: Callable[..., str], read_all: Reader
) -> None:
    """A process that exits without close() still delivers what it queued: the client,
    destroyed at exit, dropped the records without a word."""
    topic = topic_factory("exiting")
    run = subprocess.run(
        [sys.executable, "-c", EXITING_SENDER, bootstrap, topic],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    got = read_all(topic, 20)
    assert sorted(value_of(r)["order_id"] for r in got) == list(range(20))


def test_records_undeliverable_at_exit_are_logged() -> None:
    """Records that cannot be delivered before the process exits are reported then."""
    run = subprocess.run(
        [sys.executable, "-c", EXITING_SENDER, f"127.0.0.1:{closed_port()}", "orders-nowhere"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "records not delivered at exit" in run.stderr


@pytest.mark.parametrize(
    "secrets",
    [
        {"sasl.password": "hunter2"},
        {"ssl.key.password": "hunter2"},
        {"sasl.oauthbearer.client.secret": "hunter2"},
    ],
)
def test_repr_never_shows_secrets(secrets: dict[str, Any]) -> None:
    """repr(producer) shows its config with secret values redacted."""
    producer = sg.GuardedProducer("127.0.0.1:9", kafka_config=secrets, service_name="svc")
    text = repr(producer)
    assert "hunter2" not in text
    assert f"{next(iter(secrets))!r}: '***'" in text
    assert "'bootstrap.servers': '127.0.0.1:9'" in text


def test_librdkafka_lines_come_through_the_logger_with_config_values_masked(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """A producer's client was given no logger: librdkafka wrote its lines to stderr
    itself, past the mask of the services' clients, and its CONFWARN quoted the value of
    a setting it warns about (a secret read from the environment given to the wrong key,
    here ``sasl.mechanisms``). They come through ``streamguard.librdkafka``, masked."""
    config = {"sasl.mechanisms": "Hunter2Secret"}
    with caplog.at_level(logging.INFO, "streamguard.librdkafka"):
        producer = sg.GuardedProducer(f"127.0.0.1:{closed_port()}", kafka_config=config)
        producer.flush(1.0)  # serves the client: librdkafka hands its lines over
    warnings = [r for r in caplog.records if r.getMessage().startswith("CONFWARN")]
    assert any("`sasl.mechanism` set to `***` but" in r.getMessage() for r in warnings), warnings
    assert all(r.name == "streamguard.librdkafka" for r in warnings)
    assert not [r for r in caplog.records if "Hunter2Secret" in r.getMessage()]
    assert "Hunter2Secret" not in capfd.readouterr().err


def test_a_logger_in_the_config_gets_librdkafkas_lines(caplog: pytest.LogCaptureFixture) -> None:
    """A ``logger`` of the caller's own config is the one its client logs to."""
    own = logging.getLogger("test.producer.librdkafka")
    config = {"sasl.mechanisms": "PLAIN", "logger": own}
    with caplog.at_level(logging.INFO):
        producer = sg.GuardedProducer(f"127.0.0.1:{closed_port()}", kafka_config=config)
        producer.flush(1.0)
    assert [r for r in caplog.records if r.name == own.name and "CONFWARN" in r.getMessage()]
    assert not [r for r in caplog.records if r.name == "streamguard.librdkafka"]


def test_missing_bootstrap_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without any bootstrap servers the producer is not built, and the error says how to fix it."""
    monkeypatch.delenv("STREAMGUARD_BOOTSTRAP_SERVERS", raising=False)
    with pytest.raises(ConfigurationError, match="STREAMGUARD_BOOTSTRAP_SERVERS"):
        sg.GuardedProducer()


def test_instances_that_bypassed_validation_are_refused(
    bootstrap: str, topic_factory: Callable[..., str], read_all: Callable[..., list[Any]]
) -> None:
    """An instance built with model_construct, or changed after construction, is checked
    like a consumer would check it, refused, and never sent."""
    from streamguard.demo.contracts import OrderPlaced
    from tests.runtime.conftest import order

    topic = topic_factory("guard")
    producer = sg.GuardedProducer(bootstrap)
    constructed = OrderPlaced.model_construct(**{**order(1).model_dump(), "currency": "GBP"})
    with pytest.raises(sg.ContractViolation, match="currency"):
        producer.send(topic, constructed)
    mutated = order(2)
    mutated.currency = "GBP"  # type: ignore[assignment]  # what the guard is for
    with pytest.raises(sg.ContractViolation, match="currency"):
        producer.send(topic, mutated)
    producer.send(topic, order(3))
    producer.flush()
    got = read_all(topic, 3, timeout=5)  # asks for more than should be there
    assert [OrderPlaced.model_validate_json(m.value()).customer_id for m in got] == ["customer-3"]


@pytest.mark.parametrize("wire", ["json", "avro"])
def test_a_refused_instance_leaves_its_values_out_of_warnings_and_errors(wire: str) -> None:
    """A model_construct instance with a value of the wrong type is refused without the
    value anywhere: not in the error, and not in a pydantic serializer warning (which
    quotes it, on stderr or in logs that capture warnings)."""
    import warnings

    from streamguard.demo.contracts import OrderPlaced as Order
    from streamguard.demo.contracts import PaymentCaptured

    canary = "zqcanary-jane-doe-qz"
    event: BaseModel = (
        Order.model_construct(order_id=canary, customer_id=7, amount=canary, currency="EUR")
        if wire == "json"
        else PaymentCaptured.model_construct(
            payment_id="p", order_id=7, amount_cents=canary, currency="EUR"
        )
    )
    producer = sg.GuardedProducer("127.0.0.1:9")  # refused before any byte is sent
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(sg.ContractViolation) as info:
            producer.send("orders", event)
    assert canary not in f"{info.value} {info.value.errors}"
    assert [str(w.message) for w in caught if canary in str(w.message)] == []


def test_records_unacknowledged_at_flush_are_counted_and_still_delivered() -> None:
    """A broker that stops answering (SIGSTOP) leaves records unacknowledged at the
    flush timeout: DeliveryFailed counts every one of them, says they are still queued,
    and a flush after the broker resumes delivers them. It said "1 record(s) were not
    delivered" for any number of them, which then arrived all the same."""
    with DevBroker() as broker:
        assert broker.pid is not None
        producer = sg.GuardedProducer(broker.bootstrap_servers)
        producer.send("orders-paused", OrderPlaced(order_id=0, currency="EUR"))
        producer.flush(15)  # connected, topic known
        suspend(broker.pid)
        try:
            for i in range(1, 4):
                producer.send("orders-paused", OrderPlaced(order_id=i, currency="EUR"))
            with pytest.raises(sg.DeliveryFailed) as info:
                producer.flush(1)
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        assert info.value.pending == 3
        assert str(info.value).startswith("3 record(s) not acknowledged within 1s")
        assert "still queued" in str(info.value)
        assert info.value.failures == [("*", "3 record(s) not acknowledged within 1s")]
        producer.flush(15)  # nothing failed: they were delivered once the broker answered


class Left(BaseModel):
    n: int = 1


class Right(BaseModel):
    n: int = 1


class Noted(BaseModel):
    note: str | None = Field(serialization_alias="noteText")  # a name no reader reads


def changed_event(case: str, wire: str) -> tuple[BaseModel, list[str | int]]:
    """An event of a fresh ``wire`` contract that decodes, but not into an equal event,
    and the location of the field a consumer would get changed."""
    secret = "SECRET-4242"
    annotation, value = {
        "uuid-in-a-str-union": (str | UUID, UUID(int=4242)),
        "decimal-in-a-float-union": (float | Decimal, Decimal("0.1000000000000000000004242")),
        "model-of-a-union-shaped-like-another": (Left | Right, Right(n=4242)),
        "offset-with-seconds": (
            datetime,
            datetime(1900, 1, 1, tzinfo=ZoneInfo("Europe/Amsterdam")),
        ),
        "nan-into-an-optional": (float | None, math.nan),
        "base64-bytes-read-as-text": (bytes, secret.encode()),
        "unread-alias-of-a-nullable": (Noted, Noted(note=secret)),
        "undeclared-field": (int, 1),
    }[case]
    contract = type(
        "Changed",
        (sg.Contract,),
        {
            "__module__": __name__,
            "__subject__": f"tests.roundtrip.{wire}.{case}",
            "__version__": 1,
            "__wire_format__": wire,
            "model_config": ConfigDict(
                ser_json_bytes="base64" if case.startswith("base64") else "utf8",
                extra="allow" if case == "undeclared-field" else "ignore",
            ),
            "__annotations__": {"field": annotation, "ref": str},
            # An alias the reader reads: with it, the event is written by alias.
            "ref": Field(default="r", alias="refId"),
        },
    )
    if case == "undeclared-field":
        return contract(field=value, extra_field=UUID(int=4242)), ["extra_field"]
    loc: list[str | int] = ["field", "note"] if case.startswith("unread-alias") else ["field"]
    return contract(field=value), loc


@pytest.mark.parametrize(
    ("case", "wire"),
    [
        ("uuid-in-a-str-union", "avro"),  # JSON reads a UUID's text back as a UUID
        ("decimal-in-a-float-union", "avro"),  # JSON reads it back as the Decimal
        ("model-of-a-union-shaped-like-another", "json"),
        ("model-of-a-union-shaped-like-another", "avro"),
        ("offset-with-seconds", "json"),
        ("offset-with-seconds", "avro"),
        ("nan-into-an-optional", "json"),  # Avro writes a NaN as a NaN
        ("base64-bytes-read-as-text", "json"),
        ("base64-bytes-read-as-text", "avro"),
        ("unread-alias-of-a-nullable", "avro"),  # JSON refuses the missing field itself
        ("undeclared-field", "json"),
        ("undeclared-field", "avro"),
    ],
)
def test_an_event_consumers_would_read_back_changed_is_refused(case: str, wire: str) -> None:
    """An event whose bytes decode into another event (a value changed, or of another
    type) is refused at send(), naming the field without its value; it used to be sent,
    and every consumer got the changed event."""
    event, loc = changed_event(case, wire)
    producer = sg.GuardedProducer("127.0.0.1:9")  # refused before any byte is sent
    with pytest.raises(sg.ContractViolation) as info:
        producer.send("changed", event)
    assert [(e["loc"], e["type"]) for e in info.value.errors] == [(loc, "round_trip")]
    assert "4242" not in f"{info.value} {info.value.errors_json()!r}"


class Lenient(sg.Contract):
    """Fields that read back equal for ==, or that no wire format carries by design."""

    __subject__ = "tests.Lenient"
    __version__ = 1
    model_config = ConfigDict(ser_json_inf_nan="constants")

    ratio: float
    amount: float | int
    draft: str = Field(default="", exclude=True)
    _seen: int = PrivateAttr(default=0)


def test_equal_events_are_sent_however_they_read_back(
    bootstrap: str, topic_factory: Callable[..., str], read_all: Reader
) -> None:
    """A NaN (equal to a NaN), an int that a float | int union reads back as a float, an
    exclude=True field and a private attribute do not make send() refuse an event."""
    topic = topic_factory("lenient")
    event = Lenient(ratio=math.nan, amount=5, draft="unsent")
    event._seen = 3
    producer = sg.GuardedProducer(bootstrap)
    producer.send(topic, event)
    producer.flush()
    (record,) = read_all(topic, 1)
    got = Lenient.model_validate_json(record.value() or b"")
    assert math.isnan(got.ratio)
    assert got.amount == 5
    assert got.draft == ""


@pytest.mark.parametrize("wire", ["json", "avro"])
def test_bytes_no_format_can_hold_are_refused_naming_the_field(wire: str) -> None:
    """Bytes that are not UTF-8, in a contract that writes bytes as text, are a
    ContractViolation naming the field and how to carry them; in JSON, send() used to
    raise pydantic's own serialization error, which names no field."""
    contract = type(
        "Blob",
        (sg.Contract,),
        {
            "__module__": __name__,
            "__subject__": f"tests.blob.{wire}",
            "__version__": 1,
            "__wire_format__": wire,
            "__annotations__": {"name": str, "data": bytes},
        },
    )
    producer = sg.GuardedProducer("127.0.0.1:9")  # refused before any byte is sent
    with pytest.raises(sg.ContractViolation, match="ser_json_bytes='base64'") as info:
        producer.send("blobs", contract(name="n", data=b"\xffSECRET-4242"))
    assert [(e["loc"], e["type"]) for e in info.value.errors] == [(["data"], f"{wire}_encode")]
    assert "4242" not in f"{info.value} {info.value.errors_json()!r}"


@pytest.mark.parametrize("wire", ["json", "avro"])
def test_a_text_with_a_lone_surrogate_is_refused_without_the_bytes_hint(wire: str) -> None:
    """A str holding a lone surrogate (what surrogateescape decoding leaves) is no
    Unicode any format holds: the error says so, not that bytes need base64, which the
    field has none of."""
    contract = type(
        "Named",
        (sg.Contract,),
        {
            "__module__": __name__,
            "__subject__": f"tests.named.{wire}",
            "__version__": 1,
            "__wire_format__": wire,
            "__annotations__": {"name": str},
        },
    )
    producer = sg.GuardedProducer("127.0.0.1:9")  # refused before any byte is sent
    with pytest.raises(sg.ContractViolation, match="surrogate") as info:
        producer.send("names", contract(name="SECRET-4242\udcff"))
    assert [(e["loc"], e["type"]) for e in info.value.errors] == [(["name"], f"{wire}_encode")]
    assert "ser_json_bytes" not in info.value.errors[0]["msg"]
    assert "4242" not in f"{info.value} {info.value.errors_json()!r}"


@pytest.mark.parametrize("wire", ["json", "avro"])
@pytest.mark.parametrize("fold", [0, 1])
def test_a_zone_time_in_the_hour_the_clock_goes_back_is_sent(wire: str, fold: int) -> None:
    """An aware datetime in a zone's repeated hour reads back as the same instant in
    another zone and is sent; == between zones is False there, and send() refused it."""
    contract = type(
        "Stamped",
        (sg.Contract,),
        {
            "__module__": __name__,
            "__subject__": f"tests.stamped.{wire}",
            "__version__": 1,
            "__wire_format__": wire,
            "__annotations__": {"at": datetime, "seen": list[datetime]},
        },
    )
    at = datetime(2025, 10, 26, 2, 30, fold=fold, tzinfo=ZoneInfo("Europe/Berlin"))
    event = contract(at=at, seen=[at])
    codec: sg.Codec = sg.JsonCodec() if wire == "json" else sg.AvroCodec()
    assert codec.decoder(contract)(codec.encode(event)).at.timestamp() == at.timestamp()
    producer = sg.GuardedProducer("127.0.0.1:9")  # queued, never delivered: not flushed
    producer.send("stamped", event)

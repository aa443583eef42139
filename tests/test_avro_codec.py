"""Avro single-object encoding: round trips, schema resolution, and every failure kind."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import Any, Literal
from uuid import UUID

import pytest
from pydantic import BaseModel, ConfigDict, Field

import streamguard as sg
from streamguard.codecs import SINGLE_OBJECT_MARKER
from streamguard.schema.avro import contract_avro_schema
from tests.conftest import FAST_GROUP


class PaymentV1(sg.Contract):
    __subject__ = "tests.avro.Payment"
    __version__ = 1
    __wire_format__ = "avro"
    payment_id: UUID
    cents: int = Field(gt=0)
    currency: Literal["EUR", "USD"]


class PaymentV2(sg.Contract):
    __subject__ = "tests.avro.Payment"
    __version__ = 2
    __wire_format__ = "avro"
    payment_id: UUID
    cents: int = Field(gt=0)
    currency: Literal["EUR", "USD"]
    note: str | None = None


def payment(cents: int = 250) -> PaymentV1:
    return PaymentV1(payment_id=UUID(int=7), cents=cents, currency="EUR")


def test_round_trip_uses_single_object_encoding() -> None:
    """Encoded bytes start with C3 01 and the schema's 8-byte fingerprint, and decode
    back to an equal event."""
    codec = sg.AvroCodec()
    data = codec.encode(payment())
    assert data[:2] == SINGLE_OBJECT_MARKER
    assert len(data[2:10]) == 8
    assert codec.decode(data, PaymentV1) == payment()


def test_older_writer_schema_resolves_when_known() -> None:
    """Data written with v1 is read by a v2 reader when v1's schema is supplied, with
    the new field taking its default; without it, it is an unknown-schema DecodeError."""
    data = sg.AvroCodec().encode(payment())
    with pytest.raises(sg.DecodeError, match="unknown Avro schema"):
        sg.AvroCodec().decode(data, PaymentV2)
    reader = sg.AvroCodec(writer_schemas=[contract_avro_schema(PaymentV1)])
    event = reader.decode(data, PaymentV2)
    assert event.note is None
    assert event.cents == 250


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b'{"payment_id": 1}', "not Avro single-object encoding"),
        (SINGLE_OBJECT_MARKER + b"\x00" * 8 + b"\x01", "unknown Avro schema"),
        (None, "tombstone"),
    ],
)
def test_undecodable_bytes_are_decode_errors(data: bytes | None, match: str) -> None:
    """JSON, an unknown fingerprint and a null value are refused as DecodeError."""
    with pytest.raises(sg.DecodeError, match=match):
        sg.AvroCodec().decode(data, PaymentV1)


class StrictPayment(sg.Contract):
    """A strict contract whose UUID, datetime and Decimal travel as Avro strings."""

    model_config = ConfigDict(strict=True)
    __subject__ = "payments.StrictPayment"
    __version__ = 1
    __wire_format__ = "avro"
    payment_id: UUID
    at: datetime
    amount: Decimal
    cents: int


def test_a_strict_contract_reads_what_avro_carries_as_strings() -> None:
    """``strict=True`` refuses a UUID given as a string in Python mode; the decoded record
    holds exactly that, so every event of such a contract was a contract violation (and
    the producer refused to send it). Avro's own types keep the rest strict."""
    event = StrictPayment(
        payment_id=UUID(int=7), at=datetime(2026, 1, 1, tzinfo=UTC), amount=Decimal("9.90"), cents=5
    )
    codec = sg.AvroCodec()
    assert codec.decode(codec.encode(event), StrictPayment) == event
    producer = sg.GuardedProducer("127.0.0.1:1", kafka_config={"message.timeout.ms": 100})
    producer.send("payments", event)  # validated before it is queued: no broker needed


def test_truncated_record_is_a_decode_error() -> None:
    """A record cut short is a DecodeError that names no value."""
    data = sg.AvroCodec().encode(payment())
    with pytest.raises(sg.DecodeError, match="corrupt Avro record"):
        sg.AvroCodec().decode(data[:12], PaymentV1)


class PaymentV3(sg.Contract):
    __subject__ = "tests.avro.Payment"
    __version__ = 3
    __wire_format__ = "avro"
    payment_id: UUID
    cents: int = Field(gt=0)
    currency: Literal["EUR"]
    merchant: str


def test_an_unresolvable_writer_schema_is_named_not_called_corrupt() -> None:
    """A record of one of ``writer_schemas`` that the contract cannot resolve (a field
    added without a default, a symbol removed) is a DecodeError naming the writer's
    fingerprint and the first mismatch; it said "corrupt Avro record", of a sound
    record. No value: fastavro's text quoted the enum symbol read."""
    data = sg.AvroCodec().encode(PaymentV1(payment_id=UUID(int=7), cents=5, currency="USD"))
    codec = sg.AvroCodec(writer_schemas=[contract_avro_schema(PaymentV1)])
    with pytest.raises(sg.DecodeError) as info:
        codec.decode(data, PaymentV3)
    text = str(info.value)
    assert f"writer schema {data[2:10].hex()} cannot be resolved" in text
    assert "by Avro's rules: currency: ENUM_ARRAY_NARROWED" in text
    assert "corrupt" not in text
    assert "USD" not in text


class Counter(sg.Contract):
    __subject__ = "tests.avro.Counter"
    __version__ = 1
    __wire_format__ = "avro"
    label: str
    total: int
    history: list[int] = Field(default_factory=list)


@pytest.mark.parametrize(
    ("fields", "loc"),
    [({"total": 2**63}, "total"), ({"total": 1, "history": [-(2**63) - 1]}, "history")],
)
def test_an_int_beyond_avro_s_long_is_refused_naming_its_field(
    fields: dict[str, Any], loc: str
) -> None:
    """A Python int beyond 64 bits fits the contract's ``int`` but not Avro's long: the
    refusal names the field (it was ``loc=[]``, fastavro's OverflowError naming none),
    never the value."""
    with pytest.raises(sg.ContractViolation) as info:
        sg.AvroCodec().encode(Counter(label="a", **fields))
    assert [e["loc"] for e in info.value.errors] == [[loc]]
    assert "64-bit long" in info.value.errors[0]["msg"]
    assert "9223372036854775808" not in str(info.value)
    assert sg.AvroCodec().encode(Counter(label="a", total=2**63 - 1, history=[-(2**63)]))


def test_oversize_is_refused_before_parsing() -> None:
    """A message over max_bytes is refused with reason oversize."""
    data = sg.AvroCodec().encode(payment())
    with pytest.raises(sg.DecodeError) as info:
        sg.AvroCodec(max_bytes=5).decode(data, PaymentV1)
    assert info.value.reason == "oversize"


def test_decoded_but_invalid_is_a_contract_violation() -> None:
    """A record that decodes but breaks a pydantic constraint is a ContractViolation
    whose text does not contain the value."""
    invalid = PaymentV1.model_construct(payment_id=UUID(int=7), cents=-987654, currency="EUR")
    data = sg.AvroCodec().encode(invalid)
    with pytest.raises(sg.ContractViolation) as info:
        sg.AvroCodec().decode(data, PaymentV1)
    assert "987654" not in str(info.value)
    assert info.value.errors[0]["loc"] == ["cents"]


def test_an_event_that_does_not_fit_its_schema_is_refused_on_encode() -> None:
    """An instance whose value is outside its Avro enum is a ContractViolation."""
    wrong = PaymentV1.model_construct(payment_id=UUID(int=7), cents=1, currency="GBP")
    with pytest.raises(sg.ContractViolation, match="'currency'"):
        sg.AvroCodec().encode(wrong)


@pytest.mark.parametrize(
    ("field", "value", "kind"),
    [("currency", "SECRET-GBP", "literal_error"), ("cents", "SECRET-42", "int_parsing")],
)
def test_an_event_changed_after_construction_is_refused_naming_the_field(
    field: str, value: str, kind: str
) -> None:
    """A guarded producer refuses an Avro event whose field was set to a value its
    contract forbids, with an error naming that field and not its value. fastavro fails
    before the producer validates, and the error said only "does not fit its Avro
    schema" at no location."""
    event = payment()
    setattr(event, field, value)
    producer = sg.GuardedProducer("127.0.0.1:1", kafka_config={"message.timeout.ms": 100})
    with pytest.raises(sg.ContractViolation) as info:
        producer.send("payments", event)
    assert [(e["loc"], e["type"]) for e in info.value.errors] == [([field], kind)]
    assert "SECRET" not in f"{info.value} {info.value.errors}"


def test_avro_contract_round_trips_through_producer_and_service(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    read_all: Callable[..., list[Any]],
) -> None:
    """A guarded producer sends an Avro contract as application/avro, and a service of
    the same contract handles it; JSON bytes on that topic are dead-lettered."""
    topic = topic_factory("payments")
    producer = sg.GuardedProducer(bootstrap)
    producer.send(topic, payment(100))
    producer.produce_raw(topic, b'{"payment_id": "x"}', key=None, headers=[])
    producer.flush()
    (first, _) = read_all(topic, 2)
    assert dict(first.headers())["content-type"] == b"application/avro"
    seen: list[int] = []
    group = unique("g")

    class Ledger(sg.ConsumerService):
        topic = first.topic()
        contract = PaymentV1
        group_id = group

        def handle(self, event: PaymentV1, ctx: sg.MessageContext) -> None:
            seen.append(event.cents)

    service = Ledger(bootstrap_servers=bootstrap, kafka_config=FAST_GROUP)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        (dead,) = read_all(f"{topic}.dlq", 1)
        reason = dict(dead.headers())["sg-dlq-reason"]
        assert reason == b"decode_error"
        assert seen == [100]
    finally:
        service.stop()
        thread.join(30)


@pytest.mark.parametrize(
    ("annotation", "match"),
    [
        (Any, "any type"),
        (dict[str, Any], "any type"),
        (tuple[int, int], "fixed-length tuple"),
        (Literal["a", 1], "Literal or Enum whose values are of several types"),
    ],
    ids=["any", "map-of-any", "tuple", "mixed-literal"],
)
def test_an_avro_contract_refuses_fields_avro_cannot_carry(annotation: Any, match: str) -> None:
    """Any became a string field that refused every value but a string (and ``= None`` an
    invalid schema), a tuple an array of strings: every valid event was refused. Now the
    contract's schema is refused, naming the fix. A Literal of a str and an int was
    refused as "a value of any type (Any, ...)", which it is not."""
    namespace: dict[str, Any] = {
        "__module__": __name__,
        "__subject__": "tests.Loose",
        "__version__": 1,
        "__wire_format__": "avro",
        "__annotations__": {"x": annotation},
    }
    contract = type("Loose", (sg.Contract,), namespace)
    with pytest.raises(sg.ConfigurationError, match=match):
        sg.AvroCodec().decoder(contract)


def test_a_confluent_framed_record_says_how_to_read_it() -> None:
    """Magic byte 0 and a schema id: the decode error says to read it with a registry."""
    with pytest.raises(sg.DecodeError, match="Confluent-framed: read it with a schema registry"):
        sg.AvroCodec().decode(b"\x00\x00\x00\x03\xe7" + b"\x02p", PaymentV1)


class Comment(sg.Contract):
    __subject__ = "tests.avro.Thread"
    __version__ = 1
    __wire_format__ = "avro"
    text: str
    replies: list[Comment] = Field(default_factory=list)


def test_a_recursive_contract_round_trips() -> None:
    """A contract that holds itself is a $ref into its own $defs in JSON Schema: its
    record had no fields, so every event encoded as nothing and the producer's own
    decode refused it ("Field required"), and the check compared empty records. Its
    record now has the contract's fields, named after the subject where it recurs."""
    schema = contract_avro_schema(Comment)
    assert [f["name"] for f in schema["fields"]] == ["text", "replies"]
    assert schema["fields"][1]["type"] == {"type": "array", "items": "Thread"}
    event = Comment(text="a", replies=[Comment(text="b", replies=[Comment(text="c")])])
    codec = sg.AvroCodec()
    assert codec.decode(codec.encode(event), Comment) == event


class Order(BaseModel):
    sku: str
    quantity: int


class Tier(Enum):
    GOLD = "gold"
    SILVER = "silver"


class OrderEvent(sg.Contract):
    __subject__ = "tests.avro.Order"
    __version__ = 1
    __wire_format__ = "avro"
    event_id: str
    order: Order
    tier: Tier
    previous_tier: Tier | None = None


def test_a_nested_model_named_like_the_subject_keeps_its_own_record() -> None:
    """The record is named after the subject, here ``Order``, and so is the nested model:
    the field took the name, and with it the contract's own record, so every event was
    refused on send ("does not fit its Avro schema"). The nested record gets a name of
    its own; a type used twice is still defined once and then named."""
    schema = contract_avro_schema(OrderEvent)
    types = {f["name"]: f["type"] for f in schema["fields"]}
    assert schema["name"] == "Order"
    assert types["order"]["name"] == "Order_2"
    assert [f["name"] for f in types["order"]["fields"]] == ["sku", "quantity"]
    assert types["tier"]["name"] == "Tier"
    assert types["previous_tier"] == ["null", "Tier"]
    event = OrderEvent(
        event_id="e", order=Order(sku="s", quantity=2), tier=Tier.GOLD, previous_tier=Tier.SILVER
    )
    codec = sg.AvroCodec()
    assert codec.decode(codec.encode(event), OrderEvent) == event


def zigzag(n: int) -> bytes:
    """An Avro long: zig-zag, then 7 bits a byte."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class Marker(BaseModel):
    pass


class NoneOnly(BaseModel):
    gone: None = None


@pytest.mark.parametrize(
    "items", [None, Marker, NoneOnly], ids=["none", "model-without-fields", "model-of-none"]
)
def test_a_list_of_items_that_take_no_bytes_is_refused(items: Any) -> None:
    """Such items are zero bytes each on the wire, so a record of a few bytes could claim
    10^12 of them and fastavro would read them one by one (46 s of CPU for 10^9): the
    contract's schema is refused when the codec is built, naming the field and the fix."""
    namespace: dict[str, Any] = {
        "__module__": __name__,
        "__subject__": "tests.Markers",
        "__version__": 1,
        "__wire_format__": "avro",
        "__annotations__": {"event_id": str, "markers": list[items]},
    }
    contract = type("Markers", (sg.Contract,), namespace)
    with pytest.raises(sg.ConfigurationError, match=r"Markers\.markers .*count them with an int"):
        sg.AvroCodec().decoder(contract)


def test_a_writer_schema_with_an_array_of_nothing_is_refused_and_its_poison_fails_fast() -> None:
    """A writer schema given in ``writer_schemas`` with an array of ``null`` is refused at
    construction: before, a 20-byte message written with it, claiming 10^12 items, held
    the consumer for hours. Such a record is then an unknown schema's, a DecodeError at once."""
    import fastavro

    writer = contract_avro_schema(PaymentV1)
    writer["fields"].append({"name": "markers", "type": {"type": "array", "items": "null"}})
    with pytest.raises(sg.ConfigurationError, match=r"Payment\.markers \(array<null>\)"):
        sg.AvroCodec(writer_schemas=[writer])
    canonical = fastavro.schema.to_parsing_canonical_form(fastavro.parse_schema(writer))
    fingerprint = bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))
    body = zigzag(0) + zigzag(0) + zigzag(0) + zigzag(10**12) + zigzag(0)  # fields then markers
    poison = SINGLE_OBJECT_MARKER + fingerprint + body
    assert len(poison) == 20
    started = time.monotonic()
    with pytest.raises(sg.DecodeError, match="unknown Avro schema"):
        sg.AvroCodec().decode(poison, PaymentV1)
    assert time.monotonic() - started < 0.5


class Line(BaseModel):
    sku: str
    flag: None = None  # a zero-width field beside one that takes bytes


class Basket(sg.Contract):
    __subject__ = "tests.avro.Basket"
    __version__ = 1
    __wire_format__ = "avro"
    lines: list[Line]
    counts: list[int]
    maybe: list[str | None]
    grid: list[list[bool]]
    seen: dict[str, None]
    single: list[Literal["only"]]


def test_lists_of_items_that_take_bytes_are_unaffected() -> None:
    """Items that take a byte at least (a union's or a one-symbol enum's index, a
    record with one such field, a nested array's count) and maps of null (their keys
    take bytes) are read as before."""
    event = Basket(
        lines=[Line(sku="a")],
        counts=[1, 2],
        maybe=[None, "x"],
        grid=[[True], []],
        seen={"k": None},
        single=["only"],
    )
    codec = sg.AvroCodec(writer_schemas=[contract_avro_schema(Basket)])
    assert codec.decode(codec.encode(event), Basket) == event


def test_a_deeply_nested_record_of_a_recursive_contract_is_a_decode_error() -> None:
    """A contract that holds itself (a tree) lets a record nest as deep as its bytes go:
    fastavro's compiled reader recursed on the C stack, and a 30 KB record nesting
    10,000 levels killed the consumer with SIGSEGV, on every restart. It is now a
    DecodeError, and shallow trees still decode. In a subprocess: the crash took the
    test run with it."""
    code = textwrap.dedent(
        """
        from __future__ import annotations
        import streamguard as sg
        from streamguard.codecs import SINGLE_OBJECT_MARKER, _parsed_avro
        from streamguard.schema.avro import contract_avro_schema

        class Node(sg.Contract):
            __subject__ = "tests.avro.Node"
            __version__ = 1
            __wire_format__ = "avro"
            v: int
            children: list[Node] = []
            parent: Node | None = None

        codec = sg.AvroCodec()
        tree = Node(v=1, children=[Node(v=2, parent=Node(v=3))])
        assert codec.decode(codec.encode(tree), Node) == tree
        fingerprint = _parsed_avro(contract_avro_schema(Node))[1]
        # v = 0, no children, parent: the union's Node branch; 10,000 times
        deep = SINGLE_OBJECT_MARKER + fingerprint + b"\\x00\\x00\\x02" * 10_000 + b"\\x00" * 3
        try:
            codec.decode(deep, Node)
        except sg.DecodeError as exc:
            print(type(exc).__name__)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["DecodeError"]

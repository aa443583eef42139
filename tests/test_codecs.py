"""The JSON codec turns bytes into contract instances, or into value-free errors."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal
from uuid import UUID
from zoneinfo import ZoneInfo

import pytest
from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Discriminator,
    Field,
    ImportString,
    Json,
    StringConstraints,
    Tag,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

import streamguard as sg
from streamguard.codecs import JsonCodec

SECRET = "SECRET-4242"


class Line(BaseModel):
    sku: str
    quantity: int


class OrderPlaced(sg.Contract):
    __subject__ = "orders.OrderPlaced"
    __version__ = 2
    model_config = ConfigDict(extra="forbid")

    order_id: UUID
    amount: Decimal
    currency: Literal["EUR", "USD"]
    placed_at: datetime
    lines: list[Line] = Field(default_factory=list)
    note: str = Field(default="", max_length=4)


class Bag(sg.Contract):
    """Accepts any JSON value under ``data``, so only nesting limits can refuse it."""

    __subject__ = "tests.Bag"
    __version__ = 1

    data: Any


VALID: dict[str, Any] = {
    "order_id": "6f1b6a1e-31c4-4e0e-9d0c-3a5b2f6c9d10",
    "amount": "12.50",
    "currency": "EUR",
    "placed_at": "2026-01-02T03:04:05Z",
    "lines": [{"sku": "A-1", "quantity": 2}],
}


def payload(**changes: Any) -> bytes:
    """VALID with ``changes`` applied (a value of ``...`` removes the field), as JSON bytes."""
    data = {**VALID, **changes}
    return json.dumps({k: v for k, v in data.items() if v is not ...}).encode()


@pytest.fixture
def decode() -> Callable[[bytes | None], OrderPlaced]:
    return JsonCodec().decoder(OrderPlaced)


def assert_no_secret(exc: sg.DecodeError | sg.ContractViolation) -> None:
    """Neither the text nor the structured errors of ``exc`` mention the secret value."""
    assert SECRET not in str(exc)
    assert SECRET not in repr(exc)
    if isinstance(exc, sg.ContractViolation):
        assert SECRET not in json.dumps(exc.errors)
        assert all("input" not in detail for detail in exc.errors)


def test_valid_message_decodes(decode: Callable[[bytes | None], OrderPlaced]) -> None:
    """A message that satisfies the contract decodes into a contract instance."""
    event = decode(payload())
    assert isinstance(event, OrderPlaced)
    assert event.amount == Decimal("12.50")
    assert event.lines == [Line(sku="A-1", quantity=2)]


def test_encode_then_decode_round_trips() -> None:
    """What encode writes, the decoder reads back as an equal event."""
    codec = JsonCodec()
    event = OrderPlaced.model_validate_json(payload())
    assert codec.decode(codec.encode(event), OrderPlaced) == event


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b'{"order_id": ' + SECRET.encode(), id="truncated"),
        pytest.param(b'{"note": "' + SECRET.encode() + b'",}', id="trailing-comma"),
        pytest.param(b"{'note': '" + SECRET.encode() + b"'}", id="single-quotes"),
        pytest.param(b"", id="empty"),
    ],
)
def test_malformed_json_is_a_decode_error(
    decode: Callable[[bytes | None], OrderPlaced], data: bytes
) -> None:
    """Bytes that are not JSON raise DecodeError (reason decode_error) without quoting them."""
    with pytest.raises(sg.DecodeError, match="Invalid JSON") as info:
        decode(data)
    assert info.value.reason == "decode_error"
    assert_no_secret(info.value)


def test_invalid_utf8_is_a_decode_error(decode: Callable[[bytes | None], OrderPlaced]) -> None:
    """A payload that is not UTF-8 raises DecodeError, not a UnicodeDecodeError."""
    with pytest.raises(sg.DecodeError) as info:
        decode(b'{"note": "' + SECRET.encode() + b'\xff\xfe"}')
    assert info.value.reason == "decode_error"
    assert_no_secret(info.value)


@pytest.mark.parametrize("data", [b"[1, 2]", b'"' + SECRET.encode() + b'"', b"42", b"null"])
def test_non_object_top_level_is_a_contract_violation(
    decode: Callable[[bytes | None], OrderPlaced], data: bytes
) -> None:
    """Well-formed JSON that is not an object breaks the contract (the documented choice)."""
    with pytest.raises(sg.ContractViolation) as info:
        decode(data)
    assert info.value.errors == [
        {"loc": [], "type": "model_type", "msg": "Input should be an object"}
    ]
    assert_no_secret(info.value)


def test_oversize_is_refused_before_parsing() -> None:
    """A message over max_bytes is oversize even when it is not JSON at all."""
    decode = JsonCodec(max_bytes=100).decoder(OrderPlaced)
    with pytest.raises(sg.DecodeError, match="101 bytes, over the limit of 100") as info:
        decode(b"\xff" + SECRET.encode() * 9 + b"[" * 1)
    assert info.value.reason == "oversize"
    assert_no_secret(info.value)


def test_message_of_exactly_max_bytes_is_accepted() -> None:
    """The size limit is inclusive: a message of exactly max_bytes is decoded."""
    data = payload()
    assert JsonCodec(max_bytes=len(data)).decode(data, OrderPlaced).currency == "EUR"


def test_default_size_limit_is_one_mebibyte() -> None:
    """The default limit refuses a message just over 1 MiB as oversize."""
    with pytest.raises(sg.DecodeError) as info:
        JsonCodec().decode(b" " * (1024 * 1024 + 1), OrderPlaced)
    assert info.value.reason == "oversize"


def test_default_parser_refuses_deep_nesting() -> None:
    """Without max_depth the parser's own recursion limit refuses very deep JSON."""
    data = b'{"data": ' + b"[" * 500 + b"]" * 500 + b"}"
    with pytest.raises(sg.DecodeError, match="recursion limit") as info:
        JsonCodec().decode(data, Bag)
    assert info.value.reason == "decode_error"


def test_custom_max_depth_refuses_one_level_more() -> None:
    """max_depth=N accepts N levels of nesting and refuses N + 1."""
    codec = JsonCodec(max_depth=5)
    at_limit = b'{"data": [[[[1]]]]}'
    assert codec.decode(at_limit, Bag).data == [[[[1]]]]
    with pytest.raises(sg.DecodeError, match="deeper than the limit of 5") as info:
        codec.decode(b'{"data": [[[[[1]]]]]}', Bag)
    assert info.value.reason == "decode_error"


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    """Brackets in string literals, escaped quotes included, are not nesting."""
    codec = JsonCodec(max_depth=2)
    data = json.dumps({"data": ['[[[{{{ "\\" ]]]', "{[{[{["]}).encode()
    assert codec.decode(data, Bag).data == ['[[[{{{ "\\" ]]]', "{[{[{["]


def test_missing_field_is_a_contract_violation(
    decode: Callable[[bytes | None], OrderPlaced],
) -> None:
    """A missing required field is reported with its location and type."""
    with pytest.raises(sg.ContractViolation, match=r"^orders\.OrderPlaced: ") as info:
        decode(payload(currency=..., note=SECRET[:4]))
    assert info.value.subject == "orders.OrderPlaced"
    assert info.value.errors == [{"loc": ["currency"], "type": "missing", "msg": "Field required"}]


def test_extra_field_is_refused_by_a_closed_contract(
    decode: Callable[[bytes | None], OrderPlaced],
) -> None:
    """With extra='forbid', an unknown field is a violation, and its value is not quoted."""
    with pytest.raises(sg.ContractViolation) as info:
        decode(payload(password=SECRET))
    assert [(e["loc"], e["type"]) for e in info.value.errors] == [(["password"], "extra_forbidden")]
    assert_no_secret(info.value)


def test_wrong_types_are_reported_without_values(
    decode: Callable[[bytes | None], OrderPlaced],
) -> None:
    """Every wrong-typed field is reported by location and type, and no value is quoted."""
    bad = payload(
        order_id=SECRET,
        amount=SECRET,
        currency=SECRET,
        placed_at=SECRET,
        lines=[{"sku": SECRET, "quantity": SECRET}],
        note=SECRET,
    )
    with pytest.raises(sg.ContractViolation, match=r"6 validation error\(s\)") as info:
        decode(bad)
    assert [(e["loc"], e["type"]) for e in info.value.errors] == [
        (["order_id"], "uuid_parsing"),
        (["amount"], "decimal_parsing"),
        (["currency"], "literal_error"),
        (["placed_at"], "datetime_from_date_parsing"),
        (["lines", 0, "quantity"], "int_parsing"),
        (["note"], "string_too_long"),
    ]
    assert_no_secret(info.value)


def test_uuid_error_does_not_quote_an_input_character(
    decode: Callable[[bytes | None], OrderPlaced],
) -> None:
    """Even the single offending character of a bad UUID stays out of the error."""
    with pytest.raises(sg.ContractViolation) as info:
        decode(payload(order_id="Q"))
    assert "`Q`" not in str(info.value)
    assert "`Q`" not in json.dumps(info.value.errors)


class Settings(sg.Contract):
    """Fields whose pydantic validators quote the input in their own error messages."""

    __subject__ = "tests.Settings"
    __version__ = 1
    zone: ZoneInfo | None = None
    quota: ByteSize | None = None
    plugin: ImportString[Any] | None = None


@pytest.mark.parametrize(
    ("value", "error_type"),
    [
        ({"zone": SECRET}, "zoneinfo_str"),
        ({"quota": f"1 {SECRET}"}, "byte_size_unit"),
        ({"plugin": SECRET}, "import_error"),
    ],
    ids=["zoneinfo", "bytesize", "importstring"],
)
def test_messages_of_pydantics_own_types_do_not_quote_the_input(
    value: dict[str, Any], error_type: str
) -> None:
    """pydantic's validators of ZoneInfo, ByteSize and ImportString put the input (or
    its unit) into their messages: those are replaced by the same message without it."""
    with pytest.raises(sg.ContractViolation) as info:
        JsonCodec().decode(json.dumps(value).encode(), Settings)
    assert [e["type"] for e in info.value.errors] == [error_type]
    assert_no_secret(info.value)
    assert "SECRET" not in str(info.value) + info.value.errors_json().decode()


class Checked(sg.Contract):
    """A contract whose own validators quote the value in their messages."""

    __subject__ = "tests.Checked"
    __version__ = 1
    sku: str
    amount: int = 0

    @field_validator("sku")
    @classmethod
    def known_sku(cls, value: str) -> str:
        if value.startswith("SECRET"):
            raise ValueError(f"unknown sku {value!r} (ask the catalogue)")
        return value

    @field_validator("amount")
    @classmethod
    def small(cls, value: int) -> int:
        assert value < 10**9, f"amount {value} is too large"
        return value

    @model_validator(mode="before")
    @classmethod
    def whole(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("sku") == "SECRET-4242-whole":
            raise ValueError(f"refused {data}")
        return data


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ({"sku": SECRET}, "(ask the catalogue)"),
        ({"sku": f"{SECRET}\nsecond line\\x"}, "(ask the catalogue)"),
        ({"sku": "ok", "amount": 42424242420}, "is too large"),
        ({"sku": "SECRET-4242-whole"}, "refused"),
    ],
    ids=["field", "field-repr-escaped", "assert", "model"],
)
def test_a_validators_own_message_loses_the_input_it_quotes(
    value: dict[str, Any], kept: str
) -> None:
    """A contract's validator writing the value into its message (``ValueError(f"unknown
    sku {v}")``) no longer carries it into the error text and the DLQ headers: the input,
    where the message quotes it word for word, is cut; the rest of the message stays."""
    with pytest.raises(sg.ContractViolation) as info:
        JsonCodec().decode(json.dumps(value).encode(), Checked)
    assert_no_secret(info.value)
    assert "42424242420" not in str(info.value) + info.value.errors_json().decode()
    assert kept in info.value.errors[0]["msg"]
    assert "<redacted>" in info.value.errors[0]["msg"]


class Base64Encoded(sg.Contract):
    """A contract of a bytes field read from base64 text."""

    __subject__ = "tests.Base64Encoded"
    __version__ = 1
    model_config = ConfigDict(val_json_bytes="base64")
    blob: bytes


class HexEncoded(sg.Contract):
    """A contract of a bytes field read from hex text."""

    __subject__ = "tests.HexEncoded"
    __version__ = 1
    model_config = ConfigDict(val_json_bytes="hex")
    blob: bytes


@pytest.mark.parametrize(
    ("contract", "blob", "kept"),
    [
        (Base64Encoded, "AB*Q", "Data should be valid base64"),
        (HexEncoded, "00Q1", "Data should be valid hex"),
    ],
    ids=["base64", "hex"],
)
def test_a_bytes_decoding_error_does_not_quote_an_input_character(
    contract: type[sg.Contract], blob: str, kept: str
) -> None:
    """pydantic's base64 and hex errors name the offending character of the input
    (``Invalid symbol 42, offset 2``, ``Invalid character 'Q'``): only the encoding is kept."""
    with pytest.raises(sg.ContractViolation) as info:
        JsonCodec().decode(json.dumps({"blob": blob}).encode(), contract)
    assert [e["msg"] for e in info.value.errors] == [kept]
    shown = str(info.value) + info.value.errors_json().decode()
    assert "42" not in shown
    assert "'Q'" not in shown


class CustomError(sg.Contract):
    """A contract whose validator raises a ``PydanticCustomError`` quoting the value."""

    __subject__ = "tests.CustomError"
    __version__ = 1
    sku: str

    @field_validator("sku")
    @classmethod
    def known_sku(cls, value: str) -> str:
        raise PydanticCustomError("sku_unknown", "unknown sku {sku}", {"sku": value})


def test_a_custom_errors_message_loses_the_input_it_quotes() -> None:
    """A ``PydanticCustomError`` is a validator's own message under a type of its own
    naming: the input it quotes is cut as from a ``ValueError``'s."""
    with pytest.raises(sg.ContractViolation) as info:
        JsonCodec().decode(json.dumps({"sku": SECRET}).encode(), CustomError)
    assert_no_secret(info.value)
    assert info.value.errors[0]["type"] == "sku_unknown"
    assert info.value.errors[0]["msg"] == "unknown sku <redacted>"


class Sibling(sg.Contract):
    """A contract whose field validator quotes another field's value (``info.data``)."""

    __subject__ = "tests.Sibling"
    __version__ = 1
    email: str
    placed_on: date
    plan: str

    @field_validator("plan")
    @classmethod
    def allowed(cls, value: str, info: ValidationInfo) -> str:
        raise ValueError(f"plan {value} not allowed for {info.data} ({info.data['email']})")


def test_a_validators_message_loses_the_other_fields_it_quotes() -> None:
    """A field's validator quoting the fields validated before it (``info.data``) loses
    their values too, in the error text and the DLQ headers, Avro's too."""
    record = {"email": "zq-4242@example.org", "placed_on": "1987-06-05", "plan": "gold-4242"}
    parsed = {**record, "placed_on": date(1987, 6, 5)}
    avro = sg.AvroCodec()
    for decode in (
        lambda: JsonCodec().decode(json.dumps(record).encode(), Sibling),
        lambda: avro.decode(avro.encode(Sibling.model_construct(**parsed)), Sibling),
    ):
        with pytest.raises(sg.ContractViolation) as info:
            decode()
        shown = str(info.value) + info.value.errors_json().decode()
        assert "4242" not in shown
        assert "1987" not in shown
        assert "not allowed for" in info.value.errors[0]["msg"]


class Dated(sg.Contract):
    """A contract whose validator quotes the datetime pydantic parsed from the record."""

    __subject__ = "tests.Dated"
    __version__ = 1
    placed_at: datetime
    order_id: UUID

    @field_validator("placed_at", "order_id")
    @classmethod
    def refused(cls, value: Any) -> Any:
        raise ValueError(f"{value} ({value!r}) is refused")


def test_a_validators_message_loses_what_the_input_was_parsed_as() -> None:
    """A record's "1999-01-01T00:00:00Z" reaches a validator as a datetime shown as
    "1999-01-01 00:00:00+00:00", an upper-case UUID as a lower-case one: not the
    record's text, and cut from the message all the same."""
    record = {"placed_at": "1999-01-01T00:00:00Z", "order_id": str(UUID(int=0x4242)).upper()}
    with pytest.raises(sg.ContractViolation) as info:
        JsonCodec().decode(json.dumps(record).encode(), Dated)
    shown = str(info.value) + info.value.errors_json().decode()
    assert [e["msg"] for e in info.value.errors] == [
        "Value error, <redacted> (<redacted>) is refused"
    ] * 2
    assert "1999" not in shown
    assert "4242" not in shown


class Account(sg.Contract):
    """A contract whose validator quotes the int pydantic parsed from a whole float."""

    __subject__ = "tests.Account"
    __version__ = 1
    account: int

    @field_validator("account")
    @classmethod
    def unknown(cls, value: int) -> int:
        raise ValueError(f"account {value} is unknown")


@pytest.mark.parametrize("account", [123456.0, "123456.0"], ids=["number", "string"])
def test_a_whole_float_reaches_an_int_fields_validator_as_an_int(account: float | str) -> None:
    """A record's 123456.0 (a number, or a string) reaches an int field's validator as
    123456: not the record's text, and cut from the message all the same."""
    with pytest.raises(sg.ContractViolation) as info:
        JsonCodec().decode(json.dumps({"account": account}).encode(), Account)
    assert [e["msg"] for e in info.value.errors] == ["Value error, account <redacted> is unknown"]
    assert "123456" not in str(info.value) + info.value.errors_json().decode()


class Schedule(sg.Contract):
    """A contract whose model validator quotes the first of many parsed datetimes."""

    __subject__ = "tests.Schedule"
    __version__ = 1
    runs: list[datetime]

    @model_validator(mode="after")
    def first_run(self) -> Schedule:
        raise ValueError(f"first run {self.runs[0]} is before the schedule opens")


def test_the_first_values_of_an_input_are_the_ones_parsed() -> None:
    """Only 32 values of an input are parsed, and they are its first ones: a model
    validator quoting the first of 40 datetimes has it cut (the last were parsed once)."""
    runs = [f"2031-01-{day:02d}T00:00:00Z" for day in range(1, 29)]
    runs += [f"2031-02-{day:02d}T00:00:00Z" for day in range(1, 13)]
    with pytest.raises(sg.ContractViolation) as info:
        JsonCodec().decode(json.dumps({"runs": runs}).encode(), Schedule)
    assert [e["msg"] for e in info.value.errors] == [
        "Value error, first run <redacted> is before the schedule opens"
    ]
    assert "2031-01-01" not in str(info.value) + info.value.errors_json().decode()


def test_a_violations_record_is_parsed_caching_keys_only() -> None:
    """The record parsed for a validator's message caches its keys alone, as the
    contract's own parse does: a flood of distinct violations keeps its values out of
    the process's string cache."""
    from streamguard.codecs import _parsed

    first, second = (_parsed(b'{"name":"customer-7"}') for _ in range(2))
    assert first == second == {"name": "customer-7"}
    assert first["name"] is not second["name"]
    assert next(iter(first)) is next(iter(second))


def test_tombstone_is_a_decode_error(decode: Callable[[bytes | None], OrderPlaced]) -> None:
    """A record without a value (a tombstone) is a decode error, not a crash."""
    with pytest.raises(sg.DecodeError, match="tombstone") as info:
        decode(None)
    assert info.value.reason == "decode_error"


def test_include_input_opts_in_to_values() -> None:
    """With include_input=True the offending value is kept in the structured errors."""
    decode = JsonCodec(include_input=True).decoder(OrderPlaced)
    with pytest.raises(sg.ContractViolation) as info:
        decode(payload(currency=SECRET))
    assert info.value.errors[0]["input"] == SECRET


@pytest.mark.parametrize("kwargs", [{"max_bytes": 0}, {"max_depth": 0}])
def test_invalid_limits_are_refused(kwargs: dict[str, Any]) -> None:
    """Non-positive limits are refused when the codec is built."""
    with pytest.raises(ValueError, match="must be positive"):
        JsonCodec(**kwargs)


def test_avro_contract_with_json_codec_is_refused() -> None:
    """An Avro contract paired explicitly with the JSON codec fails at set-up."""
    from streamguard.codecs import check_codec_fits

    class AvroOrder(sg.Contract):
        __subject__ = "tests.AvroOrder"
        __version__ = 1
        __wire_format__ = "avro"
        order_id: str

    with pytest.raises(sg.ConfigurationError, match="Avro contract"):
        check_codec_fits(AvroOrder, sg.JsonCodec())
    with pytest.raises(sg.ConfigurationError, match="Avro contract"):
        type(
            "AvroService",
            (sg.ConsumerService,),
            {
                "topic": "orders",
                "contract": AvroOrder,
                "group_id": "g",
                "codec": sg.JsonCodec(),
                "handle": lambda self, event, ctx: None,
            },
        )


def test_map_keys_and_union_tags_stay_out_of_errors() -> None:
    """Keys of a declared map and a tagged union's input tag are data: they appear in no
    error location or message, while field names and branch tags do."""

    class Cat(BaseModel):
        kind: Literal["cat"]
        lives: int

    class Dog(BaseModel):
        kind: Literal["dog"]
        bark: str

    class Ledger(sg.Contract):
        __subject__ = "tests.Ledger"
        __version__ = 1
        balances: dict[str, int]
        pet: Annotated[Cat | Dog, Field(discriminator="kind")] | None = None
        either: int | list[int] = 0

    data = json.dumps(
        {"balances": {"alice@example.com": "x"}, "pet": {"kind": "SECRET-TAG"}, "either": "z"}
    ).encode()
    with pytest.raises(sg.ContractViolation) as info:
        JsonCodec().decode(data, Ledger)
    text = json.dumps(info.value.errors) + str(info.value)
    assert "alice@example.com" not in text
    assert "SECRET-TAG" not in text
    locs = [e["loc"] for e in info.value.errors]
    assert ["balances", "*"] in locs
    assert ["either", "int"] in locs  # a union branch tag is a schema word, kept
    opted_in = JsonCodec(include_input=True).decoder(Ledger)
    with pytest.raises(sg.ContractViolation) as info:
        opted_in(data)
    assert ["balances", "alice@example.com"] in [e["loc"] for e in info.value.errors]


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int


class Dog(BaseModel):
    kind: Literal["dog"]
    tags: dict[str, int]


class Meta(BaseModel):
    source: str


class Fish(BaseModel):
    kind: Literal[1]
    tags: Meta  # the name Bird gives a map


class Bird(BaseModel):
    kind: Literal[2]
    tags: dict[str, int]


class Shark(BaseModel):
    model_config = ConfigDict(title="A shark")  # pydantic's tag is the class name
    tags: Meta
    size: int | list[int] = 0


class Eagle(BaseModel):
    model_config = ConfigDict(title="An eagle")
    tags: dict[str, int]
    size: dict[str, int] | str = ""


def _animal_kind(value: Any) -> str:
    return "fish" if isinstance(value, dict) and value.get("kind") == 1 else "bird"


class Prefs(sg.Contract):
    """Maps where the location walker used to lose track of the schema."""

    __subject__ = "tests.Prefs"
    __version__ = 1
    by_user: dict[str, int] | str = ""
    pair: tuple[int, dict[str, int]] | None = None
    blob: Json[dict[str, int]] | None = None
    pet: Annotated[Cat | Dog, Field(discriminator="kind")] | None = None
    by_id: dict[UUID, Any] | None = None  # values may be anything: the key still fails
    by_code: dict[Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")], int] | None = None
    animal: Annotated[Fish | Bird, Field(discriminator="kind")] | None = None  # int tags
    either_animal: Fish | Bird | None = None  # a smart union: tagged by model name
    rows: list[Meta] | list[dict[str, int]] | None = None  # tags name no schema
    titled: Shark | Eagle | None = None  # tags name no title
    chosen: (
        Annotated[
            Annotated[Fish, Tag("fish")] | Annotated[Bird, Tag("bird")],
            Discriminator(_animal_kind),
        ]
        | None
    ) = None
    hidden: Annotated[dict[str, int], WithJsonSchema({"type": "string"})] | None = None


@pytest.mark.parametrize(
    ("value", "loc"),
    [
        ({"by_user": {"alice@example.com": "x"}}, ["by_user", "dict[str,int]", "*"]),
        ({"by_id": {"alice@example.com": 1}}, ["by_id", "*", "[key]"]),
        ({"by_code": {"alice@example.com": 1}}, ["by_code", "*", "[key]"]),
        ({"by_code": {"alice@example.com": "x"}}, ["by_code", "*"]),
        (
            {"animal": {"kind": 2, "tags": {"alice@example.com": "x"}}},
            ["animal", 2, "tags", "*"],
        ),
        (
            {"either_animal": {"kind": 2, "tags": {"alice@example.com": "x"}}},
            ["either_animal", "Bird", "tags", "*"],
        ),
        (
            {"rows": [{"alice@example.com": "x"}]},
            ["rows", "list[dict[str,int]]", 0, "*"],
        ),
        (
            {"titled": {"tags": {"alice@example.com": "x"}}},
            ["titled", "Eagle", "tags", "*"],
        ),
        (
            {"titled": {"tags": {}, "size": {"alice@example.com": "x"}}},
            ["titled", "Eagle", "size", "dict[str,int]", "*"],
        ),
        (
            {"chosen": {"kind": 2, "tags": {"alice@example.com": "x"}}},
            ["chosen", "bird", "tags", "*"],
        ),
        ({"hidden": {"alice@example.com": "x"}}, ["hidden", "*"]),
        ({"pair": [1, {"alice@example.com": "x"}]}, ["pair", 1, "*"]),
        ({"blob": json.dumps({"alice@example.com": "x"})}, ["blob", "*"]),
        (
            {"pet": {"kind": "dog", "tags": {"alice@example.com": "x"}}},
            ["pet", "dog", "tags", "*"],
        ),
    ],
    ids=[
        "map-in-a-union",
        "map-of-any-values",
        "map-with-pattern-keys",
        "map-with-pattern-keys-bad-value",
        "map-in-a-union-with-int-tags",
        "map-in-a-smart-union-whose-other-branch-has-a-model-there",
        "map-in-a-union-of-lists",
        "map-in-a-union-whose-tag-names-no-title",
        "map-in-a-union-in-such-a-union",
        "map-in-a-union-with-a-callable-discriminator",
        "map-whose-schema-a-type-overrides",
        "map-in-a-tuple",
        "map-in-a-json-field",
        "optional-tagged-union",
    ],
)
def test_map_keys_stay_out_of_errors_in_unions_tuples_and_json_fields(
    value: dict[str, Any], loc: list[str | int]
) -> None:
    """A map key is hidden wherever the map sits: after a union's branch tag (which was
    taken for a key, and the key kept), at a tuple's position, inside a ``Json[...]``,
    whatever the map's schema says of its values: ``true`` (any value, where only the
    key can fail) or, for keys with a pattern, ``patternProperties``, and in the branch
    a union's tag names: an int tag (taken for a list index), a branch whose field
    another branch declares as a model (looked up there) and the second of two lists
    (its items taken for the first's) kept the key. Where the tag names no branch for
    sure (a model with a title of its own, a callable discriminator), every branch is
    walked; a part the schema cannot explain (a type overriding its schema) is hidden."""
    with pytest.raises(sg.ContractViolation) as info:
        JsonCodec().decode(json.dumps(value).encode(), Prefs)
    assert "alice@example.com" not in json.dumps(info.value.errors) + str(info.value)
    assert loc in [e["loc"] for e in info.value.errors]


def test_a_repeated_violation_is_a_new_error_equal_to_the_first(
    decode: Callable[[bytes | None], OrderPlaced],
) -> None:
    """A flood of records failing alike is classified once: later records get a fresh
    ContractViolation (their own object, traceback and details list) with the same
    text and details, and a record failing otherwise is classified anew."""
    errors = []
    for value in (payload(currency="GBP"), payload(currency="GBP"), payload(currency="XYZ")):
        with pytest.raises(sg.ContractViolation) as caught:
            decode(value)
        errors.append(caught.value)
    first, second, other = errors
    assert first is not second
    assert first.errors is not second.errors
    assert str(first) == str(second)
    assert first.errors == second.errors
    assert first.subject == second.subject == "orders.OrderPlaced"
    assert first.args == second.args
    assert other.errors == first.errors  # same location and message: the value is not in it
    with pytest.raises(sg.ContractViolation) as missing:
        decode(payload(amount=...))
    assert missing.value.errors[0]["loc"] == ["amount"]
    assert missing.value.errors != first.errors


def test_violations_with_thousands_of_errors_are_not_kept(
    decode: Callable[[bytes | None], OrderPlaced],
) -> None:
    """A small record can carry thousands of errors (one per item of a list): decoding
    many such records, each failing its own way, keeps no memory of them (each was an
    entry of megabytes in the cache of classified violations)."""
    import gc
    import tracemalloc

    tracemalloc.start()
    try:
        for i in range(20):
            with pytest.raises(sg.ContractViolation) as caught:
                decode(payload(lines=[{}] * (2000 + i)))
            assert len(caught.value.errors) == 2 * (2000 + i)
        del caught
        gc.collect()
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 2 * 1024 * 1024, f"{held} bytes held after 20 records"


def test_long_undeclared_field_names_are_not_kept(
    decode: Callable[[bytes | None], OrderPlaced],
) -> None:
    """Records of a closed contract, each with a new undeclared field named with
    200,000 characters, keep no memory of those names once classified (the memo of
    masked locations held each one whole)."""
    import gc
    import tracemalloc

    tracemalloc.start()
    try:
        for i in range(30):
            with pytest.raises(sg.ContractViolation):
                decode(payload(**{f"{i}" + "f" * 200_000: 1}))
        gc.collect()
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 1024 * 1024, f"{held} bytes held after 30 records"


def test_details_with_input_values_are_never_shared() -> None:
    """With include_input the details hold the record's values: each record's own."""
    decode = JsonCodec(include_input=True).decoder(OrderPlaced)
    seen = []
    for currency in ("GBP", "CHF"):
        with pytest.raises(sg.ContractViolation) as caught:
            decode(payload(currency=currency))
        seen.append(caught.value.errors[0]["input"])
    assert seen == ["GBP", "CHF"]


def test_changing_one_violations_details_leaves_the_next_alone(
    decode: Callable[[bytes | None], OrderPlaced],
) -> None:
    """A hook that edits ``errors`` of one dead letter must not edit the next one's."""
    with pytest.raises(sg.ContractViolation) as first:
        decode(payload(currency="GBP"))
    first.value.errors[0]["loc"].append("changed")
    first.value.errors[0]["msg"] = "changed"
    with pytest.raises(sg.ContractViolation) as second:
        decode(payload(currency="GBP"))
    assert second.value.errors[0]["loc"] == ["currency"]
    assert second.value.errors[0]["msg"] != "changed"


def test_errors_json_is_the_details_without_values(
    decode: Callable[[bytes | None], OrderPlaced],
) -> None:
    """The ``sg-dlq-errors`` text: compact ``{loc, type, msg}`` JSON, the same for a
    repeated violation as for the first, and never an ``input`` even when opted in."""
    texts = []
    for _ in range(2):
        with pytest.raises(sg.ContractViolation) as caught:
            decode(payload(currency="GBP"))
        texts.append(caught.value.errors_json())
    assert texts[0] == texts[1]
    details = [{"loc": e["loc"], "type": e["type"], "msg": e["msg"]} for e in caught.value.errors]
    assert texts[0] == json.dumps(details, separators=(",", ":")).encode()
    opted_in = JsonCodec(include_input=True).decoder(OrderPlaced)
    with pytest.raises(sg.ContractViolation) as with_input:
        opted_in(payload(currency="GBP"))
    assert with_input.value.errors[0]["input"] == "GBP"
    assert b"GBP" not in with_input.value.errors_json()


def test_errors_json_is_capped_for_a_record_with_thousands_of_errors(
    decode: Callable[[bytes | None], OrderPlaced],
) -> None:
    """A 21 KB record with 14,000 errors (and an undeclared field named with 50,000
    characters) gets an sg-dlq-errors header of at most MAX_ERRORS_JSON bytes: the
    first errors, long texts cut, and how many more there were."""
    from streamguard.errors import MAX_ERRORS_JSON

    value = payload(lines=[{}] * 7000, **{"x" * 50_000: 1})
    with pytest.raises(sg.ContractViolation) as caught:
        decode(value)
    assert len(caught.value.errors) == 14_001  # the details in memory stay complete
    text = caught.value.errors_json()
    assert len(text) <= MAX_ERRORS_JSON
    listed = json.loads(text)
    assert listed[0] == {"loc": ["lines", 0, "sku"], "type": "missing", "msg": "Field required"}
    assert listed[-1]["type"] == "errors_left_out"
    assert listed[-1]["msg"].startswith(f"{14_001 - (len(listed) - 1)} more error(s)")
    with pytest.raises(sg.ContractViolation) as named:
        decode(payload(**{"y" * 50_000: 1}))
    (only,) = json.loads(named.value.errors_json())
    assert only["loc"] == ["y" * 200 + "..."]
    small = payload(currency="GBP")
    with pytest.raises(sg.ContractViolation) as few:
        decode(small)
    assert json.loads(few.value.errors_json()) == [
        {"loc": e["loc"], "type": e["type"], "msg": e["msg"]} for e in few.value.errors
    ]


def test_errors_json_follows_details_changed_before_it_is_read(
    decode: Callable[[bytes | None], OrderPlaced],
) -> None:
    with pytest.raises(sg.ContractViolation) as caught:
        decode(payload(currency="GBP"))
    caught.value.errors = [{"loc": ["elsewhere"], "type": "custom", "msg": "replaced"}]
    assert json.loads(caught.value.errors_json()) == [
        {"loc": ["elsewhere"], "type": "custom", "msg": "replaced"}
    ]
    with pytest.raises(sg.ContractViolation) as next_one:
        decode(payload(currency="GBP"))
    assert json.loads(next_one.value.errors_json())[0]["loc"] == ["currency"]


class CamelOrder(sg.Contract):
    """Fields with aliases: the wire form and the stored schema use the aliases."""

    __subject__ = "tests.CamelOrder"
    __version__ = 1
    order_id: str = Field(alias="orderId")
    total_cents: int = Field(alias="totalCents")


class CamelOrderAvro(CamelOrder):
    __subject__ = "tests.CamelOrderAvro"
    __wire_format__ = "avro"


@pytest.mark.parametrize("contract", [CamelOrder, CamelOrderAvro])
def test_a_contract_with_aliases_is_written_as_its_schema_says(contract: Any) -> None:
    """Encoded with the aliases (what the schema and every consumer expect), so a valid
    event round-trips and the producer sends it; it was written with the field names and
    refused by the producer's own check."""
    event = contract.model_validate({"orderId": "o-1", "totalCents": 5})
    codec = sg.JsonCodec() if contract is CamelOrder else sg.AvroCodec()
    assert codec.decode(codec.encode(event), contract) == event
    if contract is CamelOrder:
        assert json.loads(codec.encode(event)) == {"orderId": "o-1", "totalCents": 5}
    producer = sg.GuardedProducer("127.0.0.1:1", kafka_config={"message.timeout.ms": 100})
    producer.send("tests.camel", event)  # validated before it is queued: no broker needed


@pytest.mark.parametrize(
    "value",
    [
        b"[" * 100 + b'"' + b'\\"' * 500_000,  # an unclosed string of escaped quotes
        b'{"a": "' + b"[" * 1000 + b'\\\\", "b": ' + b"[" * 70 + b"1" + b"]" * 70 + b"}",
    ],
    ids=["unclosed-escapes", "brackets-in-a-string"],
)
def test_the_depth_check_is_linear_and_skips_strings(value: bytes) -> None:
    """max_depth counts brackets outside strings only, in one pass: a 1 MiB unclosed string
    of escaped quotes took the old scan (a regex) over an hour of CPU."""
    codec = JsonCodec(max_depth=64)
    started = time.process_time()
    with pytest.raises(sg.DecodeError, match="deeper than the limit of 64"):
        codec.decode(value, Bag)
    assert time.process_time() - started < 5  # a complexity bound, not a speed target


def test_a_json_field_holding_malformed_text_is_a_contract_violation() -> None:
    """The message parsed: a ``Json[...]`` field whose text is not JSON breaks the contract
    at that field (it was a decode_error with no location, hiding the record's other
    violations)."""
    data = json.dumps({"blob": "{not json"}).encode()
    with pytest.raises(sg.ContractViolation) as info:
        JsonCodec().decode(data, Prefs)
    assert [e["loc"] for e in info.value.errors] == [["blob"]]


@pytest.mark.parametrize("wire", ["json", "avro"])
def test_a_serialization_only_alias_is_written_by_field_name(wire: str) -> None:
    """Consumers read a contract's validation names; an alias for serialization only is
    not one, so such a contract is written by field name, as before aliases were written."""
    from pydantic import AliasGenerator
    from pydantic.alias_generators import to_camel

    class Outbound(sg.Contract):
        model_config = ConfigDict(alias_generator=AliasGenerator(serialization_alias=to_camel))
        __subject__ = f"tests.Outbound{wire}"
        __version__ = 1
        __wire_format__ = wire  # type: ignore[assignment]
        order_id: str

    codec = JsonCodec() if wire == "json" else sg.AvroCodec()
    event = Outbound(order_id="1")
    assert codec.decode(codec.encode(event), Outbound) == event


@pytest.mark.parametrize("shape", ["excluded-field", "model-serializer"])
def test_contracts_a_dump_writes_in_its_own_way_still_encode(shape: str) -> None:
    """A field left out of every dump (``exclude=True``) or a custom serializer is no
    reason to refuse a contract: it is written as pydantic dumps it."""
    from pydantic import model_serializer

    class Excluded(sg.Contract):
        __subject__ = "tests.Excluded"
        __version__ = 1
        order_id: str
        internal: str = Field(default="x", exclude=True)

    class Custom(sg.Contract):
        __subject__ = "tests.Custom"
        __version__ = 1
        order_id: str

        @model_serializer
        def dump(self) -> dict[str, Any]:
            return {"order_id": self.order_id}

    contract: Any = Excluded if shape == "excluded-field" else Custom
    event = contract(order_id="1")
    assert JsonCodec().decode(JsonCodec().encode(event), contract).order_id == "1"

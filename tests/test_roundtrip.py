"""What a guarded producer accepts reaches a consumer of its contract as an equal event.

A fixed-seed fuzz: random contracts (every field type, union, container and model option
the codecs meet) and random valid events, sent by a real ``GuardedProducer`` in each wire
format and decoded by a consumer's own codec. Each event is either refused at ``send()``
with a streamguard error, or reads back equal (a NaN equal to a NaN).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from enum import IntEnum, StrEnum
from typing import Annotated, Any, Literal, Union
from uuid import UUID
from zoneinfo import ZoneInfo

import pytest
from confluent_kafka import KafkaError, Message
from pydantic import BaseModel, ConfigDict, Field, computed_field

import streamguard as sg
from streamguard.codecs import AvroCodec, JsonCodec
from streamguard.registry import RegistryServer
from streamguard.registry.codec import RegistryCodec

SEED = 20240611
CONTRACTS_PER_FORMAT = 40
EVENTS_PER_CONTRACT = 6


class Color(StrEnum):
    RED = "red"
    GREEN = "green"


class Level(IntEnum):
    LOW = 1
    HIGH = 2


class Cat(BaseModel):
    kind: Literal["cat"] = "cat"
    lives: int = 9


class Dog(BaseModel):
    kind: Literal["dog"] = "dog"
    good: bool = True


class Left(BaseModel):
    n: int = 1


class Right(BaseModel):
    """Shaped like ``Left``: a ``Left | Right`` union reads a ``Right`` back as a ``Left``."""

    n: int = 1


AMSTERDAM = ZoneInfo("Europe/Amsterdam")  # +00:19:32 before 1937: an offset with seconds
ODD = timezone(timedelta(hours=5, minutes=45))

# Edge values per leaf type; every one is valid for its type.
LEAVES: dict[str, tuple[Any, list[Any]]] = {
    "str": (str, ["", "a\x00b", "\U0001f600\U00010348", "é" * 3000, "  padded  "]),
    "int": (int, [0, 2**63 - 1, -(2**63), 2**63, 2**70, -(2**64)]),
    "float": (float, [-0.0, 5e-324, 1e308, 0.1, math.nan, math.inf, -math.inf]),
    "Decimal": (Decimal, [Decimal("-0"), Decimal("1." + "1" * 40), Decimal("1E+30")]),
    "bool": (bool, [True, False]),
    "datetime": (
        datetime,
        [
            datetime(2020, 1, 1, 0, 0, 0, 1),
            datetime(2020, 5, 6, 7, 8, 9, 999999, tzinfo=ODD),
            datetime(1900, 1, 1, tzinfo=AMSTERDAM),
            datetime(9999, 12, 31, 23, 59, 59, 999999),
        ],
    ),
    "date": (date, [date(1, 1, 1), date(9999, 12, 31)]),
    "time": (time, [time(0, 0), time(23, 59, 59, 999999), time(1, 2, 3, tzinfo=ODD)]),
    "timedelta": (timedelta, [timedelta(0), timedelta(days=-1, microseconds=1)]),
    "UUID": (UUID, [UUID(int=0), UUID(int=2**128 - 1)]),
    "bytes": (bytes, [b"", b"abc", b"\xff\x00"]),
    "Color": (Color, [Color.RED, Color.GREEN]),
    "Level": (Level, [Level.LOW, Level.HIGH]),
    "Literal": (Literal["a", "b"], ["a", "b"]),
}
UNIONS: list[tuple[Any, list[Any]]] = [
    (int | str, [1, "1", "x"]),
    (float | int, [5, 5.5]),
    (bool | int, [True, 2]),
    (str | UUID, [UUID(int=7), "x"]),
    (Decimal | str, ["1.5", Decimal("2.5")]),
    (float | Decimal, [Decimal("0.1000000000000000000001"), 0.5]),
    (date | datetime, [datetime(2020, 1, 1), date(2020, 1, 2)]),
    (Cat | Dog, [Cat(), Dog(good=False)]),
    (Annotated[Cat | Dog, Field(discriminator="kind")], [Cat(lives=3), Dog()]),
    (Left | Right, [Left(n=2), Right()]),
]


@dataclass
class Kind:
    """A field type and how to make a valid value of it."""

    annotation: Any
    make: Callable[[random.Random], Any]


def leaf(rng: random.Random) -> Kind:
    annotation, values = LEAVES[rng.choice(sorted(LEAVES))]
    return Kind(annotation, lambda r: r.choice(values))


def kind(rng: random.Random, depth: int, n: Iterator[int]) -> Kind:
    """A random field type, nested up to ``depth`` levels."""
    shape = rng.choice(["leaf"] * 5 + ["union"] * 2 + (["container"] * 3 if depth else []))
    if shape == "leaf":
        return leaf(rng)
    if shape == "union":
        annotation, values = rng.choice(UNIONS)
        return Kind(annotation, lambda r: r.choice(values))
    inner = kind(rng, depth - 1, n)
    form = rng.choice(["optional", "list", "set", "tuple", "map", "intmap", "model"])
    if form == "optional":
        return Kind(Union[inner.annotation, None], lambda r: r.choice([None, inner.make(r)]))  # noqa: UP007 (a Literal has no |)
    if form == "list":
        return Kind(
            list[inner.annotation], lambda r: [inner.make(r) for _ in range(r.randint(0, 3))]
        )
    if form == "set":  # of a hashable leaf, never NaN (a set of NaNs is its own puzzle)
        values = [1, 2, 3, -(2**63)] if rng.random() < 0.5 else ["a", "b", "\x00"]
        annotation = rng.choice([set, frozenset])[type(values[0])]
        return Kind(annotation, lambda r: set(r.sample(values, r.randint(0, 3))))
    if form == "tuple":
        return Kind(tuple[inner.annotation, ...], lambda r: (inner.make(r), inner.make(r)))
    if form == "map":
        return Kind(dict[str, inner.annotation], lambda r: {"k": inner.make(r), "": inner.make(r)})
    if form == "intmap":
        return Kind(
            dict[int, inner.annotation], lambda r: {-1: inner.make(r), 2**40: inner.make(r)}
        )
    nested = model(rng, depth - 1, n, BaseModel, {})
    return Kind(nested.annotation, nested.make)


def config(rng: random.Random) -> ConfigDict:
    options: ConfigDict = {}
    if rng.random() < 0.5:
        options["extra"] = rng.choice(["allow", "forbid", "ignore"])
    for flag in ("strict", "str_strip_whitespace", "use_enum_values", "populate_by_name"):
        if rng.random() < 0.25:
            options[flag] = True  # type: ignore[literal-required]
    if rng.random() < 0.3:
        options["ser_json_inf_nan"] = rng.choice(["null", "constants", "strings"])
    return options


def fields_set(self: BaseModel) -> int:
    """A computed field: written by every dump, declared by no input schema."""
    return len(self.model_fields_set)


def model(
    rng: random.Random, depth: int, n: Iterator[int], base: type[BaseModel], attrs: dict[str, Any]
) -> Kind:
    """A random model (a contract when ``base`` is one) with 1 to 4 fields."""
    number = next(n)
    fields = {f"f{i}": kind(rng, depth, n) for i in range(rng.randint(1, 4))}
    namespace: dict[str, Any] = {
        **attrs,
        "__module__": __name__,
        "model_config": config(rng),
        "__annotations__": {name: k.annotation for name, k in fields.items()},
    }
    for name, k in fields.items():
        roll = rng.random()
        if roll < 0.15:
            namespace[name] = Field(alias=f"{name}Alias")
        elif roll < 0.25:
            namespace[name] = Field(serialization_alias=f"{name}_out")
        elif roll < 0.35:
            default = k.make(rng)
            namespace[name] = Field(default_factory=lambda d=default: d)
    if rng.random() < 0.2:
        namespace["fields_set"] = computed_field(property(fields_set))
    cls = type(f"M{number}", (base,), namespace)

    def make(r: random.Random) -> Any:
        data = {}
        for name, k in fields.items():
            info = cls.model_fields[name]
            if r.random() < 0.2 and not info.is_required():
                continue
            data[info.alias or name] = k.make(r)
        if cls.model_config.get("extra") == "allow" and r.random() < 0.5:
            data["undeclared"] = r.choice([1, "x", UUID(int=5), [1.5]])
        return cls.model_validate(data)

    return Kind(cls, make)


def same(sent: Any, got: Any) -> bool:
    """``==``, but a NaN equals a NaN, and private attributes are not data."""
    if isinstance(sent, BaseModel):
        return (
            type(got) is type(sent)
            and all(same(sent.__dict__[f], got.__dict__[f]) for f in type(sent).model_fields)
            and same(sent.__pydantic_extra__, got.__pydantic_extra__)
        )
    if isinstance(sent, float) and isinstance(got, float) and math.isnan(sent):
        return math.isnan(got)
    if isinstance(sent, dict):
        return (
            type(got) is type(sent)
            and sent.keys() == got.keys()
            and all(same(v, got[k]) for k, v in sent.items())
        )
    if isinstance(sent, list | tuple):
        return (
            type(got) is type(sent)
            and len(got) == len(sent)
            and all(same(a, b) for a, b in zip(sent, got, strict=True))
        )
    return bool(sent == got)


@pytest.fixture(scope="module")
def registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RegistryServer(port=0, directory=tmp_path_factory.mktemp("roundtrip-registry"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.mark.parametrize("registry", [False, True], ids=["plain", "registry"])
@pytest.mark.parametrize("wire", ["json", "avro"])
def test_what_the_producer_accepts_a_consumer_reads_back_equal(
    bootstrap: str,
    topic_factory: Callable[..., str],
    registry_url: str,
    wire: str,
    registry: bool,
) -> None:
    """Every random event is refused at send() with a streamguard error, or decoded by a
    consumer of its contract into an equal event: never dead-lettered, never changed."""
    rng = random.Random(f"{SEED}-{wire}-{registry}")
    topic = topic_factory("roundtrip")
    options: dict[str, Any] = (
        {
            "schema_registry": registry_url,
            "subject_name_strategy": "RecordNameStrategy",
            "auto_register": True,
        }
        if registry
        else {}
    )
    producer = sg.GuardedProducer(bootstrap, **options)
    sent: list[tuple[Any, Callable[[bytes | None], Any]]] = []
    values: list[bytes] = []
    mismatches: list[str] = []
    n = iter(range(10**6))

    def delivered(err: KafkaError | None, msg: Message | None) -> None:
        assert err is None
        assert msg is not None
        values.append(msg.value() or b"")

    refused = 0
    for i in range(CONTRACTS_PER_FORMAT):
        attrs = {"__subject__": f"roundtrip.{wire}.C{i}", "__version__": 1, "__wire_format__": wire}
        try:
            contract = model(rng, 2, n, sg.Contract, attrs)
            codec: Any = (
                RegistryCodec({"url": registry_url}, wire_format=wire)
                if registry
                else (AvroCodec() if wire == "avro" else JsonCodec())
            )
            decode = codec.decoder(contract.annotation)  # a consumer's own codec
        except sg.ConfigurationError:  # a type the format cannot carry (Avro's tuples)
            continue
        for _ in range(EVENTS_PER_CONTRACT):
            try:
                event = contract.make(rng)
            except ValueError:  # a value the contract refuses (strict, say): not an event
                continue
            try:
                producer.send(topic, event, on_delivery=delivered)
            except (sg.ContractViolation, sg.DecodeError):
                refused += 1
                continue
            sent.append((event, decode))
    producer.flush(30)
    assert len(values) == len(sent)
    for (event, decode), value in zip(sent, values, strict=True):
        try:
            got = decode(value)
        except (sg.ContractViolation, sg.DecodeError) as exc:  # (a) dead-lettered for nothing
            mismatches.append(f"{type(event).__name__}: consumer refuses it: {exc}")
            continue
        if not same(event, got):  # (b) accepted, then changed on the way
            mismatches.append(f"{type(event).__name__}: {event!r:.200} -> {got!r:.200}")
    assert mismatches == []
    assert len(sent) > 50
    assert refused > 5

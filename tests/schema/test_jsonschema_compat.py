"""Evolutions of pydantic models and their verdicts in every mode, with property checks."""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Literal
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field

from streamguard.codecs import JsonCodec
from streamguard.contracts import normalise_schema
from streamguard.errors import ContractViolation
from streamguard.schema.changes import Change, diff_json_schemas
from streamguard.schema.jsonschema_compat import compare_json_schemas
from streamguard.schema.jsonschema_doc import Document
from streamguard.schema.modes import breaking


def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    return normalise_schema(model.model_json_schema(mode="validation"))  # type: ignore[no-any-return]


# -- the models --------------------------------------------------------------------------
class Base(BaseModel):
    id: str


class OptAdded(BaseModel):
    id: str
    note: str | None = None


class ReqAdded(BaseModel):
    id: str
    note: str


class TwoReq(BaseModel):
    id: str
    note: str


class Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    note: str | None = None


class ClosedSmall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str


class ClosedBase(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str


class AllowBase(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str


class AllowOpt(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    note: str | None = None


class IntF(BaseModel):
    x: int


class IntDefault(BaseModel):
    x: int = 0


class IntOptional(BaseModel):
    x: int | None = None


class IntNullable(BaseModel):
    x: int | None


class FloatF(BaseModel):
    x: float


class StrF(BaseModel):
    x: str


class StrS(BaseModel):
    s: str


class IntOrStr(BaseModel):
    x: int | str


class Cur2(BaseModel):
    currency: Literal["EUR", "USD"]


class Cur3(BaseModel):
    currency: Literal["EUR", "USD", "GBP"]


class Cur1(BaseModel):
    currency: Literal["EUR"]


class CurOther(BaseModel):
    currency: Literal["CHF", "JPY"]


class Color2(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Color3(enum.Enum):
    RED = "red"
    BLUE = "blue"
    GREEN = "green"


class Paint2(BaseModel):
    color: Color2


class Paint3(BaseModel):
    color: Color3


class ListInt(BaseModel):
    xs: list[int]


class ListFloat(BaseModel):
    xs: list[float]


class DictInt(BaseModel):
    m: dict[str, int]


class DictFloat(BaseModel):
    m: dict[str, float]


class Customer1(BaseModel):
    id: str


class Customer2(BaseModel):
    id: str
    tier: str


class Customer2Opt(BaseModel):
    id: str
    tier: str = "basic"


class Order1(BaseModel):
    customer: Customer1


class Order2(BaseModel):
    customer: Customer2


class Order2Opt(BaseModel):
    customer: Customer2Opt


class ClosedCustomer2(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    tier: str | None = None


class ClosedCustomer1(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str


class ClosedOrder2(BaseModel):
    customer: ClosedCustomer2


class ClosedOrder1(BaseModel):
    customer: ClosedCustomer1


class Lines1(BaseModel):
    lines: list[Customer1]


class Lines2(BaseModel):
    lines: list[Customer2]


class MaybeCustomer1(BaseModel):
    customer: Customer1 | None = None


class MaybeCustomer2(BaseModel):
    customer: Customer2Opt | None = None


class Len10(BaseModel):
    s: str = Field(max_length=10)


class Len5(BaseModel):
    s: str = Field(max_length=5)


class MinLen3(BaseModel):
    s: str = Field(min_length=3)


class Pattern(BaseModel):
    s: str = Field(pattern=r"^[a-z]+$")


class Ge0(BaseModel):
    n: int = Field(ge=0)


class Ge5(BaseModel):
    n: int = Field(ge=5)


class Gt0(BaseModel):
    n: int = Field(gt=0)


class Gt5(BaseModel):
    n: int = Field(gt=5)


class Lt100(BaseModel):
    n: int = Field(lt=100)


class PlainN(BaseModel):
    n: int


class Le100(BaseModel):
    n: int = Field(le=100)


class Le10(BaseModel):
    n: int = Field(le=10)


class Mult2(BaseModel):
    n: int = Field(multiple_of=2)


class Mult4(BaseModel):
    n: int = Field(multiple_of=4)


class IdUuid(BaseModel):
    id: UUID


class DecS(BaseModel):
    s: Decimal


class OptStrS(BaseModel):
    s: str | None = None


class OptDecS(BaseModel):
    s: Decimal | None = None


class DecX(BaseModel):
    x: Decimal


class Pair(BaseModel):
    t: tuple[int, str]


class Triple(BaseModel):
    t: tuple[int, str, bool]


class Described(BaseModel):
    """Another docstring."""

    id: str = Field(description="the identifier")


class Renamed(BaseModel):
    ident: str


class AnyAdded(BaseModel):
    id: str
    extra: Any


class AnyOptAdded(BaseModel):
    id: str
    extra: Any = None


class IntOrFloat(BaseModel):
    x: int | float


class IntFloatOrNone(BaseModel):
    x: int | float | None


class FloatOrNone(BaseModel):
    x: float | None


class PairOfInts(BaseModel):
    xs: tuple[int, int]


class DictOfInt(BaseModel):
    m: dict[str, int]


class ClosedM(BaseModel):
    model_config = ConfigDict(extra="forbid")
    a: int = 0


class ClosedMField(BaseModel):
    m: ClosedM


@dataclass(frozen=True)
class Case:
    name: str
    old: type[BaseModel]
    new: type[BaseModel]
    backward: bool  # new readers read old data
    forward: bool  # old readers read new data
    rule: str = ""  # a rule id the report must name, when the change breaks
    path: str = ""  # and the path it names

    @property
    def full(self) -> bool:
        return self.backward and self.forward


CASES = [
    Case("identical", Base, Base, True, True),
    Case("docs only", Base, Described, True, True),
    Case("optional field added", Base, OptAdded, True, True),
    Case(
        "required field added",
        Base,
        ReqAdded,
        False,
        True,
        "REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL",
        "note",
    ),
    Case("optional field removed (open)", OptAdded, Base, True, True),
    Case("required field removed (open)", TwoReq, Base, True, False),
    Case("optional field added (closed)", ClosedBase, Closed, True, False),
    Case(
        "field removed (closed)",
        Closed,
        ClosedSmall,
        False,
        True,
        "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL",
        "note",
    ),
    Case("open model closed (lenient)", Base, ClosedBase, True, True),
    Case("closed model opened", ClosedBase, Base, True, True),
    # extra='allow' keeps undeclared fields and writes them: lenient reads it strictly.
    Case(
        "allow model closed",
        AllowBase,
        ClosedBase,
        False,
        True,
        "ADDITIONAL_PROPERTIES_REMOVED",
        "{}",
    ),
    Case(
        "optional field added to allow model",
        AllowBase,
        AllowOpt,
        False,
        True,
        "OPTIONAL_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL",
        "note",
    ),
    Case("closed model allows extras", ClosedBase, AllowBase, True, False),
    # A dict's data carries keys it does not declare: closing it breaks under lenient too.
    Case(
        "dict -> closed model",
        DictOfInt,
        ClosedMField,
        False,
        True,
        "ADDITIONAL_PROPERTIES_REMOVED",
        "m{}",
    ),
    Case("allow -> ignore", AllowBase, Base, True, True),
    Case("required -> optional", IntF, IntOptional, True, False),
    Case("default added", IntF, IntDefault, True, False),
    Case("optional -> required", IntDefault, IntF, False, True, "REQUIRED_ATTRIBUTE_ADDED", "x"),
    Case("nullable added", IntF, IntNullable, True, False),
    Case("nullable removed", IntNullable, IntF, False, True, "SUM_TYPE_NARROWED", "x"),
    Case("int -> float", IntF, FloatF, True, False),
    Case("float -> int", FloatF, IntF, False, True, "TYPE_NARROWED", "x"),
    Case("int -> str", IntF, StrF, False, False, "TYPE_CHANGED", "x"),
    Case("union widened", IntF, IntOrStr, True, False),
    Case("union narrowed", IntOrStr, IntF, False, True, "SUM_TYPE_NARROWED", "x"),
    # Narrowed to branches that still take every old value: no old value is lost.
    Case("union narrowed to a wider branch", IntOrFloat, FloatF, True, True),
    Case("nullable union narrowed to a wider branch", IntFloatOrNone, FloatOrNone, True, True),
    Case("literal value added", Cur2, Cur3, True, False),
    Case("literal value removed", Cur2, Cur1, False, True, "ENUM_ARRAY_NARROWED", "currency"),
    Case("literal replaced", Cur2, CurOther, False, False, "ENUM_ARRAY_CHANGED", "currency"),
    Case("enum member added", Paint2, Paint3, True, False),
    Case("enum member removed", Paint3, Paint2, False, True, "ENUM_ARRAY_NARROWED", "color"),
    Case("list items widened", ListInt, ListFloat, True, False),
    Case("list items narrowed", ListFloat, ListInt, False, True, "TYPE_NARROWED", "xs[]"),
    Case("dict values widened", DictInt, DictFloat, True, False),
    Case("dict values narrowed", DictFloat, DictInt, False, True, "TYPE_NARROWED", "m{}"),
    Case(
        "nested required field added",
        Order1,
        Order2,
        False,
        True,
        "REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL",
        "customer.tier",
    ),
    Case("nested field with default added", Order1, Order2Opt, True, True),
    Case(
        "nested field removed from closed model",
        ClosedOrder2,
        ClosedOrder1,
        False,
        True,
        "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL",
        "customer.tier",
    ),
    Case(
        "list item model gains a required field",
        Lines1,
        Lines2,
        False,
        True,
        "REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL",
        "lines[].tier",
    ),
    Case(
        "optional nested model gains a defaulted field", MaybeCustomer1, MaybeCustomer2, True, True
    ),
    Case("max_length tightened", Len10, Len5, False, True, "MAX_LENGTH_DECREASED", "s"),
    Case("max_length loosened", Len5, Len10, True, False),
    Case("min_length added", StrS, MinLen3, False, True, "MIN_LENGTH_ADDED", "s"),
    Case("pattern added", StrS, Pattern, False, True, "PATTERN_ADDED", "s"),
    Case("pattern removed", Pattern, StrS, True, False),
    Case("ge added", PlainN, Ge0, False, True, "MINIMUM_ADDED", "n"),
    Case("ge loosened", Ge5, Ge0, True, False),
    Case("ge tightened", Ge0, Ge5, False, True, "MINIMUM_INCREASED", "n"),
    Case("le tightened", Le100, Le10, False, True, "MAXIMUM_DECREASED", "n"),
    # One bound spelled with the other keyword: judged by the numbers it admits.
    Case("gt -> ge at the same bound", Gt0, Ge0, True, False),
    Case("ge -> gt at the same bound", Ge0, Gt0, False, True, "EXCLUSIVE_MINIMUM_ADDED", "n"),
    Case("gt -> ge at a lower bound", Gt5, Ge0, True, False),
    Case("ge -> gt at a higher bound", Ge0, Gt5, False, True, "EXCLUSIVE_MINIMUM_ADDED", "n"),
    Case("lt -> le at the same bound", Lt100, Le100, True, False),
    Case("le -> lt at the same bound", Le100, Lt100, False, True, "EXCLUSIVE_MAXIMUM_ADDED", "n"),
    Case("multiple_of expanded", Mult2, Mult4, False, True, "MULTIPLE_OF_EXPANDED", "n"),
    Case("multiple_of reduced", Mult4, Mult2, True, False),
    Case("str -> UUID", Base, IdUuid, False, True, "FORMAT_ADDED", "id"),
    # Decimal's string branch takes numeric strings only: old "twelve" breaks a v2 reader.
    Case("str -> Decimal", StrS, DecS, False, False, "TYPE_CHANGED", "s"),
    Case(
        "optional str -> optional Decimal",
        OptStrS,
        OptDecS,
        False,
        False,
        "FORMAT_ADDED",
        "s<anyOf[0]>",
    ),
    Case("int -> Decimal", IntF, DecX, True, False),
    Case("tuple grows", Pair, Triple, False, False),
    Case("tuple -> list of its item type", PairOfInts, ListInt, True, False),
    Case("field renamed", Base, Renamed, False, False),
    # Taking any value, a required field is still missing from old data.
    Case(
        "required Any field added",
        Base,
        AnyAdded,
        False,
        True,
        "REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL",
        "extra",
    ),
    Case("optional Any field added", Base, AnyOptAdded, True, True),
]
MODES = ("BACKWARD", "FORWARD", "FULL", "NONE")


def _verdict(case: Case, mode: str) -> bool:
    return {
        "BACKWARD": case.backward,
        "FORWARD": case.forward,
        "FULL": case.full,
        "NONE": True,
    }[mode]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_verdict_in_every_mode(case: Case, mode: str) -> None:
    """Each evolution is compatible in exactly the modes its table row says."""
    changes = diff_json_schemas(schema_of(case.old), schema_of(case.new))
    assert (not breaking(changes, mode)) is _verdict(case, mode), changes
    assert (not breaking(changes, f"{mode}_TRANSITIVE" if mode != "NONE" else mode)) is _verdict(
        case, mode
    )


@pytest.mark.parametrize("case", [c for c in CASES if c.rule], ids=lambda c: c.name)
def test_breaking_change_names_rule_and_path(case: Case) -> None:
    """A breaking change reports its stable rule id at the field path a reader would use."""
    changes = diff_json_schemas(schema_of(case.old), schema_of(case.new))
    found = [(c.rule, c.field_path) for c in changes if c.breaking_in]
    assert (case.rule, case.path) in found
    change = next(c for c in changes if c.rule == case.rule and c.field_path == case.path)
    assert change.hint, "every breaking change carries a hint"
    assert "reject data written with" in change.message("v1", "v2")


def test_table_is_large_enough() -> None:
    """The table covers at least forty evolutions (the issue's floor)."""
    assert len(CASES) >= 40


def test_strict_policy_breaks_optional_field_added_to_open_model() -> None:
    """Under --policy strict, adding an optional field to an open model breaks BACKWARD."""
    lenient = diff_json_schemas(schema_of(Base), schema_of(OptAdded), "lenient")
    strict = diff_json_schemas(schema_of(Base), schema_of(OptAdded), "strict")
    assert not breaking(lenient, "BACKWARD")
    assert [c.rule for c in breaking(strict, "BACKWARD")] == [
        "OPTIONAL_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL"
    ]


@pytest.mark.parametrize("old", [{"type": "string"}, {"oneOf": [{"type": "string"}]}])
def test_a_hand_written_one_of_a_number_and_a_string_takes_any_string(old: Any) -> None:
    """Only pydantic's ``anyOf`` of a number and a string is a Decimal (numeric strings):
    read into a hand-written ``oneOf`` too, a string widened to a number or a string
    broke BACKWARD, where Confluent's diff (and the schema) says it does not."""
    one_of = {"oneOf": [{"type": "number"}, {"type": "string"}]}
    assert not breaking(diff_json_schemas(old, one_of, "strict"), "BACKWARD")
    any_of = {"anyOf": [{"type": "number"}, {"type": "string"}]}
    assert breaking(diff_json_schemas(old, any_of, "strict"), "BACKWARD")


@pytest.mark.parametrize("types", [["number", "string"], ["string", "number", "null"]])
def test_a_type_list_of_a_number_and_a_string_takes_any_string(types: list[str]) -> None:
    """``"type": [..., "number", "string"]`` is hand-written too (pydantic writes an
    ``anyOf``): read as a Decimal's numeric strings, a string widened to it broke BACKWARD
    (TYPE_CHANGED), where the schema and Confluent's diff say it does not."""
    changes = diff_json_schemas({"type": "string"}, {"type": types}, "strict")
    assert not breaking(changes, "BACKWARD")
    assert [c.rule for c in changes] == ["SUM_TYPE_EXTENDED"]


def test_allow_model_writes_what_a_closed_reader_rejects() -> None:
    """Closing an extra='allow' model breaks BACKWARD: its producers sent undeclared fields."""
    old = JsonCodec().encode(AllowBase.model_validate({"id": "a", "coupon": "X1"}))
    with pytest.raises(ContractViolation):
        JsonCodec().decode(old, ClosedBase)
    changes = diff_json_schemas(schema_of(AllowBase), schema_of(ClosedBase), "lenient")
    assert [c.rule for c in breaking(changes, "BACKWARD")] == ["ADDITIONAL_PROPERTIES_REMOVED"]
    forward = diff_json_schemas(schema_of(ClosedBase), schema_of(AllowBase), "lenient")
    assert [c.breaking_in for c in forward] == [{"FORWARD"}]
    assert "upgrade every consumer" in forward[0].hint


def test_refs_and_defs_are_not_changes() -> None:
    """Moving a subschema behind a $ref in $defs changes nothing."""
    inline = {"type": "object", "properties": {"a": {"type": "string", "maxLength": 3}}}
    by_ref = {
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/A"}},
        "$defs": {"A": {"type": "string", "maxLength": 3}},
    }
    assert diff_json_schemas(inline, by_ref) == []
    assert diff_json_schemas(by_ref, inline) == []


def test_recursive_models_terminate() -> None:
    """A self-referencing model compares without recursing forever."""

    class Node(BaseModel):
        value: int
        children: list[Node] = []

    assert diff_json_schemas(schema_of(Node), schema_of(Node)) == []


def test_pattern_properties_and_dependencies() -> None:
    """patternProperties decide removed properties; dependencies added break BACKWARD."""
    old = {"properties": {"I_1": {"type": "integer"}}, "additionalProperties": False}
    new = {"additionalProperties": False, "patternProperties": {"^I_": {"type": "number"}}}
    assert not breaking(diff_json_schemas(old, new), "BACKWARD")
    dep_old: dict[str, Any] = {"properties": {"a": {}, "b": {}}}
    dep_new = {**dep_old, "dependencies": {"a": ["b"]}}
    rules = [c.rule for c in breaking(diff_json_schemas(dep_old, dep_new), "BACKWARD")]
    assert rules == ["DEPENDENCY_ARRAY_ADDED"]


@pytest.mark.parametrize("extra", [{}, {"additionalProperties": False}], ids=["open", "closed"])
def test_a_required_name_the_reader_does_not_declare_breaks(extra: dict[str, Any]) -> None:
    """A hand-written reader requiring a name outside its properties rejects old data
    without it ({"a": 1}); only declared names were looked at, so it passed."""
    old = {"type": "object", "properties": {"a": {"type": "integer"}}, **extra}
    new = {**old, "required": ["b"]}
    changes = diff_json_schemas(old, new)
    assert [(c.field_path, c.rule) for c in breaking(changes, "BACKWARD")] == [
        ("b", "REQUIRED_ATTRIBUTE_ADDED")
    ]
    assert not breaking(changes, "FORWARD")


class Address1(BaseModel):
    street: str


class Address2(BaseModel):
    street: str
    city: str
    zip: str


class Shipment1(BaseModel):
    billing: Address1
    shipping: Address1 | None = None


class Shipment2(BaseModel):
    billing: Address2
    shipping: Address2 | None = None


class Shipment3(BaseModel):
    billing: Address2
    shipping: Address2 | int | None = None


@pytest.mark.parametrize("new", [Shipment2, Shipment3], ids=["same union", "union widened"])
def test_optional_nested_model_names_its_own_breaks(new: type[BaseModel]) -> None:
    """A model in `X | None` that breaks twice is compared with the new model, not `null`."""
    changes = diff_json_schemas(schema_of(Shipment1), schema_of(new))
    found = sorted((c.field_path, c.rule) for c in breaking(changes, "BACKWARD"))
    added = "REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL"
    assert found == [
        ("billing.city", added),
        ("billing.zip", added),
        ("shipping", "COMBINED_TYPE_SUBSCHEMAS_CHANGED"),
        ("shipping<anyOf[0]>.city", added),
        ("shipping<anyOf[0]>.zip", added),
    ]


class Shipment4(BaseModel):
    billing: Address2 | None = None


def test_a_model_made_optional_names_its_own_breaks() -> None:
    """A model that becomes `X | None` and breaks is compared with the new model: the
    report said TYPE_CHANGED from object to object | null, naming no field."""
    changes = diff_json_schemas(schema_of(Shipment1), schema_of(Shipment4))
    found = sorted((c.field_path, c.rule) for c in breaking(changes, "BACKWARD"))
    added = "REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL"
    assert found == [("billing.city", added), ("billing.zip", added)]


@pytest.mark.parametrize("key", ["anyOf", "oneOf"])
def test_unmatched_branch_is_not_paired_with_a_matched_one(key: str) -> None:
    """The reason given for an unmatched branch comes from a branch nothing else matched."""

    def model(**props: str) -> dict[str, Any]:
        fields = {name: {"type": kind} for name, kind in props.items()}
        return {"type": "object", "properties": fields, "required": sorted(props)}

    a, b = model(y="string"), model(x="integer")
    old = {key: [a, b]}
    new = {key: [a, model(x="integer", p="string", q="string")]}
    found = sorted((c.path, c.rule) for c in breaking(diff_json_schemas(old, new), "BACKWARD"))
    added = "REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL"
    assert found == [
        ((), "COMBINED_TYPE_SUBSCHEMAS_CHANGED"),
        ((key, "1", "properties", "p"), added),
        ((key, "1", "properties", "q"), added),
    ]


_INT, _NUM, _STR = {"type": "integer"}, {"type": "number"}, {"type": "string"}


@pytest.mark.parametrize(
    ("old", "new", "rule", "path"),
    [
        # 1 matches both new branches, so the new oneOf rejects it.
        (_INT, {"oneOf": [_INT, _NUM]}, "ONE_OF_BRANCHES_OVERLAP", ("oneOf", "1")),
        (
            {"oneOf": [_INT, _STR]},
            {"oneOf": [_INT, _STR, _NUM]},
            "ONE_OF_BRANCHES_OVERLAP",
            ("oneOf", "2"),
        ),
        (
            {"oneOf": [_INT, _STR]},
            {"oneOf": [_INT, _INT, _STR]},
            "ONE_OF_BRANCHES_OVERLAP",
            ("oneOf", "1"),
        ),
        # A branch widened onto another: an old 12-character string matches both.
        (
            {"oneOf": [{**_STR, "maxLength": 3}, {**_STR, "minLength": 10}]},
            {"oneOf": [{**_STR, "maxLength": 20}, {**_STR, "minLength": 10}]},
            "ONE_OF_BRANCHES_MAY_OVERLAP",
            ("oneOf", "1"),
        ),
        # A tag widened onto another branch's: {"k": "b"} matches both.
        (
            {
                "oneOf": [
                    {"type": "object", "properties": {"k": {"const": t}}, "required": ["k"]}
                    for t in "ab"
                ]
            },
            {
                "oneOf": [
                    {
                        "type": "object",
                        "properties": {"k": {"enum": ["a", "b"]}},
                        "required": ["k"],
                    },
                    {"type": "object", "properties": {"k": {"const": "b"}}, "required": ["k"]},
                ]
            },
            "ONE_OF_BRANCHES_OVERLAP",
            ("oneOf", "1"),
        ),
    ],
)
def test_a_one_of_whose_branches_come_to_overlap_breaks(
    old: Any, new: Any, rule: str, path: tuple[str, ...]
) -> None:
    """A oneOf takes a value exactly one branch takes: a change that lets an old value
    match two branches broke its readers, yet passed as SUM_TYPE_EXTENDED (or a safe
    widening), every old value still matching some branch."""
    changes = diff_json_schemas(old, new)
    assert [(c.path, c.rule) for c in breaking(changes, "BACKWARD")] == [(path, rule)]
    assert next(c for c in changes if c.rule == rule).hint.startswith("keep a oneOf's branches")


def test_a_recursive_one_of_terminates() -> None:
    """The oneOf check compares branches with comparers of its own: they share the
    guard against recursion (a recursive oneOf ran into RecursionError)."""

    def tree(extra: dict[str, Any]) -> dict[str, Any]:
        kids = {"type": "array", "items": {"$ref": "#/$defs/N"}}
        node = {"type": "object", "properties": {"kids": kids, **extra}}
        return {"$defs": {"N": {"oneOf": [node, _INT]}}, "$ref": "#/$defs/N"}

    changes = diff_json_schemas(tree({}), tree({"x": _STR}))
    assert [(c.field_path, c.rule) for c in changes] == [
        ("<oneOf[0]>.x", "OPTIONAL_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL")
    ]


def _expressions(change: str, *, tagged: bool) -> dict[str, Any]:
    """A recursive union of three models (an expression tree) and a change to it."""
    value: Any = str if change == "v: str" else int

    class Num(BaseModel):
        kind: Literal["num"] = "num"
        v: value

    class Add(BaseModel):
        kind: Literal["add"] = "add"
        left: Expr  # noqa: F821 (resolved by model_rebuild below)
        right: Expr  # noqa: F821
        if change == "required z in Add":
            z: int

    class Mul(BaseModel):
        kind: Literal["mul"] = "mul"
        left: Expr  # noqa: F821
        right: Expr  # noqa: F821
        if change == "optional note in Mul":
            note: str | None = None

    union: Any = Num | Add | Mul
    expr: Any = Annotated[union, Field(discriminator="kind")] if tagged else union
    for model in (Num, Add, Mul):
        model.model_rebuild(_types_namespace={"Expr": expr})

    class Calc(BaseModel):
        e: expr

    return schema_of(Calc)


def _within(seconds: float, compare: Any) -> Any:
    """compare()'s result, failing (not hanging) when it takes longer than ``seconds``."""
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(compare()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert result, f"the comparison did not finish within {seconds} s"
    return result[0]


@pytest.mark.parametrize("tagged", [False, True], ids=["anyOf", "discriminated"])
@pytest.mark.parametrize(
    ("change", "rules", "at", "directions"),
    [
        ("", set(), "", set()),
        (
            "optional note in Mul",
            {"OPTIONAL_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL"},
            "e<{u}[2]>.note",
            set(),
        ),
        (
            "required z in Add",
            {"COMBINED_TYPE_SUBSCHEMAS_CHANGED", "REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL"},
            "e<{u}[1]>.z",
            {"BACKWARD"},
        ),
        (
            "v: str",
            {"COMBINED_TYPE_SUBSCHEMAS_CHANGED", "TYPE_CHANGED"},
            "e<{u}[0]>.v",
            {"BACKWARD", "FORWARD"},
        ),
    ],
)
def test_a_recursive_union_of_several_models_is_judged_in_time(
    tagged: bool, change: str, rules: set[str], at: str, directions: set[str]
) -> None:
    """Every branch of a recursive union is compared with every branch of the other: a
    pair met again under another path was compared again, so `schema check` on a union
    of three recursive models ran for minutes (a CI job hung)."""
    old, new = _expressions("", tagged=tagged), _expressions(change, tagged=tagged)
    changes: list[Change] = _within(5, lambda: diff_json_schemas(old, new))
    assert {c.rule for c in changes} == rules
    assert {d for c in changes for d in c.breaking_in} == directions
    if change:
        # Found where the union is first met (and not again where the recursion leads).
        where = at.format(u="oneOf" if tagged else "anyOf")
        assert where in [c.field_path for c in changes]
        leaf = where.split(">", 1)[1]
        assert all(
            c.field_path.endswith(leaf)
            for c in changes
            if c.rule != "COMBINED_TYPE_SUBSCHEMAS_CHANGED"
        )
    if directions:
        assert ("e", "COMBINED_TYPE_SUBSCHEMAS_CHANGED") in [
            (c.field_path, c.rule) for c in changes
        ]


class _TagA(BaseModel):
    kind: Literal["a"] = "a"  # not required: told apart by B's required tag
    x: int


class _TagA2(_TagA):
    note: str | None = None


class _TagB(BaseModel):
    kind: Literal["b"]
    y: int


class _TagC(BaseModel):
    kind: Literal["c"]
    y: int


class _Tagged1(BaseModel):
    v: Annotated[_TagA | _TagB, Field(discriminator="kind")]


class _Tagged2(BaseModel):
    v: Annotated[_TagA2 | _TagB | _TagC, Field(discriminator="kind")]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ({"oneOf": [_INT, _STR]}, {"oneOf": [_INT, _STR, {"type": "boolean"}]}),
        (_STR, {"oneOf": [_NUM, _STR]}),
        (
            {"oneOf": [{**_INT, "maximum": 0}, {**_INT, "minimum": 10}]},
            {"oneOf": [{**_INT, "maximum": 5}, {**_INT, "minimum": 10}]},
        ),
        (schema_of(_Tagged1), schema_of(_Tagged2)),
    ],
)
def test_a_one_of_whose_branches_stay_apart_passes(old: Any, new: Any) -> None:
    """Branches of different types, ranges, or discriminator tags never share a value."""
    assert not breaking(diff_json_schemas(old, new), "BACKWARD")


@pytest.mark.parametrize(
    ("old", "new", "rule", "types"),
    [
        ({"type": "integer"}, {"type": "string"}, "TYPE_CHANGED", ("integer", "string")),
        ({"type": "integer"}, {"type": "number"}, "TYPE_EXTENDED", ("integer", "number")),
        ({"type": "number"}, {"type": "integer"}, "TYPE_NARROWED", ("number", "integer")),
        ({}, {"type": "string"}, "TYPE_NARROWED", ("any", "string")),
        (
            {"type": ["string", "null"]},
            {"type": "string"},
            "SUM_TYPE_NARROWED",
            ("string | null", "string"),
        ),
        (
            {"anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "null"}]},
            {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            "SUM_TYPE_NARROWED",
            ("integer | string | null", "integer | null"),
        ),
        (
            {"anyOf": [{"type": "integer"}, {"type": "string"}]},
            # Branches that overlap (1 is both): disjoint ones make it an extension.
            {"oneOf": [{"type": "integer"}, {"type": "number"}]},
            "COMBINED_TYPE_CHANGED",
            ("anyOf", "oneOf"),
        ),
    ],
)
def test_a_type_change_names_the_old_and_the_new_type(
    old: dict[str, Any], new: dict[str, Any], rule: str, types: tuple[str, str]
) -> None:
    """A change of type says from which type to which: a report of ``TYPE_CHANGED at
    amount`` alone sent its reader to both schemas to learn what changed."""
    wrap = lambda t: {"type": "object", "properties": {"amount": t}}  # noqa: E731
    (finding,) = (f for f in compare_json_schemas(wrap(old), wrap(new)) if f.rule == rule)
    assert (finding.path, finding.old_type, finding.new_type) == (("properties", "amount"), *types)
    # A diff's forward pass reads new -> old: its change is named old -> new all the same.
    (change,) = (c for c in diff_json_schemas(wrap(old), wrap(new)) if c.rule == rule)
    assert (change.old_type, change.new_type) == types
    assert change.types == " -> ".join(types)
    assert f"{rule.lower().replace('_', ' ')} from {types[0]} to {types[1]} at amount:" in (
        change.message("v1", "v2")
    )


def test_a_type_name_never_shows_a_value() -> None:
    """An enum, a const or a default is data: the type names say that there is one only."""
    old = {"type": "object", "properties": {"tier": {"type": "integer", "default": 7}}}
    secret = {"enum": ["gold-secret"], "default": "gold-secret"}
    new = {"type": "object", "properties": {"tier": {"anyOf": [secret, {"const": "x-secret"}]}}}
    for f in compare_json_schemas(old, new) + compare_json_schemas(new, old):
        assert "secret" not in f"{f.old_type} {f.new_type}"
    (f,) = (f for f in compare_json_schemas(old, new) if f.rule == "TYPE_CHANGED")
    assert (f.old_type, f.new_type) == ("integer", "enum")


def test_rules_without_a_type_change_name_no_types() -> None:
    """Only changes of type carry types; a narrowed limit or an added field stays as it was."""
    old = {"type": "object", "properties": {"a": {"type": "string", "maxLength": 5}}}
    new = {
        "type": "object",
        "properties": {"a": {"type": "string", "maxLength": 3}, "b": {"type": "string"}},
        "required": ["b"],
    }
    found = compare_json_schemas(old, new)
    assert {f.rule for f in found} == {
        "MAX_LENGTH_DECREASED",
        "REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL",
    }
    assert all(f.old_type is None and f.new_type is None for f in found)


@pytest.mark.parametrize(
    ("old", "new", "backward", "forward"),
    [
        ({"exclusiveMinimum": 0}, {"minimum": 0}, True, False),
        ({"exclusiveMaximum": 1.5}, {"maximum": 1.5}, True, False),
        ({"minimum": 0, "exclusiveMinimum": True}, {"minimum": 0}, True, False),  # draft-04
        ({"minimum": 0, "exclusiveMinimum": 5}, {"minimum": 3}, True, False),
        ({"minimum": 0, "exclusiveMinimum": 0}, {"exclusiveMinimum": 0}, True, True),
        ({"exclusiveMinimum": 0}, {"minimum": 0.5}, False, True),
        ({"exclusiveMaximum": 0}, {"maximum": -1, "exclusiveMaximum": 2}, False, True),
    ],
)
def test_a_bound_is_judged_by_the_numbers_it_admits(
    old: dict[str, Any], new: dict[str, Any], backward: bool, forward: bool
) -> None:
    """minimum and exclusiveMinimum (maximum, exclusiveMaximum) are one bound together:
    > 0 -> >= 0 admits every old number (MINIMUM_ADDED broke BACKWARD), not every new one."""
    changes = diff_json_schemas({"type": "number", **old}, {"type": "number", **new})
    assert (not breaking(changes, "BACKWARD")) is backward, changes
    assert (not breaking(changes, "FORWARD")) is forward, changes
    assert (not breaking(changes, "FULL")) is (backward and forward), changes


def test_change_pointer_escapes_names() -> None:
    """The JSON pointer of a change escapes '/' and '~' in property names."""
    change = Change(("properties", "a/b~c"), "TYPE_CHANGED")
    assert change.pointer == "#/properties/a~1b~0c"
    assert change.field_path == "a/b~c"


# -- property-based: compatible means old values validate under the new model ----------------
def values(schema: Any, doc: Document, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values valid for a JSON Schema (the subset pydantic emits for the models above)."""
    s = doc.resolve(schema)
    if s is True or s == {}:
        return st.none()
    if "const" in s:
        return st.just(s["const"])
    if "enum" in s:
        return st.sampled_from(s["enum"])
    for key in ("anyOf", "oneOf"):
        if key in s:
            return st.one_of([values(b, doc, depth + 1) for b in s[key]])
    kind = s.get("type")
    if kind == "string":
        if s.get("format") == "uuid":
            return st.uuids().map(str)
        if "pattern" in s:
            return st.from_regex(s["pattern"], fullmatch=True)
        return st.text(min_size=s.get("minLength", 0), max_size=s.get("maxLength", 12))
    if kind == "integer":
        lo = max(s.get("minimum", -1000), s.get("exclusiveMinimum", -1001) + 1)
        hi = min(s.get("maximum", 1000), s.get("exclusiveMaximum", 1001) - 1)
        ints = st.integers(lo, hi)
        step = s.get("multipleOf")
        return ints.map(lambda i: i - i % step) if step else ints
    if kind == "number":
        return st.floats(-1e6, 1e6, allow_nan=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        if "prefixItems" in s:
            return st.tuples(*(values(p, doc, depth + 1) for p in s["prefixItems"])).map(list)
        return st.lists(values(s.get("items", {}), doc, depth + 1), max_size=0 if depth > 3 else 3)
    if kind == "object" and "properties" not in s:
        return st.dictionaries(st.text(max_size=5), values(s.get("additionalProperties", {}), doc))
    props = s.get("properties", {})
    required = set(s.get("required", []))
    fixed = {k: values(v, doc, depth + 1) for k, v in props.items() if k in required}
    optional = {k: values(v, doc, depth + 1) for k, v in props.items() if k not in required}
    return st.fixed_dictionaries(fixed, optional=optional)


BACKWARD_OK = [c for c in CASES if c.backward and c.old is not c.new]


@pytest.mark.parametrize("case", BACKWARD_OK, ids=lambda c: c.name)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_compatible_backward_means_old_values_validate(case: Case, data: st.DataObject) -> None:
    """BACKWARD-compatible: every value valid for the old model validates under the new."""
    old_schema = schema_of(case.old)
    value = data.draw(values(old_schema, Document(old_schema)))
    case.old.model_validate(value)  # the generator only makes valid old values
    case.new.model_validate(value)


FORWARD_OK = [c for c in CASES if c.forward and c.old is not c.new]


@pytest.mark.parametrize("case", FORWARD_OK, ids=lambda c: c.name)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_compatible_forward_means_new_values_validate(case: Case, data: st.DataObject) -> None:
    """FORWARD-compatible: every value valid for the new model validates under the old."""
    new_schema = schema_of(case.new)
    value = data.draw(values(new_schema, Document(new_schema)))
    case.new.model_validate(value)
    case.old.model_validate(value)


@pytest.mark.parametrize(
    "added",
    [
        {"if": {"properties": {"a": {"const": 1}}}, "then": {"required": ["b"]}},
        {"unevaluatedProperties": False},
        {"$dynamicRef": "#node"},
    ],
    ids=["if-then", "unevaluatedProperties", "dynamicRef"],
)
def test_an_assertion_the_rules_do_not_read_is_refused_when_the_reader_gains_it(
    added: dict[str, Any],
) -> None:
    """An if/then, unevaluatedProperties or dynamic ref the reader gains may reject old
    data ({"a": 1} without "b"): it was ignored and passed. Losing one accepts more."""
    old = {"type": "object", "properties": {"a": {"type": "integer"}}}
    new = {**old, **added}
    changes = diff_json_schemas(old, new)
    found = {(c.path[-1], c.rule) for c in breaking(changes, "BACKWARD")}
    assert found == {(key, "UNCOMPARED_KEYWORD_ADDED") for key in added}
    assert not breaking(changes, "FORWARD")
    changed = {**old, **{key: {"not": value} for key, value in added.items()}}
    assert {c.rule for c in breaking(diff_json_schemas(new, changed), "BACKWARD")} == {
        "UNCOMPARED_KEYWORD_CHANGED"
    }


def test_field_path_keeps_fields_named_like_keywords() -> None:
    """A field called `format`, `pattern` or `enum` is a name, not the constraint at the
    end of a path: the report names it (it said `/properties`, and `meta/properties`)."""

    class Old(BaseModel):
        format: int
        maximum: int

    class New(BaseModel):
        format: str
        maximum: float

    found = {(c.field_path, c.rule) for c in diff_json_schemas(schema_of(Old), schema_of(New))}
    assert found == {("format", "TYPE_CHANGED"), ("maximum", "TYPE_EXTENDED")}
    assert Change(("properties", "meta", "properties", "enum"), "TYPE_CHANGED").field_path == (
        "meta.enum"
    )
    # A trailing constraint keyword is still left to the rule id.
    assert Change(("properties", "code", "maxLength"), "MAX_LENGTH_DECREASED").field_path == (
        "code"
    )


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ({"const": 1}, {"const": 1.0}),
        ({"enum": [1, 2]}, {"enum": [2.0, 1.0]}),
        ({"enum": [[1], {"a": 2}]}, {"enum": [[1.0], {"a": 2.0}]}),
        ({"const": 0}, {"const": -0.0}),
        ({"enum": [-0.0, 1]}, {"enum": [0.0, 1]}),
        ({"enum": [[0], {"a": -0.0}]}, {"enum": [[-0.0], {"a": 0}]}),
    ],
)
def test_const_and_enum_values_compare_as_json(old: dict[str, Any], new: dict[str, Any]) -> None:
    """JSON Schema equality makes 1 and 1.0 one value: `const: 1` -> `const: 1.0` was
    ENUM_ARRAY_CHANGED, breaking both ways, though both accept the same values. JSON
    has one zero: `const: 0` -> `const: -0.0` was ENUM_ARRAY_CHANGED too."""
    assert diff_json_schemas(old, new) == []
    narrowed = diff_json_schemas({"enum": [1, 2]}, {"enum": [1.0]})
    assert [(c.rule, c.breaking_in) for c in narrowed] == [("ENUM_ARRAY_NARROWED", {"BACKWARD"})]
    assert [c.rule for c in diff_json_schemas({"const": 1}, {"const": True})] == [
        "ENUM_ARRAY_CHANGED"
    ]


def test_const_values_of_more_than_28_digits_stay_apart() -> None:
    """Numbers were compared rounded to Decimal's 28 digits: `const: 10**30` ->
    `const: 10**30 + 1` was no change, though the two accept different values."""
    big = 10**30
    assert [c.rule for c in diff_json_schemas({"const": big}, {"const": big + 1})] == [
        "ENUM_ARRAY_CHANGED"
    ]


def test_a_uuid_version_widened_to_any_uuid() -> None:
    """pydantic writes `format: uuid4` for UUID4 and `uuid` for UUID, which takes every
    version: UUID4 -> UUID was FORMAT_CHANGED, refused in BACKWARD too."""
    from pydantic import UUID1, UUID4

    class V4(BaseModel):
        id: UUID4

    class Any_(BaseModel):
        id: UUID

    class V1(BaseModel):
        id: UUID1

    old = V4(id=UUID("6f1c3c1e-8c2a-4f3b-9d6e-2f0a8b7c5d4e")).model_dump_json()
    assert Any_.model_validate_json(old).id.version == 4  # the widening is real
    widened = diff_json_schemas(schema_of(V4), schema_of(Any_))
    assert [(c.field_path, c.rule, c.breaking_in) for c in widened] == [
        ("id", "FORMAT_EXTENDED", {"FORWARD"})
    ]
    assert not breaking(widened, "BACKWARD")
    narrowed = diff_json_schemas(schema_of(Any_), schema_of(V4))
    assert [(c.rule, c.breaking_in) for c in narrowed] == [("FORMAT_NARROWED", {"BACKWARD"})]
    other = diff_json_schemas(schema_of(V1), schema_of(V4))
    assert [(c.rule, c.breaking_in) for c in other] == [("FORMAT_CHANGED", {"BACKWARD", "FORWARD"})]


class _Plain(BaseModel):
    v: _TagB | _TagC


class _Discriminated(BaseModel):
    v: Annotated[_TagB | _TagC, Field(discriminator="kind")]


class _DefaultA(BaseModel):
    kind: Literal["a"] = "a"  # not required: {} is valid for both branches
    x: int = 0


class _DefaultB(BaseModel):
    kind: Literal["b"] = "b"
    y: int = 0


class _PlainDefaults(BaseModel):
    v: _DefaultA | _DefaultB


class _DiscriminatedDefaults(BaseModel):
    v: Annotated[_DefaultA | _DefaultB, Field(discriminator="kind")]


_STR_INT = [{"type": "string"}, {"type": "integer"}]
_NUM_INT = [{"type": "number"}, {"type": "integer"}]


@pytest.mark.parametrize(
    ("old", "new", "rules"),
    [
        # A plain union made discriminated: anyOf -> oneOf, branches told apart by tag.
        (schema_of(_Plain), schema_of(_Discriminated), set()),
        (schema_of(_Discriminated), schema_of(_Plain), set()),
        ({"anyOf": _STR_INT}, {"oneOf": _STR_INT}, set()),
        # Tags with defaults: {"v": {}} was valid and matches both branches (pydantic's
        # discriminated union refuses it for want of its tag).
        (schema_of(_PlainDefaults), schema_of(_DiscriminatedDefaults), {"COMBINED_TYPE_CHANGED"}),
        # 1 matches both branches: a oneOf reader refuses it.
        (
            {"anyOf": _NUM_INT},
            {"oneOf": _NUM_INT},
            {"COMBINED_TYPE_CHANGED", "ONE_OF_BRANCHES_OVERLAP"},
        ),
    ],
)
def test_any_of_to_one_of_with_disjoint_branches(
    old: dict[str, Any], new: dict[str, Any], rules: set[str]
) -> None:
    """anyOf -> oneOf was COMBINED_TYPE_CHANGED, refused in BACKWARD, even when no value
    can match two branches, so that the oneOf takes every value the anyOf did."""
    assert {c.rule for c in breaking(diff_json_schemas(old, new), "BACKWARD")} == rules
    assert not breaking(diff_json_schemas(old, new), "FORWARD")


class _Tree1(BaseModel):
    v: int
    children: list[_Tree1] = []
    left: _Tree1 | None = None


class _Tree2(BaseModel):
    v: str
    z: int
    children: list[_Tree2] = []
    left: _Tree2 | None = None


@pytest.mark.parametrize("tagged", [False, True], ids=["anyOf", "discriminated"])
def test_a_change_in_a_recursive_schema_is_reported_once(tagged: bool) -> None:
    """Each change of a recursive model was listed again at every ref to it and every
    copy of its union (`children[].v`, `left<anyOf[0]>.v`, `children[].left<anyOf[0]>.v`;
    32 lines for two changes in an expression tree): now once, where it is met first."""
    changes = diff_json_schemas(schema_of(_Tree1), schema_of(_Tree2))
    assert sorted((c.field_path, c.rule, c.breaking_in) for c in changes) == [
        ("v", "TYPE_CHANGED", {"BACKWARD", "FORWARD"}),
        ("z", "REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL", {"BACKWARD"}),
    ]
    u = "oneOf" if tagged else "anyOf"
    old, new = _expressions("", tagged=tagged), _expressions("v: str", tagged=tagged)
    assert sorted((c.field_path, c.rule) for c in diff_json_schemas(old, new)) == [
        ("e", "COMBINED_TYPE_SUBSCHEMAS_CHANGED"),
        (f"e<{u}[0]>.v", "TYPE_CHANGED"),
    ]
    # Two fields holding one model still name both: each is a place in the data.
    twice = {
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/T"}, "b": {"$ref": "#/$defs/T"}},
    }
    old_t = {**twice, "$defs": {"T": {"type": "object", "properties": {"x": _INT}}}}
    new_t = {**twice, "$defs": {"T": {"type": "object", "properties": {"x": _STR}}}}
    assert sorted(c.field_path for c in diff_json_schemas(old_t, new_t)) == ["a.x", "b.x"]


class _WithNote(BaseModel):
    order_id: int
    note: str


class _WithoutNote(BaseModel):
    order_id: int


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")
    order_id: int


class _ClosedWithZip(BaseModel):
    model_config = ConfigDict(extra="forbid")
    order_id: int
    zip: str | None = None


@pytest.mark.parametrize(
    ("old", "new"), [(_WithNote, _WithoutNote), (_Closed, _ClosedWithZip)], ids=["removed", "added"]
)
def test_a_change_that_breaks_one_way_is_not_also_listed_as_harmless(
    old: type[BaseModel], new: type[BaseModel]
) -> None:
    # Each pass names the same removal or addition its own way; the safe name from one
    # side said "readers in both directions are unaffected" beside the breaking one.
    changes = diff_json_schemas(schema_of(old), schema_of(new))
    assert changes
    assert all(c.breaking_in for c in changes), [(c.rule, c.breaking_in) for c in changes]

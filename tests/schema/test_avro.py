"""Avro contracts: the derived .avsc, and Avro schema resolution rules."""

from __future__ import annotations

import io
import threading
from decimal import Decimal
from typing import Annotated, Any, Literal

import fastavro
import pytest
from pydantic import BaseModel, Field

import streamguard as sg
from streamguard.schema.avro import compare_avro_schemas, contract_avro_schema
from streamguard.schema.changes import merge_directions
from streamguard.schema.modes import breaking


class Line(BaseModel):
    sku: str
    quantity: int


class Shipment(sg.Contract):
    __subject__ = "shipping.Shipment"
    __version__ = 1
    __wire_format__ = "avro"
    id: str
    weight: float
    express: bool
    carrier: Literal["dhl", "ups"]
    note: str | None = None
    lines: list[Line]
    tags: dict[str, int]


def record(*fields: dict[str, Any], name: str = "R", **extra: Any) -> dict[str, Any]:
    return {"type": "record", "name": name, "fields": list(fields), **extra}


def verdict(old: Any, new: Any, mode: str) -> bool:
    changes = merge_directions(compare_avro_schemas(old, new), compare_avro_schemas(new, old))
    return not breaking(changes, mode)


def test_derived_schema_is_valid_avro_in_field_order() -> None:
    """The derived .avsc parses with fastavro and keeps the model's field order."""
    schema = contract_avro_schema(Shipment)
    fastavro.parse_schema(schema)
    assert [f["name"] for f in schema["fields"]] == [
        "id",
        "weight",
        "express",
        "carrier",
        "note",
        "lines",
        "tags",
    ]
    types = {f["name"]: f["type"] for f in schema["fields"]}
    assert types["weight"] == "double"
    assert types["carrier"]["symbols"] == ["dhl", "ups"]
    assert types["note"] == ["null", "string"]
    assert types["lines"]["items"]["type"] == "record"
    assert types["tags"] == {"type": "map", "values": "long"}
    assert next(f for f in schema["fields"] if f["name"] == "note")["default"] is None


def test_derived_schema_round_trips_a_value() -> None:
    """A contract value in JSON mode encodes and decodes with the derived schema."""
    value = Shipment(
        id="s1",
        weight=1.5,
        express=True,
        carrier="dhl",
        lines=[Line(sku="a", quantity=2)],
        tags={"x": 1},
    ).model_dump(mode="json")
    parsed = fastavro.parse_schema(contract_avro_schema(Shipment))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, value)
    buf.seek(0)
    assert fastavro.schemaless_reader(buf, parsed) == value


ID = {"name": "id", "type": "string"}
CASES = [
    (
        "field added with default",
        record(ID),
        record(ID, {"name": "n", "type": "int", "default": 0}),
        True,
        True,
    ),
    (
        "field added without default",
        record(ID),
        record(ID, {"name": "n", "type": "int"}),
        False,
        True,
    ),
    (
        "field removed without default",
        record(ID, {"name": "n", "type": "int"}),
        record(ID),
        True,
        False,
    ),
    (
        "int promoted to long",
        record({"name": "n", "type": "int"}),
        record({"name": "n", "type": "long"}),
        True,
        False,
    ),
    (
        "string to int",
        record({"name": "n", "type": "string"}),
        record({"name": "n", "type": "int"}),
        False,
        False,
    ),
    (
        "union branch added",
        record({"name": "n", "type": ["null", "int"]}),
        record({"name": "n", "type": ["null", "int", "string"]}),
        True,
        False,
    ),
    (
        "nullable added",
        record({"name": "n", "type": "int"}),
        record({"name": "n", "type": ["null", "int"]}),
        True,
        False,
    ),
    (
        "enum symbol added",
        record({"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A"]}}),
        record({"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B"]}}),
        True,
        False,
    ),
    (
        "enum symbol removed, reader default",
        record({"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B"]}}),
        record(
            {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A"], "default": "A"}}
        ),
        True,
        True,
    ),
    (
        "renamed with alias",
        record({"name": "n", "type": "int"}),
        record({"name": "m", "type": "int", "aliases": ["n"]}),
        True,
        False,
    ),
    ("record renamed", record(ID, name="A"), record(ID, name="B"), False, False),
    (
        "record renamed with alias",
        record(ID, name="A"),
        record(ID, name="B", aliases=["A"]),
        True,
        False,
    ),
    (
        "array items promoted",
        record({"name": "xs", "type": {"type": "array", "items": "int"}}),
        record({"name": "xs", "type": {"type": "array", "items": "double"}}),
        True,
        False,
    ),
]


@pytest.mark.parametrize(
    ("name", "old", "new", "backward", "forward"), CASES, ids=[c[0] for c in CASES]
)
def test_avro_resolution(name: str, old: Any, new: Any, backward: bool, forward: bool) -> None:
    """Each Avro evolution is compatible in the directions Avro's resolution rules allow."""
    assert verdict(old, new, "BACKWARD") is backward
    assert verdict(old, new, "FORWARD") is forward
    assert verdict(old, new, "FULL") is (backward and forward)


def test_missing_field_reports_path_and_rule() -> None:
    """A reader field without default missing from the writer is named at its field path."""
    old = record(ID)
    new = record(ID, {"name": "n", "type": "int"})
    changes = merge_directions(compare_avro_schemas(old, new), compare_avro_schemas(new, old))
    [change] = breaking(changes, "BACKWARD")
    assert (change.rule, change.field_path) == ("FIELD_ADDED_WITHOUT_DEFAULT", "n")
    assert "default" in change.hint


TIER = {"type": "enum", "name": "shop.Tier", "symbols": ["GOLD_SECRET"], "default": "GOLD_SECRET"}


@pytest.mark.parametrize(
    ("old", "new", "where", "rule", "types"),
    [
        ("int", "string", (), "TYPE_CHANGED", ("int", "string")),
        ("int", "long", (), "TYPE_EXTENDED", ("int", "long")),
        ("double", "float", (), "TYPE_NARROWED", ("double", "float")),
        (
            ["null", "string"],
            "string",
            ("branches", "0"),
            "SUM_TYPE_NARROWED",
            ("null | string", "string"),
        ),
        ("string", ["null", "string"], (), "SUM_TYPE_EXTENDED", ("string", "null | string")),
        ("int", ["null", "string"], (), "TYPE_CHANGED", ("int", "null | string")),
        (
            {"type": "array", "items": "int"},
            {"type": "map", "values": "int"},
            (),
            "TYPE_CHANGED",
            ("array<int>", "map<int>"),
        ),
        (TIER, "string", (), "TYPE_CHANGED", ("Tier", "string")),
    ],
)
def test_a_type_change_names_the_old_and_the_new_type(
    old: Any, new: Any, where: tuple[str, ...], rule: str, types: tuple[str, str]
) -> None:
    """An Avro change of type says from which type to which (a union as ``null | string``,
    a named type by its name): ``TYPE_CHANGED at amount`` alone sent the reader to both
    schemas. An enum is named, never its symbols or default."""
    field = lambda t: record({"name": "amount", "type": t})  # noqa: E731
    found = compare_avro_schemas(field(old), field(new))
    (finding,) = (f for f in found if f.rule == rule)
    assert finding.path == ("fields", "amount", *where)
    assert (finding.old_type, finding.new_type) == types
    for f in found + compare_avro_schemas(field(new), field(old)):
        assert "SECRET" not in f"{f.old_type} {f.new_type}"
    backward, forward = found, compare_avro_schemas(field(new), field(old))
    changes = [c for c in merge_directions(backward, forward) if c.rule == rule]
    assert {(c.old_type, c.new_type) for c in changes} == {types}


def test_avro_rules_without_a_type_change_name_no_types() -> None:
    """Only changes of type carry types: an added field or a narrowed enum stays as it was."""
    narrowed = {**TIER, "symbols": ["OTHER"], "default": "OTHER"}
    old = record({"name": "tier", "type": TIER})
    new = record({"name": "tier", "type": narrowed}, {"name": "n", "type": "int"})
    found = compare_avro_schemas(old, new)
    assert {f.rule for f in found} == {
        "ENUM_SYMBOL_REMOVED_WITH_DEFAULT",
        "FIELD_ADDED_WITHOUT_DEFAULT",
    }
    assert all(f.old_type is None and f.new_type is None for f in found)


def test_an_enum_may_become_nullable() -> None:
    """An enum keeps its name when its field becomes nullable, inline ``Literal`` or
    ``Enum`` class: Avro resolves enums by name, and the inline one, once named after its
    place in the union (``Order_currency_0``), made that widening a ``TYPE_CHANGED``."""
    from enum import StrEnum

    class Currency(StrEnum):
        EUR = "EUR"
        USD = "USD"

    def derived(annotation: Any, *, nullable: bool) -> Any:
        kind = annotation | None if nullable else annotation
        model = type(
            "Order",
            (sg.Contract,),
            {
                "__subject__": "shop.Order",
                "__version__": 1,
                "__wire_format__": "avro",
                "__annotations__": {"currency": kind},
                **({"currency": None} if nullable else {}),
            },
        )
        return contract_avro_schema(model)

    for annotation, name in ((Currency, "Currency"), (Literal["EUR", "USD"], "Order_currency")):
        before, after = derived(annotation, nullable=False), derived(annotation, nullable=True)
        assert before["fields"][0]["type"]["name"] == name
        assert after["fields"][0]["type"] == ["null", before["fields"][0]["type"]]
        assert verdict(before, after, "BACKWARD")
        assert not verdict(before, after, "FORWARD")  # an old reader cannot read a null
        writer, reader = fastavro.parse_schema(before), fastavro.parse_schema(after)
        out = io.BytesIO()
        fastavro.schemaless_writer(out, writer, {"currency": "EUR"})
        out.seek(0)
        assert fastavro.schemaless_reader(out, writer, reader) == {"currency": "EUR"}


class Tag(BaseModel):
    label: str = "none"


class Defaults(sg.Contract):
    __subject__ = "shop.Defaults"
    __version__ = 2
    __wire_format__ = "avro"
    id: str
    limit: int | None = 5
    rate: Decimal = Decimal("1.50")
    tier: Literal["gold", "silver"] | None = "gold"
    tag: Tag | None = Tag()
    note: str | None = None


def test_a_union_field_default_is_a_value_of_its_first_branch() -> None:
    """Avro reads a union's default as a value of its first branch. ``int | None = 5``
    was ``["null", "long"]`` with default 5 and a Decimal ``["double", "string"]`` with
    ``"1.50"``: invalid Avro, which registries refuse and the reference implementation
    cannot resolve (``InvalidDefaultException`` reading a record without the field).
    The branch holding the default now comes first, and a v1 record reads as the defaults."""
    schema = contract_avro_schema(Defaults)
    types = {f["name"]: f["type"] for f in schema["fields"]}
    assert types["limit"] == ["long", "null"]
    assert types["rate"] == ["string", "double"]
    assert [t if isinstance(t, str) else t["type"] for t in types["tier"]] == ["enum", "null"]
    assert [t if isinstance(t, str) else t["type"] for t in types["tag"]] == ["record", "null"]
    assert types["note"] == ["null", "string"]
    fastavro.parse_schema(schema)

    class DefaultsV1(sg.Contract):
        __subject__ = "shop.Defaults"
        __version__ = 1
        __wire_format__ = "avro"
        id: str

    data = sg.AvroCodec().encode(DefaultsV1(id="a"))
    reader = sg.AvroCodec(writer_schemas=[contract_avro_schema(DefaultsV1)])
    assert reader.decode(data, Defaults) == Defaults(id="a")
    event = Defaults(id="b", limit=None, rate=Decimal("-0.001"), tier=None, tag=None, note="n")
    assert sg.AvroCodec().decode(sg.AvroCodec().encode(event), Defaults) == event


class Described(sg.Contract):
    __subject__ = "shop.Described"
    __version__ = 1
    __wire_format__ = "avro"
    price: Annotated[Decimal, Field(description="unit price")] | None = None
    code: Annotated[int | str, Field(description="a code")] | None = None


def test_a_union_in_a_union_branch_is_flattened() -> None:
    """A description on one branch keeps pydantic from flattening ``Decimal | None``:
    the field was ``["null", ["double", "string"]]``, a union in a union, which the Avro
    specification forbids, registries other than the embedded one refuse, and no reader
    but fastavro parses. It derives as the plain union, as without the description."""
    types = {f["name"]: f["type"] for f in contract_avro_schema(Described)["fields"]}
    assert types == {"price": ["null", "double", "string"], "code": ["null", "long", "string"]}
    event = Described(price=Decimal("12.50"), code="x")
    assert sg.AvroCodec().decode(sg.AvroCodec().encode(event), Described) == event


def test_named_types_of_one_short_name_in_two_namespaces_are_both_compared() -> None:
    """A record nested in another of the same short name (``billing.Address`` holding a
    ``legacy.Address``) is compared too. The recursion guard keyed types by their short
    names, took the inner one for a recursive reference to the outer, and skipped it: a
    required field added there passed BACKWARD, and fastavro refused every old record."""

    def schema(*legacy: dict[str, Any]) -> dict[str, Any]:
        inner = record({"name": "zip", "type": "string"}, *legacy, name="Address")
        inner["namespace"] = "com.acme.legacy"
        outer = record({"name": "street", "type": "string"}, {"name": "previous", "type": inner})
        outer.update(name="Address", namespace="com.acme.billing")
        return record({"name": "billing", "type": outer}, name="Order")

    old, new = schema(), schema({"name": "country", "type": "string"})
    assert not verdict(old, new, "BACKWARD")
    out = io.BytesIO()
    writer, reader = fastavro.parse_schema(old), fastavro.parse_schema(new)
    address = {"street": "s", "previous": {"zip": "z"}}
    fastavro.schemaless_writer(out, writer, {"billing": address})
    out.seek(0)
    with pytest.raises(fastavro.read.SchemaResolutionError):
        fastavro.schemaless_reader(out, writer, reader)


def test_a_short_reference_names_the_type_of_its_enclosing_namespace() -> None:
    """A reference without a dot is resolved in the namespace of the type that holds it
    (else the null namespace), as Avro parsers do: ``Kind`` inside ``b`` is ``b.Kind``,
    not the first type of that short name found anywhere in the schema."""
    top = {"type": "enum", "name": "Kind", "symbols": ["A"]}
    own = {"type": "enum", "name": "Kind", "namespace": "b", "symbols": ["A", "B"]}
    holder = record({"name": "own", "type": own}, {"name": "again", "type": "Kind"})
    holder.update(name="Holder", namespace="b")
    old = record({"name": "top", "type": top}, {"name": "h", "type": holder}, name="Root")
    narrowed = {**own, "symbols": ["A"]}
    holder = record({"name": "again", "type": narrowed}, name="Holder", namespace="b")
    new = record({"name": "top", "type": top}, {"name": "h", "type": holder}, name="Root")
    assert not verdict(old, new, "BACKWARD")
    out = io.BytesIO()
    writer, reader = fastavro.parse_schema(old), fastavro.parse_schema(new)
    fastavro.schemaless_writer(out, writer, {"top": "A", "h": {"own": "A", "again": "B"}})
    out.seek(0)
    with pytest.raises(fastavro.read.SchemaResolutionError):
        fastavro.schemaless_reader(out, writer, reader)


def _expressions(change: str = "") -> dict[str, Any]:
    """A record holding a recursive union of five records (an expression tree)."""
    kinds = ["Num", "Add", "Sub", "Mul", "Div"]
    value = "string" if change == "v: string" else "int"
    records: list[Any] = [
        {"type": "record", "name": "Num", "fields": [{"name": "v", "type": value}]}
    ]
    for name in kinds[1:]:
        fields = [{"name": "left", "type": kinds}, {"name": "right", "type": kinds}]
        if name == "Add" and change == "required z in Add":
            fields.append({"name": "z", "type": "int"})
        records.append({"type": "record", "name": name, "fields": fields})
    return {"type": "record", "name": "Calc", "fields": [{"name": "e", "type": records}]}


@pytest.mark.parametrize(
    ("change", "narrowed", "directions"),
    [
        ("", [], set()),
        ("required z in Add", ["1", "2", "3", "4"], {"BACKWARD"}),
        ("v: string", ["0", "1", "2", "3", "4"], {"BACKWARD", "FORWARD"}),
    ],
)
def test_a_recursive_union_of_several_records_is_judged_in_time(
    change: str, narrowed: list[str], directions: set[str]
) -> None:
    """Each branch of a union is tried with each branch of the other, and the guard
    against recursion cut only a pair recurring on the current path: a union of five
    recursive records ran for minutes. Every branch holding the changed record breaks."""
    old, new = _expressions(), _expressions(change)
    result: list[Any] = []

    def compare() -> None:
        result.append(
            merge_directions(compare_avro_schemas(old, new), compare_avro_schemas(new, old))
        )

    worker = threading.Thread(target=compare, daemon=True)
    worker.start()
    worker.join(5)
    assert result, "the comparison did not finish within 5 s"
    changes = result[0]
    assert [(c.path, c.rule) for c in breaking(changes, "BACKWARD")] == [
        (("fields", "e", "branches", i), "SUM_TYPE_NARROWED") for i in narrowed
    ]
    assert {d for c in changes for d in c.breaking_in} == directions


def test_a_rename_is_listed_beside_a_type_change_of_the_same_field() -> None:
    """A field renamed with an alias and narrowed is two changes at one path: dropping
    safe changes where a change breaks left the rename out of ``schema diff``, which
    then read as a field removed."""
    old = record({"name": "a", "type": "long"})
    new = record({"name": "b", "type": "int", "aliases": ["a"]})
    changes = merge_directions(compare_avro_schemas(old, new), compare_avro_schemas(new, old))
    rules = {(c.field_path, c.rule): sorted(c.breaking_in) for c in changes}
    assert rules[("b", "FIELD_RENAMED_WITH_ALIAS")] == []
    assert rules[("b", "TYPE_NARROWED")] == ["BACKWARD"]

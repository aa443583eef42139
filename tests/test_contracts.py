"""Contracts name their subject and version, fail early when misdeclared, and fingerprint stably."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

import streamguard as sg
from streamguard.contracts import strip_documentation
from streamguard.errors import ConfigurationError


class Address(BaseModel):
    """A plain pydantic model nested inside a contract."""

    street: str
    city: str


class CustomerRegistered(sg.Contract):
    __subject__ = "customers.CustomerRegistered"
    __version__ = 3

    customer_id: int
    address: Address


def make_order_contract(*, with_docs: bool = False, extra_field: bool = False) -> type[sg.Contract]:
    """Build a fresh ``Order`` contract class, optionally reworded or with one more field."""
    namespace: dict[str, Any] = {
        "__subject__": "orders.Order",
        "__version__": 1,
        "__annotations__": {"order_id": int, "amount": float},
    }
    if with_docs:
        namespace["__doc__"] = "An order, as the shop writes it."
        namespace["amount"] = Field(description="Total in the order's currency.", title="Total")
    if extra_field:
        namespace["__annotations__"]["note"] = str
    return type("Order", (sg.Contract,), namespace)


def test_subject_and_version_are_read_back() -> None:
    """A contract's subject and version are the class attributes it declared."""
    assert CustomerRegistered.__subject__ == "customers.CustomerRegistered"
    assert CustomerRegistered.__version__ == 3


def test_missing_subject_fails_at_class_creation() -> None:
    """A concrete contract without __subject__ is refused when the class is created, with a hint."""
    with pytest.raises(ConfigurationError, match=r"no __subject__.*__abstract__ = True"):

        class NoSubject(sg.Contract):
            __version__ = 1
            x: int


@pytest.mark.parametrize("version", [0, -1, "2", True, 1.0, None])
def test_bad_version_fails_at_class_creation(version: object) -> None:
    """__version__ must be a positive int (not a bool or str); anything else fails with a hint."""
    with pytest.raises(ConfigurationError, match=r"positive int.*__version__ = 1"):
        type(
            "BadVersion",
            (sg.Contract,),
            {"__subject__": "x.BadVersion", "__version__": version, "__annotations__": {}},
        )


def test_blank_subject_is_refused() -> None:
    """A whitespace-only subject counts as missing."""
    with pytest.raises(ConfigurationError, match="no __subject__"):
        type("Blank", (sg.Contract,), {"__subject__": "  ", "__version__": 1})


def test_unknown_format_is_refused() -> None:
    """A __wire_format__ other than json or avro fails at class creation."""
    with pytest.raises(ConfigurationError, match="use 'json' or 'avro'"):
        type(
            "Xml",
            (sg.Contract,),
            {"__subject__": "x.Xml", "__version__": 1, "__wire_format__": "xml"},
        )


def test_contract_instances_format_like_any_model() -> None:
    """f-strings, format() and str.format() work on a contract instance."""

    class Greeting(sg.Contract):
        __subject__ = "tests.Greeting"
        __version__ = 1
        text: str

    event = Greeting(text="hi")
    assert f"{event}" == str(event) == "text='hi'"
    assert format(event) == "{}".format(event) == str(event)  # noqa: UP032  # the call under test
    assert f"{event!r}" == "Greeting(text='hi')"


def test_dunder_format_is_refused_with_the_new_name() -> None:
    """A contract that sets __format__ (the old spelling) is refused, naming __wire_format__."""
    with pytest.raises(ConfigurationError, match="__wire_format__ = 'avro'"):
        type(
            "Old", (sg.Contract,), {"__subject__": "x.Old", "__version__": 1, "__format__": "avro"}
        )


def test_abstract_base_needs_no_subject() -> None:
    """A base marked __abstract__ = True is allowed without metadata; its subclasses are checked."""

    class Audited(sg.Contract):
        __abstract__ = True
        actor: str

    class Deleted(Audited):
        __subject__ = "audit.Deleted"
        __version__ = 1

    assert Deleted(actor="ops").actor == "ops"
    assert Deleted.__abstract__ is False
    assert Audited not in sg.registered_contracts()
    with pytest.raises(ConfigurationError, match="no __subject__"):

        class Untitled(Audited):
            __version__ = 1


def test_nested_plain_models_validate() -> None:
    """A contract may nest plain pydantic models, which validate as part of it."""
    event = CustomerRegistered.model_validate(
        {"customer_id": 7, "address": {"street": "Main St 1", "city": "Graz"}}
    )
    assert event.address == Address(street="Main St 1", city="Graz")
    assert "Address" in CustomerRegistered.json_schema()["$defs"]


def test_json_parsing_caches_only_keys_unless_a_contract_says_otherwise() -> None:
    """Contracts cache object keys, not values, when parsing JSON; a contract's own
    model_config keeps that, and may set another cache."""

    class Strict(sg.Contract):
        __subject__ = "x.Strict"
        __version__ = 1
        model_config = ConfigDict(strict=True, extra="forbid")
        name: str

    class Repetitive(sg.Contract):
        __subject__ = "x.Repetitive"
        __version__ = 1
        model_config = ConfigDict(cache_strings="all")
        status: str

    # A cached string is one object, handed to every parse that reads it again.
    first, second = (Strict.model_validate_json(b'{"name":"customer-7"}') for _ in range(2))
    assert first.name == second.name == "customer-7"
    assert first.name is not second.name
    first, second = (Repetitive.model_validate_json(b'{"status":"paid"}') for _ in range(2))
    assert first.status is second.status
    assert Strict.model_config == {"cache_strings": "keys", "strict": True, "extra": "forbid"}
    # The schema, and so the fingerprint, does not see it.
    assert "cache" not in str(Strict.json_schema())


def test_fingerprint_is_stable_for_the_same_definition() -> None:
    """Defining the same contract twice gives the same fingerprint."""
    first, second = make_order_contract(), make_order_contract()
    assert first is not second
    assert first.fingerprint() == second.fingerprint()
    assert len(first.fingerprint()) == 64


def test_fingerprint_changes_with_the_field_set() -> None:
    """Adding a field changes the fingerprint."""
    assert (
        make_order_contract().fingerprint() != make_order_contract(extra_field=True).fingerprint()
    )


def test_editing_the_returned_schema_leaves_the_contract_alone() -> None:
    """json_schema() returned the cached document the fingerprint is computed from: a
    caller's edit (an $id to publish it, a constraint) changed the fingerprint its
    producer stamps, and every consumer saw the records as unknown_fingerprint drift."""
    contract = make_order_contract()
    fingerprint, schema = contract.fingerprint(), contract.json_schema()
    edited = contract.json_schema()
    edited["$id"] = "https://example.com/order.json"
    edited["properties"]["amount"]["minimum"] = 0
    assert contract.fingerprint() == fingerprint
    assert contract.json_schema() == schema


def test_fingerprint_ignores_documentation() -> None:
    """A docstring, description or title change does not change the fingerprint."""
    plain, documented = make_order_contract(), make_order_contract(with_docs=True)
    assert "description" in documented.json_schema()
    assert plain.json_schema() != documented.json_schema()
    assert plain.fingerprint() == documented.fingerprint()


def test_field_named_title_is_not_stripped() -> None:
    """A field called ``title`` is data, so it stays in the fingerprinted schema."""

    class Book(sg.Contract):
        __subject__ = "books.Book"
        __version__ = 1
        title: str

    class Pamphlet(sg.Contract):
        __subject__ = "books.Pamphlet"
        __version__ = 1
        title: int

    stripped = strip_documentation(Book.json_schema())
    assert "title" not in stripped
    assert stripped["properties"] == {"title": {"type": "string"}}
    assert stripped["required"] == ["title"]
    assert Book.fingerprint() != Pamphlet.fingerprint()


def test_strip_documentation_keeps_literal_values() -> None:
    """Values under const, enum and default are kept verbatim, even if they look like keywords."""
    schema = {"enum": ["title", "description"], "default": {"title": "x"}, "title": "T"}
    assert strip_documentation(schema) == {
        "enum": ["title", "description"],
        "default": {"title": "x"},
    }


def test_json_schema_keys_are_sorted() -> None:
    """The stored schema is normalised: keys sorted at every level."""
    schema = CustomerRegistered.json_schema()
    assert list(schema) == sorted(schema)
    assert list(schema["properties"]) == sorted(schema["properties"])


def test_registered_contracts_filters_by_module() -> None:
    """registered_contracts(modules) lists the concrete contracts of those modules, by subject."""

    class Zeta(sg.Contract):
        __module__ = "sgtests.registry_probe"
        __subject__ = "z.Zeta"
        __version__ = 1

    class Alpha(sg.Contract):
        __module__ = "sgtests.registry_probe"
        __subject__ = "a.Alpha"
        __version__ = 2

    class Base(sg.Contract):
        __module__ = "sgtests.registry_probe"
        __abstract__ = True

    assert sg.registered_contracts(["sgtests.registry_probe"]) == [Alpha, Zeta]
    assert sg.registered_contracts(["sgtests.nowhere"]) == []
    everything = sg.registered_contracts()
    assert {Alpha, Zeta, CustomerRegistered} <= set(everything)
    assert Base not in everything

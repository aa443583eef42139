"""The drift detector's kinds, its cheap hot path, and the bounded first-seen memory."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

import streamguard as sg
from streamguard.schema import drift as drift_module
from streamguard.schema.drift import DriftDetector, FirstSeen, producer_of


class Address(BaseModel):
    city: str


class Signup(sg.Contract):
    __subject__ = "users.Signup"
    __version__ = 3
    model_config = ConfigDict(extra="ignore")
    user: str
    address: Address
    previous: list[Address] = Field(default_factory=list)
    home: Address | None = None


def stamped(**overrides: bytes) -> list[tuple[str, bytes | None]]:
    base = {
        "sg-subject": b"users.Signup",
        "sg-version": b"3",
        "sg-fingerprint": Signup.fingerprint().encode(),
        "sg-producer": b"web",
    }
    base.update({k.replace("_", "-"): v for k, v in overrides.items()})
    return list(base.items())


VALUE = json.dumps({"user": "u", "address": {"city": "c"}}).encode()


def test_matching_fingerprint_is_no_drift() -> None:
    """Headers carrying this contract's fingerprint mean no drift."""
    assert DriftDetector(Signup).inspect(stamped(), VALUE) == ()


def test_hot_path_never_decodes(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a matching fingerprint the value is never parsed (the per-message fast path)."""
    detector = DriftDetector(Signup)

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("decoded on the hot path")

    monkeypatch.setattr(drift_module.json, "loads", boom)
    monkeypatch.setattr(drift_module, "from_json", boom)
    assert detector.inspect(stamped(), b'{"unknown": 1}') == ()


@pytest.mark.parametrize(
    ("headers", "kind"),
    [
        (stamped(sg_version=b"4", sg_fingerprint=b"x"), "newer_version"),
        (stamped(sg_version=b"2", sg_fingerprint=b"x"), "older_version"),
        (stamped(sg_fingerprint=b"x"), "unknown_fingerprint"),
        (stamped(sg_subject=b"users.Other", sg_fingerprint=b"x"), "other_subject"),
        ([("sg-producer", b"web")], "no_schema_headers"),
        (None, "no_schema_headers"),
    ],
)
def test_header_kinds(headers: list[tuple[str, bytes | None]] | None, kind: str) -> None:
    """Each header mismatch is reported as its own kind."""
    assert DriftDetector(Signup).inspect(headers, VALUE) == (kind,)


def test_another_subject_of_the_same_shape_is_other_subject() -> None:
    """Two contracts of one shape share a fingerprint (it leaves titles out, and the
    subject is not in the schema): a record stamped as the other one is still another
    subject's. The fingerprint's match returned at once, and under drift="dead_letter"
    such a record was handled as this contract's."""
    assert DriftDetector(Signup).inspect(stamped(sg_subject=b"users.Deleted"), VALUE) == (
        "other_subject",
    )
    # A subject header before the fingerprint's, after it, or none: the last one counts.
    detector = DriftDetector(Signup)
    later = [*stamped(), ("sg-subject", b"users.Deleted")]
    assert detector.inspect(later, VALUE) == ("other_subject",)
    corrected = [("sg-subject", b"users.Deleted"), *stamped()]
    assert detector.inspect(corrected, VALUE) == ()
    unnamed = [(k, v) for k, v in stamped() if k != "sg-subject"]
    assert detector.inspect(unnamed, VALUE) == ()


@pytest.mark.parametrize(
    "value",
    [
        {"user": "u", "address": {"city": "c"}, "extra": 1},
        {"user": "u", "address": {"city": "c", "zip": "1"}},
        {"user": "u", "address": {"city": "c"}, "previous": [{"city": "a", "street": "s"}]},
        {"user": "u", "address": {"city": "c"}, "home": {"city": "h", "floor": 2}},
    ],
)
def test_unknown_fields_top_level_and_nested(value: dict[str, Any]) -> None:
    """Keys the contract does not declare are found at top level and in nested models."""
    detector = DriftDetector(Signup)
    kinds = detector.inspect(stamped(sg_fingerprint=b"x"), json.dumps(value).encode())
    assert kinds == ("unknown_fingerprint", "unknown_fields")


def test_unknown_fields_after_leading_whitespace() -> None:
    """JSON may start with whitespace (the codec reads it): the object is still looked at."""
    value = b"\n  " + json.dumps({"user": "u", "address": {"city": "c"}, "extra": 1}).encode()
    kinds = DriftDetector(Signup).inspect(stamped(sg_fingerprint=b"x"), value)
    assert kinds == ("unknown_fingerprint", "unknown_fields")


def test_unknown_fields_in_confluent_framed_json() -> None:
    """JSON after the Confluent framing (00 and a schema id), as Confluent's
    JSONSerializer writes it and a registry service reads it, is looked at too: its
    undeclared keys went uncounted while the same record unframed counted them."""
    framed = b"\x00\x00\x00\x00\x07" + json.dumps({**json.loads(VALUE), "extra": 1}).encode()
    assert DriftDetector(Signup).inspect(None, framed) == ("no_schema_headers", "unknown_fields")
    assert DriftDetector(Signup).inspect(None, b"\x00\x00\x00\x00\x07" + VALUE) == (
        "no_schema_headers",
    )
    assert DriftDetector(Signup).inspect(None, b"\x00\x00\x01") == ("no_schema_headers",)


def test_known_fields_only_is_not_unknown_fields() -> None:
    """A value with only declared keys (and nulls) does not report unknown_fields."""
    value = json.dumps({"user": "u", "address": {"city": "c"}, "home": None}).encode()
    assert DriftDetector(Signup).inspect(None, value) == ("no_schema_headers",)


class Tagged(sg.Contract):
    __subject__ = "users.Tagged"
    __version__ = 1
    user: str
    labels: Address | dict[str, str]
    extra: Address | dict[str, Any] | None = None


def test_a_map_in_a_union_with_a_model_takes_any_key() -> None:
    """A union of a model and a map accepts any key (the map's branch): its keys are
    not unknown. The map's branch used to be dropped, and every key outside the
    model's counted as unknown_fields, in the metric and a drift dead letter's kinds."""
    detector = DriftDetector(Tagged)
    value = {"user": "u", "labels": {"colour": "red"}, "extra": {"any": 1}}
    Tagged.model_validate(value)  # valid: the maps take them
    assert detector.inspect(None, json.dumps(value).encode()) == ("no_schema_headers",)
    unknown = json.dumps({"user": "u", "labels": {"city": "c"}, "zip": 1}).encode()
    assert detector.inspect(None, unknown) == ("no_schema_headers", "unknown_fields")


class Place(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    city_name: str = Field(alias="cityName")


class Renamed(sg.Contract):
    __subject__ = "users.Renamed"
    __version__ = 1
    model_config = ConfigDict(populate_by_name=True)
    user_id: str = Field(alias="userId")
    place: Place = Field(alias="placeOf")
    note: str = Field("", validation_alias=AliasChoices("note", "remark"))


class AliasOnly(sg.Contract):
    __subject__ = "users.AliasOnly"
    __version__ = 1
    user_id: str = Field(alias="userId")


def test_keys_a_model_reads_besides_its_schema_names_are_not_unknown() -> None:
    """Field names under populate_by_name, and every AliasChoices choice, are keys the
    model reads (its schema names only the alias, or the first choice): they counted as
    unknown_fields, at top level and in nested models, though nothing was dropped."""
    detector = DriftDetector(Renamed)
    value = {"user_id": "u", "place": {"city_name": "c"}, "remark": "r"}
    assert Renamed.model_validate(value).place.city_name == "c"
    assert detector.inspect(None, json.dumps(value).encode()) == ("no_schema_headers",)
    nested = json.dumps({"user_id": "u", "place": {"city_name": "c", "zip": 1}}).encode()
    assert detector.inspect(None, nested) == ("no_schema_headers", "unknown_fields")
    # Without populate_by_name a field name is not read: it is dropped, so it counts.
    dropped = json.dumps({"userId": "u", "user_id": "v"}).encode()
    assert DriftDetector(AliasOnly).inspect(None, dropped) == (
        "no_schema_headers",
        "unknown_fields",
    )


def test_non_json_value_is_not_unknown_fields() -> None:
    """Bytes that are not a JSON object are left to the codec."""
    assert DriftDetector(Signup).inspect(None, b"\xc3\x01garbage") == ("no_schema_headers",)
    assert DriftDetector(Signup).inspect(None, b"{not json") == ("no_schema_headers",)
    assert DriftDetector(Signup).inspect(None, None) == ("no_schema_headers",)


def test_producer_of_headers() -> None:
    """producer_of names the sg-producer header, or 'unknown'."""
    assert producer_of(stamped()) == "web"
    assert producer_of(None) == "unknown"


def test_first_seen_once_per_producer_and_kind() -> None:
    """A (producer, kind) pair is first-seen once; other pairs are first-seen on their own."""
    seen = FirstSeen()
    assert seen("web", "newer_version") is True
    assert seen("web", "newer_version") is False
    assert seen("web", "unknown_fields") is True
    assert seen("batch", "newer_version") is True


def test_first_seen_is_bounded() -> None:
    """FirstSeen keeps at most `capacity` pairs, forgetting the least recently seen."""
    seen = FirstSeen(capacity=2)
    seen("a", "k")
    seen("b", "k")
    seen("a", "k")  # refreshes a
    seen("c", "k")  # evicts b
    assert len(seen) == 2
    assert seen("a", "k") is False
    assert seen("b", "k") is True


def test_first_seen_rejects_empty_capacity() -> None:
    """A capacity below one is a usage error."""
    with pytest.raises(ValueError, match="at least 1"):
        FirstSeen(capacity=0)


# -- the unknown-field check: its fast parse may only ever say "none" ---------------------


class Node(BaseModel):
    name: str
    children: list[Node] = Field(default_factory=list)


class Catalog(sg.Contract):
    """Every shape the walk knows: nested, optional, lists, maps, recursion, free dicts."""

    __subject__ = "shop.Catalog"
    __version__ = 1
    user: str
    address: Address
    previous: list[Address] = Field(default_factory=list)
    home: Address | None = None
    by_city: dict[str, Address] = Field(default_factory=dict)
    grid: list[list[Address]] = Field(default_factory=list)
    tree: Node | None = None
    meta: dict[str, Any] = Field(default_factory=dict)
    either: Address | list[Address] | None = None


def reference(value: bytes) -> bool:
    """The unknown-field check as first written: json.loads and a key-by-key walk."""
    shape = DriftDetector(Catalog)._shape

    def walk(data: Any, node: Any, depth: int = 0) -> bool:
        if node is None or depth > drift_module._MAX_DEPTH:
            return False
        if isinstance(data, dict):
            if node.names is not None:
                return any(
                    key not in node.names or walk(sub, node.children.get(key), depth + 1)
                    for key, sub in data.items()
                )
            if node.values is not None:
                return any(walk(v, node.values, depth + 1) for v in data.values())
        elif isinstance(data, list) and node.items is not None:
            return any(walk(v, node.items, depth + 1) for v in data)
        return False

    if not value or value[:1] != b"{":
        return False
    try:
        return walk(json.loads(value), shape)
    except ValueError:
        return False


TRICKY = [
    # keys and key-like text inside string values
    rb'{"user": "\"extra\": 1", "address": {"city": "c"}}',
    rb'{"user": "{\"extra\": 1}", "address": {"city": "\\\"zip\\\":"}}',
    rb'{"user": "x\\", "address": {"city": "c"}, "extra": 1}',
    rb'{"user":"a","address":{"city":"c"},":":1}',
    rb'{"user":"x",",":{"city":"c"},"address":{"city":"c"}}',
    # escaped key names: the same key, or another
    rb'{"\u0075ser": "u", "address": {"c\u0069ty": "c"}}',
    rb'{"us\u0065r": "u", "address": {"city": "c", "\u007a\u0069p": 1}}',
    rb'{"user": "u", "address": {"city": "c"}, "user\u0000": 1}',
    rb'{"user": "u", "address": {"city": "c"}, "\ud800": 1}',
    rb'{"user": "u", "address": {"city": "c"}, "\ud83d\ude00": 1}',
    '{"user": "u", "address": {"city": "c"}, "us\u00e9r": 1}'.encode(),
    # duplicate keys: the last one counts
    rb'{"user": "u", "address": {"city": "c", "zip": 1}, "address": {"city": "c"}}',
    rb'{"user": "u", "address": {"city": "c"}, "address": {"city": "c", "zip": 1}}',
    # nested models, maps, lists, recursion, free dicts, unions
    rb'{"user": "u", "address": {"city": "c"}, "by_city": {"zip": {"city": "c"}}}',
    rb'{"user": "u", "address": {"city": "c"}, "by_city": {"c": {"city": "c", "zip": 1}}}',
    rb'{"user": "u", "address": {"city": "c"}, "grid": [[{"city": "c"}], [{"zip": 1}]]}',
    rb'{"user": "u", "address": {"city": "c"}, "grid": [[{"city": "c"}], []]}',
    rb'{"user": "u", "address": {"city": "c"}, "tree": {"name": "a", "children": '
    rb'[{"name": "b", "children": [{"name": "c", "colour": 1}]}]}}',
    rb'{"user": "u", "address": {"city": "c"}, "meta": {"anything": {"goes": [1]}}}',
    rb'{"user": "u", "address": {"city": "c"}, "either": [{"city": "c", "zip": 1}]}',
    rb'{"user": "u", "address": {"city": "c"}, "either": {"zip": 1}}',
    rb'{"user": "u", "address": {"city": "c"}, "either": [{"city": "c"}]}',
    rb'{"user": "u", "address": null, "home": 3, "previous": {"zip": 1}}',
    # numbers and literals only json.loads or only pydantic-core may take
    rb'{"user": NaN, "address": {"city": -Infinity}, "zip": 1e400}',
    rb'{"user": 123456789012345678901234567890, "address": {"city": "c"}, "zip": 1}',
    # not JSON, or not all of it
    rb'{"user": "u", "address": {"city": "c"}, "zip": 1} trailing',
    rb'{"user": "u", "address": {"city": "c"}, "zip": 1,}',
    b'{"user": "\xff", "zip": 1}',
    b'{"user": "\x01", "zip": 1}',
    b"{" * 40 + b"}" * 40,
    b'{"tree": ' + b'{"name": "n", "children": [' * 40 + b"{}" + b"]}" * 40 + b"}",
    b'{"tree": ' + b'{"name": "n", "children": [' * 40 + b'{"x": 1}' + b"]}" * 40 + b"}",
    b'{"tree": ' + b'{"name": "n", "children": [' * 300 + b'{"x": 1}' + b"]}" * 300 + b"}",
]


@pytest.mark.parametrize("value", TRICKY)
def test_unknown_fields_agrees_with_the_reference_on_tricky_json(value: bytes) -> None:
    """Escapes, key-like text in strings, duplicates, every shape: the reference's answer."""
    assert DriftDetector(Catalog)._unknown_fields(value) is reference(value)


def test_tricky_json_has_both_answers() -> None:
    """The table is not one-sided: it holds values with and without unknown keys."""
    answers = {reference(v) for v in TRICKY}
    assert answers == {True, False}


KEYS = st.sampled_from(
    ["user", "address", "city", "previous", "home", "by_city", "grid", "tree", "name",
     "children", "meta", "either", "zip", "", '"', "\\", ":", '":', "\u00e9", "\ud83d\ude00"]
)  # fmt: skip
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
DOCUMENTS = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=30,
)


@st.composite
def encoded(draw: st.DrawFn) -> bytes:
    """A JSON object as bytes: escaped or not, spaced or not, maybe with a duplicate key."""
    doc = draw(st.dictionaries(KEYS, DOCUMENTS, min_size=1, max_size=6))
    ascii_only = draw(st.booleans())
    separators = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", " :\t")]))
    text = json.dumps(doc, ensure_ascii=ascii_only, separators=separators)
    where = draw(st.sampled_from(["none", "first", "last"]))
    if where != "none":  # repeat a key: the last occurrence wins in both parsers
        pair = json.dumps(draw(KEYS), ensure_ascii=ascii_only) + ":" + json.dumps(draw(DOCUMENTS))
        if where == "first":
            text = "{" + pair + separators[0] + text[1:]
        else:
            text = text[:-1] + separators[0] + pair + "}"
    return text.encode("utf-8", "surrogatepass")


@settings(max_examples=400, deadline=None)
@given(encoded())
def test_unknown_fields_agrees_with_the_reference_on_generated_json(value: bytes) -> None:
    """On any JSON object, the fast parse plus fallback answers as the reference does."""
    assert DriftDetector(Catalog)._unknown_fields(value) is reference(value)

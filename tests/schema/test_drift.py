"""The drift detector's kinds, its cheap hot path, and the bounded first-seen memory."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

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


def test_known_fields_only_is_not_unknown_fields() -> None:
    """A value with only declared keys (and nulls) does not report unknown_fields."""
    value = json.dumps({"user": "u", "address": {"city": "c"}, "home": None}).encode()
    assert DriftDetector(Signup).inspect(None, value) == ("no_schema_headers",)


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

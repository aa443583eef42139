"""The public surface: everything in __all__ exists, sorted, and nothing else leaks."""

from __future__ import annotations

import streamguard as sg


def test_all_names_exist_and_are_sorted() -> None:
    """Every name in streamguard.__all__ is importable, and the list is alphabetical."""
    assert sg.__all__ == sorted(sg.__all__)
    for name in sg.__all__:
        assert hasattr(sg, name), name


def test_design_api_names_are_public() -> None:
    """Every name of the documented public API is exported."""
    promised = {
        "Contract", "ConsumerService", "MessageContext", "RetryPolicy", "GuardedProducer",
        "TransientError", "PermanentError", "DecodeError", "ContractViolation",
        "RetriesExhausted", "StreamguardError",
    }  # fmt: skip
    assert promised <= set(sg.__all__)

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


def test_exported_classes_document_their_public_methods() -> None:
    """Every public method and property of an exported class has a docstring."""
    import inspect

    missing = []
    for name in sg.__all__:
        cls = getattr(sg, name)
        if not inspect.isclass(cls) or issubclass(cls, BaseException):
            continue
        for attr, value in vars(cls).items():
            if attr.startswith("_"):
                continue
            fn = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
            if (callable(fn) or isinstance(value, property)) and not getattr(fn, "__doc__", None):
                missing.append(f"{name}.{attr}")
    assert missing == []

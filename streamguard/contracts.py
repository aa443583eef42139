"""Contracts: the pydantic model a topic's messages must satisfy, with its identity.

A contract is a pydantic ``BaseModel`` that also names its schema *subject* and its
*version*. The schema that the model implies is normalised and hashed into a
fingerprint, which producers stamp on every message so that consumers can tell which
schema a message was written with.
"""

from __future__ import annotations

import copy
import hashlib
import json
from functools import cache
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from streamguard.errors import ConfigurationError

Format = Literal["json", "avro"]

# Keywords that document a schema but do not change which values it accepts. They are
# kept in the stored schema (people read it) and left out of the fingerprint, so that
# rewording a docstring does not look like a new schema to every consumer.
_DOC_KEYWORDS = frozenset({"title", "description", "examples", "$comment"})
# Keywords whose value maps *names* to subschemas: the names are data, never keywords.
_NAMED_SUBSCHEMAS = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)
_SUBSCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})


class Contract(BaseModel):
    """Base class of every message contract.

    Subclasses set two class attributes; a concrete contract missing either fails at
    class creation, not at the first message::

        class OrderPlaced(sg.Contract):
            __subject__ = "orders.OrderPlaced"
            __version__ = 2
            order_id: UUID

    ``__wire_format__ = "avro"`` makes it an Avro contract (the default is ``"json"``).
    A subclass meant only as a shared base sets ``__abstract__ = True``. Nested models
    may be plain pydantic models. Strictness and unknown-field handling are pydantic's
    own ``model_config`` (``strict=True``, ``extra="forbid"``), set per contract.

    JSON parsing caches only object keys (``cache_strings="keys"``), where pydantic
    caches every short string: an event's values (ids, timestamps) rarely repeat, so
    caching them cost about 5% of validation's CPU and held 1.1 MiB for nothing
    (docs/benchmark-notes.md, *String cache*). A contract whose values do repeat can
    set ``model_config = ConfigDict(cache_strings="all")``.
    """

    model_config = ConfigDict(cache_strings="keys")

    __subject__: ClassVar[str]
    __version__: ClassVar[int]
    # Not ``__format__``: that name is Python's formatting protocol, and a string there
    # makes ``f"{event}"`` raise on every instance.
    __wire_format__: ClassVar[Format] = "json"
    __abstract__: ClassVar[bool] = True

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if cls.__dict__.get("__abstract__", False):
            return
        cls.__abstract__ = False
        subject = cls.__dict__.get("__subject__", getattr(cls, "__subject__", None))
        version = cls.__dict__.get("__version__", getattr(cls, "__version__", None))
        name = cls.__qualname__
        if not isinstance(subject, str) or not subject.strip():
            raise ConfigurationError(
                f"contract {name} has no __subject__. Add a class attribute such as "
                f'__subject__ = "orders.{cls.__name__}", or set __abstract__ = True if '
                "it is only a base for other contracts."
            )
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ConfigurationError(
                f"contract {name} needs __version__ as a positive int (got {version!r}). "
                "Start at __version__ = 1 and bump it with each schema change."
            )
        if isinstance(cls.__dict__.get("__format__"), str):
            raise ConfigurationError(
                f"contract {name} sets __format__, which is Python's formatting protocol "
                "(it would break f-strings on every instance). Declare the wire format as "
                f"__wire_format__ = {cls.__dict__['__format__']!r} instead."
            )
        if cls.__wire_format__ not in ("json", "avro"):
            raise ConfigurationError(
                f"contract {name} has __wire_format__ = {cls.__wire_format__!r}; "
                "use 'json' or 'avro'."
            )
        _REGISTRY[f"{cls.__module__}:{cls.__qualname__}"] = cls

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """The contract's normalised JSON Schema (keys sorted, as stored in ``schemas/``).

        A copy: the fingerprint is computed from a cached original, which a caller's edit
        (adding ``$id`` to publish it, say) must not change.
        """
        return copy.deepcopy(_schema_document(cls))

    @classmethod
    def fingerprint(cls) -> str:
        """A stable hash of the schema's validating content, stamped as ``sg-fingerprint``."""
        return schema_fingerprint(_schema_document(cls))


_REGISTRY: dict[str, type[Contract]] = {}


def wire_format(model: type[BaseModel]) -> Format:
    """A contract's wire format; a plain pydantic model is JSON."""
    fmt: Format = getattr(model, "__wire_format__", "json")
    return fmt


def registered_contracts(modules: list[str] | None = None) -> list[type[Contract]]:
    """Every concrete contract defined so far, optionally only those in ``modules``."""
    found = [c for c in _REGISTRY.values() if modules is None or c.__module__ in modules]
    return sorted(found, key=lambda c: (c.__subject__, c.__version__, c.__qualname__))


def shared_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A contract's cached schema, shared and read-only (no copy, for error paths that
    run per invalid record), or a plain model's schema."""
    if isinstance(model, type) and issubclass(model, Contract):
        return _schema_document(model)
    return model.model_json_schema()


@cache
def _schema_document(cls: type[Contract]) -> dict[str, Any]:
    # Cached per class: pydantic rebuilds the schema on every call, which costs
    # milliseconds, and a contract's schema cannot change once the class exists.
    schema: dict[str, Any] = normalise_schema(cls.model_json_schema(mode="validation"))
    return schema


def normalise_schema(schema: Any) -> Any:
    """Sort keys recursively so equal schemas serialise to equal bytes."""
    if isinstance(schema, dict):
        return {k: normalise_schema(schema[k]) for k in sorted(schema)}
    if isinstance(schema, list):
        return [normalise_schema(v) for v in schema]
    return schema


def strip_documentation(schema: Any) -> Any:
    """Drop documentation-only keywords, leaving what decides which values are valid.

    Names under ``properties`` and ``$defs`` are data, so a field called ``title`` is
    kept; only the keyword ``title`` of a schema is dropped.
    """
    if isinstance(schema, list):
        return [strip_documentation(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DOC_KEYWORDS:
            continue
        if key in _NAMED_SUBSCHEMAS and isinstance(value, dict):
            out[key] = {name: strip_documentation(sub) for name, sub in value.items()}
        elif key in _SUBSCHEMA_LISTS and isinstance(value, list):
            out[key] = [strip_documentation(sub) for sub in value]
        elif key in ("const", "enum", "default"):
            out[key] = value  # literal values, never subschemas
        else:
            out[key] = strip_documentation(value)
    return out


def schema_fingerprint(schema: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of a schema without its documentation."""
    canonical = json.dumps(
        strip_documentation(schema), sort_keys=True, separators=(",", ":"), ensure_ascii=True
    )
    return hashlib.sha256(canonical.encode()).hexdigest()

"""Reading a JSON Schema document: resolving ``$ref`` and classifying each subschema.

The compatibility rules compare two schemas node by node. Before a node can be
compared it must be *resolved* (a ``$ref`` replaced by its target, so that moving a
type into ``$defs`` is not a change) and *classified*: does it accept anything, nothing,
is it a combination (``allOf``/``anyOf``/``oneOf``), or a plain schema with keywords?
A ``type`` list such as ``["string", "null"]`` is read as ``anyOf`` of one schema per
type, which is what it means, so that ``str`` -> ``str | None`` is judged the same
however it is spelled.
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from dataclasses import dataclass, field
from decimal import Context, Decimal
from typing import Any, Literal
from urllib.parse import unquote

from streamguard.errors import ConfigurationError

Kind = Literal["any", "never", "combined", "plain"]
COMBINATORS = ("allOf", "anyOf", "oneOf")

# Keywords that never change which values are valid: documentation, identifiers, and
# containers of definitions that only matter through a $ref.
IGNORED_KEYWORDS = frozenset(
    {
        "title",
        "description",
        "examples",
        "$comment",
        "$schema",
        "$id",
        "id",
        "default",
        "definitions",
        "$defs",
        "readOnly",
        "writeOnly",
        "deprecated",
        "discriminator",
        "$anchor",
        "$vocabulary",
    }
)


class SchemaError(ConfigurationError):
    """A schema cannot be read (an unresolvable or remote ``$ref``, a cycle of refs)."""


# The shape the rules read each of these keywords in. A hand-edited file under schemas/
# that breaks one ("properties": [...]) is a configuration error, exit 2: it ended the
# check with a traceback and exit 1, which CI reads as a breaking change.
_OBJECT = (dict, "an object")
_SHAPES: dict[str, tuple[type | tuple[type, ...], str]] = {
    "properties": _OBJECT,
    "patternProperties": _OBJECT,
    "dependencies": _OBJECT,
    "dependentRequired": _OBJECT,
    "dependentSchemas": _OBJECT,
    "required": (list, "a list"),
    "enum": (list, "a list"),
    "prefixItems": (list, "a list"),
    "type": ((str, list), "a string or a list"),
    **dict.fromkeys(COMBINATORS, (list, "a list")),
    # A limit written as text ("minimum": "0") was taken for no limit at all.
    **dict.fromkeys(
        ("minimum", "maximum", "multipleOf", "minLength", "maxLength", "minItems", "maxItems"),
        ((int, float), "a number"),
    ),
    # A number, or draft-04's boolean beside "minimum"/"maximum".
    **dict.fromkeys(("exclusiveMinimum", "exclusiveMaximum"), ((int, float, bool), "a number")),
}


def json_kind(value: Any) -> str:
    """The JSON kind of a value, for an error message (never the value: it may be long)."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    kinds = {dict: "an object", list: "a list", str: "a string"}
    return next((name for t, name in kinds.items() if isinstance(value, t)), "a number")


def _names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def check_keywords(schema: dict[str, Any]) -> None:
    """Raise SchemaError for a keyword whose value the rules cannot read."""
    for key, (kind, what) in _SHAPES.items():
        if key in schema and not isinstance(schema[key], kind):
            raise SchemaError(f"{key!r} must be {what}, not {json_kind(schema[key])}")
    for key in ("required", "type"):
        if isinstance(schema.get(key), list) and not _names(schema[key]):
            raise SchemaError(f"{key!r} must list strings only")
    for key in ("dependencies", "dependentRequired"):
        for name, value in (schema.get(key) or {}).items():
            if isinstance(value, list) and not _names(value):
                raise SchemaError(f"{key!r} of {name!r} must list property names")


@dataclass
class Node:
    """One resolved subschema, classified; ``schema`` is the resolved raw value."""

    kind: Kind
    schema: Any
    criterion: str = ""
    subschemas: list[Any] = field(default_factory=list)
    typed: bool = False  # an anyOf spelled as a ``type`` list, which pydantic never writes

    def get(self, key: str, default: Any = None) -> Any:
        """A keyword of a plain schema (``default`` for booleans and absent keys)."""
        return self.schema.get(key, default) if isinstance(self.schema, dict) else default

    def values(self) -> list[Any] | None:
        """The values a ``const`` or an ``enum`` allows; None when it has neither."""
        if isinstance(self.schema, dict) and "const" in self.schema:
            return [self.schema["const"]]
        value = self.get("enum")
        return list(value) if isinstance(value, list) else None


class Document:
    """A whole schema document, so that local ``$ref`` pointers can be followed."""

    def __init__(self, root: Any) -> None:
        self.root = root

    def resolve(self, schema: Any) -> Any:
        """Follow ``$ref`` until a schema without one; siblings of a ref are kept as allOf."""
        seen: set[str] = set()
        while isinstance(schema, dict) and "$ref" in schema:
            ref = schema["$ref"]
            if not isinstance(ref, str) or ref in seen:
                raise SchemaError(f"$ref {ref!r} is not a string or refers to itself")
            seen.add(ref)
            target = self._lookup(ref)
            siblings = {
                k: v for k, v in schema.items() if k != "$ref" and k not in IGNORED_KEYWORDS
            }
            if siblings:  # 2019-09+: a ref with siblings means both apply
                return {"allOf": [target, siblings]}
            schema = target
        return schema

    def target(self, schema: Any) -> Any:
        """The schema a ``$ref`` without siblings that matter stands for (``schema``
        itself otherwise, or when the ref cannot be followed: :meth:`resolve` says why).
        One object per definition, wherever it is referred to from."""
        seen: set[str] = set()
        while isinstance(schema, dict) and "$ref" in schema:
            ref = schema["$ref"]
            if not isinstance(ref, str) or ref in seen:
                return schema
            if any(k != "$ref" and k not in IGNORED_KEYWORDS for k in schema):
                return schema
            seen.add(ref)
            try:
                schema = self._lookup(ref)
            except SchemaError:
                return schema
        return schema

    def _lookup(self, ref: str) -> Any:
        if not ref.startswith("#"):
            raise SchemaError(
                f"$ref {ref!r} points outside the document; only local refs (#/...) are "
                "supported. Inline the referenced schema or bundle it under $defs."
            )
        node = self.root
        for part in ref[1:].split("/")[1:] if ref != "#" else []:
            key = unquote(part).replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                raise SchemaError(f"$ref {ref!r} does not resolve within the document")
        return node

    def classify(self, schema: Any) -> Node:
        """Resolve ``schema`` and say what kind of node it is."""
        resolved = self.resolve(schema)
        if resolved is True or resolved is None:
            return Node("any", True)
        if resolved is False:
            return Node("never", False)
        if not isinstance(resolved, dict):
            raise SchemaError(f"a schema must be an object or a boolean, not {resolved!r}")
        rest = {k: v for k, v in resolved.items() if k not in IGNORED_KEYWORDS}
        check_keywords(rest)
        parts = [(c, rest.pop(c)) for c in COMBINATORS if isinstance(rest.get(c), list)]
        if parts:
            if not rest and len(parts) == 1:
                return Node("combined", resolved, parts[0][0], list(parts[0][1]))
            subs: list[Any] = [rest] if rest else []
            subs += [{c: s} for c, s in parts]
            return Node("combined", {"allOf": subs}, "allOf", subs)
        types = rest.get("type")
        if isinstance(types, list):
            if len(types) == 1:
                rest["type"] = types[0]
            elif types:
                branches = [{**rest, "type": t} for t in types]
                return Node("combined", {"anyOf": branches}, "anyOf", branches, typed=True)
            else:
                rest.pop("type")
        if not rest:
            return Node("any", True)
        return Node("plain", rest)


def canonical(schema: Any) -> str:
    """Canonical JSON text of a schema, used to collapse duplicate subschemas."""
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


def value_key(value: Any) -> Hashable:
    """A key under which two JSON values are equal as JSON Schema compares them (``const``,
    ``enum``): 1 and 1.0 are one value, at any depth; true and 1 are not, and JSON has
    one zero: -0.0 is 0."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return (type(value).__name__, value)
    if isinstance(value, int | float):
        text = str(value)
        # normalize() rounds to the context's 28 digits: 10**30 and 10**30 + 1 were one.
        number = Decimal(text).normalize(Context(prec=max(28, len(text))))
        # Decimal keeps a zero's sign (-0.0 normalizes to -0): drop it.
        return ("number", str(number.copy_abs() if number.is_zero() else number))
    if isinstance(value, list):
        return ("array", tuple(value_key(v) for v in value))
    if isinstance(value, dict):
        return ("object", frozenset((k, value_key(v)) for k, v in value.items()))
    return ("other", canonical(value))


def has_default(schema: Any, doc: Document) -> bool:
    """Whether a property schema (or what its ref points at) declares a default."""
    if isinstance(schema, dict) and "default" in schema:
        return True
    resolved = doc.resolve(schema)
    return isinstance(resolved, dict) and "default" in resolved

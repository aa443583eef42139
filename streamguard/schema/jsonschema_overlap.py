"""Whether two subschemas can both take one value: what a reader's ``oneOf`` depends on.

A ``oneOf`` takes a value that exactly one of its branches takes, so a change that lets
a value match two branches (a branch widened onto another, or a branch added that
overlaps one) breaks its readers although every value still matches some branch. That
two schemas share no value is undecidable in general; :func:`disjoint` answers True only
when it can show it (different JSON types, disjoint ``const``/``enum`` values, disjoint
numeric bounds or lengths, a property one requires that the other cannot take), and
False otherwise, so the check refuses what it cannot show safe.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from streamguard.schema.jsonschema_doc import Document, Node, value_key

_TYPES = frozenset({"null", "boolean", "object", "array", "number", "integer", "string"})
# Recursive models are cut off here: past it, nothing is shown disjoint.
_DEPTH = 8


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return "integer"
    kinds = {float: "number", str: "string", list: "array", dict: "object"}
    return next((k for t, k in kinds.items() if isinstance(value, t)), "object")


def _kinds(node: Node) -> set[str]:
    """The JSON types a plain schema's values can have (``integer`` within ``number``)."""
    declared = node.get("type")
    kinds = {declared} & _TYPES if isinstance(declared, str) else set(_TYPES)
    if "number" in kinds:
        kinds.add("integer")
    values = node.values()
    if values is not None:
        kinds &= {_json_type(v) for v in values} | (
            {"number"} if any(_json_type(v) == "integer" for v in values) else set()
        )
    return kinds


def _range(node: Node, plain: str, key: str) -> tuple[Decimal, bool] | None:
    from streamguard.schema.jsonschema_compat import _bound  # here: it imports this module

    return _bound(node, plain, key, plain == "minimum")


def _below(upper: tuple[Decimal, bool] | None, lower: tuple[Decimal, bool] | None) -> bool:
    """Whether every number under ``upper`` is below every number over ``lower``."""
    if upper is None or lower is None:
        return False
    return upper[0] < lower[0] or (upper[0] == lower[0] and (upper[1] or lower[1]))


def _numbers_apart(a: Node, b: Node) -> bool:
    lo_a = _range(a, "minimum", "exclusiveMinimum")
    hi_a = _range(a, "maximum", "exclusiveMaximum")
    lo_b = _range(b, "minimum", "exclusiveMinimum")
    hi_b = _range(b, "maximum", "exclusiveMaximum")
    return _below(hi_a, lo_b) or _below(hi_b, lo_a)


def _sizes_apart(a: Node, b: Node, low: str, high: str) -> bool:
    def size(node: Node, key: str) -> int | None:
        value = node.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    for x, y in ((a, b), (b, a)):
        top, bottom = size(x, high), size(y, low)
        if top is not None and bottom is not None and top < bottom:
            return True
    return False


def _property_schema(node: Node, name: str) -> Any:
    """The schema a property ``name`` of an object valid for ``node`` must meet."""
    props = node.get("properties")
    if isinstance(props, dict) and name in props:
        return props[name]
    patterns = node.get("patternProperties")
    if isinstance(patterns, dict) and patterns:
        return True  # which pattern matches is not worth deciding here
    extra = node.get("additionalProperties")
    return True if extra is None else extra


def _objects_apart(a: Node, da: Document, b: Node, db: Document, depth: int) -> bool:
    # A property one side requires must meet the other side's schema for it too.
    for x, dx, y, dy in ((a, da, b, db), (b, db, a, da)):
        for name in x.get("required") or []:
            mine, theirs = _property_schema(x, name), _property_schema(y, name)
            if disjoint(mine, dx, theirs, dy, depth + 1):
                return True
    return _sizes_apart(a, b, "minProperties", "maxProperties")


def _plain_apart(a: Node, da: Document, b: Node, db: Document, depth: int) -> bool:
    values_a, values_b = a.values(), b.values()
    if values_a is not None and values_b is not None:
        return not {value_key(v) for v in values_a} & {value_key(v) for v in values_b}
    common = _kinds(a) & _kinds(b)
    checks = {
        "integer": lambda: _numbers_apart(a, b),
        "number": lambda: _numbers_apart(a, b),
        "string": lambda: _sizes_apart(a, b, "minLength", "maxLength"),
        "array": lambda: _sizes_apart(a, b, "minItems", "maxItems"),
        "object": lambda: _objects_apart(a, da, b, db, depth),
    }
    return all(kind in checks and checks[kind]() for kind in common)


def disjoint(a: Any, da: Document, b: Any, db: Document, depth: int = 0) -> bool:
    """Whether no value is valid for both ``a`` (in ``da``) and ``b`` (in ``db``):
    True only when shown, False when they share a value or it cannot be decided."""
    if depth > _DEPTH:
        return False
    na, nb = da.classify(a), db.classify(b)
    if "never" in (na.kind, nb.kind):
        return True
    if "any" in (na.kind, nb.kind):
        return False
    for x, dx, y, dy in ((na, da, nb, db), (nb, db, na, da)):
        if x.kind == "combined":
            parts = (disjoint(s, dx, y.schema, dy, depth + 1) for s in x.subschemas)
            if any(parts) if x.criterion == "allOf" else all(parts):
                return True
    if "combined" in (na.kind, nb.kind):
        return False
    return _plain_apart(na, da, nb, db, depth)


def tagged_apart(union: Node, a: Any, b: Any, doc: Document, required: bool = False) -> bool:
    """Whether a ``oneOf``'s ``discriminator`` tells branches ``a`` and ``b`` apart: a
    reader that declares one (pydantic, OpenAPI) picks the branch by that property.
    ``required``: for a writer whose values may lack the tag (an ``anyOf``'s), only
    if a branch requires it; a value without it matches both branches otherwise."""
    tag = union.get("discriminator")
    name = tag.get("propertyName") if isinstance(tag, dict) else None
    if not isinstance(name, str):
        return False
    na, nb = doc.classify(a), doc.classify(b)
    if na.kind != "plain" or nb.kind != "plain":
        return False
    props_a, props_b = na.get("properties"), nb.get("properties")
    if not isinstance(props_a, dict) or not isinstance(props_b, dict):
        return False
    if name not in props_a or name not in props_b:
        return False
    if required and not any(name in (x.get("required") or ()) for x in (na, nb)):
        return False  # a pydantic tag with a default is not required
    return disjoint(props_a[name], doc, props_b[name], doc)

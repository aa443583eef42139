"""Compatibility rules for objects and arrays: content models, properties, items.

A *content model* says what an object accepts beyond its declared properties: *open*
(no ``additionalProperties``, or ``true``: anything), *partially open* (a schema for
additional properties, or ``patternProperties``), *closed* (``false``). Whether adding
or removing a property is safe depends on it: removing a property is safe when the
reader is open (the old field is simply extra), but breaks a closed reader, which
rejects it. Arrays with tuple ``items``/``prefixItems`` follow the same reading with
``additionalItems`` (or 2020-12 ``items``) in the role of additional properties.

pydantic writes ``additionalProperties: false`` for ``extra='forbid'``, nothing for
``extra='ignore'`` (the default) and ``true`` for ``extra='allow'``, so a contract's
stored schema already says whether its model is open or closed: no annotation is needed.
The lenient policy's premise, that data carries only the fields its writer declares,
holds for ``extra='ignore'`` only: a model with ``extra='allow'`` keeps undeclared
fields and writes them out, and a ``dict`` is nothing but such names, so a writer that
says ``true`` or gives a schema is judged strictly.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from streamguard.schema.jsonschema_doc import Document, Node, has_default

if TYPE_CHECKING:
    from streamguard.schema.jsonschema_compat import Comparer, Finding, Path
    from streamguard.schema.rules import Policy


def _pattern_matches(pattern: str, name: str) -> bool:
    try:
        return re.search(pattern, name) is not None
    except re.error:  # a pattern Python cannot read matches nothing
        return False


class _Content:
    """The content model of one object or array schema."""

    def __init__(self, node: Node, doc: Document, extra_key: str) -> None:
        raw = node.get(extra_key)
        resolved = doc.resolve(raw) if raw is not None else None
        self.permits = resolved is not False
        self.schema: Any = None if resolved in (None, True, {}) or resolved is False else raw
        # Said open (pydantic's extra='allow') or given a schema (a dict's values), not
        # left open: its data carries names it does not declare.
        self.sends_extras = raw is not None and resolved is not False
        patterns = node.get("patternProperties") if extra_key == "additionalProperties" else None
        self.patterns: dict[str, Any] = patterns if isinstance(patterns, dict) else {}

    @property
    def open(self) -> bool:
        return self.permits and self.schema is None and not self.patterns

    @property
    def policy(self) -> Policy | None:
        """The policy its changes are judged by as a writer: strict when it sends extras."""
        return "strict" if self.sends_extras else None

    def schema_for(self, name: str | None) -> Any:
        """The schema an undeclared property (or item) gets, or None if it is refused."""
        if name is not None:
            for pattern, schema in self.patterns.items():
                if _pattern_matches(pattern, name):
                    return schema
        return self.schema


def compare_objects(cmp: Comparer, o: Node, n: Node, path: Path) -> list[Finding]:
    """Required, properties, dependencies, additional properties and size limits."""
    out: list[Finding] = []
    props_o: dict[str, Any] = o.get("properties") or {}
    props_n: dict[str, Any] = n.get("properties") or {}
    req_o, req_n = set(o.get("required") or []), set(n.get("required") or [])
    for name in props_o:
        if name in props_n and (name in req_o) != (name in req_n):
            where = (*path, "required", name)
            if name in req_o:
                out.append(cmp.finding(where, "REQUIRED_ATTRIBUTE_REMOVED"))
            elif has_default(props_n[name], cmp.reader):
                out.append(cmp.finding(where, "REQUIRED_ATTRIBUTE_WITH_DEFAULT_ADDED"))
            else:
                out.append(cmp.finding(where, "REQUIRED_ATTRIBUTE_ADDED"))
    # A name the reader requires without declaring it (hand-written: pydantic declares
    # each): old data may lack it, and no property rule above sees it.
    for name in sorted(req_n - req_o - set(props_n)):
        out.append(cmp.finding((*path, "required", name), "REQUIRED_ATTRIBUTE_ADDED"))
    content_o = _Content(o, cmp.writer, "additionalProperties")
    content_n = _Content(n, cmp.reader, "additionalProperties")
    for name in [*props_o, *(k for k in props_n if k not in props_o)]:
        where = (*path, "properties", name)
        if name in props_o and name in props_n:
            out += cmp.compare(props_o[name], props_n[name], where)
        elif name in props_o:
            out += _removed(cmp, props_o[name], content_n, name, where, "PROPERTY")
        else:
            out += _added_property(cmp, props_n[name], content_o, name, req_n, where)
    out += _patterns(cmp, content_o, content_n, path)
    out += _dependencies(cmp, o, n, path)
    out += _extra(cmp, content_o, content_n, (*path, "additionalProperties"), "PROPERTIES")
    for key in ("maxProperties", "minProperties"):
        out += cmp.limit(path, key, o.get(key), n.get(key))
    if o.get("propertyNames") is not None or n.get("propertyNames") is not None:
        out += cmp.compare(o.get("propertyNames"), n.get("propertyNames"), (*path, "propertyNames"))
    return out


def _removed(
    cmp: Comparer, old: Any, content_n: _Content, name: str | None, where: Path, what: str
) -> list[Finding]:
    # Only the reader's content model matters: can it still read the old field/item?
    if content_n.open:
        return [cmp.finding(where, f"{what}_REMOVED_FROM_OPEN_CONTENT_MODEL")]
    partial = content_n.schema_for(name)
    if partial is not None:
        inner = cmp.compare(old, partial, where)
        covered = "IS_COVERED" if cmp.ok(inner) else "NOT_COVERED"
        return [
            *inner,
            cmp.finding(where, f"{what}_REMOVED_{covered}_BY_PARTIALLY_OPEN_CONTENT_MODEL"),
        ]
    if cmp.writer.classify(old).kind == "never":
        return [cmp.finding(where, f"{what}_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL")]
    return [cmp.finding(where, f"{what}_REMOVED_FROM_CLOSED_CONTENT_MODEL")]


def _added_property(
    cmp: Comparer, new: Any, content_o: _Content, name: str, req_n: set[str], where: Path
) -> list[Finding]:
    required = name in req_n and not has_default(new, cmp.reader)
    if content_o.open:
        # The old writer could have sent this name with any value, or not at all: a
        # required field breaks even if it takes any value (`x: Any`).
        if required:
            return [cmp.finding(where, "REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL")]
        if cmp.reader.classify(new).kind == "any":
            return [cmp.finding(where, "PROPERTY_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL")]
        rule = "OPTIONAL_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL"
        return [cmp.finding(where, rule, content_o.policy)]
    out: list[Finding] = []
    partial = content_o.schema_for(name)
    if partial is not None:
        inner = cmp.compare(partial, new, where)
        covered = "IS_COVERED" if cmp.ok(inner) else "NOT_COVERED"
        out += [
            *inner,
            cmp.finding(where, f"PROPERTY_ADDED_{covered}_BY_PARTIALLY_OPEN_CONTENT_MODEL"),
        ]
    if name in req_n:
        rule = "REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL"
        if not required:
            rule = "REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_UNOPEN_CONTENT_MODEL"
        out.append(cmp.finding(where, rule))
    else:
        out.append(cmp.finding(where, "OPTIONAL_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL"))
    return out


def _patterns(cmp: Comparer, co: _Content, cn: _Content, path: Path) -> list[Finding]:
    out: list[Finding] = []
    for pattern, schema in co.patterns.items():
        where = (*path, "patternProperties", pattern)
        if pattern in cn.patterns:
            out += cmp.compare(schema, cn.patterns[pattern], where)
        elif not cn.open:
            # Names matching the pattern now fall to the reader's additionalProperties.
            out += _removed(cmp, schema, cn, None, where, "PROPERTY")
    for pattern, schema in cn.patterns.items():
        if pattern in co.patterns:
            continue
        where = (*path, "patternProperties", pattern)
        if co.open:
            rule = "PATTERN_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL"
            out.append(cmp.finding(where, rule, co.policy))
        elif co.schema is not None:
            out += cmp.compare(co.schema, schema, where)
        else:
            out.append(cmp.finding(where, "PATTERN_PROPERTY_ADDED_TO_CLOSED_CONTENT_MODEL"))
    return out


def _dependencies(cmp: Comparer, o: Node, n: Node, path: Path) -> list[Finding]:
    def split(node: Node) -> tuple[dict[str, set[str]], dict[str, Any]]:
        arrays: dict[str, set[str]] = {}
        schemas: dict[str, Any] = {}
        for key in ("dependencies", "dependentRequired", "dependentSchemas"):
            for name, value in (node.get(key) or {}).items():
                if isinstance(value, list):
                    arrays[name] = set(value)
                else:
                    schemas[name] = value
        return arrays, schemas

    (arr_o, sch_o), (arr_n, sch_n) = split(o), split(n)
    out: list[Finding] = []
    for name in sorted(set(arr_o) | set(arr_n)):
        where = (*path, "dependencies", name)
        old, new = arr_o.get(name), arr_n.get(name)
        if new is None:
            out.append(cmp.finding(where, "DEPENDENCY_ARRAY_REMOVED"))
        elif old is None:
            out.append(cmp.finding(where, "DEPENDENCY_ARRAY_ADDED"))
        elif old != new:
            rule = "EXTENDED" if new >= old else "NARROWED" if new <= old else "CHANGED"
            out.append(cmp.finding(where, f"DEPENDENCY_ARRAY_{rule}"))
    for name in sorted(set(sch_o) | set(sch_n)):
        where = (*path, "dependencies", name)
        if name not in sch_n:
            out.append(cmp.finding(where, "DEPENDENCY_SCHEMA_REMOVED"))
        elif name not in sch_o:
            out.append(cmp.finding(where, "DEPENDENCY_SCHEMA_ADDED"))
        else:
            out += cmp.compare(sch_o[name], sch_n[name], where)
    return out


def _extra(cmp: Comparer, co: _Content, cn: _Content, where: Path, what: str) -> list[Finding]:
    """additionalProperties / additionalItems themselves."""
    if co.permits != cn.permits:
        rule = f"ADDITIONAL_{what}_{'ADDED' if cn.permits else 'REMOVED'}"
        return [cmp.finding(where, rule, co.policy)]
    if co.schema is None and cn.schema is not None:
        return [cmp.finding(where, f"ADDITIONAL_{what}_NARROWED", co.policy)]
    if cn.schema is None and co.schema is not None:
        return [cmp.finding(where, f"ADDITIONAL_{what}_EXTENDED")]
    if co.schema is not None:
        return cmp.compare(co.schema, cn.schema, where)
    return []


def _items(node: Node, doc: Document) -> tuple[Any, list[Any], _Content]:
    """(schema of every item, tuple item schemas, content model past the tuple)."""
    items = node.get("items")
    if isinstance(node.get("prefixItems"), list):  # 2020-12
        extra = _Content(Node("plain", {"additionalItems": items}), doc, "additionalItems")
        return None, list(node.get("prefixItems")), extra
    extra = _Content(node, doc, "additionalItems")
    if isinstance(items, list):
        return None, items, extra
    return (None if items in (True, {}) else items), [], extra


def compare_arrays(cmp: Comparer, o: Node, n: Node, path: Path) -> list[Finding]:
    """Item schemas, tuples, additional items, and size/uniqueness/contains limits."""
    all_o, tuple_o, extra_o = _items(o, cmp.writer)
    all_n, tuple_n, extra_n = _items(n, cmp.reader)
    if tuple_o and not tuple_n and all_n is not None:
        # A tuple read as a list (tuple[int, int] -> list[int]): each position, and any
        # item past them, meets the list's item schema. Compared as a whole, the tuple's
        # missing item schema read as SCHEMA_ADDED and broke a safe widening.
        out = [
            finding
            for i, item in enumerate(tuple_o)
            for finding in cmp.compare(item, all_n, (*path, "items", str(i)))
        ]
        bound = o.get("maxItems")
        if extra_o.permits and not (isinstance(bound, int) and bound <= len(tuple_o)):
            out += cmp.compare(extra_o.schema, all_n, (*path, "additionalItems"))
    else:
        out = cmp.compare(all_o, all_n, (*path, "items"))
    for i in range(max(len(tuple_o), len(tuple_n))):
        where = (*path, "items", str(i))
        if i < len(tuple_o) and i < len(tuple_n):
            out += cmp.compare(tuple_o[i], tuple_n[i], where)
        elif i < len(tuple_o):
            out += _removed(cmp, tuple_o[i], extra_n, None, where, "ITEM")
        elif extra_o.open:
            empty = cmp.reader.classify(tuple_n[i]).kind == "any"
            rule = (
                "ITEM_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL"
                if empty
                else "ITEM_ADDED_TO_OPEN_CONTENT_MODEL"
            )
            out.append(cmp.finding(where, rule))
        elif extra_o.schema is not None:
            inner = cmp.compare(extra_o.schema, tuple_n[i], where)
            covered = "IS_COVERED" if cmp.ok(inner) else "NOT_COVERED"
            out += [
                *inner,
                cmp.finding(where, f"ITEM_ADDED_{covered}_BY_PARTIALLY_OPEN_CONTENT_MODEL"),
            ]
        else:
            out.append(cmp.finding(where, "ITEM_ADDED_TO_CLOSED_CONTENT_MODEL"))
    out += _extra(cmp, extra_o, extra_n, (*path, "additionalItems"), "ITEMS")
    for key in ("maxItems", "minItems", "maxContains", "minContains"):
        out += cmp.limit(path, key, o.get(key), n.get(key))
    if bool(o.get("uniqueItems")) != bool(n.get("uniqueItems")):
        rule = "UNIQUE_ITEMS_REMOVED" if o.get("uniqueItems") else "UNIQUE_ITEMS_ADDED"
        out.append(cmp.finding((*path, "uniqueItems"), rule))
    if o.get("contains") is not None or n.get("contains") is not None:
        where = (*path, "contains")
        if n.get("contains") is None:
            out.append(cmp.finding(where, "CONTAINS_REMOVED"))
        elif o.get("contains") is None:
            out.append(cmp.finding(where, "CONTAINS_ADDED"))
        else:
            out += cmp.compare(o.get("contains"), n.get("contains"), where)
    return out

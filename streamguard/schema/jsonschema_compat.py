"""Compatibility rules for JSON Schema: can a reader with schema R read data valid for W?

One call compares a *writer* schema (what the data was validated with) and a *reader*
schema (what the consumer validates with) and lists every difference as a
:class:`Finding` with a stable rule id and whether it is safe. The rule ids and the
verdicts follow Confluent Schema Registry's JSON Schema diff (open, partially open and
closed content models; sum and product types; numeric and string limits), so that
``--policy strict`` gives the same answer as a registry would; the differences
streamguard adds (``REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL``, ``FORMAT_*``,
``ENUM_ARRAY_ADDED``, ``ONE_OF_BRANCHES_*``) are listed in docs/schema-compatibility.md.

Policies: ``strict`` is Confluent's default. ``lenient`` (streamguard's default) reads
an open model the way a pydantic model with ``extra='ignore'`` behaves: data never
carries fields its writer's model did not declare, so adding an optional property to an
open model, or closing an open one, is safe. A writer that says
``additionalProperties: true`` (pydantic's ``extra='allow'``, which keeps undeclared
fields and writes them out) is read strictly under both policies.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import Any

from streamguard.schema.jsonschema_doc import Document, Node, canonical, value_key
from streamguard.schema.jsonschema_objects import compare_arrays, compare_objects
from streamguard.schema.jsonschema_overlap import disjoint, tagged_apart
from streamguard.schema.recursion import RecursionGuard
from streamguard.schema.rules import POLICIES, Policy, is_safe

__all__ = [
    "POLICIES",
    "Comparer",
    "Finding",
    "Policy",
    "compare_json_schemas",
    "is_safe",
    "type_name",
]

Path = tuple[str, ...]

_LIMITS = {
    "minLength": "MIN_LENGTH",
    "maxLength": "MAX_LENGTH",
    "minimum": "MINIMUM",
    "maximum": "MAXIMUM",
    "exclusiveMinimum": "EXCLUSIVE_MINIMUM",
    "exclusiveMaximum": "EXCLUSIVE_MAXIMUM",
    "minProperties": "MIN_PROPERTIES",
    "maxProperties": "MAX_PROPERTIES",
    "minItems": "MIN_ITEMS",
    "maxItems": "MAX_ITEMS",
    "minContains": "MIN_CONTAINS",
    "maxContains": "MAX_CONTAINS",
}
_OBJECT_KEYS = frozenset(
    {
        "properties",
        "required",
        "additionalProperties",
        "patternProperties",
        "dependencies",
        "dependentRequired",
        "dependentSchemas",
        "minProperties",
        "maxProperties",
        "propertyNames",
    }
)
# Assertions the rules cannot compare: a change to one is judged by whether the reader
# gains it (may refuse old values) or loses it (accepts more).
_UNCOMPARED = (
    "if",
    "then",
    "else",
    "unevaluatedProperties",
    "unevaluatedItems",
    "$dynamicRef",
    "$recursiveRef",
)
# The formats pydantic writes for UUID1..UUID8; a plain UUID is "uuid".
_UUID_VERSIONS = frozenset(f"uuid{v}" for v in range(1, 9))
_ARRAY_KEYS = frozenset(
    {"items", "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems", "contains"}
)


@dataclass(frozen=True)
class Finding:
    """One difference between writer and reader schema, at a JSON-pointer-like path.

    For a change of type, ``old_type`` and ``new_type`` name the writer's and the
    reader's type (``integer``, ``string | null``), so that a report says what changed
    without the schemas at hand. Type names only: never a value, default or enum symbol.
    """

    path: Path
    rule: str
    safe: bool
    old_type: str | None = None
    new_type: str | None = None


def compare_json_schemas(writer: Any, reader: Any, policy: Policy = "lenient") -> list[Finding]:
    """Every difference met when a ``reader`` schema validates data valid for ``writer``."""
    return Comparer(Document(writer), Document(reader), policy).compare(writer, reader, ())


# Deeper unions than this are named "..." (a recursive union would never end).
_NAME_DEPTH = 3


def type_name(node: Node, doc: Document, depth: int = 0) -> str:
    """A short name for a node's type, as a report shows it: ``integer``,
    ``string | null`` (anyOf/oneOf), ``object & object`` (allOf), ``any``, ``never``.
    From the ``type`` keyword and the combinators only, never from ``enum``, ``const``
    or ``default``, which hold values (``enum`` says that it is one, not which)."""
    if node.kind in ("any", "never"):
        return node.kind
    if node.kind == "combined":
        if depth >= _NAME_DEPTH:
            return "..."
        names: list[str] = []
        for sub in node.subschemas:
            inner = doc.classify(sub)
            name = type_name(inner, doc, depth + 1)
            name = f"({name})" if inner.kind == "combined" else name
            if name not in names:
                names.append(name)
        return (" & " if node.criterion == "allOf" else " | ").join(names)
    kind = node.get("type")
    if isinstance(kind, str):
        return kind
    keys = set(node.schema)
    if "const" in keys or "enum" in keys:
        return "enum"
    if keys & _OBJECT_KEYS:
        return "object"
    if keys & _ARRAY_KEYS:
        return "array"
    return "untyped"


def _types(node: Node) -> frozenset[str] | None:
    value = node.get("type")
    return frozenset([value]) if isinstance(value, str) else None


def _covers(wide: frozenset[str] | None, narrow: frozenset[str] | None) -> bool:
    if wide is None:
        return True
    if narrow is None:
        return False
    return all(t in wide or (t == "integer" and "number" in wide) for t in narrow)


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:  # pragma: no cover - str() of a number always parses
        return None


def _exclusive(node: Node, key: str, plain: str) -> Any:
    # Draft-04 spells an exclusive bound as a boolean beside minimum/maximum.
    value = node.get(key)
    if value is True:
        return node.get(plain)
    return None if value is False else value


_Bound = tuple[Decimal, bool]  # (value, exclusive)


def _bound(node: Node, plain: str, key: str, lower: bool) -> _Bound | None:
    """The bound ``plain`` and its exclusive keyword set together: the tighter of the two,
    the exclusive one on a tie (``minimum: 0`` and ``exclusiveMinimum: 0`` is > 0)."""
    found = [
        (value, exclusive)
        for value, exclusive in (
            (_number(node.get(plain)), False),
            (_number(_exclusive(node, key, plain)), True),
        )
        if value is not None
    ]
    if not found:
        return None
    return max(found) if lower else min(found, key=lambda b: (b[0], not b[1]))


def _admits(reader: _Bound | None, writer: _Bound | None, lower: bool) -> bool:
    """Whether every number within the writer's bound is within the reader's."""
    if reader is None:
        return True
    if writer is None:
        return False
    (r, r_exclusive), (w, w_exclusive) = reader, writer
    if r != w:
        return r < w if lower else r > w
    return w_exclusive or not r_exclusive


class Comparer:
    """One comparison of a writer and a reader document under a policy."""

    def __init__(
        self,
        writer: Document,
        reader: Document,
        policy: Policy,
        guard: RecursionGuard | None = None,
    ) -> None:
        self.writer = writer
        self.reader = reader
        self.policy = policy
        # Pairs being compared and compared, shared with the comparers a oneOf check
        # derives (which meet the same recursive pairs again): keyed by documents and
        # policy too.
        self._guard = RecursionGuard() if guard is None else guard

    def derived(self, writer: Document, reader: Document, policy: Policy) -> Comparer:
        """Another comparison that shares this one's guard against recursion."""
        return Comparer(writer, reader, policy, self._guard)

    def finding(
        self,
        path: Path,
        rule: str,
        policy: Policy | None = None,
        *,
        types: tuple[str, str] | None = None,
    ) -> Finding:
        old, new = types or (None, None)
        return Finding(path, rule, is_safe(rule, policy or self.policy), old, new)

    def retyped(self, path: Path, rule: str, o: Node, n: Node) -> Finding:
        """A finding of ``rule`` naming the writer's and the reader's type."""
        types = (type_name(o, self.writer), type_name(n, self.reader))
        return self.finding(path, rule, types=types)

    def ok(self, findings: Iterable[Finding]) -> bool:
        return all(f.safe for f in findings)

    def compare(self, old: Any, new: Any, path: Path) -> list[Finding]:
        if old is None and new is None:
            return []
        if old is None:
            return [self.finding(path, "SCHEMA_ADDED")]
        if new is None:
            return [self.finding(path, "SCHEMA_REMOVED")]
        # Keyed by what a ref stands for, and an inline union by its text: a recursive
        # model met again through another ref to it (`children[]`), or a recursive union
        # written out again in each field that holds it (`left`, `right`), is the same
        # pair, judged where it was met first, not reported again at each deeper path.
        old, new = self.writer.target(old), self.reader.target(new)
        key = (
            id(self.writer),
            id(self.reader),
            self.policy == "strict",
            _identity(old),
            _identity(new),
        )
        known = self._guard.enter(key, path)
        if known is not None:  # met before, or a recursive model meeting itself
            return known
        try:
            o, n = self.writer.classify(old), self.reader.classify(new)
            found = self._compare_nodes(o, n, path)
            if n.kind == "combined" and n.criterion == "oneOf" and len(n.subschemas) > 1:
                found += self._one_of(o, n, path)
        except BaseException:
            self._guard.abandon(key)
            raise
        self._guard.leave(key, path, found, keep=(old, new))
        return found

    def _one_of(self, o: Node, n: Node, path: Path, required_tags: bool = False) -> list[Finding]:
        """A reader's ``oneOf`` refuses a value two of its branches take: each pair must
        be shown apart for the writer's values. Two branches within two different
        branches of a writer's ``oneOf`` are: a writer's value matched only one of those.
        ``required_tags``: a discriminator tells two branches apart only if one of them
        requires its property (see ``tagged_apart``)."""
        within: dict[int, set[int]] = {}  # reader branch -> writer branches holding it
        if o.kind == "combined" and o.criterion == "oneOf":
            back = self.derived(self.reader, self.writer, "strict")
            within = {
                j: {i for i, old in enumerate(o.subschemas) if self.ok(back.compare(new, old, ()))}
                for j, new in enumerate(n.subschemas)
            }
        same = self.derived(self.reader, self.reader, "strict")
        rules: dict[int, str] = {}
        for k, b in enumerate(n.subschemas):
            for j, a in enumerate(n.subschemas[:k]):
                if any(i != m for i in within.get(j, ()) for m in within.get(k, ())):
                    continue
                if (
                    disjoint(a, self.reader, b, self.reader)
                    or tagged_apart(n, a, b, self.reader, required_tags)
                    or disjoint(o.schema, self.writer, a, self.reader)
                    or disjoint(o.schema, self.writer, b, self.reader)
                ):
                    continue
                # One branch taking every value of the other is an overlap for sure.
                subset = self.ok(same.compare(a, b, ())) or self.ok(same.compare(b, a, ()))
                if rules.get(k) != "ONE_OF_BRANCHES_OVERLAP":
                    rules[k] = f"ONE_OF_BRANCHES_{'' if subset else 'MAY_'}OVERLAP"
        return [self.finding((*path, "oneOf", str(k)), rule) for k, rule in rules.items()]

    def _compare_nodes(self, o: Node, n: Node, path: Path) -> list[Finding]:
        if o.kind != "combined" and n.kind == "combined":
            if len(n.subschemas) == 1:
                found = self.compare(o.schema, n.subschemas[0], path)
                if self.ok(found):
                    return found
            elif n.criterion in ("anyOf", "oneOf"):
                # A plain writer is never a Decimal, so it never meets a decimal string.
                extended = self.retyped(path, "SUM_TYPE_EXTENDED", o, n)
                tries = [
                    (sub, self.compare(o.schema, sub, path))
                    for sub in _decimal_strings(n.subschemas, n, self.reader)
                ]
                for _, found in tries:
                    if self.ok(found):
                        return [*found, extended]
                # None takes it: say why with the branch of its own type (model with
                # model, not with null) that breaks least; it was TYPE_CHANGED. A string
                # read as a Decimal's is still a change of type, as the docs say.
                alike = [
                    found
                    for sub, found in tries
                    if sub is not _DECIMAL_STRING and self._same_type(o, sub)
                ]
                if alike:
                    return [*min(alike, key=lambda f: sum(not x.safe for x in f)), extended]
        elif o.kind == "combined" and n.kind != "combined":
            if len(o.subschemas) == 1:
                found = self.compare(o.subschemas[0], n.schema, path)
                if self.ok(found):
                    return found
            elif o.criterion == "allOf":
                for sub in o.subschemas:
                    found = self.compare(sub, n.schema, path)
                    if self.ok(found):
                        return [*found, self.retyped(path, "PRODUCT_TYPE_NARROWED", o, n)]
            elif n.kind != "any":
                narrowed = self.retyped(path, "SUM_TYPE_NARROWED", o, n)
                # Safe when every branch reads as the one left: int | float -> float.
                olds = _decimal_strings(o.subschemas, o, self.writer)
                found = [f for sub in olds for f in self.compare(sub, n.schema, path)]
                return [*found, replace(narrowed, safe=True)] if self.ok(found) else [narrowed]
        if o.kind != n.kind:
            if o.kind == "never" or n.kind == "any":
                return []
            return [
                self.retyped(path, "TYPE_NARROWED" if o.kind == "any" else "TYPE_CHANGED", o, n)
            ]
        if o.kind == "combined":
            return self._combined(o, n, path)
        if o.kind == "plain":
            return self._plain(o, n, path)
        return []

    # -- combinations ---------------------------------------------------------------
    def _combined(self, o: Node, n: Node, path: Path) -> list[Finding]:
        out: list[Finding] = []
        oc, nc = o.criterion, n.criterion
        single_o, single_n = len(o.subschemas) == 1, len(n.subschemas) == 1
        if oc != nc:
            widened = (
                nc == "anyOf"
                or (nc == "oneOf" and (single_o or oc == "allOf"))
                or (nc == "allOf" and single_o and single_n)
                # A oneOf whose branches no old value can match two of reads as an anyOf.
                # An anyOf's values may lack a discriminator's tag that no branch requires.
                or (nc == "oneOf" and oc == "anyOf" and not self._one_of(o, n, path, True))
            )
            rule = "COMBINED_TYPE_EXTENDED" if widened else "COMBINED_TYPE_CHANGED"
            out.append(self.finding(path, rule, types=(oc, nc)))
            if not widened:
                return out
        olds = list({canonical(s): s for s in o.subschemas}.values())
        news = list({canonical(s): s for s in n.subschemas}.values())
        olds = _decimal_strings(olds, o, self.writer)
        news = _decimal_strings(news, n, self.reader)
        if len(olds) < len(news):
            rule = "PRODUCT_TYPE_EXTENDED" if nc == "allOf" else "SUM_TYPE_EXTENDED"
            out.append(self.retyped(path, rule, o, n))
        elif len(olds) > len(news):
            rule = "PRODUCT_TYPE_NARROWED" if oc == "allOf" else "SUM_TYPE_NARROWED"
            out.append(self.retyped(path, rule, o, n))
        pairs: dict[tuple[int, int], list[Finding]] = {}
        for i, old in enumerate(olds):
            for j, new in enumerate(news):
                pairs[(i, j)] = self.compare(old, new, (*path, oc, str(i)))
        edges = {k for k, v in pairs.items() if self.ok(v)}
        match = _max_matching(len(olds), len(news), edges)
        for i, j in sorted(match.items()):
            out += pairs[(i, j)]
        if "allOf" not in (oc, nc):
            # A union reads an old value with any branch that takes it, not one branch
            # each: int | float | None -> float | None keeps every old value.
            spare = {
                i: next((j for j in range(len(news)) if (i, j) in edges), -1)
                for i in range(len(olds))
                if i not in match
            }
            if -1 not in spare.values():
                for i, partner in sorted(spare.items()):
                    out += pairs[(i, partner)]
                return [
                    replace(f, safe=True) if f.rule == "SUM_TYPE_NARROWED" and f.path == path else f
                    for f in out
                ]
        if len(match) < min(len(olds), len(news)):
            out.append(self.finding(path, "COMBINED_TYPE_SUBSCHEMAS_CHANGED"))
            # Say why: pair each unmatched old branch with a new branch nothing matched, one
            # of its own type first (model with model, not with null), then the one it
            # breaks least; each new branch explains one old branch.
            free = [j for j in range(len(news)) if j not in match.values()]
            misses = sorted(
                (not self._alike(olds[i], news[j]), sum(not f.safe for f in pairs[(i, j)]), i, j)
                for i in range(len(olds))
                if i not in match
                for j in free
            )
            nearest: dict[int, int] = {}
            for _, _, i, j in misses:
                if i not in nearest and j not in nearest.values():
                    nearest[i] = j
            for i, j in sorted(nearest.items()):
                out += pairs[(i, j)]
        return out

    def _alike(self, old: Any, new: Any) -> bool:
        """Whether two branches hold the same type of value (an object and an object)."""
        o, n = self.writer.classify(old), self.reader.classify(new)
        if o.kind != n.kind:
            return False
        to, tn = _types(o), _types(n)
        return o.kind != "plain" or _covers(to, tn) or _covers(tn, to)

    def _same_type(self, o: Node, new: Any) -> bool:
        """Whether a branch declares the writer's type (or a wider or narrower one)."""
        n = self.reader.classify(new)
        to, tn = _types(o), _types(n)
        if o.kind != "plain" or n.kind != "plain" or to is None or tn is None:
            return False
        return _covers(to, tn) or _covers(tn, to)

    # -- plain schemas -----------------------------------------------------------------
    def _plain(self, o: Node, n: Node, path: Path) -> list[Finding]:
        out: list[Finding] = []
        to, tn = _types(o), _types(n)
        if to != tn:
            if _covers(tn, to):
                out.append(self.retyped(path, "TYPE_EXTENDED", o, n))
            elif _covers(to, tn):
                out.append(self.retyped(path, "TYPE_NARROWED", o, n))
            else:
                return [self.retyped(path, "TYPE_CHANGED", o, n)]
        out += self._enum(o, n, path)
        for key in ("minLength", "maxLength"):
            out += self.limit(path, key, o.get(key), n.get(key))
        out += self._bounds(o, n, path)
        out += self._multiple_of(path, o.get("multipleOf"), n.get("multipleOf"))
        out += self._exact(path, "pattern", o.get("pattern"), n.get("pattern"))
        out += self._format(path, o.get("format"), n.get("format"))
        out += self._not(o, n, path)
        out += self._uncompared(o, n, path)
        keys = set(o.schema) | set(n.schema)
        if keys & _OBJECT_KEYS:
            out += compare_objects(self, o, n, path)
        if keys & _ARRAY_KEYS:
            out += compare_arrays(self, o, n, path)
        return out

    def _enum(self, o: Node, n: Node, path: Path) -> list[Finding]:
        old, new = o.values(), n.values()
        where = (*path, "const" if "const" in n.schema or "const" in o.schema else "enum")
        if old is None and new is None:
            return []
        if old is None:
            return [self.finding(where, "ENUM_ARRAY_ADDED")]
        if new is None:
            return [self.finding(where, "ENUM_ARRAY_REMOVED")]
        olds, news = {value_key(v) for v in old}, {value_key(v) for v in new}
        if olds == news:
            return []
        if olds <= news:
            return [self.finding(where, "ENUM_ARRAY_EXTENDED")]
        return [
            self.finding(where, "ENUM_ARRAY_NARROWED" if news <= olds else "ENUM_ARRAY_CHANGED")
        ]

    def limit(self, path: Path, key: str, old: Any, new: Any) -> list[Finding]:
        name = _LIMITS[key]
        a, b = _number(old), _number(new)
        if a == b:
            return []
        if a is None:
            return [self.finding((*path, key), f"{name}_ADDED")]
        if b is None:
            return [self.finding((*path, key), f"{name}_REMOVED")]
        grew = b > a
        return [self.finding((*path, key), f"{name}_{'INCREASED' if grew else 'DECREASED'}")]

    def _bounds(self, o: Node, n: Node, path: Path) -> list[Finding]:
        out: list[Finding] = []
        for plain, key, lower in (
            ("minimum", "exclusiveMinimum", True),
            ("maximum", "exclusiveMaximum", False),
        ):
            found = self.limit(path, plain, o.get(plain), n.get(plain))
            found += self.limit(path, key, _exclusive(o, key, plain), _exclusive(n, key, plain))
            # Each keyword alone misjudges one bound spelled another way: gt=0 -> ge=0 is
            # MINIMUM_ADDED, yet the reader admits every number the writer did.
            if _admits(_bound(n, plain, key, lower), _bound(o, plain, key, lower), lower):
                found = [replace(f, safe=True) for f in found]
            out += found
        return out

    def _multiple_of(self, path: Path, old: Any, new: Any) -> list[Finding]:
        a, b = _number(old), _number(new)
        if a == b:
            return []
        where = (*path, "multipleOf")
        if a is None:
            return [self.finding(where, "MULTIPLE_OF_ADDED")]
        if b is None:
            return [self.finding(where, "MULTIPLE_OF_REMOVED")]
        if b and a % b == 0:
            return [self.finding(where, "MULTIPLE_OF_REDUCED")]
        if a and b % a == 0:
            return [self.finding(where, "MULTIPLE_OF_EXPANDED")]
        return [self.finding(where, "MULTIPLE_OF_CHANGED")]

    def _exact(self, path: Path, key: str, old: Any, new: Any) -> list[Finding]:
        if old == new:
            return []
        name = key.upper()
        change = "ADDED" if old is None else "REMOVED" if new is None else "CHANGED"
        return [self.finding((*path, key), f"{name}_{change}")]

    def _format(self, path: Path, old: Any, new: Any) -> list[Finding]:
        # pydantic's UUID1..UUID8 accept one version each, a plain UUID any of them.
        if old in _UUID_VERSIONS and new == "uuid":
            return [self.finding((*path, "format"), "FORMAT_EXTENDED")]
        if old == "uuid" and new in _UUID_VERSIONS:
            return [self.finding((*path, "format"), "FORMAT_NARROWED")]
        return self._exact(path, "format", old, new)

    def _uncompared(self, o: Node, n: Node, path: Path) -> list[Finding]:
        """Assertions the rules do not read: any difference the reader gains may reject
        old values (it was ignored, so an added ``if``/``then`` passed)."""
        out: list[Finding] = []
        for key in _UNCOMPARED:
            old, new = o.get(key), n.get(key)
            if canonical(old) != canonical(new):
                change = "ADDED" if old is None else "REMOVED" if new is None else "CHANGED"
                out.append(self.finding((*path, key), f"UNCOMPARED_KEYWORD_{change}"))
        return out

    def _not(self, o: Node, n: Node, path: Path) -> list[Finding]:
        old, new = o.get("not"), n.get("not")
        if old is None and new is None:
            return []
        if new is None:
            return [self.finding((*path, "not"), "NOT_REMOVED")]
        if old is None:
            return [self.finding((*path, "not"), "NOT_ADDED")]
        # Reader rejects what its `not` accepts: compare the negated schemas reversed.
        flipped = Comparer(self.reader, self.writer, self.policy)
        inner = flipped.compare(new, old, (*path, "not"))
        if not inner:
            return []
        rule = "NOT_TYPE_NARROWED" if self.ok(inner) else "NOT_TYPE_EXTENDED"
        return [self.finding((*path, "not"), rule)]


def _identity(schema: Any) -> Any:
    """What a compared schema is keyed by: an inline union by its text without the
    field's own title and description (pydantic repeats a recursive union in each field),
    anything else by its object."""
    if isinstance(schema, dict) and any(c in schema for c in ("anyOf", "oneOf", "allOf")):
        return canonical({k: v for k, v in schema.items() if k not in ("title", "description")})
    return id(schema)


# What pydantic writes for a Decimal: ``anyOf: [{"type": "number"}, {"type": "string"}]``.
# Its string branch accepts numeric strings only, which the schema does not say; read as
# any string, `str` -> `Decimal` would pass BACKWARD while every non-numeric old value
# breaks. ``float | str`` has the same schema and is read the same way (too strictly).
# Only in an ``anyOf``, the form pydantic writes: a hand-written ``oneOf`` of a number
# and a string, or ``"type": ["number", "string"]``, means any string, as Confluent's own
# diff reads it.
_DECIMAL_STRING = {"type": "string", "format": "decimal"}


def _decimal_strings(branches: list[Any], union: Node, doc: Document) -> list[Any]:
    """The branches of a union, a bare string beside a number in an ``anyOf`` marked as a
    decimal string."""
    if union.criterion != "anyOf" or union.typed:
        return branches
    kinds = [doc.classify(b) for b in branches]
    if not any(k.kind == "plain" and k.get("type") == "number" for k in kinds):
        return branches
    return [
        _DECIMAL_STRING if k.kind == "plain" and k.schema == {"type": "string"} else b
        for b, k in zip(branches, kinds, strict=True)
    ]


def _max_matching(left: int, right: int, edges: set[tuple[int, int]]) -> dict[int, int]:
    """Maximum bipartite matching (Kuhn's augmenting paths); subschema lists are short."""
    match_right: dict[int, int] = {}

    def augment(i: int, seen: set[int]) -> bool:
        for j in range(right):
            if (i, j) in edges and j not in seen:
                seen.add(j)
                if j not in match_right or augment(match_right[j], seen):
                    match_right[j] = i
                    return True
        return False

    for i in range(left):
        augment(i, set())
    return {i: j for j, i in match_right.items()}

"""Changes between two schema versions, judged in both directions of reading.

A compatibility rule answers one question: can a reader with schema R read data
written with schema W? A *change* between an old and a new version is judged twice:
BACKWARD (new readers, old data) and FORWARD (old readers, new data). The forward pass
compares the schemas the other way round, so its rule ids read new -> old; they are
turned back (``ADDED`` <-> ``REMOVED`` ...) so that each change is named once, as it
happened from old to new, with the directions it breaks in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from streamguard.schema.jsonschema_compat import Finding, Policy, compare_json_schemas

Direction = Literal["BACKWARD", "FORWARD"]

_SWAP = {
    "ADDED": "REMOVED",
    "REMOVED": "ADDED",
    "TO": "FROM",
    "FROM": "TO",
    "INCREASED": "DECREASED",
    "DECREASED": "INCREASED",
    "EXTENDED": "NARROWED",
    "NARROWED": "EXTENDED",
    "REDUCED": "EXPANDED",
    "EXPANDED": "REDUCED",
    "PROMOTED": "DEMOTED",
    "DEMOTED": "PROMOTED",
}

# Rules about versions rather than shapes: their own sentence and fix.
_SPECIAL = {
    "SCHEMA_CHANGED_WITHOUT_VERSION_BUMP": (
        "the schema differs from {old} but __version__ was not bumped, so consumers "
        "cannot tell the two schemas apart",
        "bump __version__ and register the new version; the check then judges the changes "
        "listed against the compatibility mode",
    ),
    "SCHEMA_TYPE_CHANGED": (
        "the wire format changed from {old} to {new} (__wire_format__): consumers of either "
        "version cannot decode records written with the other",
        "keep __wire_format__; to change it, publish the new format under a new subject and "
        "topic and move consumers over",
    ),
    "VERSION_OLDER_THAN_STORED": (
        "the contract is at {new} but the store already holds {old}",
        "set __version__ above the newest stored version, or restore the newer contract",
    ),
}

# (what happened, how to fix it) by family; the first matching pattern wins.
_HINTS: tuple[tuple[str, str], ...] = (
    (
        r"^REQUIRED_(PROPERTY|ATTRIBUTE)_ADDED|^FIELD_ADDED_WITHOUT_DEFAULT",
        "give the new field a default (pydantic: `= None` or `Field(default=...)`) so old data "
        "without it still validates",
    ),
    (
        r"^REQUIRED_(PROPERTY|ATTRIBUTE)_REMOVED|^FIELD_REMOVED_WITHOUT_DEFAULT",
        "first release consumers where the field is optional (or has a default), then stop "
        "sending it",
    ),
    (
        r"REMOVED_FROM_CLOSED|NOT_COVERED",
        "keep the field (deprecated) or let the model ignore unknown fields (extra='ignore') "
        "before removing it",
    ),
    (
        r"ADDED_TO_OPEN_CONTENT_MODEL",
        "old data may carry this name with another type (producers of an open model may send "
        "undeclared fields, and with extra='allow' they do); give the field a new name, or use "
        "the lenient policy if producers only send declared fields (extra='ignore')",
    ),
    (
        r"^ADDITIONAL_(PROPERTIES|ITEMS)_(REMOVED|NARROWED)",
        "keep accepting unknown fields (extra='ignore') until every producer stopped sending them",
    ),
    (
        r"^UNCOMPARED_KEYWORD_",
        "the check cannot compare if/then/else, unevaluatedProperties/Items or dynamic refs: "
        "validate old data with the new schema yourself, then register with --force --reason",
    ),
    (
        r"^ONE_OF_BRANCHES_",
        "keep a oneOf's branches apart (a discriminator field with its own Literal per branch, "
        "or types or ranges that cannot meet), or use anyOf (a plain pydantic union), which "
        "takes a value that several branches take",
    ),
    (
        r"^(TYPE|SUM_TYPE|PRODUCT_TYPE|COMBINED_TYPE|NOT_TYPE)_|^SCHEMA_ADDED|TYPE_CHANGED",
        "widen instead of replacing (e.g. `int | str`, `int -> float`), or publish the new shape "
        "under a new subject",
    ),
    (
        r"^ENUM_|SYMBOL",
        "only add values; to drop one, keep accepting it (map it on read) or bump to a new subject",
    ),
    (
        r"_(ADDED|INCREASED|DECREASED|CHANGED|EXPANDED)$|^FORMAT_NARROWED$",
        "loosen constraints, never tighten them, in a compatible change; tighten in a new subject "
        "or after every old message has expired",
    ),
)


@dataclass(frozen=True)
class Change:
    """One difference from an old to a new schema, with the directions it breaks in.

    A change of type names the old and the new type (``integer``, ``null | string``;
    types only, never a value), so that a report says what changed at the path.
    """

    path: tuple[str, ...]
    rule: str
    breaking_in: frozenset[Direction] = field(default_factory=frozenset)
    old_type: str | None = None
    new_type: str | None = None

    @property
    def types(self) -> str:
        """``old -> new`` type of a change of type, else empty."""
        if self.old_type is None or self.new_type is None:
            return ""
        return f"{self.old_type} -> {self.new_type}"

    @property
    def pointer(self) -> str:
        """JSON-pointer form of the path in the schema document, e.g. ``#/properties/a``."""
        return "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in self.path)

    @property
    def field_path(self) -> str:
        """The path as a reader of the data sees it: ``customer.tier``, ``items[].sku``."""
        return field_path(self.path)

    @property
    def hint(self) -> str:
        """How to make the change compatible (empty for a change that breaks nothing)."""
        if not self.breaking_in:
            return ""
        if self.rule in _SPECIAL:
            return _SPECIAL[self.rule][1]
        widened = re.search(
            r"_(EXTENDED|INCREASED|DECREASED|REMOVED|REDUCED)$|^ADDITIONAL_\w+_ADDED$", self.rule
        )
        if self.breaking_in == {"FORWARD"} and widened and not self.rule.startswith("REQUIRED"):
            return (
                "this widens what producers may send: upgrade every consumer before any "
                "producer sends the new values (BACKWARD allows that order), or keep the old shape"
            )
        for pattern, hint in _HINTS:
            if re.search(pattern, self.rule):
                return hint
        return "make the change in a new subject, or in steps that each keep old data readable"

    def message(self, old: str = "the old version", new: str = "the new version") -> str:
        """One sentence: what changed, and which readers break on which data."""
        if self.rule in _SPECIAL:
            return _SPECIAL[self.rule][0].format(old=old, new=new) + "."
        what = self.rule.lower().replace("_", " ")
        if self.types:
            what += f" from {self.old_type} to {self.new_type}"
        where = self.field_path
        parts = []
        if "BACKWARD" in self.breaking_in:
            parts.append(f"consumers on {new} reject data written with {old}")
        if "FORWARD" in self.breaking_in:
            parts.append(f"consumers on {old} reject data written with {new}")
        effect = " and ".join(parts) if parts else "readers in both directions are unaffected"
        return f"{what} at {where}: {effect}."


# Keywords that end a path to a constraint: the rule id already names them.
_CONSTRAINTS = frozenset(
    [
        "const",
        "enum",
        "minLength",
        "maxLength",
        "pattern",
        "format",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minProperties",
        "maxProperties",
        "minItems",
        "maxItems",
        "uniqueItems",
        "minContains",
        "maxContains",
        "symbols",
    ]
)


def field_path(path: tuple[str, ...]) -> str:
    """Render a schema path the way the data is addressed (``(root)`` for the top)."""
    out = ""
    i = 0
    while i < len(path):
        part = path[i]
        nxt = path[i + 1] if i + 1 < len(path) else None
        if nxt is None and part in _CONSTRAINTS:
            # The constraint the rule already names. A field called `format` or `enum`
            # never gets here: it is taken with the `properties` before it.
            break
        if part in ("properties", "fields", "required", "dependencies") and nxt is not None:
            out += ("." if out else "") + nxt
            i += 2
            continue
        if part == "items" and nxt is not None and nxt.isdigit():
            out += f"[{nxt}]"
            i += 2
            continue
        if part in ("items", "additionalItems"):
            out += "[]"
        elif part in ("additionalProperties", "values"):
            out += "{}"
        elif part in ("anyOf", "oneOf", "allOf", "branches") and nxt is not None:
            out += f"<{part}[{nxt}]>"
            i += 2
            continue
        else:
            out += f"/{part}"
        i += 1
    return out or "(root)"


def invert_rule(rule: str) -> str:
    """The name of a change seen from the other side (``X_ADDED`` <-> ``X_REMOVED``)."""
    return "_".join(_SWAP.get(word, word) for word in rule.split("_"))


def merge_directions(backward: list[Finding], forward: list[Finding]) -> list[Change]:
    """One list of changes named old -> new, each knowing the directions it breaks in.

    The forward pass read new -> old, so its types are swapped back as its rule is."""
    merged: dict[tuple[tuple[str, ...], str], set[Direction]] = {}
    types: dict[tuple[tuple[str, ...], str], tuple[str | None, str | None]] = {}
    for f in backward:
        merged.setdefault((f.path, f.rule), set())
        if f.old_type is not None:
            types.setdefault((f.path, f.rule), (f.old_type, f.new_type))
        if not f.safe:
            merged[(f.path, f.rule)].add("BACKWARD")
    for f in forward:
        key = (f.path, invert_rule(f.rule))
        if key not in merged and f.safe:
            continue  # a safe change seen only from the other side adds nothing new
        merged.setdefault(key, set())
        if f.old_type is not None:
            types.setdefault(key, (f.new_type, f.old_type))
        if not f.safe:
            merged[key].add("FORWARD")
    # The two passes name one addition or removal differently (an optional property
    # added to a closed model, seen back as a property removed from it); its safe name
    # would say "readers in both directions are unaffected" beside the breaking one.
    # Only where the forward pass broke (every safe change left is the backward pass's):
    # a path the backward pass breaks itself may hold another change of its own (an
    # Avro field renamed with an alias and narrowed), which ``schema diff`` must list.
    broken = {f.path for f in forward if not f.safe}
    return [
        Change(key[0], key[1], frozenset(dirs), *types.get(key, (None, None)))
        for key, dirs in merged.items()
        if dirs or key[0] not in broken
    ]


def diff_json_schemas(old: Any, new: Any, policy: Policy = "lenient") -> list[Change]:
    """Every change from ``old`` to ``new`` JSON Schema, judged in both directions."""
    return merge_directions(
        compare_json_schemas(old, new, policy), compare_json_schemas(new, old, policy)
    )

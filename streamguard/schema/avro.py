"""Avro contracts: deriving the ``.avsc`` from a contract, and Avro schema resolution.

A contract with ``__wire_format__ = "avro"`` is written as Avro, so its evolution follows
Avro's schema resolution rules, not JSON Schema's: a reader field missing from the
writer needs a default, writer fields the reader lacks are skipped, ``int`` is promoted
to ``long``/``float``/``double``, an enum symbol the reader lacks needs the reader's
enum default, each writer union branch must resolve to some reader branch, and named
types match by name or by the reader's aliases.

The ``.avsc`` is derived from the contract's JSON Schema so that both stored files
describe the same model: ``int`` -> ``long``, ``float`` -> ``double``, ``X | None`` ->
``["null", X]`` (default null; another default puts the branch holding it first),
``Literal``/``Enum`` of names -> ``enum``, nested models -> records, ``list`` ->
``array``, ``dict[str, X]`` -> ``map``. UUID and datetime
travel as strings (their JSON form), so a payload validated by pydantic in JSON mode
encodes unchanged; Decimal, whose JSON Schema is ``anyOf: [number, string]``, becomes
``["double", "string"]`` and is written as its string branch. ``Any`` and fixed-length
tuples have no Avro type and are refused, and so is a list whose items take no bytes in
Avro (``list[None]``, a list of a model without fields): see ``zero_width_array``.
"""

from __future__ import annotations

import re
from typing import Any

from streamguard.contracts import Contract
from streamguard.errors import ConfigurationError
from streamguard.schema.jsonschema_compat import Finding
from streamguard.schema.jsonschema_doc import Document, SchemaError, json_kind
from streamguard.schema.recursion import RecursionGuard

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
_PROMOTIONS = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}


def contract_avro_schema(contract: type[Contract]) -> dict[str, Any]:
    """The Avro record schema of a contract, derived from its JSON Schema."""
    # The raw (unsorted) schema keeps the model's field order, which Avro's binary
    # encoding depends on; the stored JSON Schema is sorted for stable diffs.
    schema = contract.model_json_schema(mode="validation")
    namespace = ".".join(contract.__subject__.split(".")[:-1]) or None
    # Named after the subject, not the Python class: Avro resolves records and enums by
    # name, and successive versions of a contract often live in classes named V1, V2.
    name = re.sub(r"[^A-Za-z0-9_]", "_", contract.__subject__.split(".")[-1])
    if not re.match(r"[A-Za-z_]", name):
        name = f"_{name}"
    # A model that refers to itself is a $ref into its own $defs: the root record is that
    # definition (read as the bare $ref, it had no fields, and every record encoded empty).
    doc = Document(schema)
    derived = _Deriver(doc, namespace).record(doc.resolve(schema), name, schema.get("$ref"))
    if not isinstance(derived, dict):  # pragma: no cover - a root model is always a record
        raise ConfigurationError(f"{contract.__qualname__}: root is not a record")
    where = zero_width_array(derived)
    if where is not None:
        raise ConfigurationError(
            f"{contract.__qualname__}: Avro field {where} is a list of items that take no "
            "bytes in Avro (None, or a model whose fields are all None or that has none): a "
            "record of a few bytes could claim a billion of them and hold a consumer for "
            "minutes, so streamguard refuses the schema; count them with an int, or give "
            "the items a field that carries data"
        )
    return derived


_COMPLEX = {"record", "error", "enum", "fixed", "array", "map"}


def zero_width_array(schema: Any) -> str | None:
    """Where ``schema`` has an array whose items take no bytes on the wire, as a path with
    the array's type (``Order.markers (array<null>)``), else None.

    Avro writes an array as blocks, each opening with its item count. Items of ``null``,
    of a ``fixed`` of size 0, or of a record whose fields all take no bytes (or that has
    none) are zero bytes each, so nothing but that count bounds the work of reading them:
    a record of 15 bytes may claim 10^9 items, which fastavro reads one by one (46 s of
    CPU measured), and a larger count is a hang or an out-of-memory crash, on every
    restart. Every other item takes a byte at least (an enum's or union's index, a
    length), so ``max_bytes`` bounds its count, and a map's entries are bounded by their
    keys. Readers refuse such schemas up front instead of scanning each record: no
    schema a contract derives needs one, and the check costs nothing per record.
    """
    qualified = _qualified(schema, "", set())
    names = _names(qualified)
    empty: dict[str, bool] = {}  # record full name -> takes no bytes

    def takes_nothing(node: Any) -> bool:
        if isinstance(node, str):
            if node in _PRIMITIVES or node not in names:
                return node == "null"
            node = names[node]
        if not isinstance(node, dict):
            return False  # a union: its branch index takes a byte
        kind = node.get("type")
        if isinstance(kind, dict | list) or (isinstance(kind, str) and kind not in _COMPLEX):
            return takes_nothing(kind)  # {"type": "null"}, {"type": "Name"}, {"type": {...}}
        if kind == "fixed":
            return node.get("size") == 0
        name = node.get("name")
        if kind not in ("record", "error") or not isinstance(name, str):
            return False
        known = empty.get(name)
        if known is None:
            # A record that holds itself without an array, map or union in between never
            # ends: fastavro recurses until RecursionError, which is bounded.
            empty[name] = False
            fields = node.get("fields", [])
            known = empty[name] = all(
                isinstance(f, dict) and takes_nothing(f.get("type")) for f in fields
            )
        return known

    def find(node: Any, path: str) -> str | None:
        if isinstance(node, list):
            return next((found for b in node if (found := find(b, path)) is not None), None)
        if not isinstance(node, dict):
            return None  # a name refers to a type defined (and searched) where it first is
        kind = node.get("type")
        if kind in ("record", "error"):
            base = path or _shown_name(str(node.get("name", "")).rsplit(".", 1)[-1])
            for field in node.get("fields", []):
                if isinstance(field, dict):
                    found = find(field.get("type"), f"{base}.{_shown_name(field.get('name'))}")
                    if found is not None:
                        return found
            return None
        if kind == "array":
            items = node.get("items")
            if takes_nothing(items):
                return f"{path or '(root)'} (array<{_shown_name(avro_type_name(items))}>)"
            return find(items, f"{path}[]")
        if kind == "map":
            return find(node.get("values"), f"{path}{{}}")
        return find(kind, path) if isinstance(kind, dict | list) else None

    return find(qualified, "")


def recursive(schema: Any) -> bool:
    """Whether a record of ``schema`` holds itself, directly or through other types (a
    tree's ``children: list[Node]``): then nothing but a record's bytes bounds how deep it
    nests, and fastavro's compiled reader recurses on the C stack, so a record of 10 KB
    nesting 5,000 levels crashes the process (SIGSEGV) instead of raising. A name that
    refers to a type enclosing it is the only way to a cycle: a type is defined before
    any reference to it, so one defined elsewhere is complete and holds no cycle."""

    def walk(node: Any, enclosing: frozenset[str]) -> bool:
        if isinstance(node, str):
            return node in enclosing
        if isinstance(node, list):
            return any(walk(branch, enclosing) for branch in node)
        if not isinstance(node, dict):
            return False
        kind = node.get("type")
        if kind in ("record", "error"):
            inner = enclosing | {str(node.get("name"))}
            fields = node.get("fields", [])
            return any(walk(f.get("type"), inner) for f in fields if isinstance(f, dict))
        if kind == "array":
            return walk(node.get("items"), enclosing)
        if kind == "map":
            return walk(node.get("values"), enclosing)
        if isinstance(kind, str) and kind in _COMPLEX:
            return False  # an enum or fixed
        return isinstance(kind, dict | list | str) and walk(kind, enclosing)

    return walk(_qualified(schema, "", set()), frozenset())


def _shown_name(name: Any) -> str:
    """An Avro name as an error may show it, or ``?``: a writer schema from a registry is
    any producer's text, and fastavro does not check its names (a newline in one would
    forge a log line)."""
    return name[:64] if isinstance(name, str) and _NAME.fullmatch(name) else "?"


class _Deriver:
    def __init__(self, doc: Document, namespace: str | None) -> None:
        self.doc = doc
        self.namespace = namespace
        self.defined: set[str] = set()
        self.refs: dict[str, str] = {}  # $ref -> the Avro name its type was defined under
        self.named: dict[str, dict[str, Any]] = {}  # Avro name -> its record or enum

    def claim(self, name: str, ref: str | None) -> str:
        """The name of a new named type: ``name``, or ``name_2``, ``name_3``... when another
        type holds it (a nested model named like the subject's record, say). A name already
        held names another type: reusing it gave a field the wrong record or enum."""
        claimed, n = name, 1
        while claimed in self.defined:
            n += 1
            claimed = f"{name}_{n}"
        self.defined.add(claimed)
        if ref is not None:
            self.refs[ref] = claimed
        return claimed

    def record(self, schema: dict[str, Any], name: str, ref: str | None = None) -> Any:
        name = self.claim(name, ref)
        required = set(schema.get("required", []))
        fields: list[dict[str, Any]] = []
        out: dict[str, Any] = {"type": "record", "name": name, "fields": fields}
        if self.namespace:
            out["namespace"] = self.namespace
        self.named[name] = out
        for field_name, prop in schema.get("properties", {}).items():
            if not _NAME.match(field_name):
                raise ConfigurationError(
                    f"field {field_name!r} of {name} is not a valid Avro name; use a pydantic "
                    "alias-free name matching [A-Za-z_][A-Za-z0-9_]*"
                )
            avro_type = self.type_of(prop, f"{name}_{field_name}")
            field: dict[str, Any] = {"name": field_name, "type": avro_type}
            if isinstance(prop, dict) and "default" in prop:
                field["default"] = prop["default"]
                if isinstance(avro_type, list):
                    field["type"] = self.default_first(avro_type, prop["default"])
            elif field_name not in required and isinstance(avro_type, list) and "null" in avro_type:
                field["default"] = None
            fields.append(field)
        return out

    def default_first(self, union: list[Any], default: Any) -> list[Any]:
        """``union`` with the first branch that holds ``default`` moved to the front.

        Avro reads a union field's default as a value of the union's first branch, so
        ``int | None = 5`` must be ``["long", "null"]`` and a Decimal's ``"1.50"`` its
        string branch first: with ``null`` or ``double`` first, the schema is invalid
        Avro, which registries refuse and other readers cannot resolve.
        """
        branch = next((b for b in union if self.holds(b, default)), None)
        if branch is None or branch is union[0]:
            return union
        return [branch, *(b for b in union if b is not branch)]

    def holds(self, avro: Any, value: Any) -> bool:
        """Whether the JSON ``value`` is a value of the (non-union) Avro type ``avro``."""
        if isinstance(avro, str):
            avro = self.named.get(avro, avro)
        kind = avro if isinstance(avro, str) else avro.get("type")
        if value is None or isinstance(value, bool):
            return kind == ("null" if value is None else "boolean")
        if isinstance(value, int | float):
            return kind == "double" or (kind == "long" and isinstance(value, int))
        if isinstance(value, str):
            return kind == "string" or (kind == "enum" and value in avro["symbols"])
        if isinstance(value, list):
            return kind == "array"
        if isinstance(value, dict):
            fields = {f["name"] for f in avro.get("fields", [])} if kind == "record" else set()
            return kind == "map" or (kind == "record" and set(value) <= fields)
        return False

    def type_of(self, schema: Any, hint: str) -> Any:
        ref = schema.get("$ref") if isinstance(schema, dict) else None
        if isinstance(ref, str) and ref in self.refs:
            return self.refs[ref]
        name = ref.rsplit("/", 1)[-1] if isinstance(ref, str) else hint
        resolved = self.doc.resolve(schema)
        if not isinstance(resolved, dict) or not resolved:
            raise _untyped(hint)
        branches = resolved.get("anyOf") or resolved.get("oneOf")
        if isinstance(branches, list):
            # The one branch of `X | None` keeps the field's name: an inline enum renamed
            # when its field became nullable would no longer resolve (Avro matches named
            # types by name), and that widening would read as a type change.
            null = {"type": "null"}
            single = sum(1 for b in branches if self.doc.resolve(b) != null) == 1
            mapped: list[Any] = []
            for i, branch in enumerate(branches):
                avro = self.type_of(branch, name if single else f"{name}_{i}")
                # A branch that is a union itself (`Annotated[Decimal, Field(...)] | None`,
                # whose description keeps pydantic from flattening it) joins this one:
                # Avro has no union in a union, and every reader but fastavro refuses it.
                for member in avro if isinstance(avro, list) else [avro]:
                    if member not in mapped:
                        mapped.append(member)
            if "null" in mapped:  # null first, so that `= None` is a valid default
                mapped.remove("null")
                mapped.insert(0, "null")
            return mapped[0] if len(mapped) == 1 else mapped
        if isinstance(resolved.get("enum"), list) or "const" in resolved:
            values = resolved.get("enum", [resolved.get("const")])
            if all(isinstance(v, str) and _NAME.match(v) for v in values):
                name = self.claim(name, ref if isinstance(ref, str) else None)
                enum = self.named[name] = {"type": "enum", "name": name, "symbols": list(values)}
                return enum
        kind = resolved.get("type")
        if kind == "object":
            if "properties" in resolved:
                return self.record(resolved, name, ref if isinstance(ref, str) else None)
            values = resolved.get("additionalProperties")
            return {"type": "map", "values": self.type_of(values or {}, f"{name}_value")}
        if kind == "array":
            if "prefixItems" in resolved:
                raise ConfigurationError(
                    f"Avro type {hint}: an Avro contract cannot hold a fixed-length tuple "
                    "(Avro has none); use a list of one type, or a nested model"
                )
            return {
                "type": "array",
                "items": self.type_of(resolved.get("items", {}), f"{name}_item"),
            }
        if kind is None:
            if "enum" in resolved or "const" in resolved:
                # Literal["a", 1]: its JSON Schema has no type; "of any type (Any...)" misled.
                raise ConfigurationError(
                    f"Avro type {hint}: a Literal or Enum whose values are of several types "
                    "has no Avro type (an Avro field holds one); use values of one type, "
                    "valid names for an Avro enum"
                )
            raise _untyped(hint)
        simple = {"integer": "long", "number": "double", "boolean": "boolean", "null": "null"}
        return simple.get(str(kind), "string")


def _untyped(hint: str) -> ConfigurationError:
    """Any, or a dict or list without a value type: an Avro field needs one type, and the
    string field this used to become refused every value but a string."""
    return ConfigurationError(
        f"Avro type {hint}: an Avro contract cannot hold a value of any type (Any, or a "
        "dict or list without a value type); give it a type, or a nested model"
    )


# -- schema resolution ---------------------------------------------------------------


def compare_avro_schemas(writer: Any, reader: Any) -> list[Finding]:
    """Every difference met when a ``reader`` schema resolves data of ``writer``."""
    check_avro_shape(writer)
    check_avro_shape(reader)
    writer, reader = _qualified(writer, "", set()), _qualified(reader, "", set())
    return _Resolver(_names(writer), _names(reader)).resolve(writer, reader, ())


def check_avro_shape(schema: Any, where: str = "(root)") -> None:
    """Raise SchemaError where ``schema`` is not shaped as the rules read Avro: a hand-edited
    ``.avsc`` (``"fields": {...}``, a field without a type) ended the check with a
    traceback and exit 1, which CI reads as a breaking change. Names stay unchecked: a
    reference to a type defined elsewhere (a registry's schema reference) reads as a name."""
    if isinstance(schema, str):
        return
    if isinstance(schema, list):
        for branch in schema:
            check_avro_shape(branch, where)
        return
    if not isinstance(schema, dict) or "type" not in schema:
        what = "an object without 'type'" if isinstance(schema, dict) else json_kind(schema)
        raise SchemaError(f"Avro type at {where} must be a name, a union or a type, not {what}")
    kind = schema["type"]
    if kind in ("record", "error", "enum", "fixed"):
        _texts(schema, "name", where, single=True)
        _texts(schema, "aliases", where)
    if kind in ("record", "error"):
        fields = schema.get("fields", [])
        if not isinstance(fields, list):
            raise SchemaError(f"'fields' at {where} must be a list, not {json_kind(fields)}")
        for field in fields:
            if not isinstance(field, dict) or "type" not in field:
                raise SchemaError(f"each of 'fields' at {where} must be an object with a 'type'")
            _texts(field, "name", where, single=True)
            _texts(field, "aliases", where)
            check_avro_shape(field["type"], f"{where}.{field['name']}".removeprefix("(root)."))
    elif kind == "enum":
        _texts(schema, "symbols", where, required=True)
    elif kind in ("array", "map"):
        key = "items" if kind == "array" else "values"
        if key not in schema:
            raise SchemaError(f"Avro {kind} at {where} needs {key!r}")
        check_avro_shape(schema[key], where)
    elif kind not in ("fixed", *_PRIMITIVES):
        check_avro_shape(kind, where)  # {"type": {...}}, {"type": [...]}, {"type": "Name"}


def _texts(
    schema: dict[str, Any], key: str, where: str, single: bool = False, required: bool = False
) -> None:
    """Raise SchemaError unless ``key`` is text (``single``) or a list of texts."""
    if key not in schema:
        if single or required:
            raise SchemaError(f"Avro {schema.get('type')} at {where} needs {key!r}")
        return
    value = schema[key]
    ok = (
        isinstance(value, str)
        if single
        else isinstance(value, list) and all(isinstance(v, str) for v in value)
    )
    if not ok:
        what = "a string" if single else "a list of strings"
        raise SchemaError(f"{key!r} at {where} must be {what}, not {json_kind(value)}")


def _qualified(schema: Any, ns: str, defined: set[str]) -> Any:
    """A copy of ``schema`` in which every named type, alias and reference carries its
    full name, as Avro parsers resolve them: a name without a dot is in the namespace of
    the type that encloses it (a reference falls back to the null namespace). Two types
    of one short name in two namespaces (``billing.Address`` holding a ``legacy.Address``)
    are then told apart; keyed by short names, the inner one read as the outer."""
    if isinstance(schema, list):
        return [_qualified(branch, ns, defined) for branch in schema]
    if isinstance(schema, str):
        if schema in _PRIMITIVES or "." in schema:
            return schema
        full = _full(schema, ns)
        return full if full in defined else schema
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    kind = schema.get("type")
    if kind in ("record", "error", "enum", "fixed") and isinstance(schema.get("name"), str):
        name: str = schema["name"]
        ns = name.rsplit(".", 1)[0] if "." in name else schema.get("namespace") or ""
        out["name"] = _full(name, ns)
        defined.add(out["name"])
        if "aliases" in schema:
            out["aliases"] = [_full(alias, ns) for alias in schema["aliases"]]
        if "fields" in schema:
            out["fields"] = [
                {**f, "type": _qualified(f["type"], ns, defined)} for f in schema["fields"]
            ]
    elif kind == "array":
        out["items"] = _qualified(schema["items"], ns, defined)
    elif kind == "map":
        out["values"] = _qualified(schema["values"], ns, defined)
    elif kind is not None:  # {"type": {...}}, {"type": [...]} or {"type": "Name"}
        out["type"] = _qualified(kind, ns, defined)
    return out


def _names(schema: Any, found: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every named type of a ``_qualified`` schema, by full name."""
    found = {} if found is None else found
    if isinstance(schema, list):
        for branch in schema:
            _names(branch, found)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "error", "enum", "fixed"):
            found[schema["name"]] = schema
            for field in schema.get("fields", []):
                _names(field["type"], found)
        elif kind == "array":
            _names(schema["items"], found)
        elif kind == "map":
            _names(schema["values"], found)
        elif isinstance(kind, dict | list):
            _names(kind, found)
    return found


def _full(name: str, namespace: str) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def avro_type_name(schema: Any, depth: int = 0) -> str:
    """A short name for an Avro type, as a report shows it: ``int``, ``null | string``
    (a union), ``array<long>``, ``map<string>``, a record's, enum's or fixed's own name
    (without its namespace). Never an enum's symbols, a default or any other value."""
    if isinstance(schema, list):
        names = [avro_type_name(branch, depth + 1) for branch in schema]
        return " | ".join(f"({n})" if " | " in n else n for n in names)
    if isinstance(schema, str):
        return schema.rsplit(".", 1)[-1]
    if not isinstance(schema, dict):
        return "untyped"
    kind = schema.get("type")
    if kind in ("record", "error", "enum", "fixed") and isinstance(schema.get("name"), str):
        return str(schema["name"]).rsplit(".", 1)[-1]
    if depth >= 3 and kind in ("array", "map"):
        return f"{kind}<...>"
    if kind == "array":
        return f"array<{avro_type_name(schema.get('items'), depth + 1)}>"
    if kind == "map":
        return f"map<{avro_type_name(schema.get('values'), depth + 1)}>"
    return avro_type_name(kind, depth + 1)


class _Resolver:
    def __init__(self, writer_names: dict[str, Any], reader_names: dict[str, Any]) -> None:
        self.wn = writer_names
        self.rn = reader_names
        # Named pairs being compared and compared: a recursive record meeting itself is
        # judged where it started, and a pair's findings are reused where it recurs (each
        # branch of a union is tried with each of the other's, exponentially often).
        self._guard = RecursionGuard()

    def _deref(self, schema: Any, names: dict[str, Any]) -> Any:
        if isinstance(schema, str) and schema not in _PRIMITIVES:
            return names.get(schema, schema)
        if isinstance(schema, dict) and schema.get("type") in _PRIMITIVES:
            return schema["type"]  # {"type": "string", "logicalType": ...} reads as string
        if isinstance(schema, dict) and isinstance(schema.get("type"), dict | list):
            return self._deref(schema["type"], names)
        return schema

    def readable(self, writer: Any, reader: Any) -> bool:
        return all(f.safe for f in self.resolve(writer, reader, ()))

    def resolve(self, writer: Any, reader: Any, path: tuple[str, ...]) -> list[Finding]:
        w, r = self._deref(writer, self.wn), self._deref(reader, self.rn)
        types = (avro_type_name(w), avro_type_name(r))
        if isinstance(w, list):
            out: list[Finding] = []
            for i, branch in enumerate(w):
                if isinstance(r, list):
                    ok = any(self.readable(branch, rb) for rb in r)
                else:
                    ok = self.readable(branch, r)
                if not ok:
                    where = (*path, "branches", str(i))
                    out.append(Finding(where, "SUM_TYPE_NARROWED", False, *types))
            return out
        if isinstance(r, list):
            for branch in r:
                found = self.resolve(w, branch, path)
                if all(f.safe for f in found):
                    return [*found, Finding(path, "SUM_TYPE_EXTENDED", True, *types)]
            return [Finding(path, "TYPE_CHANGED", False, *types)]
        wk = w if isinstance(w, str) else w.get("type")
        rk = r if isinstance(r, str) else r.get("type")
        if wk != rk:
            if rk in _PROMOTIONS.get(str(wk), set()):
                return [Finding(path, "TYPE_EXTENDED", True, *types)]
            if wk in _PROMOTIONS.get(str(rk), set()):
                return [Finding(path, "TYPE_NARROWED", False, *types)]
            return [Finding(path, "TYPE_CHANGED", False, *types)]
        if isinstance(w, str):
            return []
        return self._named(w, r, path)

    def _named(self, w: dict[str, Any], r: dict[str, Any], path: tuple[str, ...]) -> list[Finding]:
        kind = w["type"]
        if kind == "array":
            return self.resolve(w["items"], r["items"], (*path, "items"))
        if kind == "map":
            return self.resolve(w["values"], r["values"], (*path, "values"))
        out: list[Finding] = []
        if w["name"].split(".")[-1] != r["name"].split(".")[-1] and w["name"] not in r.get(
            "aliases", []
        ):
            out.append(Finding(path, "NAME_CHANGED", False))
        key = (w["name"], r["name"])
        known = self._guard.enter(key, path)
        if known is not None:
            return [*out, *known]
        found: list[Finding] = []
        try:
            if kind == "enum":
                found = self._enum(w, r, path)
            elif kind == "fixed" and w.get("size") != r.get("size"):
                found = [Finding(path, "FIXED_SIZE_CHANGED", False)]
            elif kind in ("record", "error"):
                found = self._record(w, r, path)
        except BaseException:
            self._guard.abandon(key)
            raise
        self._guard.leave(key, path, found)
        return [*out, *found]

    def _enum(self, w: dict[str, Any], r: dict[str, Any], path: tuple[str, ...]) -> list[Finding]:
        old, new = set(w["symbols"]), set(r["symbols"])
        where = (*path, "symbols")
        if old <= new:
            return [Finding(where, "ENUM_ARRAY_EXTENDED", True)] if old != new else []
        if r.get("default") in new:  # unknown writer symbols read as the reader's default
            return [Finding(where, "ENUM_SYMBOL_REMOVED_WITH_DEFAULT", True)]
        return [Finding(where, "ENUM_ARRAY_NARROWED", False)]

    def _record(self, w: dict[str, Any], r: dict[str, Any], path: tuple[str, ...]) -> list[Finding]:
        out: list[Finding] = []
        by_name = {f["name"]: f for f in w.get("fields", [])}
        used: set[str] = set()
        for field in r.get("fields", []):
            where = (*path, "fields", field["name"])
            names = [field["name"], *field.get("aliases", [])]
            match = next((by_name[n] for n in names if n in by_name), None)
            if match is None:
                rule = (
                    "FIELD_ADDED_WITH_DEFAULT"
                    if "default" in field
                    else "FIELD_ADDED_WITHOUT_DEFAULT"
                )
                out.append(Finding(where, rule, "default" in field))
                continue
            used.add(match["name"])
            if match["name"] != field["name"]:
                out.append(Finding(where, "FIELD_RENAMED_WITH_ALIAS", True))
            out += self.resolve(match["type"], field["type"], where)
        for name in by_name:
            if name not in used:
                out.append(Finding((*path, "fields", name), "FIELD_REMOVED", True))
        return out

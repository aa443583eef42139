"""A differential fuzzer of the JSON Schema compatibility check against pydantic itself.

Random contract versions are made by applying realistic evolutions to random models;
the check's verdict per mode (``check_contract``, the code behind ``schema check``) is
compared with what really happens when consumers of one version validate what producers
of another write (``JsonCodec().encode`` on a valid writer instance, then the reader's
``validate_json``). A change the check passes while some instance breaks its reader is
*unsound*.

Types are described by small dicts (``{"k": "int", "ge": 0}``) so that one description
gives both the pydantic annotation and a generator of values at the edges of its range.
"""

from __future__ import annotations

import copy
import enum
import json
import random
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from streamguard.codecs import JsonCodec
from streamguard.contracts import _REGISTRY, Contract
from streamguard.schema.checks import check_contract
from streamguard.schema.jsonschema_compat import Policy
from streamguard.schema.store import SchemaStore

Spec = dict[str, Any]
MISSING: Any = object()
WORDS = ("a", "b", "c", "d", "e", "f")
MODES = (
    "BACKWARD",
    "FORWARD",
    "FULL",
    "BACKWARD_TRANSITIVE",
    "FORWARD_TRANSITIVE",
    "FULL_TRANSITIVE",
)
_CODEC = JsonCodec()
EXTRAS = True  # producers of extra='allow' models forward undeclared fields


# -- random types ------------------------------------------------------------------------
def scalar(rng: random.Random) -> Spec:
    kind = rng.choice(
        ["int", "int", "float", "str", "str", "bool", "lit", "enum", "uuid", "dt", "decimal"]
    )
    if kind == "lit" or kind == "enum":
        return {"k": kind, "vals": sorted(rng.sample(WORDS, rng.randint(2, 4)))}
    spec: Spec = {"k": kind}
    if kind in ("int", "float", "decimal") and rng.random() < 0.3:
        spec[rng.choice(["ge", "le", "gt", "lt"])] = rng.choice([-5, 0, 5, 10])
    if kind == "str" and rng.random() < 0.3:
        spec[rng.choice(["min_length", "max_length"])] = rng.choice([1, 3, 8])
    return spec


def _kinds(t: Spec) -> set[str]:
    if t["k"] == "union":
        return {k for a in t["alts"] for k in _kinds(a)}
    return _kinds(t["inner"]) if t["k"] == "opt" else {t["k"]}


def union_alt(rng: random.Random, t: Spec) -> Spec:
    """Another branch for a union with ``t``. Never ``str`` beside a ``Decimal``: pydantic
    describes ``Decimal | str`` as it does ``Decimal`` (a documented blind spot)."""
    for _ in range(20):
        alt = scalar(rng)
        if not {"decimal", "str"} <= _kinds(t) | {alt["k"]}:
            return alt
    return {"k": "bool"}


def any_type(rng: random.Random, depth: int = 0) -> Spec:
    roll = rng.random() if depth < 2 else 0.0
    if roll < 0.55:
        return scalar(rng)
    if roll < 0.65:
        return {"k": "opt", "inner": any_type(rng, depth + 1)}
    if roll < 0.75:
        return {"k": "list", "item": any_type(rng, depth + 1)}
    if roll < 0.8:
        return {"k": "dict", "key": "str", "val": any_type(rng, depth + 1)}
    if roll < 0.85:
        first = scalar(rng)
        return {"k": "union", "alts": [first, union_alt(rng, first)]}
    if roll < 0.93:
        return model(rng, depth + 1)
    return {
        "k": "disc",
        "variants": {
            tag: {"fields": fields(rng, depth + 1, 2), "extra": "ignore"}
            for tag in rng.sample(WORDS, 2)
        },
    }


def fields(rng: random.Random, depth: int, most: int = 4) -> dict[str, Spec]:
    out: dict[str, Spec] = {}
    for i in range(rng.randint(1, most)):
        out[f"f{i}"] = a_field(rng, depth)
    return out


def a_field(rng: random.Random, depth: int) -> Spec:
    t = any_type(rng, depth)
    f: Spec = {"t": t}
    if t["k"] == "opt" and rng.random() < 0.8:
        f["default"] = None
    elif rng.random() < 0.2:
        d = simplest(t)
        if d is not MISSING:
            f["default"] = d
    return f


def model(rng: random.Random, depth: int = 0) -> Spec:
    extra = rng.choice(["ignore", "ignore", "forbid", "allow"])
    return {"k": "model", "fields": fields(rng, depth), "extra": extra}


def simplest(t: Spec) -> Any:
    """A plain valid value for a type, used as a field default (MISSING if none)."""
    vals = list(values(t, random.Random(0), edge=False, n=1))
    return vals[0] if vals else MISSING


# -- values ----------------------------------------------------------------------------------
def _bounds(t: Spec) -> tuple[float, float]:
    lo, hi = -20.0, 20.0
    if "ge" in t:
        lo = t["ge"]
    if "gt" in t:
        lo = t["gt"] + (1 if t["k"] == "int" else 0.5)
    if "le" in t:
        hi = t["le"]
    if "lt" in t:
        hi = t["lt"] - (1 if t["k"] == "int" else 0.5)
    return lo, hi


def values(t: Spec, rng: random.Random, edge: bool = True, n: int = 4) -> list[Any]:
    """JSON-ready values of a type: edges first (bounds, empty, None, every member)."""
    k = t["k"]
    out: list[Any]
    if k in ("int", "float"):
        lo, hi = _bounds(t)
        if lo > hi:
            return []
        if k == "int":
            lo, hi = int(lo), int(hi)
            out = [lo, hi, rng.randint(lo, hi)]
            mult = t.get("multiple_of")
            if mult:
                out = [v - v % mult for v in out if lo <= v - v % mult <= hi]
        else:
            out = [lo, hi, rng.uniform(lo, hi), float(int(lo)) + 0.25]
            out = [v for v in out if lo <= v <= hi]
    elif k == "str":
        lo, hi = t.get("min_length", 0), t.get("max_length", 12)
        if lo > hi:
            return []
        out = ["x" * lo, "y" * hi, "".join(rng.choice("ab1 ") for _ in range(rng.randint(lo, hi)))]
        if "pattern" in t:
            out = [v for v in ["ab", "a1", "zz", "a"] if re.search(t["pattern"], v)]
            out = [v for v in out if lo <= len(v) <= hi]
        out += ["5", "1.5"] if lo <= 1 and hi >= 3 and "pattern" not in t else []
    elif k == "bool":
        out = [True, False]
    elif k in ("lit", "enum"):
        out = list(t["vals"])
    elif k == "uuid":
        out = [str(UUID(int=rng.getrandbits(128)))]
    elif k == "dt":
        out = ["2024-05-01T12:00:00", "2024-05-01T12:00:00Z"]
    elif k == "date":
        out = ["2024-05-01"]
    elif k == "decimal":
        lo, hi = _bounds(t)
        out = [str(v) for v in (lo, hi, 12.5, -3.25, 0) if lo <= v <= hi]
    elif k == "opt":
        out = [None, *values(t["inner"], rng, edge, n)]
    elif k == "union":
        out = [v for alt in t["alts"] for v in values(alt, rng, edge, 2)]
    elif k in ("list", "set"):
        items = values(t["item"], rng, edge, 3)
        lo, hi = t.get("min_length", 0), t.get("max_length", 3)
        out = [items[:hi]] if items and lo <= min(len(items), hi) else []
        if lo == 0:
            out.insert(0, [])
        if k == "set":  # distinct items (by their JSON)
            out = [[json.loads(x) for x in dict.fromkeys(map(json.dumps, v))] for v in out]
    elif k == "tuple":
        parts = [values(p, rng, edge, 2) for p in t["items"]]
        out = [[rng.choice(p) for p in parts]] if all(parts) else []
    elif k == "dict":
        vals = values(t["val"], rng, edge, 2)
        keys = {"str": ["k", "7"], "int": ["1", "2"]}[t["key"]]
        out = [{}, dict(zip(keys, vals, strict=False))] if vals else [{}]
    elif k == "model":
        out = [*model_values(t, rng, edge, n)]
    elif k == "disc":
        out = []
        for tag, variant in t["variants"].items():
            for v in model_values(variant, rng, edge, 2):
                out.append({"kind": tag, **v})
    else:  # pragma: no cover - every kind is listed
        raise AssertionError(k)
    if not edge:
        return out[:1]
    return out[: max(n, len(out))] if k in ("lit", "enum", "opt") else out[:n]


def model_values(t: Spec, rng: random.Random, edge: bool, n: int) -> list[dict[str, Any]]:
    fs: dict[str, Spec] = t["fields"]
    per = {name: values(f["t"], rng, edge, 3) for name, f in fs.items()}
    out: list[dict[str, Any]] = []
    for i in range(n if edge else 1):
        row: dict[str, Any] = {}
        for name, f in fs.items():
            key = f.get("alias") or name
            choices = per[name]
            if "default" in f and (not choices or (edge and rng.random() < 0.25)):
                continue  # left out: the writer's default applies
            if not choices:
                break
            row[key] = choices[i % len(choices)] if i < len(choices) else rng.choice(choices)
        else:
            if EXTRAS and t.get("extra") == "allow" and edge and i % 2:
                row["zz_extra"] = rng.choice([1, "x", None])
            out.append(row)
    return out


# -- pydantic from specs -----------------------------------------------------------------------
@dataclass
class Builder:
    """Turns specs into pydantic types; names nested models uniquely per build."""

    prefix: str
    count: int = 0
    enums: dict[tuple[str, ...], type[enum.Enum]] = field(default_factory=dict)

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}{self.prefix}_{self.count}"

    def annotation(self, t: Spec) -> Any:
        k = t["k"]
        if k in ("int", "float", "str", "decimal"):
            base = {"int": int, "float": float, "str": str, "decimal": Decimal}[k]
            keys = ("ge", "le", "gt", "lt", "min_length", "max_length", "pattern", "multiple_of")
            kw = {key: t[key] for key in keys if key in t}
            return Annotated[base, Field(**kw)] if kw else base
        if k == "bool":
            return bool
        if k == "uuid":
            return UUID
        if k == "dt":
            return datetime
        if k == "date":
            return date
        if k == "lit":
            return Literal[tuple(t["vals"])]
        if k == "enum":
            key = tuple(t["vals"])
            if key not in self.enums:
                members = {v.upper(): v for v in t["vals"]}
                self.enums[key] = enum.Enum(self.name("Color"), members, type=str)  # type: ignore[misc]
            return self.enums[key]
        if k == "opt":
            return self.annotation(t["inner"]) | None
        if k == "union":
            return Union[tuple(self.annotation(a) for a in t["alts"])]  # noqa: UP007 - a union of a runtime tuple needs Union[]
        if k in ("list", "set"):
            item = self.annotation(t["item"])
            kw = {key: t[key] for key in ("min_length", "max_length") if key in t}
            base = list[item] if k == "list" else set[item]  # type: ignore[valid-type]
            return Annotated[base, Field(**kw)] if kw else base
        if k == "tuple":
            return tuple[tuple(self.annotation(p) for p in t["items"])]
        if k == "dict":
            key_type = {"str": str, "int": int}[t["key"]]
            return dict[key_type, self.annotation(t["val"])]  # type: ignore[valid-type]
        if k == "model":
            return self.model(t, BaseModel, self.name("M"))
        if k == "disc":
            variants = []
            for tag, variant in t["variants"].items():
                fs = {"kind": {"t": {"k": "lit", "vals": [tag]}}, **variant["fields"]}
                variants.append(self.model({**variant, "fields": fs}, BaseModel, self.name("V")))
            return Annotated[Union[tuple(variants)], Field(discriminator="kind")]  # noqa: UP007 - a union of a runtime tuple needs Union[]
        raise AssertionError(k)  # pragma: no cover

    def model(self, t: Spec, base: type[BaseModel], name: str, **ns: Any) -> type[BaseModel]:
        annotations: dict[str, Any] = {}
        body: dict[str, Any] = {"__module__": __name__, "__qualname__": name, **ns}
        for fname, f in t["fields"].items():
            kw: dict[str, Any] = {}
            if f.get("alias"):
                kw["alias"] = f["alias"]
            default = f.get("default", MISSING)
            annotations[fname] = self.annotation(f["t"])
            body[fname] = Field(default, **kw) if default is not MISSING else Field(**kw)
        body["__annotations__"] = annotations
        body["model_config"] = ConfigDict(extra=t.get("extra", "ignore"))
        return type(name, (base,), body)


def contract(spec: Spec, subject: str, version: int, tag: str) -> type[Contract]:
    """A Contract class for a top-level model spec, left out of the global registry."""
    name = f"C{tag}"
    cls = Builder(tag).model(spec, Contract, name, __subject__=subject, __version__=version)
    _REGISTRY.pop(f"{__name__}:{name}", None)
    return cls  # type: ignore[return-value]


# -- evolutions ----------------------------------------------------------------------------------
def _containers(spec: Spec, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths (into the spec) of every field dict of every model, nested ones too."""
    out: list[tuple[Any, ...]] = [path]
    for name, f in spec["fields"].items():
        out += _types_paths(f["t"], (*path, "fields", name, "t"))
    return out


def _types_paths(t: Spec, path: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    k = t["k"]
    if k == "model":
        return _containers(t, path)
    if k in ("opt", "list", "set"):
        return _types_paths(
            t["inner" if k == "opt" else "item"], (*path, "inner" if k == "opt" else "item")
        )
    if k == "dict":
        return _types_paths(t["val"], (*path, "val"))
    if k == "disc":
        out: list[tuple[Any, ...]] = []
        for tag in t["variants"]:
            out += _containers(t["variants"][tag], (*path, "variants", tag))
        return out
    return []


def _get(spec: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        spec = spec[p]
    return spec


def mutate_type(t: Spec, rng: random.Random) -> tuple[Spec, str]:
    """A realistic change of one type; returns the new type and a label."""
    k = t["k"]
    t = copy.deepcopy(t)
    options: list[str] = ["wrap_opt", "union_add"]
    if k in ("int", "float", "decimal"):
        options += ["to_float", "to_int", "to_str", "bound", "bound", "unbound", "mult"]
        options += ["to_decimal"]
    if k == "str":
        options += ["to_lit", "to_int", "len", "len", "unlen", "pattern", "to_uuid", "to_dt"]
        options += ["to_decimal"]
    if k in ("lit", "enum"):
        options += ["add_val", "drop_val", "to_str", "swap_kind"]
    if k == "opt":
        options += ["unwrap", "inner"]
    if k in ("list", "set"):
        options += ["inner", "to_set" if k == "list" else "to_list", "len", "to_tuple"]
    if k == "dict":
        options += ["inner"]  # str -> int keys: same schema, a documented blind spot
    if k == "union":
        options += ["union_drop"]
    if k == "model":
        options += ["model"] * 3
    if k == "disc":
        options += ["add_variant", "drop_variant", "variant"]
    if k in ("uuid", "dt"):
        options += ["to_str"]
    op = rng.choice(options)
    if op == "wrap_opt":
        return {"k": "opt", "inner": t}, op
    if op == "union_add":
        return {"k": "union", "alts": [t, union_alt(rng, t)]}, op
    if op == "to_decimal":
        return {key: v for key, v in t.items() if key in ("ge", "le", "gt", "lt")} | {
            "k": "decimal"
        }, op
    if op == "to_float":
        return {**t, "k": "float"}, op
    if op == "to_int":
        return {key: v for key, v in t.items() if key not in ("min_length", "max_length")} | {
            "k": "int"
        }, op
    if op == "to_str":
        return {"k": "str"}, op
    if op == "bound":
        key = rng.choice(["ge", "le", "gt", "lt"])
        t[key] = rng.choice([-5, 0, 1, 5, 10])
        return t, f"{op}:{key}"
    if op == "unbound":
        for key in ("ge", "le", "gt", "lt"):
            t.pop(key, None)
        return t, op
    if op == "mult":
        if k == "int":
            t["multiple_of"] = rng.choice([2, 3])
        return t, op
    if op == "len":
        key = rng.choice(["min_length", "max_length"])
        t[key] = rng.choice([1, 2, 3, 8])
        return t, f"{op}:{key}"
    if op == "unlen":
        t.pop("min_length", None)
        t.pop("max_length", None)
        return t, op
    if op == "pattern":
        t["pattern"] = rng.choice(["^a", "^[a-z]+$", "1"])
        return t, op
    if op == "to_lit":
        return {"k": rng.choice(["lit", "enum"]), "vals": sorted(rng.sample(WORDS, 3))}, op
    if op == "to_uuid":
        return {"k": "uuid"}, op
    if op == "to_dt":
        return {"k": rng.choice(["dt", "date"])}, op
    if op == "add_val":
        extra = [w for w in WORDS if w not in t["vals"]]
        if extra:
            t["vals"] = sorted([*t["vals"], rng.choice(extra)])
        return t, op
    if op == "drop_val":
        if len(t["vals"]) > 1:
            t["vals"] = sorted(t["vals"][1:])
        return t, op
    if op == "swap_kind":
        return {**t, "k": "enum" if k == "lit" else "lit"}, op
    if op == "unwrap":
        return t["inner"], op
    if op == "inner":
        key = {"opt": "inner", "list": "item", "set": "item", "dict": "val"}[k]
        t[key], label = mutate_type(t[key], rng)
        return t, f"{op}>{label}"
    if op in ("to_set", "to_list"):
        return {**t, "k": "set" if op == "to_set" else "list"}, op
    if op == "to_tuple":
        return {"k": "tuple", "items": [t["item"], t["item"]]}, op
    if op == "union_drop":
        return t["alts"][0], op
    if op == "model":
        return mutate_model(t, rng)
    if op == "add_variant":
        tag = rng.choice([w for w in WORDS if w not in t["variants"]] or ["z"])
        t["variants"][tag] = {"fields": fields(rng, 2, 2), "extra": "ignore"}
        return t, op
    if op == "drop_variant":
        if len(t["variants"]) > 2:
            t["variants"].pop(next(iter(t["variants"])))
        else:
            t["variants"] = dict(list(t["variants"].items())[1:])
            tag = rng.choice([w for w in WORDS if w not in t["variants"]])
            t["variants"][tag] = {"fields": {"f0": {"t": {"k": "int"}}}, "extra": "ignore"}
        return t, op
    if op == "variant":
        tag = rng.choice(list(t["variants"]))
        t["variants"][tag], label = mutate_model(t["variants"][tag], rng)
        return t, f"variant>{label}"
    raise AssertionError(op)  # pragma: no cover


def mutate_model(spec: Spec, rng: random.Random) -> tuple[Spec, str]:
    """One evolution somewhere in a model (a nested one, maybe)."""
    spec = copy.deepcopy(spec)
    where = rng.choice(_containers(spec))
    m = _get(spec, where)
    fs: dict[str, Spec] = m["fields"]
    ops = ["add_opt", "add_req", "add_default", "remove", "type", "type", "type", "default"]
    if "extra" in m:
        ops += ["extra"]
    ops += ["alias"]
    op = rng.choice(ops)
    label = f"{'.'.join(map(str, where))}:{op}"
    names = [n for n in fs if n != "kind"]
    if not names:
        op = "add_opt"
    name = rng.choice(names) if names else ""
    if op in ("add_opt", "add_req", "add_default"):
        new = f"n{len(fs)}"
        t = any_type(rng, 2)
        f: Spec = {"t": t}
        if op == "add_opt":
            f = {"t": {"k": "opt", "inner": t}, "default": None}
        elif op == "add_default":
            d = simplest(t)
            if d is not MISSING:
                f["default"] = d
        fs[new] = f
        return spec, f"{label}:{new}"
    label += f":{name}"
    if op == "remove":
        del fs[name]
        return spec, label
    if op == "type":
        fs[name]["t"], sub = mutate_type(fs[name]["t"], rng)
        if "default" in fs[name]:
            d = simplest(fs[name]["t"])
            fs[name]["default"] = None if fs[name]["t"]["k"] == "opt" else d
            if d is MISSING and fs[name]["t"]["k"] != "opt":
                del fs[name]["default"]
        return spec, f"{label}:{sub}"
    if op == "default":
        if "default" in fs[name]:
            del fs[name]["default"]
        else:
            d = simplest(fs[name]["t"])
            if d is not MISSING:
                fs[name]["default"] = d
        return spec, label
    if op == "extra":
        m["extra"] = rng.choice([e for e in ("ignore", "forbid", "allow") if e != m["extra"]])
        return spec, f"{label}:{m['extra']}"
    if op == "alias":
        fs[name]["alias"] = None if fs[name].get("alias") else f"{name}_al"
        return spec, label
    raise AssertionError(op)  # pragma: no cover


# -- the differential ----------------------------------------------------------------------------
def instances(writer: type[BaseModel], spec: Spec, rng: random.Random) -> list[bytes]:
    """What a producer on ``writer`` can send: valid instances, dumped as the codec does."""
    out: list[bytes] = []
    for raw in model_values(spec, rng, edge=True, n=8):
        try:
            event = writer.model_validate(raw)
        except ValidationError:
            continue
        data = _CODEC.encode(event)
        if breaks(writer, [data]) is None:  # a default pydantic never validated may not be
            out.append(data)
    return out


def breaks(reader: type[BaseModel], data: list[bytes]) -> bytes | None:
    """The first record the reader rejects."""
    for d in data:
        try:
            reader.__pydantic_validator__.validate_json(d)
        except ValidationError:
            return d
    return None


@dataclass
class Finding:
    kind: str  # "unsound" or "strict"
    mode: str
    labels: list[str]
    specs: list[Spec]
    detail: str


def run_case(
    rng: random.Random, root: Path, index: int, policy: Policy = "lenient"
) -> list[Finding] | None:
    """One base model, two evolutions (v1 -> v2 -> v3), every mode judged against pydantic."""
    v1 = model(rng)
    v2, l2 = mutate_model(v1, rng)
    v3, l3 = mutate_model(v2, rng)
    subject = f"fuzz.S{index}"
    specs = [v1, v2, v3]
    try:
        models = [contract(s, subject, i + 1, f"{index}_{i}") for i, s in enumerate(specs)]
    except Exception:  # a type pydantic refuses (e.g. a discriminated union of one)
        return None
    store = SchemaStore(root)
    for i, m in enumerate(models[:2]):
        store.write(subject, i + 1, m.json_schema())
    data = [instances(m, s, rng) for m, s in zip(models, specs, strict=True)]
    out: list[Finding] = []
    for mode in MODES:
        result = check_contract(models[2], store, mode, policy)
        passed = result.ok
        olds = [0, 1] if mode.endswith("TRANSITIVE") else [1]
        broken: list[str] = []
        for old in olds:
            if "BACKWARD" in mode or "FULL" in mode:
                bad = breaks(models[2], data[old])
                if bad is not None:
                    broken.append(f"BACKWARD v{old + 1}->v3 record {bad.decode()}")
            if "FORWARD" in mode or "FULL" in mode:
                bad = breaks(models[old], data[2])
                if bad is not None:
                    broken.append(f"FORWARD v3 read by v{old + 1}: record {bad.decode()}")
        if passed and broken:
            out.append(Finding("unsound", mode, [l2, l3], specs, "; ".join(broken)))
        elif not passed and not broken and data[0] and data[1] and data[2]:
            rules = [
                f"{c.rule}@{c.field_path}" for cmp in result.comparisons for c in cmp.breaking(mode)
            ]
            out.append(Finding("strict", mode, [l2, l3], specs, ", ".join(rules)))
    return out

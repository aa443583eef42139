"""Checking contracts against the store: the verdicts behind ``check`` and ``register``.

A subject's current contract is compared with the stored versions its mode names (the
latest earlier one, or all earlier ones for ``_TRANSITIVE``). Independently of the
mode, a contract whose schema changed while its ``__version__`` did not is an error:
consumers tell schemas apart by (subject, version, fingerprint), and two schemas under
one version number would make that lie.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streamguard.contracts import Contract, schema_fingerprint
from streamguard.schema.avro import compare_avro_schemas, contract_avro_schema
from streamguard.schema.changes import Change, diff_json_schemas, merge_directions
from streamguard.schema.jsonschema_compat import Policy
from streamguard.schema.jsonschema_doc import SchemaError
from streamguard.schema.modes import breaking, versions_to_check
from streamguard.schema.store import SchemaStore

BOTH: frozenset[Any] = frozenset({"BACKWARD", "FORWARD"})
FORMAT_NAMES = {"json": "JSON", "avro": "Avro"}


@dataclass(frozen=True)
class Comparison:
    """The changes from one version of a subject to another.

    ``detail`` is, for a version problem, the comparison behind it (what changed under an
    unbumped ``__version__``): the report lists it so that CI says what to look at.
    """

    subject: str
    old: str
    new: str
    changes: list[Change]
    detail: Comparison | None = None

    def breaking(self, mode: str) -> list[Change]:
        """The changes that break this mode."""
        return breaking(self.changes, mode)


@dataclass
class SubjectResult:
    """Everything ``check`` found for one subject."""

    subject: str
    mode: str
    version: int
    comparisons: list[Comparison] = field(default_factory=list)
    problems: list[Comparison] = field(default_factory=list)  # break whatever the mode
    changed: bool = True  # False when the current version is stored unchanged

    @property
    def ok(self) -> bool:
        """True when nothing breaks the subject's mode and the version is consistent."""
        return not self.problems and not any(c.breaking(self.mode) for c in self.comparisons)


def compare_versions(old: Any, new: Any, fmt: str, policy: Policy, where: str = "") -> list[Change]:
    """Changes between two stored schemas of one format (``json`` or ``avro``).

    ``where`` names the two (files, or a subject's versions) in a ``SchemaError``: a
    project with many subjects cannot tell from the keyword alone which file to mend.
    """
    try:
        if fmt == "avro":
            return merge_directions(compare_avro_schemas(old, new), compare_avro_schemas(new, old))
        return diff_json_schemas(old, new, policy)
    except SchemaError as exc:
        if not where:
            raise
        raise SchemaError(f"{where}: {exc}") from None


def current_schema(contract: type[Contract]) -> tuple[Any, str, str]:
    """(schema to compare, stored suffix, format) of a contract as it is now."""
    if contract.__wire_format__ == "avro":
        return contract_avro_schema(contract), ".avsc", "avro"
    return contract.json_schema(), ".json", "json"


def format_switch(
    subject: str, old: tuple[int, str], new: tuple[int, str], stored: str = ""
) -> Comparison:
    """Version ``old[0]`` in wire format ``old[1]`` against ``new[0]`` in ``new[1]``: a
    plain consumer reads one format only (JsonCodec refuses an Avro record, AvroCodec a
    JSON one), so neither version reads the other's records, however alike their JSON
    Schemas are. ``stored`` marks the old side (", stored") in the report."""
    return Comparison(
        subject,
        f"v{old[0]} ({FORMAT_NAMES[old[1]]}{stored})",
        f"v{new[0]} ({FORMAT_NAMES[new[1]]})",
        [Change((), "SCHEMA_TYPE_CHANGED", BOTH, FORMAT_NAMES[old[1]], FORMAT_NAMES[new[1]])],
    )


def unbumped_comparison(
    contract: type[Contract], store: SchemaStore, policy: Policy = "lenient"
) -> Comparison:
    """The stored schema of the contract's ``__version__`` against the contract as it is
    now: what ``diff`` shows, and ``check`` lists, for a change without a version bump."""
    subject, version = contract.__subject__, contract.__version__
    new, _, fmt_new = current_schema(contract)
    fmt_old = "avro" if store.has(subject, version, ".avsc") else "json"
    if fmt_old != fmt_new:
        return format_switch(subject, (version, fmt_old), (version, fmt_new), ", stored")
    suffix = ".avsc" if fmt_old == "avro" else ".json"
    old = store.load(subject, version, suffix)
    where = str(store.subject_dir(subject) / f"v{version}{suffix}")  # the stored one
    changes = compare_versions(old, new, fmt_old, policy, where)
    return Comparison(subject, f"v{version} (stored)", f"v{version}", changes)


def version_problems(
    contract: type[Contract], store: SchemaStore, policy: Policy = "lenient"
) -> tuple[list[Comparison], bool]:
    """What breaks whatever the mode (the contract's schema differs from the stored one of
    its ``__version__``, or the store holds a newer version), and whether the store holds
    the contract's version unchanged. ``policy`` judges the changes listed behind an
    unbumped version."""
    subject, version = contract.__subject__, contract.__version__
    stored = store.versions(subject)
    problems: list[Comparison] = []
    unchanged = False
    if version in stored:
        schema, _, fmt = current_schema(contract)
        stored_fp = schema_fingerprint(store.load(subject, version))
        # The wire format is part of the version: a stored .avsc says the version was
        # written as Avro. Switching __wire_format__ without a bump leaves the JSON
        # Schema (and sg-fingerprint) as it was, while every consumer of the version
        # fails to decode the new records. An Avro contract's .avsc also keeps its
        # fields' order, which its binary encoding and fingerprint depend on and the
        # sorted JSON Schema does not show.
        stored_avro = store.has(subject, version, ".avsc")
        same_wire = stored_avro == (fmt == "avro") and (
            not stored_avro
            or schema_fingerprint(store.load(subject, version, ".avsc"))
            == schema_fingerprint(schema)
        )
        if stored_fp == contract.fingerprint() and same_wire:
            unchanged = True
        else:
            change = Change((), "SCHEMA_CHANGED_WITHOUT_VERSION_BUMP", BOTH)
            detail = unbumped_comparison(contract, store, policy)
            problems.append(
                Comparison(subject, f"v{version} (stored)", f"v{version}", [change], detail)
            )
    newer = [v for v in stored if v > version]
    if newer:
        change = Change((), "VERSION_OLDER_THAN_STORED", BOTH)
        problems.append(Comparison(subject, f"v{max(newer)}", f"v{version}", [change]))
    return problems, unchanged


def check_contract(
    contract: type[Contract], store: SchemaStore, mode: str, policy: Policy
) -> SubjectResult:
    """Compare a contract with the stored versions its mode requires."""
    subject, version = contract.__subject__, contract.__version__
    result = SubjectResult(subject, mode, version)
    stored = store.versions(subject)
    schema, suffix, fmt = current_schema(contract)
    result.problems, unchanged = version_problems(contract, store, policy)
    result.changed = not unchanged
    # A version registered with --force is a deliberate break: it starts the subject
    # anew, and nothing from before it is compared with it or with a later version.
    since = max((v for v in store.forced(subject) if v <= version), default=0)
    for old in versions_to_check(mode, stored, version):
        if old < since or since == version:
            continue
        old_fmt = "avro" if store.has(subject, old, ".avsc") else "json"
        if old_fmt != fmt:
            result.comparisons.append(format_switch(subject, (old, old_fmt), (version, fmt)))
            continue
        where = str(store.subject_dir(subject) / f"v{old}{suffix}")  # the stored one
        changes = compare_versions(store.load(subject, old, suffix), schema, fmt, policy, where)
        result.comparisons.append(Comparison(subject, f"v{old}", f"v{version}", changes))
    return result

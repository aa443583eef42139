"""``streamguard schema {export,check,register,diff}``: the schema store from the shell.

Exit codes follow the CLI's: 0 compatible (or done), 1 a breaking change or a refused
registration, 2 usage or configuration error (raised as ConfigurationError, which
``streamguard.cli.main`` maps to 2).
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import unicodedata
from pathlib import Path
from typing import Any, cast

from streamguard import exitcodes
from streamguard.config import ProjectConfig, load_project_config
from streamguard.contracts import Contract
from streamguard.errors import ConfigurationError, StreamguardError
from streamguard.registry.commands import (
    add_registry_argument,
    check_registry,
    register_registry,
)
from streamguard.schema.avro import contract_avro_schema
from streamguard.schema.checks import (
    Comparison,
    SubjectResult,
    check_contract,
    compare_versions,
    current_schema,
    format_switch,
    unbumped_comparison,
    version_problems,
)
from streamguard.schema.jsonschema_compat import POLICIES, Policy
from streamguard.schema.modes import parse_mode
from streamguard.schema.report import (
    FORMATS,
    github_error,
    github_warning,
    render,
    result_groups,
)
from streamguard.schema.store import SchemaStore, dump_schema, read_schema
from streamguard.settings import directory


def add_schema_parser(subparsers: Any) -> None:
    """Add ``schema`` and its actions to the CLI's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=None, help="pyproject.toml to read (./pyproject.toml)")
    judged = argparse.ArgumentParser(add_help=False)
    judged.add_argument("--mode", default=None, help="compatibility mode (default: configured)")
    judged.add_argument(
        "--policy",
        choices=POLICIES,
        default="lenient",
        help="lenient (default): open models carry only declared fields; strict: Confluent's",
    )
    judged.add_argument("--format", choices=FORMATS, default="text", help="report format")

    schema = subparsers.add_parser("schema", help="export, check, register and diff schemas")
    actions = schema.add_subparsers(dest="schema_command", required=True, metavar="ACTION")

    export = actions.add_parser("export", parents=[common], help="print or write contract schemas")
    export.add_argument("--out", type=directory, default=None, help="write DIR/<subject>/v<N>.json")
    export.set_defaults(func=_export)

    check = actions.add_parser(
        "check", parents=[common, judged], help="compare contracts with the stored versions"
    )
    add_registry_argument(check)
    check.set_defaults(func=_check)

    register = actions.add_parser(
        "register", parents=[common, judged], help="store changed contracts after checking them"
    )
    register.add_argument("--force", action="store_true", help="store even if incompatible")
    register.add_argument("--reason", default=None, help="why --force (recorded in CHANGELOG)")
    add_registry_argument(register)
    register.set_defaults(func=_register)

    diff = actions.add_parser(
        "diff", parents=[common, judged], help="every difference between two versions or files"
    )
    diff.add_argument("subject", nargs="?", help="subject in the store")
    diff.add_argument("versions", nargs="*", help="V1 V2 (default: latest stored vs contract)")
    diff.add_argument("--old", type=Path, default=None, help="old JSON Schema (or .avsc) file")
    diff.add_argument("--new", type=Path, default=None, help="new JSON Schema (or .avsc) file")
    diff.set_defaults(func=_diff)


def _project(args: argparse.Namespace) -> tuple[ProjectConfig, SchemaStore]:
    config = load_project_config(args.config)
    return config, SchemaStore(config.schemas_dir)


def _contracts(config: ProjectConfig) -> dict[str, type[Contract]]:
    contracts = config.contracts_by_subject()
    if not contracts and config.config_file is None:
        raise ConfigurationError(
            f"no contracts found: no pyproject.toml in {config.root}; run the command from "
            "the project's root folder, or pass --config PATH"
        )
    if not contracts:
        raise ConfigurationError(
            "no contracts found: list the modules that define them in pyproject.toml, "
            'e.g. [tool.streamguard] contracts = ["myapp.contracts"]'
        )
    # A misspelt subject would leave its contract checked in the default mode, silently.
    # One with stored versions is a retired contract's: `schema diff` still reads its mode.
    store = SchemaStore(config.schemas_dir)
    configured = {*config.subject_modes, *config.registry_subjects} - contracts.keys()
    for subject in sorted(s for s in configured if not store.versions(s)):
        close = difflib.get_close_matches(subject, list(contracts), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigurationError(
            f'[tool.streamguard.subjects."{subject}"] names no contract of the modules '
            f"listed in contracts{hint}"
        )
    return contracts


def _mode(args: argparse.Namespace, config: ProjectConfig, subject: str) -> str:
    # "is not None": an empty --mode "$MODE" is refused, not taken for the configured mode.
    return parse_mode(args.mode) if args.mode is not None else config.mode_for(subject)


def _export(args: argparse.Namespace) -> int:
    config, _ = _project(args)
    contracts = config.load_contracts()
    if not contracts:
        _contracts(config)  # raises the configuration hint
    if args.out is None:
        docs = []
        for c in contracts:
            doc: dict[str, Any] = {
                "subject": c.__subject__,
                "version": c.__version__,
                "format": c.__wire_format__,
                "json_schema": c.json_schema(),
            }
            if c.__wire_format__ == "avro":
                doc["avsc"] = contract_avro_schema(c)
            docs.append(doc)
        sys.stdout.write(dump_schema(docs))
        return exitcodes.OK
    out = SchemaStore(args.out)
    for c in contracts:
        print(out.write(c.__subject__, c.__version__, c.json_schema()))
        if c.__wire_format__ == "avro":
            print(out.write(c.__subject__, c.__version__, contract_avro_schema(c), ".avsc"))
    return exitcodes.OK


def _results(args: argparse.Namespace) -> tuple[ProjectConfig, SchemaStore, list[SubjectResult]]:
    config, store = _project(args)
    policy = cast(Policy, args.policy)
    results = [
        check_contract(contract, store, _mode(args, config, subject), policy)
        for subject, contract in sorted(_contracts(config).items())
    ]
    return config, store, results


def _uncompared(r: SubjectResult, store: SchemaStore) -> str:
    """The text report's line for a subject that was compared with nothing, and why."""
    if not store.versions(r.subject):
        # Passing, yet every later change would pass too while nothing is stored.
        return (
            f"{r.subject}: v{r.version} is not stored in schemas/ yet [{r.mode}]: run "
            "`streamguard schema register` and commit it, so that later changes are checked"
        )
    if r.mode == "NONE":  # "nothing to compare with" read as if nothing were stored
        return f"{r.subject}: v{r.version} is not compared with the stored versions [NONE]"
    return f"{r.subject}: v{r.version} has nothing to compare with [{r.mode}]"


def _print_report(
    args: argparse.Namespace, results: list[SubjectResult], store: SchemaStore
) -> None:
    text = render(result_groups(results), args.format)
    if args.format == "text":
        notes = [_uncompared(r, store) for r in results if not r.comparisons and not r.problems]
        text = "\n".join([*notes, text] if text else notes)
    elif args.format == "github":
        # The CI job the docs give: a subject never stored passes, and so would every
        # later change to it, so say so where the run's summary shows it.
        notes = [
            github_warning(f"{r.subject} not stored yet", f"{_not_stored(r)}: {REGISTER}")
            for r in _unstored(results, store)
        ]
        text = "\n".join([*notes, text] if text else notes)
    elif args.format == "json":
        # The same note as an entry of the list, shaped as a change's (no old version,
        # breaking nothing), so that a script sees the subject passed unchecked.
        unstored = [_not_stored_entry(r) for r in _unstored(results, store)]
        if unstored:
            text = json.dumps([*unstored, *json.loads(text)], indent=2)
    if text:
        print(text)


REGISTER = "run `streamguard schema register` and commit schemas/"


def _unstored(results: list[SubjectResult], store: SchemaStore) -> list[SubjectResult]:
    """The subjects that passed only because nothing of theirs is stored yet."""
    return [
        r for r in results if not r.comparisons and not r.problems and not store.versions(r.subject)
    ]


def _not_stored(r: SubjectResult) -> str:
    return f"v{r.version} is not stored in schemas/ yet, so no change to it is checked"


def _not_stored_entry(r: SubjectResult) -> dict[str, Any]:
    return {
        "subject": r.subject,
        "old_version": None,
        "new_version": f"v{r.version}",
        "path": "",
        "pointer": "",
        "rule": "SUBJECT_NOT_STORED",
        "breaking": False,
        "breaking_in": [],
        "message": _not_stored(r),
        "hint": REGISTER,
        "mode": r.mode,
    }


def _refuse_mode_with_registry(args: argparse.Namespace) -> None:
    if args.registry is not None and getattr(args, "mode", None) is not None:
        raise ConfigurationError(
            "--mode does not apply with --registry: the registry's compatibility level "
            "for each subject decides (set it there, e.g. PUT /config/<subject>)"
        )


def _check(args: argparse.Namespace) -> int:
    try:
        return _run_check(args)
    except StreamguardError as exc:  # exit 2 (or 1), with the error on stderr
        if args.format == "github":
            print(github_error("streamguard schema check could not run", str(exc)))
        raise


def _run_check(args: argparse.Namespace) -> int:
    _refuse_mode_with_registry(args)
    if args.registry is not None:
        config = load_project_config(args.config)
        return check_registry(args, config, _contracts(config))
    _, store, results = _results(args)
    _print_report(args, results, store)
    return exitcodes.OK if all(r.ok for r in results) else exitcodes.FAILED


def _register(args: argparse.Namespace) -> int:
    if args.force and not (args.reason and args.reason.strip()):
        raise ConfigurationError('--force needs --reason "why this break is acceptable"')
    _check_reason(args.reason)
    _refuse_mode_with_registry(args)
    if args.registry is not None:
        config = load_project_config(args.config)
        return register_registry(args, config, _contracts(config))
    _, store, results = _results(args)
    changed = [r for r in results if r.changed]
    rewrites = [r for r in changed if store.has(r.subject, r.version)]
    if rewrites:
        # A stored version is what producers and consumers in the field were built
        # against: even --force never gives the same version number a second schema.
        for result in rewrites:
            print(
                f"{result.subject}: v{result.version} is already registered with another "
                f"schema; bump __version__ to {max(store.versions(result.subject)) + 1}",
                file=sys.stderr,
            )
        return exitcodes.FAILED
    refused = [r for r in changed if not r.ok]
    if refused and not args.force:
        _print_report(args, refused, store)
        print(
            f"refused: {len(refused)} subject(s) incompatible; nothing was registered. "
            'Fix the contracts, or use --force --reason "..." to record a deliberate break.',
            file=sys.stderr,
        )
        return exitcodes.FAILED
    contracts = _contracts(load_project_config(args.config))
    for result in changed:
        contract = contracts[result.subject]
        schema, suffix, fmt = current_schema(contract)
        store.write(result.subject, result.version, contract.json_schema())
        if fmt == "avro":
            store.write(result.subject, result.version, schema, suffix)
        line = f"v{result.version} registered ({result.mode}, policy {args.policy})"
        if not result.ok:
            broken = [
                f"{c.rule}{f' {c.types}' if c.types else ''} at {c.field_path} "
                f"({comp.old}->{comp.new})"
                for comp in [*result.problems, *result.comparisons]
                for c in (comp.changes if comp in result.problems else comp.breaking(result.mode))
            ]
            line = (
                f"v{result.version} FORCED past {result.mode}: reason: {args.reason.strip()}; "
                f"breaking: {'; '.join(broken)}"
            )
        store.log(result.subject, line)
        print(f"{result.subject}: {line}")
    for result in results:
        if not result.changed:
            print(f"{result.subject}: v{result.version} unchanged")
    return exitcodes.OK


def _check_reason(reason: str | None) -> None:
    """Refuse a reason that is not one line of text. It is written into a CHANGELOG line,
    and ``SchemaStore.forced`` splits the file as ``str.splitlines`` does: a line break
    (or any other control character) would let a reason forge a FORCED registration."""
    for char in reason or "":
        if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            code = f"U+{ord(char):04X}"
            raise ConfigurationError(f"--reason must be one line of text, not a {code} in it")


def _version(text: str) -> int:
    try:
        return int(text.lower().removeprefix("v"))
    except ValueError:
        raise ConfigurationError(f"{text!r} is not a version (use 2 or v2)") from None


def _diff(args: argparse.Namespace) -> int:
    config, store = _project(args)
    policy = cast(Policy, args.policy)
    if args.old is not None or args.new is not None:
        if args.old is None or args.new is None or args.subject:
            raise ConfigurationError("use either --old A.json --new B.json, or SUBJECT [V1 V2]")
        avro = (args.old.suffix == ".avsc", args.new.suffix == ".avsc")
        if avro[0] != avro[1]:
            # No rules judge an Avro schema against a JSON Schema: the JSON rules read
            # the .avsc as a JSON Schema and reported TYPE_CHANGED record -> object.
            old_kind, new_kind = ("an Avro schema (.avsc)" if a else "a JSON Schema" for a in avro)
            raise ConfigurationError(
                f"--old is {old_kind}, --new {new_kind}: compare two files of one format "
                "(an Avro contract's .json beside its .avsc is its JSON Schema)"
            )
        fmt = "avro" if avro[0] else "json"
        where = f"{args.old} -> {args.new}"
        changes = compare_versions(read_schema(args.old), read_schema(args.new), fmt, policy, where)
        # Two files name no subject: the report names them alone (it read "v2: ...",
        # the new file's name where a subject stands).
        comparison = Comparison("", str(args.old), str(args.new), changes)
        mode = parse_mode(args.mode) if args.mode is not None else config.compatibility
    else:
        if not args.subject or len(args.versions) not in (0, 2):
            raise ConfigurationError("usage: schema diff SUBJECT [V1 V2] | --old A --new B")
        comparison = _subject_comparison(args, config, store, policy)
        mode = _mode(args, config, args.subject)
    print(render([(mode, [comparison])], args.format, everything=True))
    return exitcodes.FAILED if comparison.breaking(mode) else exitcodes.OK


def _subject_comparison(
    args: argparse.Namespace, config: ProjectConfig, store: SchemaStore, policy: Policy
) -> Comparison:
    subject = args.subject
    contract = config.contracts_by_subject().get(subject)
    stored = store.versions(subject)

    def load(version: int) -> tuple[Any, str]:
        if (
            contract is not None
            and version == contract.__version__
            and not store.has(subject, version)
        ):
            schema, _, fmt = current_schema(contract)
            return schema, fmt
        if store.has(subject, version, ".avsc"):
            return store.load(subject, version, ".avsc"), "avro"
        return store.load(subject, version), "json"

    if args.versions:
        v1, v2 = (_version(v) for v in args.versions)
    elif contract is not None and stored and (stored[-1] < contract.__version__):
        v1, v2 = stored[-1], contract.__version__
    elif (
        contract is not None
        and stored
        and stored[-1] == contract.__version__
        and not version_problems(contract, store, policy)[1]
    ):
        # The contract changed without a version bump (what `check` refuses): show how.
        return unbumped_comparison(contract, store, policy)
    elif not stored and contract is None:
        raise ConfigurationError(f"{subject}: no stored version and no contract of that subject")
    elif len(stored) >= 2:
        v1, v2 = stored[-2], stored[-1]
    else:
        raise ConfigurationError(f"{subject}: fewer than two versions to compare; give V1 V2")
    (old, fmt_old), (new, fmt_new) = load(v1), load(v2)
    if fmt_old != fmt_new:
        return format_switch(subject, (v1, fmt_old), (v2, fmt_new))
    changes = compare_versions(old, new, fmt_old, policy, f"{subject} v{v1} -> v{v2}")
    return Comparison(subject, f"v{v1}", f"v{v2}", changes)

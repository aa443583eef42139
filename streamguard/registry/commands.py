"""``streamguard registry`` and the ``--registry`` forms of ``schema check/register``.

Exit codes as everywhere in the CLI: 0 compatible (or done), 1 a breaking change or a
refused registration, 2 usage, configuration or an unreachable registry.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any, cast

from streamguard.config import ProjectConfig
from streamguard.contracts import Contract
from streamguard.errors import ConfigurationError
from streamguard.interrupts import sigterm_as_ctrl_c
from streamguard.registry.checks import RegistrationRefused, RegistryCheck, RegistryChecker
from streamguard.registry.client import REGISTRY_URL_ENV, new_client, resolve_registry_config
from streamguard.schema.checks import version_problems
from streamguard.schema.jsonschema_compat import POLICIES, Policy
from streamguard.schema.report import github_warning, render, result_groups
from streamguard.schema.store import SchemaStore
from streamguard.settings import bind_address, directory, redact_url, tcp_port

EXIT_OK, EXIT_FAILED = 0, 1


def add_registry_argument(parser: argparse.ArgumentParser) -> None:
    """``--registry [URL]`` (alias ``--schema-registry``) on ``schema check/register``."""
    parser.add_argument(
        "--registry",
        "--schema-registry",
        dest="registry",
        nargs="?",
        const="",
        default=None,
        metavar="URL",
        help="check against a schema registry instead of schemas/ (URL, or without one: "
        f"${REGISTRY_URL_ENV}, then [tool.streamguard] schema_registry_url)",
    )


def add_registry_parser(subparsers: Any) -> None:
    """``streamguard registry``: the embedded registry in the foreground."""
    parser = subparsers.add_parser(
        "registry", help="run an embedded Confluent-compatible schema registry (development)"
    )
    parser.add_argument(
        "--port", type=tcp_port, default=8081, help="port to listen on (8081; 0: a free one)"
    )
    parser.add_argument(
        "--host", type=bind_address, default="127.0.0.1", help="address to bind (loopback)"
    )
    parser.add_argument("--dir", type=directory, default=None, help="keep its state in DIR")
    parser.add_argument(
        "--policy", choices=POLICIES, default="lenient", help="JSON Schema policy of its checks"
    )
    parser.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from streamguard.registry.server import RegistryServer

    server = RegistryServer(args.port, args.host, args.dir, cast(Policy, args.policy))
    try:
        url = server.start()
    except OSError as exc:
        raise ConfigurationError(f"cannot listen on {args.host}:{args.port}: {exc}") from None
    kept = f"state kept in {args.dir}" if args.dir else "in memory: nothing is kept when it stops"
    print(f"streamguard registry listening on {url}", flush=True)
    print(f"  export {REGISTRY_URL_ENV}={url}", flush=True)
    print(f"  {kept}. For development: production uses a real registry. Ctrl-C stops it.")
    stopped = False

    try:
        with sigterm_as_ctrl_c():
            signal.pause()
    except KeyboardInterrupt:
        stopped = True
    finally:
        server.stop()
    print("streamguard registry stopped", flush=True)
    return EXIT_OK if stopped else EXIT_FAILED


def _checker(args: argparse.Namespace, config: ProjectConfig) -> RegistryChecker:
    registry = resolve_registry_config(args.registry or None, config.schema_registry_url)
    if registry is None:
        raise ConfigurationError(
            f"--registry needs a URL: give one, export {REGISTRY_URL_ENV}, or set "
            "[tool.streamguard] schema_registry_url"
        )
    return RegistryChecker(new_client(registry), registry["url"], cast(Policy, args.policy))


def _run_checks(
    args: argparse.Namespace, config: ProjectConfig, contracts: dict[str, type[Contract]]
) -> tuple[RegistryChecker, list[RegistryCheck]]:
    checker = _checker(args, config)
    store = SchemaStore(config.schemas_dir)
    checks = []
    for subject, contract in sorted(contracts.items()):
        check = checker.check(contract, config.registry_subject(subject))
        # The registry numbers versions itself and keeps no __version__: whether a
        # changed schema kept its __version__ is known from schemas/ only.
        check.result.problems = version_problems(contract, store, checker.policy)[0]
        checks.append(check)
    return checker, checks


def _not_in_registry(c: RegistryCheck) -> str:
    """Why an empty subject may be the wrong one: producers register under
    ``<topic>-value`` by default, and an unmapped contract is checked under its
    ``__subject__``, which the registry may never hold."""
    return (
        f"the registry holds no version of {c.result.subject}; if producers register under "
        "another subject (<topic>-value by default), set registry_subject under "
        f'[tool.streamguard.subjects."{c.contract.__subject__}"]'
    )


def _report(args: argparse.Namespace, checks: list[RegistryCheck]) -> None:
    if args.format == "json":
        entries = json.loads(render(result_groups(c.result for c in checks), "json"))
        doc = {"changes": entries, "subjects": [c.summary() for c in checks]}
        print(json.dumps(doc, indent=2))
        return
    lines = []
    for c in checks:
        # A subject's changes, then what the registry says of it: rendered all at once,
        # every subject's changes came first and the registry's verdicts after them.
        text = render(result_groups([c.result]), args.format)
        if text:
            lines.append(text)
        subject, verdict = c.result.subject, c.registry_compatible
        if args.format == "github":
            if not c.in_registry:
                lines.append(
                    github_warning(
                        f"{subject} not in the registry", "nothing compared: " + _not_in_registry(c)
                    )
                )
            if c.disagreement:
                ours = "compatible" if c.compatible else "incompatible"
                lines.append(
                    github_warning(
                        f"{subject} registry verdict",
                        f"the registry says {'compatible' if verdict else 'incompatible'}, "
                        f"streamguard says {ours}",
                    )
                )
            continue
        if c.registered_as is not None:
            older = "" if c.registered_as == c.latest else f", older than the latest ({c.latest})"
            lines.append(
                f"{subject}: v{c.contract.__version__} is registered as version "
                f"{c.registered_as}{older} [{c.result.mode}]"
            )
        elif c.latest is None:  # passing, but maybe against the wrong subject
            lines.append(
                f"{subject}: v{c.contract.__version__} has nothing to compare with "
                f"[{c.result.mode}]: {_not_in_registry(c)}"
            )
        elif not c.result.comparisons:
            lines.append(
                f"{subject}: v{c.contract.__version__} has nothing to compare with "
                f"[{c.result.mode}]"
            )
        if verdict is not None:
            lines.append(f"{subject}: the registry says {'' if verdict else 'in'}compatible")
        if c.disagreement:
            lines.append(
                f"{subject}: DISAGREEMENT: the registry and streamguard's rules differ; "
                "either verdict of incompatible fails the check"
            )
    if lines:
        print("\n".join(lines))


def check_registry(
    args: argparse.Namespace, config: ProjectConfig, contracts: dict[str, type[Contract]]
) -> int:
    """``schema check --registry``: exit 1 if streamguard or the registry finds a break."""
    _, checks = _run_checks(args, config, contracts)
    _report(args, checks)
    return EXIT_OK if all(c.ok for c in checks) else EXIT_FAILED


def register_registry(
    args: argparse.Namespace, config: ProjectConfig, contracts: dict[str, type[Contract]]
) -> int:
    """``schema register --registry``: register what changed, refusing breaks unless forced.

    ``--force`` skips streamguard's verdict only: the registry still judges under the
    subject's level, and a deliberate break there means changing that level on purpose.
    """
    checker, checks = _run_checks(args, config, contracts)
    rewrites = [c for c in checks if c.result.problems]
    if rewrites:
        # As in schemas/: even --force never gives one __version__ a second schema.
        _report(args, rewrites)
        print(
            f"refused: {len(rewrites)} subject(s) changed without a __version__ bump (or "
            "older than schemas/); nothing was registered. Bump __version__.",
            file=sys.stderr,
        )
        return EXIT_FAILED
    changed = [c for c in checks if c.registered_as is None]
    refused = [c for c in checks if not c.ok]  # a revert to an older version's schema too
    if refused and not args.force:
        _report(args, refused)
        print(
            f"refused: {len(refused)} subject(s) incompatible; nothing was registered. Fix "
            'the contracts, or use --force --reason "..." to try a deliberate break.',
            file=sys.stderr,
        )
        return EXIT_FAILED
    failed = 0
    for c in changed:
        subject = c.result.subject
        try:
            schema_id, version = checker.register(c.contract, subject)
        except RegistrationRefused as exc:
            print(f"streamguard: {exc}", file=sys.stderr)
            failed += 1
            continue
        forced = f" FORCED: {args.reason.strip()}" if not c.ok else ""
        print(
            f"{subject}: v{c.contract.__version__} registered as version {version} "
            f"(id {schema_id}) at {redact_url(checker.url)}{forced}"
        )
    for c in checks:
        if c.registered_as is not None:
            print(
                f"{c.result.subject}: v{c.contract.__version__} unchanged "
                f"(version {c.registered_as})"
            )
    return EXIT_FAILED if failed else EXIT_OK

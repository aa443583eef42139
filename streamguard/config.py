"""Project configuration: the ``[tool.streamguard]`` table of a project's pyproject.toml.

The CLI reads it from the current directory (or ``--config PATH``) to find a project's
contracts, its schema store and its default compatibility mode::

    [tool.streamguard]
    contracts = ["myapp.contracts"]
    schemas_dir = "schemas"
    compatibility = "BACKWARD"
    schema_registry_url = "http://localhost:8081"   # optional; for --registry checks
    [tool.streamguard.subjects."orders.OrderPlaced"]
    compatibility = "FULL"
    registry_subject = "orders-value"   # its subject in the registry (default: the same)
"""

from __future__ import annotations

import difflib
import importlib
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamguard.contracts import Contract, registered_contracts, schema_fingerprint
from streamguard.errors import ConfigurationError

# The keys [tool.streamguard] and each of its subject tables take. Anything else is a
# typo to refuse: a misspelt compatibility would check the subject in the default mode,
# and CI would pass a change its configured mode forbids.
PROJECT_KEYS = ("contracts", "schemas_dir", "compatibility", "schema_registry_url", "subjects")
SUBJECT_KEYS = ("compatibility", "registry_subject")

MODES = (
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
    "NONE",
)


@dataclass(frozen=True)
class ProjectConfig:
    """What ``[tool.streamguard]`` says, with paths resolved against the project root."""

    root: Path
    contracts: tuple[str, ...] = ()
    schemas_dir: Path = Path("schemas")
    compatibility: str = "BACKWARD"
    subject_modes: dict[str, str] = field(default_factory=dict)
    schema_registry_url: str | None = None
    registry_subjects: dict[str, str] = field(default_factory=dict)
    # The file read; None when there was none (defaults, rooted at the current directory).
    config_file: Path | None = None

    def mode_for(self, subject: str) -> str:
        """The subject's own mode if set, else the project default."""
        return self.subject_modes.get(subject, self.compatibility)

    def registry_subject(self, subject: str) -> str:
        """The registry subject a contract's subject is checked and registered under."""
        return self.registry_subjects.get(subject, subject)

    def load_contracts(self) -> list[type[Contract]]:
        """Import the configured modules and return the contracts they define."""
        root = str(self.root)
        if root not in sys.path:
            sys.path.insert(0, root)  # so `myapp.contracts` resolves from the project root
        for module in self.contracts:
            try:
                importlib.import_module(module)
            except Exception as exc:  # any failure at import is a configuration problem
                raise ConfigurationError(
                    f"cannot import contracts module {module!r} listed in [tool.streamguard] "
                    f"contracts: {type(exc).__name__}: {exc}"
                ) from exc
        return registered_contracts(list(self.contracts))

    def contracts_by_subject(self) -> dict[str, type[Contract]]:
        """The current contract of each subject (the highest version if several)."""
        current: dict[str, type[Contract]] = {}
        for contract in self.load_contracts():
            known = current.get(contract.__subject__)
            if (
                known is not None
                and contract.__version__ == known.__version__
                and _wire_schema(contract) != _wire_schema(known)
            ):
                raise ConfigurationError(
                    f"{contract.__module__}.{contract.__qualname__} and "
                    f"{known.__module__}.{known.__qualname__} are both {contract.__subject__} "
                    f"v{contract.__version__} with different schemas; give one of them "
                    "another subject or version"
                )
            if known is None or contract.__version__ > known.__version__:
                current[contract.__subject__] = contract
        return current


def _wire_schema(contract: type[Contract]) -> tuple[str, str]:
    """What a contract puts on the wire: its format and schema fingerprint (an Avro
    contract's derived .avsc, whose field order the sorted JSON Schema hides)."""
    if contract.__wire_format__ == "avro":
        from streamguard.schema.avro import contract_avro_schema  # only for Avro contracts

        return "avro", schema_fingerprint(contract_avro_schema(contract))
    return "json", contract.fingerprint()


def _schemas_dir(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(
            f'[tool.streamguard] schemas_dir must be a path such as "schemas", got {value!r}'
        )
    return value


def _registry_subject(value: Any, where: str) -> str:
    # Not str(value): registry_subject = 5 (or a list) would check and register the
    # contract under a subject "5" no producer looks up.
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(
            f'{where}: registry_subject must be a subject name such as "orders-value", '
            f"got {value!r}"
        )
    return value


def _check_mode(mode: Any, where: str) -> str:
    if not isinstance(mode, str) or mode.upper() not in MODES:
        raise ConfigurationError(
            f"{where}: unknown compatibility mode {mode!r}; use one of {MODES}"
        )
    return mode.upper()


def load_project_config(path: str | Path | None = None) -> ProjectConfig:
    """Read ``[tool.streamguard]`` from ``path`` (a pyproject.toml) or ./pyproject.toml.

    A missing file or table gives the defaults, rooted at the current directory, so
    commands work in a project that has not configured anything yet.
    """
    file = Path(path) if path is not None else Path.cwd() / "pyproject.toml"
    if path is not None and not file.is_file():
        what = "is not a file" if file.exists() else "does not exist"
        raise ConfigurationError(f"config file {str(file)!r} {what}")
    root = file.resolve().parent
    if not file.is_file():
        return ProjectConfig(root=root, schemas_dir=root / "schemas")
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"cannot read {file}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"{file}: not UTF-8 text, as TOML must be: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{file}: not valid TOML: {exc}") from exc
    tool = data.get("tool", {})
    table = tool.get("streamguard", {}) if isinstance(tool, dict) else None
    if not isinstance(table, dict):
        raise ConfigurationError(f"{file}: [tool.streamguard] must be a table")
    _check_keys(table, PROJECT_KEYS, f"{file}: [tool.streamguard]")
    subjects = table.get("subjects", {})
    if not isinstance(subjects, dict) or not all(isinstance(v, dict) for v in subjects.values()):
        raise ConfigurationError(
            f"{file}: [tool.streamguard.subjects] must be a table of tables, e.g. "
            '[tool.streamguard.subjects."orders.OrderPlaced"] compatibility = "FULL"'
        )
    for subject, cfg in subjects.items():
        _check_keys(cfg, SUBJECT_KEYS, f'{file}: [tool.streamguard.subjects."{subject}"]')
    contracts = table.get("contracts", [])
    if not isinstance(contracts, list) or not all(isinstance(m, str) for m in contracts):
        raise ConfigurationError(f"{file}: [tool.streamguard] contracts must be a list of modules")
    subject_modes = {
        subject: _check_mode(cfg.get("compatibility"), f"{file}: subject {subject!r}")
        for subject, cfg in subjects.items()
        if "compatibility" in cfg
    }
    url = table.get("schema_registry_url")
    if url is not None and not isinstance(url, str):
        raise ConfigurationError(f"{file}: [tool.streamguard] schema_registry_url must be a URL")
    registry_subjects = {
        subject: _registry_subject(cfg["registry_subject"], f"{file}: subject {subject!r}")
        for subject, cfg in subjects.items()
        if "registry_subject" in cfg
    }
    return ProjectConfig(
        schema_registry_url=url,
        registry_subjects=registry_subjects,
        root=root,
        contracts=tuple(contracts),
        schemas_dir=root / _schemas_dir(table.get("schemas_dir", "schemas")),
        compatibility=_check_mode(table.get("compatibility", "BACKWARD"), str(file)),
        subject_modes=subject_modes,
        config_file=file,
    )


def _check_keys(table: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    """Refuse a key the table does not take, naming the closest one it does."""
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigurationError(
                f"{where}: unknown key {key!r}; {hint}it takes {', '.join(known)}"
            )

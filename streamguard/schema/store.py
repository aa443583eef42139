"""The schema store: every registered version of every subject, as files in the repo.

Layout (under ``schemas_dir``, ``schemas/`` by default)::

    schemas/<subject>/v<N>.json    the contract's normalised JSON Schema at version N
    schemas/<subject>/v<N>.avsc    its Avro schema, for Avro contracts
    schemas/<subject>/CHANGELOG    one line per registration; forced ones say why

Files, not a registry service, so that a schema change is reviewed in the same pull
request as the code, and CI can check it without network access.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from streamguard.errors import ConfigurationError

_VERSION_FILE = re.compile(r"^v([1-9][0-9]*)\.json$")
_SAFE_SUBJECT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_FORCED = re.compile(r"^\S+ v([1-9][0-9]*) FORCED past ")  # a CHANGELOG line of --force


def _listed(folder: Path) -> list[Path]:
    """A folder's entries. One that cannot be listed (permissions) is a configuration
    error, exit 2, as an unreadable file: it ended the check with a traceback and exit
    1, which CI reads as a breaking change."""
    try:
        return list(folder.iterdir())
    except OSError as exc:
        raise ConfigurationError(f"cannot list {folder}: {exc.strerror or exc}") from exc


def read_text(path: Path) -> str:
    """A schema file's text. One that cannot be read (permissions, a folder, not UTF-8)
    is a configuration error, exit 2: CI must never report it as a breaking change."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigurationError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from exc


def read_schema(path: Path) -> Any:
    """A schema file's JSON. ``null`` is a configuration error, exit 2: no format has it as
    a schema, and the rules read None as "no schema" (SCHEMA_ADDED, a false break)."""
    try:
        schema = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{path}: not valid JSON: {exc}") from exc
    if schema is None:
        raise ConfigurationError(f"{path}: null is not a schema")
    return schema


def _unwritable(path: Path, exc: OSError) -> ConfigurationError:
    return ConfigurationError(f"cannot write {path}: {exc.strerror or exc}")


def dump_schema(schema: Any) -> str:
    """The stored text of a schema: sorted keys, two-space indent, final newline."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


@dataclass(frozen=True)
class SchemaStore:
    """The files of ``root`` (a project's ``schemas_dir``)."""

    root: Path

    def subject_dir(self, subject: str) -> Path:
        """The folder of a subject; subjects are names, never paths."""
        if not _SAFE_SUBJECT.match(subject) or ".." in subject:
            raise ConfigurationError(
                f"subject {subject!r} cannot be a folder name; use letters, digits, '.', '_', '-'"
            )
        return self.root / subject

    def subjects(self) -> list[str]:
        """Every subject with at least one stored version."""
        if not self.root.is_dir():
            return []
        names = _listed(self.root)
        return sorted(p.name for p in names if p.is_dir() and self.versions(p.name))

    def versions(self, subject: str) -> list[int]:
        """The stored versions of a subject, ascending."""
        folder = self.subject_dir(subject)
        if not folder.is_dir():
            return []
        found = (_VERSION_FILE.match(p.name) for p in _listed(folder))
        return sorted(int(m.group(1)) for m in found if m)

    def load(self, subject: str, version: int, suffix: str = ".json") -> Any:
        """A stored schema; a missing or unreadable file is a configuration error."""
        path = self.subject_dir(subject) / f"v{version}{suffix}"
        if not path.exists():
            known = ", ".join(f"v{v}" for v in self.versions(subject)) or "none"
            raise ConfigurationError(
                f"{subject} has no stored v{version}{suffix} (stored: {known})"
            )
        return read_schema(path)

    def has(self, subject: str, version: int, suffix: str = ".json") -> bool:
        """Whether a version's file exists."""
        return (self.subject_dir(subject) / f"v{version}{suffix}").is_file()

    def write(self, subject: str, version: int, schema: Any, suffix: str = ".json") -> Path:
        """Store a version's schema file (creating the subject folder)."""
        folder = self.subject_dir(subject)
        path = folder / f"v{version}{suffix}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(dump_schema(schema), encoding="utf-8")
        except OSError as exc:
            raise _unwritable(path, exc) from exc
        return path

    def forced(self, subject: str) -> set[int]:
        """The versions registered with ``--force`` (their CHANGELOG lines say FORCED)."""
        path = self.subject_dir(subject) / "CHANGELOG"
        if not path.is_file():
            return set()
        found = (_FORCED.match(line) for line in read_text(path).splitlines())
        return {int(match.group(1)) for match in found if match}

    def log(self, subject: str, line: str, *, now: datetime | None = None) -> Path:
        """Append one dated line to the subject's CHANGELOG."""
        path = self.subject_dir(subject) / "CHANGELOG"
        stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            with path.open("a", encoding="utf-8") as fh:
                fh.write(f"{stamp} {line}\n")
        except OSError as exc:
            raise _unwritable(path, exc) from exc
        return path

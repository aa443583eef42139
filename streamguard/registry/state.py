"""The embedded registry's data: subjects, versions, ids, compatibility levels.

It follows Confluent Schema Registry's rules, which clients depend on:

- an id names one schema text (per schema type) everywhere: the same schema registered
  under two subjects has one id; ids are never reused, even after a permanent delete;
- registering a schema a subject already holds returns its existing version and id;
- a soft delete hides versions but keeps them readable by id (consumers still need
  them); a permanent delete needs a soft delete first;
- compatibility is judged against the latest live version, or all of them for the
  ``_TRANSITIVE`` levels, under the subject's level or else the global one; the verdict
  comes from streamguard's own engine (:mod:`streamguard.schema.checks`).

State lives in memory; with a directory it is also written to ``registry.json`` there
after every change (atomically, by rename), and read back at start.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro

from streamguard.config import MODES
from streamguard.errors import ConfigurationError
from streamguard.schema.checks import compare_versions
from streamguard.schema.jsonschema_compat import Policy
from streamguard.schema.jsonschema_doc import SchemaError
from streamguard.schema.modes import breaking, directions

SCHEMA_TYPES = ("AVRO", "JSON")


class RegistryError(Exception):
    """A refused request, with Confluent's HTTP status and ``error_code``."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def subject_not_found(subject: str) -> RegistryError:
    return RegistryError(404, 40401, f"Subject '{subject}' not found.")


def version_not_found(subject: str, version: int | str) -> RegistryError:
    return RegistryError(404, 40402, f"Version {version} not found for subject '{subject}'.")


def schema_not_found(what: str = "Schema not found") -> RegistryError:
    return RegistryError(404, 40403, what)


@dataclass
class Version:
    """One version of a subject."""

    version: int
    schema_id: int
    deleted: bool = False


def canonical(schema_type: str, text: str) -> str:
    """The identity of a schema text: its JSON re-serialised with sorted keys.

    Whitespace and key order do not make a new schema; everything else (defaults, docs)
    does, as in Confluent's registry.
    """
    return schema_type + ":" + json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))


def parse_schema(schema_type: str, text: str) -> Any:
    """The parsed schema, or a 42201 error saying why it is invalid."""
    if schema_type not in SCHEMA_TYPES:
        raise RegistryError(422, 42201, f"Invalid schema type {schema_type}; use AVRO or JSON")
    try:
        parsed = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise RegistryError(422, 42201, f"Invalid schema: not JSON ({exc})") from None
    if schema_type == "AVRO":
        try:
            fastavro.parse_schema(parsed)
        except Exception as exc:  # fastavro raises several types for a bad schema
            raise RegistryError(422, 42201, f"Invalid Avro schema: {exc}") from None
    elif not isinstance(parsed, dict | bool):
        raise RegistryError(422, 42201, "Invalid JSON schema: must be an object or a boolean")
    else:
        _check_json_schema(parsed)
    return parsed


def _check_json_schema(parsed: Any) -> None:
    """42201 unless ``parsed`` is valid by its draft's metaschema (draft 7 without a
    ``$schema``, as Confluent's registry assumes): a keyword of the wrong type, such as
    ``{"type": 5}``, was registered, and broke the next registration with a 500."""
    try:
        from jsonschema import Draft7Validator, validators  # type: ignore[import-untyped]
        from jsonschema.exceptions import SchemaError as Refused  # type: ignore[import-untyped]
    except ImportError:  # the registry extra brings it; without it, the engine's check
        return
    try:
        validators.validator_for(parsed, default=Draft7Validator).check_schema(parsed)
    except Refused as exc:
        where = "/".join(str(p) for p in exc.path) or "(root)"
        raise RegistryError(422, 42201, f"Invalid JSON schema at {where}: {exc.message}") from None


class RegistryState:
    """Everything the registry knows, guarded by one lock.

    Args:
        directory: keep the state in ``directory/registry.json`` too; None: memory only.
        policy: the policy of streamguard's JSON Schema rules (see ``schema check``).
    """

    def __init__(self, directory: Path | None = None, policy: Policy = "lenient") -> None:
        self.directory = directory
        self.policy: Policy = policy
        self.lock = threading.RLock()
        self.schemas: dict[int, tuple[str, str]] = {}  # id -> (type, text)
        self.ids: dict[str, int] = {}  # canonical text -> id, kept forever
        self.subjects: dict[str, list[Version]] = {}
        self.global_level = "BACKWARD"
        self.levels: dict[str, str] = {}
        self.next_id = 1
        if directory is not None:
            self._load()
            try:
                self._save()  # now: a --dir that cannot keep the state fails the start
            except OSError as exc:
                raise ConfigurationError(
                    f"cannot keep the registry's state in {directory}: "
                    f"{exc.strerror or exc}; point --dir at a directory it can write"
                ) from None

    # -- persistence ---------------------------------------------------------------

    @property
    def _file(self) -> Path | None:
        return None if self.directory is None else self.directory / "registry.json"

    def _load(self) -> None:
        file = self._file
        if file is None or not file.is_file():
            return
        try:
            data = json.loads(file.read_text())
            self.schemas = {int(k): (v["type"], v["schema"]) for k, v in data["schemas"].items()}
            self.ids = {k: int(v) for k, v in data["ids"].items()}
            self.subjects = {
                s: [Version(v["version"], v["id"], v["deleted"]) for v in versions]
                for s, versions in data["subjects"].items()
            }
            self.global_level = data["global_level"]
            self.levels = dict(data["levels"])
            self.next_id = int(data["next_id"])
        except OSError as exc:
            raise ConfigurationError(f"cannot read {file}: {exc.strerror or exc}") from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigurationError(
                f"{file} is not a registry state this server wrote ({type(exc).__name__}: "
                f"{exc}); move it away, or point --dir at another directory"
            ) from None

    def _save(self) -> None:
        file = self._file
        if file is None:
            return
        data = {
            "schemas": {str(k): {"type": t, "schema": s} for k, (t, s) in self.schemas.items()},
            "ids": self.ids,
            "subjects": {
                s: [{"version": v.version, "id": v.schema_id, "deleted": v.deleted} for v in vs]
                for s, vs in self.subjects.items()
            },
            "global_level": self.global_level,
            "levels": self.levels,
            "next_id": self.next_id,
        }
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, file)

    # -- reading -------------------------------------------------------------------

    def live(self, subject: str, deleted: bool = False) -> list[Version]:
        """The subject's versions (soft-deleted ones too if ``deleted``); 40401 if none."""
        versions = [v for v in self.subjects.get(subject, []) if deleted or not v.deleted]
        if not versions:
            raise subject_not_found(subject)
        return versions

    def subject_names(self, deleted: bool = False, prefix: str = "") -> list[str]:
        return sorted(
            s
            for s, vs in self.subjects.items()
            if s.startswith(prefix) and any(deleted or not v.deleted for v in vs)
        )

    def version(self, subject: str, spec: str, deleted: bool = False) -> Version:
        """A version by number, ``latest`` or ``-1``; 40401, 40402 or 42202 otherwise."""
        versions = self.live(subject, deleted)
        if spec in ("latest", "-1"):
            return versions[-1]
        number = parse_version(spec)
        for v in versions:
            if v.version == number:
                return v
        raise version_not_found(subject, number)

    def schema(self, schema_id: int) -> tuple[str, str]:
        """(type, text) of an id still referenced by some version (soft-deleted included)."""
        if schema_id in self.schemas and any(
            v.schema_id == schema_id for vs in self.subjects.values() for v in vs
        ):
            return self.schemas[schema_id]
        raise schema_not_found(f"Schema {schema_id} not found")

    def level(self, subject: str | None) -> str:
        """The subject's compatibility level, else the global one."""
        return self.levels.get(subject, self.global_level) if subject else self.global_level

    def find(self, subject: str, schema_type: str, text: str, deleted: bool = False) -> Version:
        """The subject's version holding this schema; 40401 or 40403 otherwise."""
        versions = self.live(subject, deleted)
        parse_schema(schema_type, text)
        schema_id = self.ids.get(canonical(schema_type, text))
        for v in reversed(versions):
            if v.schema_id == schema_id:
                return v
        raise schema_not_found()

    # -- judging -------------------------------------------------------------------

    def incompatibilities(
        self, subject: str, schema_type: str, text: str, against: list[Version]
    ) -> list[str]:
        """What breaks the subject's level between ``against`` and the new schema."""
        level = self.level(subject)
        if not directions(level):
            return []
        new = parse_schema(schema_type, text)
        fmt = "avro" if schema_type == "AVRO" else "json"
        messages = []
        for v in against:
            old_type, old_text = self.schemas[v.schema_id]
            if old_type != schema_type:
                messages.append(f"version {v.version} is {old_type}, the new schema {schema_type}")
                continue
            try:
                changes = compare_versions(json.loads(old_text), new, fmt, self.policy)
            except SchemaError as exc:  # what the engine cannot read (a $ref elsewhere)
                raise RegistryError(422, 42201, f"Invalid JSON schema: {exc}") from None
            for change in breaking(changes, level):
                old, cur = f"v{v.version}", "the new schema"
                messages.append(
                    f"{change.rule} at {change.field_path} (version {v.version}, {level}): "
                    f"{change.message(old, cur)}"
                )
        return messages

    def to_check(self, subject: str, version: str | None) -> list[Version]:
        """The versions a compatibility test compares with (one, or the level's set)."""
        if version is not None:
            return [self.version(subject, version)]
        versions = [v for v in self.subjects.get(subject, []) if not v.deleted]
        return versions if self.level(subject).endswith("_TRANSITIVE") else versions[-1:]

    # -- writing -------------------------------------------------------------------

    def register(self, subject: str, schema_type: str, text: str) -> tuple[int, int]:
        """Add a version (or find the one holding this schema): (id, version).

        Raises:
            RegistryError: 42201 invalid schema, 409 incompatible with the subject's level.
        """
        with self.lock:
            parse_schema(schema_type, text)
            key = canonical(schema_type, text)
            schema_id = self.ids.get(key)
            versions = self.subjects.get(subject, [])
            for v in versions:
                if v.schema_id == schema_id and not v.deleted:
                    return v.schema_id, v.version
            problems = self.incompatibilities(
                subject, schema_type, text, self.to_check(subject, None)
            )
            if problems:
                raise RegistryError(
                    409,
                    409,
                    f"Schema being registered is incompatible with an earlier schema for "
                    f'subject "{subject}", details: {problems}',
                )
            if schema_id is None:
                schema_id = self.next_id
                self.next_id += 1
                self.ids[key] = schema_id
                self.schemas[schema_id] = (schema_type, text)
            number = max((v.version for v in versions), default=0) + 1
            self.subjects.setdefault(subject, []).append(Version(number, schema_id))
            self._save()
            return schema_id, number

    def delete_subject(self, subject: str, permanent: bool) -> list[int]:
        with self.lock:
            versions = self.subjects.get(subject, [])
            if not versions:
                raise subject_not_found(subject)
            if permanent:
                if any(not v.deleted for v in versions):
                    raise RegistryError(
                        404,
                        40405,
                        f"Subject '{subject}' was not deleted first before being permanently "
                        "deleted",
                    )
                del self.subjects[subject]
                self.levels.pop(subject, None)
                self._save()
                return [v.version for v in versions]
            live = [v for v in versions if not v.deleted]
            if not live:
                raise RegistryError(404, 40404, f"Subject '{subject}' was soft deleted.")
            for v in live:
                v.deleted = True
            self._save()
            return [v.version for v in live]

    def delete_version(self, subject: str, spec: str, permanent: bool) -> int:
        with self.lock:
            # A soft-deleted version is found too, as Confluent's registry finds it, to
            # answer a second soft delete with its 40406, not 40402 (or 40401); "latest"
            # names the latest live version while there is one.
            live = any(not v.deleted for v in self.subjects.get(subject, []))
            latest = spec in ("latest", "-1")
            v = self.version(subject, spec, deleted=permanent or not latest or not live)
            if not permanent and v.deleted:
                raise RegistryError(
                    404,
                    40406,
                    f"Subject '{subject}' Version {v.version} was soft deleted. Set "
                    "permanent=true to delete permanently",
                )
            if permanent:
                if not v.deleted:
                    raise RegistryError(
                        404,
                        40407,
                        f"Subject '{subject}' Version {v.version} was not deleted first before "
                        "being permanently deleted",
                    )
                self.subjects[subject].remove(v)
                if not self.subjects[subject]:
                    del self.subjects[subject]
            else:
                v.deleted = True
            self._save()
            return v.version

    def set_level(self, subject: str | None, level: Any) -> str:
        if not isinstance(level, str) or level.upper() not in MODES:
            raise RegistryError(
                422, 42203, f"Invalid compatibility level. Valid values are {list(MODES)}"
            )
        with self.lock:
            if subject is None:
                self.global_level = level.upper()
            else:
                self.levels[subject] = level.upper()
            self._save()
            return level.upper()

    def delete_level(self, subject: str | None) -> str:
        with self.lock:
            if subject is None:
                old, self.global_level = self.global_level, "BACKWARD"
            else:
                if subject not in self.subjects:
                    raise subject_not_found(subject)
                old = self.levels.pop(subject, self.global_level)
            self._save()
            return old


def parse_version(spec: str) -> int:
    """A version number from a path part; 42202 if it is not a positive int."""
    try:
        number = int(spec)
    except ValueError:
        number = 0
    if number < 1:
        raise RegistryError(
            422,
            42202,
            f"The specified version '{spec}' is not a valid version id. Allowed values are "
            'between [1, 2^31-1] and the string "latest"',
        )
    return number

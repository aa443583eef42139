"""Checking and registering contracts against a live schema registry (CI's other store).

``streamguard schema check --registry URL`` compares each contract with the versions
its registry subject holds, under the subject's compatibility level as the registry
reports it (the global level if the subject has none), with streamguard's own rules,
and asks the registry for its own verdict too. The two can disagree (another engine,
another policy for open content models); a disagreement is reported, never hidden,
and either verdict of "incompatible" fails the check.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from streamguard.contracts import Contract
from streamguard.errors import ConfigurationError, RegistryUnavailable, StreamguardError
from streamguard.registry.client import call, registry_error_code
from streamguard.registry.codec import registry_schema
from streamguard.schema.changes import Change
from streamguard.schema.checks import BOTH, Comparison, SubjectResult, compare_versions
from streamguard.schema.jsonschema_compat import Policy
from streamguard.schema.modes import directions
from streamguard.settings import redact_url

# A registry's schemaType as the report names it (as schemas/ names the wire formats).
_SCHEMA_TYPES = {"AVRO": "Avro", "JSON": "JSON", "PROTOBUF": "Protobuf"}


class RegistrationRefused(StreamguardError):
    """The registry refused to register a schema (409 incompatible, 42201 invalid); exit 1."""


@dataclass
class RegistryCheck:
    """What ``check --registry`` found for one contract."""

    contract: type[Contract]
    result: SubjectResult  # streamguard's verdict, against the registry's versions
    registered_as: int | None  # the version already holding this schema, if any
    registry_compatible: bool | None  # the registry's verdict; None: not asked
    latest: int | None = None  # the subject's latest version

    @property
    def ok(self) -> bool:
        """Compatible by streamguard's rules and, if asked, by the registry's."""
        return self.result.ok and self.registry_compatible is not False

    @property
    def compatible(self) -> bool:
        """streamguard's verdict on the schema change, the question the registry answers
        too (the __version__ rules of schemas/ aside)."""
        return not any(c.breaking(self.result.mode) for c in self.result.comparisons)

    @property
    def in_registry(self) -> bool:
        """The registry holds a version of the subject."""
        return self.latest is not None or self.registered_as is not None

    @property
    def disagreement(self) -> bool:
        """The registry and streamguard reach different verdicts."""
        return self.registry_compatible is not None and self.registry_compatible != self.compatible

    def summary(self) -> dict[str, Any]:
        """The subject's verdicts, as ``--format json`` reports them."""
        return {
            "subject": self.contract.__subject__,
            "registry_subject": self.result.subject,
            "version": self.contract.__version__,
            "compatibility": self.result.mode,
            "registered_as": self.registered_as,
            # False: nothing was compared, maybe against the wrong subject (the text
            # and github formats say so; a script reading json could not tell).
            "in_registry": self.in_registry,
            "compatible": self.result.ok,
            "registry_compatible": self.registry_compatible,
            "disagreement": self.disagreement,
        }


class RegistryChecker:
    """Runs checks and registrations with one client.

    Raises ``ConfigurationError`` (exit 2) when the registry cannot be reached.
    """

    def __init__(self, client: Any, url: str, policy: Policy) -> None:
        self.client = client
        self.url = url
        self.policy: Policy = policy

    def _call(self, request: Any) -> Any:
        try:
            return call(self.url, request)
        except RegistryUnavailable:
            raise ConfigurationError(
                f"cannot reach the schema registry at {redact_url(self.url)}; check the URL "
                "(--registry, $STREAMGUARD_SCHEMA_REGISTRY_URL or schema_registry_url) and "
                "the credentials"
            ) from None

    def _missing(self, request: Any, codes: tuple[int, ...], default: Any) -> Any:
        try:
            return self._call(request)
        except ConfigurationError:
            raise
        except Exception as exc:
            if registry_error_code(exc) in codes:
                return default
            raise ConfigurationError(f"the schema registry refused a request: {exc}") from None

    def level(self, subject: str) -> str:
        """The subject's compatibility level, else the registry's global one."""
        own = self._missing(lambda: self.client.get_compatibility(subject), (40401, 40408), None)
        return str(own or self._call(lambda: self.client.get_compatibility())).upper()

    def check(self, contract: type[Contract], subject: str) -> RegistryCheck:
        """Compare a contract with the subject's versions, and ask the registry too."""
        from confluent_kafka.schema_registry import Schema

        text, schema_type = registry_schema(contract)
        schema = Schema(text, schema_type)
        level = self.level(subject)
        result = SubjectResult(subject, level, contract.__version__)
        versions: list[int] = self._missing(lambda: self.client.get_versions(subject), (40401,), [])
        registered_as = None
        if versions:
            found = self._missing(
                lambda: self.client.lookup_schema(subject, schema), (40401, 40403), None
            )
            if found is not None:
                result.changed = False
                registered_as = int(found.version)
                if registered_as == versions[-1]:
                    return RegistryCheck(contract, result, registered_as, None, versions[-1])
                # An older version's schema again (a revert): producers would write it
                # after the latest, whose consumers may not read it, so it is judged
                # against the latest (or all) like a new schema.
        to_compare = versions if level.endswith("_TRANSITIVE") else versions[-1:]
        for version in to_compare if directions(level) else []:
            # Listed a moment ago, it may be gone (40402): any refusal is exit 2.
            registered = self._missing(
                lambda v=version: self.client.get_version(subject, v), (), None
            )
            old_type = (registered.schema.schema_type or "AVRO").upper()
            if old_type != schema_type:
                formats = (
                    _SCHEMA_TYPES.get(old_type, old_type),
                    _SCHEMA_TYPES.get(schema_type, schema_type),
                )
                changes = [Change((), "SCHEMA_TYPE_CHANGED", BOTH, *formats)]
            else:
                fmt = "avro" if schema_type == "AVRO" else "json"
                old = json.loads(registered.schema.schema_str)
                changes = compare_versions(old, json.loads(text), fmt, self.policy)
            result.comparisons.append(
                Comparison(subject, f"registry v{version}", f"v{contract.__version__}", changes)
            )
        verdict = None
        if versions:
            verdict = bool(
                self._missing(
                    lambda: self.client.test_compatibility_all_versions(subject, schema), (), None
                )
            )
        return RegistryCheck(
            contract, result, registered_as, verdict, versions[-1] if versions else None
        )

    def register(self, contract: type[Contract], subject: str) -> tuple[int, int]:
        """Register the contract's schema under ``subject``: (id, version).

        Raises:
            RegistrationRefused: the registry refused it (409 incompatible, 42201 invalid).
        """
        from confluent_kafka.schema_registry import Schema

        text, schema_type = registry_schema(contract)
        schema = Schema(text, schema_type)
        try:
            registered = self._call(
                lambda: self.client.register_schema_full_response(subject, schema)
            )
        except ConfigurationError:
            raise
        except Exception as exc:
            raise RegistrationRefused(
                f"{subject}: the schema registry refused v{contract.__version__} "
                f"({registry_error_code(exc)}): {getattr(exc, 'error_message', exc)}"
            ) from None
        version = registered.version
        if version is None:  # registries that answer only {"id": N}
            version = self._call(lambda: self.client.lookup_schema(subject, schema)).version
        return int(registered.schema_id), int(version)

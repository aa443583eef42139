"""``--revalidate``: does a dead-lettered value pass its subject's *current* contract?

After a contract fix is deployed, only the records that now pass are worth replaying;
the rest would come straight back to the DLQ. The current contract of each subject is
the highest version among the project's configured contracts (``[tool.streamguard]``).
Avro values are decoded as a service would: single-object encoding, resolved from the
writer schemas stored for the subject (``schemas/<subject>/v<N>.avsc``) to the current
contract.
With a schema registry, values in the Confluent wire format are read too (and Avro
contracts), exactly as a service with that registry reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import BaseModel

from streamguard import headers as h
from streamguard.codecs import AvroCodec, Codec, JsonCodec
from streamguard.contracts import Contract
from streamguard.deadletter import DeadLetter, error_text
from streamguard.errors import ConfigurationError, ContractViolation, DecodeError, StreamguardError
from streamguard.registry.codec import RegistryCodec

Problem = list[dict[str, object]]


class Revalidator:
    """Checks DLQ values against the current contracts, one decoder per subject.

    Args:
        contracts: the current contract of each subject, as
            ``ProjectConfig.contracts_by_subject()`` returns it.
        codec: the JSON codec with the limits the services use.
        avro_writer_schemas: per subject, the Avro schemas producers may have written
            with (older versions), so that old records resolve to the current contract.
        schema_registry: the registry client's config; then every framing a service
            with a registry reads is checked, for JSON and Avro contracts alike. A
            registry that cannot be reached raises ``RegistryUnavailable``.
    """

    def __init__(
        self,
        contracts: Mapping[str, type[Contract]],
        codec: JsonCodec | None = None,
        avro_writer_schemas: Mapping[str, Iterable[Mapping[str, Any]]] | None = None,
        schema_registry: Mapping[str, Any] | None = None,
    ) -> None:
        self._contracts = dict(contracts)
        self._codec = codec or JsonCodec()
        self._writers = {k: list(v) for k, v in (avro_writer_schemas or {}).items()}
        self._registry: dict[str, RegistryCodec] = {}
        if schema_registry is not None:
            limit = self._codec.max_bytes
            avro = RegistryCodec(schema_registry, wire_format="avro", max_bytes=limit)
            json_codec = RegistryCodec(avro.client, wire_format="json", max_bytes=limit)
            self._registry = {"avro": avro, "json": json_codec}
        self._decoders: dict[str, Callable[[bytes | None], BaseModel]] = {}

    def problems(self, letter: DeadLetter) -> Problem:
        """The value-free reasons the record still fails; empty when it now passes."""
        subject = letter.context.get(h.DLQ_EXPECTED_SUBJECT, "")
        contract = self._contracts.get(subject)
        if contract is None and subject:
            # The project's configuration, not the record: judged "still invalid", the
            # record (and every other of the subject) was committed past, and a run
            # from the right directory then found nothing left to replay.
            known = ", ".join(sorted(self._contracts)) or "none"
            raise ConfigurationError(
                f"--revalidate: no contract for subject {subject!r} in [tool.streamguard] "
                f"contracts (known: {known}); run where the project's pyproject.toml lists "
                "it. Nothing from this record on was committed"
            )
        if contract is None:
            return [
                {
                    "loc": "",
                    "type": "no_contract",
                    "msg": "the record names no subject (no sg-dlq-expected-subject header)",
                }
            ]
        decode = self._decoders.get(subject)
        if decode is None:
            decode = self._decoders[subject] = self._codec_of(contract).decoder(contract)
        try:
            decode(letter.value)
        except ContractViolation as exc:
            return [
                {"loc": ".".join(str(p) for p in e["loc"]), "type": e["type"], "msg": e["msg"]}
                for e in exc.errors
            ]
        except DecodeError as exc:
            return [{"loc": "", "type": exc.reason, "msg": str(exc)}]
        except StreamguardError:
            raise  # the registry or the configuration, not the record (RegistryUnavailable)
        except Exception as exc:
            # A contract's validator raising another exception (KeyError(value)): a
            # service dead-letters the record for it, so it is still invalid. Its text may
            # quote the value, and escaping it would stop the replay here on every run
            # with the value in the traceback: only its class is shown.
            return [{"loc": "", "type": "permanent_error", "msg": error_text(exc)}]
        return []

    def _codec_of(self, contract: type[Contract]) -> Codec:
        registry = self._registry.get(contract.__wire_format__)
        writers = self._writers.get(contract.__subject__, ())
        if registry is not None and contract.__wire_format__ == "avro" and writers:
            # The subject's stored writers read its single-object records, as without a
            # registry; the client (and its cache of ids) is shared.
            return RegistryCodec(
                registry.client,
                wire_format="avro",
                max_bytes=registry.max_bytes,
                writer_schemas=writers,
            )
        if registry is not None:
            return registry
        if contract.__wire_format__ == "avro":
            return AvroCodec(writer_schemas=writers)
        return self._codec

"""``--revalidate``: does a dead-lettered value pass its subject's *current* contract?

After a contract fix is deployed, only the records that now pass are worth replaying;
the rest would come straight back to the DLQ. The current contract of each subject is
the highest version among the project's configured contracts (``[tool.streamguard]``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from pydantic import BaseModel

from streamguard import headers as h
from streamguard.codecs import JsonCodec
from streamguard.contracts import Contract
from streamguard.deadletter import DeadLetter
from streamguard.errors import ContractViolation, DecodeError

Problem = list[dict[str, object]]


class Revalidator:
    """Checks DLQ values against the current contracts, one decoder per subject.

    Args:
        contracts: the current contract of each subject, as
            ``ProjectConfig.contracts_by_subject()`` returns it.
        codec: the JSON codec with the limits the services use.
    """

    def __init__(
        self, contracts: Mapping[str, type[Contract]], codec: JsonCodec | None = None
    ) -> None:
        self._contracts = dict(contracts)
        self._codec = codec or JsonCodec()
        self._decoders: dict[str, Callable[[bytes | None], BaseModel]] = {}

    def problems(self, letter: DeadLetter) -> Problem:
        """The value-free reasons the record still fails; empty when it now passes."""
        subject = letter.context.get(h.DLQ_EXPECTED_SUBJECT, "")
        contract = self._contracts.get(subject)
        if contract is None:
            known = ", ".join(sorted(self._contracts)) or "none"
            return [
                {
                    "loc": "",
                    "type": "no_contract",
                    "msg": f"no contract for subject {subject!r} in [tool.streamguard] "
                    f"contracts (known: {known})",
                }
            ]
        if contract.__wire_format__ != "json":
            return [
                {
                    "loc": "",
                    "type": "unsupported_format",
                    "msg": f"--revalidate checks JSON contracts; {subject} is "
                    f"{contract.__wire_format__}",
                }
            ]
        decode = self._decoders.get(subject)
        if decode is None:
            decode = self._decoders[subject] = self._codec.decoder(contract)
        try:
            decode(letter.value)
        except ContractViolation as exc:
            return [
                {"loc": ".".join(str(p) for p in e["loc"]), "type": e["type"], "msg": e["msg"]}
                for e in exc.errors
            ]
        except DecodeError as exc:
            return [{"loc": "", "type": exc.reason, "msg": str(exc)}]
        return []

"""--revalidate decodes JSON and Avro dead letters as a service would."""

from __future__ import annotations

from uuid import UUID

from pydantic import field_validator

import streamguard as sg
from streamguard import headers as h
from streamguard.deadletter import DeadLetter
from streamguard.dlqtools.revalidate import Revalidator
from streamguard.schema.avro import contract_avro_schema
from tests.test_avro_codec import PaymentV1, PaymentV2


def letter(value: bytes, subject: str = "tests.avro.Payment") -> DeadLetter:
    return DeadLetter.from_record(
        topic="payments.dlq",
        partition=0,
        offset=0,
        key=None,
        value=value,
        headers=[(h.DLQ_EXPECTED_SUBJECT, subject.encode())],
    )


def test_an_old_avro_record_passes_the_current_contract_via_its_stored_writer() -> None:
    """A v1 Avro value resolves to the current v2 contract through the stored v1 schema."""
    value = sg.AvroCodec().encode(PaymentV1(payment_id=UUID(int=1), cents=5, currency="EUR"))
    revalidator = Revalidator(
        {"tests.avro.Payment": PaymentV2},
        avro_writer_schemas={"tests.avro.Payment": [contract_avro_schema(PaymentV1)]},
    )
    assert revalidator.problems(letter(value)) == []


def test_an_avro_record_still_invalid_is_reported_without_its_value() -> None:
    """Avro bytes that break the current contract come back as value-free problems."""
    bad = sg.AvroCodec().encode(
        PaymentV2.model_construct(payment_id=UUID(int=1), cents=-4242, currency="EUR", note=None)
    )
    problems = Revalidator({"tests.avro.Payment": PaymentV2}).problems(letter(bad))
    assert problems
    assert problems[0]["loc"] == "cents"
    assert "-4242" not in repr(problems)


def test_an_unknown_avro_writer_is_a_decode_problem() -> None:
    """Without the writer's schema, an Avro value is a decode problem naming the cause."""
    value = sg.AvroCodec().encode(PaymentV1(payment_id=UUID(int=1), cents=5, currency="EUR"))
    problems = Revalidator({"tests.avro.Payment": PaymentV2}).problems(letter(value))
    assert problems[0]["type"] == "decode_error"


class Lookup(sg.Contract):
    __subject__ = "tests.revalidate.Lookup"
    __version__ = 1
    name: str

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        raise KeyError(v)  # a validator's lookup failing, quoting the value


def test_a_validator_raising_another_exception_is_still_invalid_without_its_text() -> None:
    """A validator's ``KeyError(value)`` is a problem naming its class only, as the
    service dead-letters it; it neither stops the replay nor shows the value."""
    value = b'{"name": "zqcanary-7f3a-qz"}'
    problems = Revalidator({Lookup.__subject__: Lookup}).problems(
        letter(value, subject=Lookup.__subject__)
    )
    assert problems
    assert problems[0]["type"] == "permanent_error"
    assert "KeyError" in str(problems[0]["msg"])
    assert "7f3a" not in repr(problems)

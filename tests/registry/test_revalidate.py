"""``dlq replay --revalidate`` with a schema registry reads Confluent-framed dead letters."""

from __future__ import annotations

from confluent_kafka.schema_registry import SchemaRegistryClient

import streamguard as sg
from streamguard import headers as h
from streamguard.deadletter import DeadLetter
from streamguard.dlqtools.revalidate import Revalidator
from streamguard.registry import RegistryCodec, RegistryServer
from streamguard.schema.avro import contract_avro_schema
from tests.registry.conftest import PaymentV1, PaymentV2, avro


def letter(value: bytes) -> DeadLetter:
    """A dead letter of the payments subject with ``value``."""
    return DeadLetter(
        dlq_topic="p.dlq",
        dlq_partition=0,
        dlq_offset=0,
        key=None,
        value=value,
        original_headers=[],
        context={h.DLQ_EXPECTED_SUBJECT: PaymentV2.__subject__},
    )


def test_revalidation_reads_confluent_avro_through_the_registry(
    registry: RegistryServer, client: SchemaRegistryClient
) -> None:
    """With a registry, a Confluent-framed Avro dead letter that the current contract
    accepts passes, an unknown id is reported, and without a registry the Confluent
    framing cannot be read (a decode problem, as a service without one reports it)."""
    client.register_schema("p-value", avro(PaymentV1))
    codec = RegistryCodec({"url": registry.url}, wire_format="avro")
    value = codec.encoder(PaymentV1, "p")(PaymentV1(payment_id="p", amount_cents=3))
    revalidator = Revalidator({PaymentV2.__subject__: PaymentV2}, schema_registry=client.config())
    assert revalidator.problems(letter(value)) == []
    unknown = b"\x00" + (404).to_bytes(4, "big") + value[5:]
    (problem,) = revalidator.problems(letter(unknown))
    assert problem["type"] == "decode_error"
    assert "schema id 404" in str(problem["msg"])
    (offline,) = Revalidator({PaymentV2.__subject__: PaymentV2}).problems(letter(value))
    assert offline["type"] == "decode_error"


def test_revalidation_with_a_registry_reads_single_object_records_of_older_writers(
    registry: RegistryServer,
) -> None:
    """A single-object Avro dead letter written with v1 passes the v2 contract whether or
    not a registry is given: the stored v1 .avsc reads it. With --schema-registry, the
    subject's stored writer schemas were ignored: the record was "still invalid" (unknown
    fingerprint), and the replay committed past it, so it was never replayed."""
    value = sg.AvroCodec().encode(PaymentV1(payment_id="p", amount_cents=3))
    writers = {PaymentV2.__subject__: [contract_avro_schema(PaymentV1)]}
    contracts = {PaymentV2.__subject__: PaymentV2}
    assert Revalidator(contracts, avro_writer_schemas=writers).problems(letter(value)) == []
    online = Revalidator(
        contracts, avro_writer_schemas=writers, schema_registry={"url": registry.url}
    )
    assert online.problems(letter(value)) == []

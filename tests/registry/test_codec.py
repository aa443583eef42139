"""RegistryCodec: the three framings, the id cache, and what an unknown id or a missing
registry become."""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

import streamguard as sg
from streamguard.errors import ConfigurationError, DecodeError, RegistryUnavailable
from streamguard.registry import RegistryCodec, RegistryServer
from streamguard.registry.client import REGISTRY_URL_ENV, resolve_registry_config, subject_name
from streamguard.registry.codec import registry_schema
from tests.json_http import JsonHandler, serving
from tests.registry.conftest import PaymentV1, PaymentV2, avro
from tests.runtime.conftest import wait_for
from tests.test_avro_codec import StrictPayment
from tests.test_producer import closed_port

SECRET = "hunter2-secret"


def framed(schema_id: int, body: bytes) -> bytes:
    """Confluent framing: magic byte 0, the id as 4 bytes big-endian, the payload."""
    return b"\x00" + schema_id.to_bytes(4, "big") + body


def test_reads_all_three_framings(registry: RegistryServer, client: SchemaRegistryClient) -> None:
    """One decoder reads Confluent-framed Avro, Avro single-object and plain JSON."""
    client.register_schema("p-value", avro(PaymentV2))
    codec = RegistryCodec({"url": registry.url}, wire_format="avro")
    event = PaymentV2(payment_id="p", amount_cents=5, currency="USD")
    decode = codec.decoder(PaymentV2)
    assert decode(codec.encoder(PaymentV2, "p")(event)) == event
    assert decode(sg.AvroCodec().encode(event)) == event
    assert decode(event.model_dump_json().encode()) == event


def test_a_strict_contract_reads_confluent_framed_avro(
    registry: RegistryServer, client: SchemaRegistryClient
) -> None:
    """A strict Avro contract's UUID, datetime and Decimal (strings on the wire) decode."""
    client.register_schema("s-value", avro(StrictPayment))
    codec = RegistryCodec({"url": registry.url}, wire_format="avro")
    event = StrictPayment(
        payment_id=UUID(int=7), at=datetime(2026, 1, 1, tzinfo=UTC), amount=Decimal("9.90"), cents=5
    )
    assert codec.decoder(StrictPayment)(codec.encoder(StrictPayment, "s")(event)) == event


def test_writer_schema_is_fetched_once_per_id(
    registry: RegistryServer, client: SchemaRegistryClient
) -> None:
    """After the first record of an id, records of that id decode without the registry."""
    schema_id = client.register_schema("p-value", avro(PaymentV1))
    codec = RegistryCodec({"url": registry.url}, wire_format="avro")
    record = codec.encoder(PaymentV1, "p")(PaymentV1(payment_id="p", amount_cents=1))
    decode = codec.decoder(PaymentV2)
    assert decode(record).currency == "EUR"  # v1 data, v2 reader: the default fills in
    registry.stop()
    for _ in range(3):
        assert decode(record).payment_id == "p"
    assert record[1:5] == schema_id.to_bytes(4, "big")


def test_unknown_id_is_a_decode_error_naming_it(registry: RegistryServer) -> None:
    """An id the registry does not know is a DecodeError (dead-lettered) naming the id."""
    codec = RegistryCodec({"url": registry.url}, wire_format="json")
    with pytest.raises(DecodeError, match="schema id 77 is unknown") as info:
        codec.decode(framed(77, b"{}"), PaymentV1)
    assert info.value.reason == "decode_error"


def test_schema_guid_framing_is_named_not_called_invalid_json(registry: RegistryServer) -> None:
    """Confluent's newer framing (byte 01 + a 16-byte GUID) is refused as such: the plain
    JSON reader's "Invalid JSON" sent its users looking for a broken producer."""
    decode = RegistryCodec({"url": registry.url}, wire_format="avro").decoder(PaymentV1)
    with pytest.raises(DecodeError, match=r"schema GUID \(magic byte 01\)") as caught:
        decode(b"\x01" + bytes(16) + b"\x02p\x02")
    assert caught.value.reason == "decode_error"
    with pytest.raises(DecodeError, match="Invalid JSON"):  # other bytes: as before
        decode(b"\x02p\x02")


def test_an_unknown_id_is_asked_for_once_then_remembered(registry: RegistryServer) -> None:
    """Records of an id the registry refused are decode errors without asking it again:
    a producer of another registry must not cost a registry request per record."""
    codec = RegistryCodec({"url": registry.url}, wire_format="json")
    decode = codec.decoder(PaymentV1)
    with pytest.raises(DecodeError, match="schema id 77 is unknown"):
        decode(framed(77, b"{}"))
    registry.stop()  # asking again would raise RegistryUnavailable
    for _ in range(3):
        with pytest.raises(DecodeError, match="schema id 77 is unknown"):
            decode(framed(77, b"{}"))


def test_an_id_beyond_the_registry_s_range_is_refused_without_asking(
    registry: RegistryServer,
) -> None:
    """An id over 2**31 - 1, which no registry gives (ids are Java ints), is a DecodeError
    naming it without a registry request, and needs no thread on an event loop: half
    of all random ids in a flood of garbage cost the registry nothing."""
    url = registry.url
    registry.stop()  # a request would raise RegistryUnavailable
    codec = RegistryCodec({"url": url}, wire_format="json")
    decode = codec.decoder(PaymentV1)
    for schema_id in (2**31, 2**32 - 1):
        assert codec.unfetched(framed(schema_id, b"{}")) is None
        with pytest.raises(DecodeError, match=f"schema id {schema_id} is out of range"):
            decode(framed(schema_id, b"{}"))
    with pytest.raises(RegistryUnavailable):
        decode(framed(2**31 - 1, b"{}"))  # in range: asked for


def test_unfetched_names_the_request_an_event_loop_must_make_in_a_thread(
    registry: RegistryServer,
) -> None:
    """``unfetched`` gives the blocking request for an id not seen yet, and None when
    decoding needs no request: plain JSON, an id already fetched, or one refused a
    moment ago (answered from memory)."""
    codec = RegistryCodec({"url": registry.url}, wire_format="json")
    assert codec.unfetched(b"{}") is None
    assert codec.unfetched(None) is None
    fetch = codec.unfetched(framed(79, b"{}"))
    assert fetch is not None
    with pytest.raises(DecodeError, match="schema id 79 is unknown"):
        fetch()
    assert codec.unfetched(framed(79, b"{}")) is None  # refused: decode raises at once
    with pytest.raises(DecodeError, match="schema id 79 is unknown"):
        codec.decode(framed(79, b"{}"), PaymentV1)
    assert codec.unfetched(framed(80, b"{}")) is not None


def test_a_refused_id_is_asked_for_again_after_a_while(
    registry: RegistryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refusal is remembered for REFUSED_ID_SECONDS only: then the registry is asked
    again (a schema restored under that id is read)."""
    monkeypatch.setattr("streamguard.registry.codec.REFUSED_ID_SECONDS", 0.0)
    codec = RegistryCodec({"url": registry.url}, wire_format="json")
    with pytest.raises(DecodeError, match="schema id 78 is unknown"):
        codec.decode(framed(78, b"{}"), PaymentV1)
    registry.stop()
    with pytest.raises(RegistryUnavailable):
        codec.decode(framed(78, b"{}"), PaymentV1)


def test_unreachable_registry_is_transient(registry: RegistryServer) -> None:
    """A registry that does not answer raises RegistryUnavailable, a TransientError, with
    the URL's password redacted."""
    url = registry.url.replace("http://", f"http://user:{SECRET}@")
    registry.stop()
    codec = RegistryCodec({"url": url}, wire_format="json")
    with pytest.raises(RegistryUnavailable) as info:
        codec.decode(framed(1, b"{}"), PaymentV1)
    assert isinstance(info.value, sg.TransientError)
    assert SECRET not in str(info.value)


def test_a_url_that_leads_to_no_registry_holds_records_instead_of_dead_lettering(
    registry: RegistryServer, client: SchemaRegistryClient
) -> None:
    """A 404 without the registry's 40403 (a wrong path in the URL, a proxy's own page)
    says nothing of the id: the record waits (RegistryUnavailable, nothing remembered),
    where every record of a registered id was dead-lettered as "unknown (40403)"."""
    schema_id = client.register_schema("p-value", avro(PaymentV1))
    record = RegistryCodec(client, wire_format="avro").encoder(PaymentV1, "p")(
        PaymentV1(payment_id="p", amount_cents=1)
    )
    codec = RegistryCodec({"url": registry.url + "/wrong-path"}, wire_format="avro")
    decode = codec.decoder(PaymentV1)
    for _ in range(2):  # not remembered as a refusal: asked again
        with pytest.raises(RegistryUnavailable, match=f"no schema for id {schema_id}.*404"):
            decode(record)
        assert codec.unfetched(record) is not None


def test_a_200_without_a_schema_holds_records_and_is_asked_again() -> None:
    """A 200 whose JSON is no schema (another service's catch-all route answering
    ``{}``) says nothing of the id either: the record waits, and once the URL answers
    with the schema it decodes. It was dead-lettered as "not a valid Avro schema" and
    refused for a minute, and the client's cache kept the empty answer for good."""
    text, _ = registry_schema(PaymentV1)
    answers = [{}, {"schema": text, "schemaType": "AVRO"}]

    class Registry(JsonHandler):
        def do_GET(self) -> None:
            self.answer(200, answers.pop(0) if answers else {})

    with serving(Registry) as url:
        codec = RegistryCodec({"url": url}, wire_format="avro")
        decode = codec.decoder(PaymentV1)
        record = framed(7, b"\x02p\x02")  # payment_id "p", amount_cents 1
        with pytest.raises(RegistryUnavailable, match="no schema for id 7"):
            decode(record)
        assert codec.unfetched(record) is not None  # not remembered as a refusal
        assert decode(record) == PaymentV1(payment_id="p", amount_cents=1)


def test_credentials_in_the_registry_url_are_sent_but_never_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A registry URL's ``user:password@`` still authenticates every request, and the
    password appears in no log line (the HTTP client logs each request's URL at INFO,
    which ``streamguard run`` shows)."""
    seen: list[str | None] = []

    class Registry(JsonHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            self.answer(404, {"error_code": 40403, "message": "Schema not found"})

    with serving(Registry) as base:
        caplog.set_level(logging.DEBUG)
        url = base.replace("http://", f"http://bob:{SECRET}@")
        codec = RegistryCodec({"url": url}, wire_format="json")
        with pytest.raises(DecodeError, match="schema id 9 is unknown"):
            codec.decode(framed(9, b"{}"), PaymentV1)
    token = base64.b64encode(f"bob:{SECRET}".encode()).decode()
    assert seen == [f"Basic {token}"]
    assert caplog.records, "the client logged no request: nothing was checked"
    assert SECRET not in caplog.text


def test_a_token_as_the_registry_urls_user_is_sent_but_never_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A URL whose userinfo is a token alone (``https://TOKEN@registry``) is sent as
    basic auth by the HTTP client all the same: it is a credential, and the request log
    (and an error quoting the URL) showed it in clear."""
    seen: list[str | None] = []

    class Registry(JsonHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            self.answer(404, {"error_code": 40403, "message": "Schema not found"})

    with serving(Registry) as base:
        caplog.set_level(logging.DEBUG)
        codec = RegistryCodec({"url": base.replace("http://", f"http://{SECRET}@")})
        with pytest.raises(DecodeError, match="schema id 9 is unknown"):
            codec.decode(framed(9, b"{}"), PaymentV1)
    token = base64.b64encode(f"{SECRET}:".encode()).decode()
    assert seen == [f"Basic {token}"]
    assert caplog.records, "the client logged no request: nothing was checked"
    assert SECRET not in caplog.text
    with pytest.raises(RegistryUnavailable) as info:
        RegistryCodec({"url": f"http://{SECRET}@127.0.0.1:{closed_port()}"}).decode(
            framed(9, b"{}"), PaymentV1
        )
    assert SECRET not in str(info.value)


def test_a_token_in_the_registry_url_beside_basic_auth_user_info_is_refused() -> None:
    """A ``TOKEN@`` URL with ``basic.auth.user.info`` set too is refused when the codec
    is made, without the token, as the client refuses a ``user:password@`` one. The
    client checks only the latter: the token stayed in the URL, and the HTTP client's
    log line of every request showed it in clear."""
    config = {"url": f"http://{SECRET}@127.0.0.1:1", "basic.auth.user.info": "bob:pw"}
    with pytest.raises(ConfigurationError, match=r"basic\.auth\.user\.info") as info:
        RegistryCodec(config)
    assert SECRET not in str(info.value)


def test_other_credentials_on_a_later_registry_url_are_refused_at_start() -> None:
    """Credentials on a URL of a list other than the first's are refused when the codec
    is made, without the password: the client authenticates every URL with the first's,
    and each request to that URL logged it in clear. The same ones on every URL are
    taken, and sent from no URL."""
    for url in (
        f"http://127.0.0.1:1,http://bob:{SECRET}@127.0.0.1:2",
        f"http://amy:other@127.0.0.1:1,http://bob:{SECRET}@127.0.0.1:2",
    ):
        for config in ({"url": url}, {"url": url, "basic.auth.user.info": "amy:other"}):
            with pytest.raises(ConfigurationError, match="other credentials") as info:
                RegistryCodec(config)
            assert SECRET not in str(info.value)
    same = f"http://bob:{SECRET}@127.0.0.1:1,http://bob:{SECRET}@127.0.0.1:2"
    client = RegistryCodec({"url": same}).client
    assert SECRET not in "".join(client._rest_client.base_urls)
    assert client._rest_client.auth == ("bob", SECRET)


def test_unresolvable_writer_is_a_decode_error_naming_the_id_and_field(
    registry: RegistryServer, client: SchemaRegistryClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer schema Avro cannot resolve to the contract's is a DecodeError naming its
    id, the first mismatch and where to find the id's subjects (it said "check the
    subject's compatibility", and the writer's subject was another one), never a value.
    Decoding makes no registry request for it: it may run on an event loop."""
    client.set_compatibility(level="NONE")
    other = json.loads(avro(PaymentV1).schema_str)
    other["fields"][1]["type"] = "string"  # amount_cents as a string: no promotion to long
    schema_id = client.register_schema("other.Payment", Schema(json.dumps(other), "AVRO"))
    import io

    import fastavro

    body = io.BytesIO()
    fastavro.schemaless_writer(
        body, fastavro.parse_schema(other), {"payment_id": SECRET, "amount_cents": SECRET}
    )
    codec = RegistryCodec({"url": registry.url}, wire_format="avro")
    asked = []
    monkeypatch.setattr(codec.client, "get_schema_versions", lambda *a: asked.append(a))
    decode = codec.decoder(PaymentV1)
    for _ in range(2):
        with pytest.raises(DecodeError) as info:
            decode(framed(schema_id, body.getvalue()))
        text = str(info.value)
        assert f"schema id {schema_id} cannot be resolved" in text
        assert "amount_cents: TYPE_CHANGED string -> long" in text
        assert f"GET /schemas/ids/{schema_id}/versions" in text
        assert SECRET not in text
    assert asked == []


def test_a_writer_schema_with_an_array_of_nothing_dead_letters_its_records_at_once(
    registry: RegistryServer, client: SchemaRegistryClient
) -> None:
    """A producer's schema with an array of ``null`` (zero bytes an item): a 9-byte
    record claiming 10^8 items held the decoder for seconds (10^12: hours, on every
    restart). Records of that id are a DecodeError naming the id and the array, at
    once; a RegistryCodec given such a schema in ``writer_schemas`` is refused."""
    client.set_compatibility(level="NONE")
    writer = json.loads(avro(PaymentV1).schema_str)
    writer["fields"].append({"name": "markers", "type": {"type": "array", "items": "null"}})
    schema_id = client.register_schema("p-value", Schema(json.dumps(writer), "AVRO"))
    codec = RegistryCodec({"url": registry.url}, wire_format="avro")
    count = b"\x80\x84\xaf\x5f"  # 10^8 as an Avro long (zig-zag)
    poison = framed(schema_id, b"\x02p" + b"\x18" + count + b"\x00")  # "p", 12, markers
    started = time.monotonic()
    with pytest.raises(DecodeError, match=rf"id {schema_id} has an array .*markers \(array<null>"):
        codec.decode(poison, PaymentV1)
    assert time.monotonic() - started < 0.5
    with pytest.raises(ConfigurationError, match="markers"):
        RegistryCodec({"url": registry.url}, wire_format="avro", writer_schemas=[writer])


def test_a_deep_record_of_a_recursive_writer_schema_is_a_decode_error(
    registry: RegistryServer, client: SchemaRegistryClient
) -> None:
    """A producer's schema with a field that holds itself, which the contract lacks: the
    reader skips it, and fastavro's compiled reader skipped 20,000 nested levels (a 20 KB
    record) on the C stack until the consumer died of SIGSEGV, on every restart. The
    record is now a DecodeError. In a subprocess: the crash took the test run with it."""
    writer = json.loads(avro(PaymentV1).schema_str)
    next_junk = {"name": "next", "type": ["null", "Junk"]}
    junk = {"type": "record", "name": "Junk", "fields": [next_junk]}
    writer["fields"].append({"name": "junk", "type": ["null", junk], "default": None})
    schema_id = client.register_schema("p-value", Schema(json.dumps(writer), "AVRO"))
    # "p", 12, then junk's Junk branch and each next's Junk branch, 20,000 deep
    poison = framed(schema_id, b"\x02p" + b"\x18" + b"\x02" * 20_000 + b"\x00")
    code = textwrap.dedent(
        f"""
        import streamguard as sg
        from streamguard.registry import RegistryCodec
        from tests.registry.conftest import PaymentV1

        codec = RegistryCodec({{"url": {registry.url!r}}}, wire_format="avro")
        try:
            codec.decode({poison!r}, PaymentV1)
        except sg.DecodeError as exc:
            print(type(exc).__name__)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["DecodeError"]


def test_size_is_checked_before_the_registry_is_asked(registry: RegistryServer) -> None:
    """An oversize Confluent-framed record is refused as oversize, without a lookup."""
    codec = RegistryCodec({"url": registry.url}, wire_format="json", max_bytes=64)
    registry.stop()  # a lookup would raise RegistryUnavailable instead
    with pytest.raises(DecodeError) as info:
        codec.decode(framed(1, b"{" + b" " * 100 + b"}"), PaymentV1)
    assert info.value.reason == "oversize"


def test_contract_violation_in_confluent_json_is_classified(
    registry: RegistryServer, client: SchemaRegistryClient
) -> None:
    """A well-framed JSON record that breaks the contract is a ContractViolation, and
    its values stay out of the error."""
    schema_id = client.register_schema("o-value", Schema('{"type": "object"}', "JSON"))
    codec = RegistryCodec({"url": registry.url}, wire_format="json")
    body = json.dumps({"payment_id": SECRET, "amount_cents": SECRET}).encode()
    with pytest.raises(sg.ContractViolation) as info:
        codec.decode(framed(schema_id, body), PaymentV1)
    assert SECRET not in str(info.value)


def test_encoder_refuses_an_unregistered_schema_unless_auto_register(
    registry: RegistryServer, client: SchemaRegistryClient
) -> None:
    """Without auto_register a schema missing from the subject fails with a hint; with it,
    the schema is registered under the strategy's subject."""
    codec = RegistryCodec({"url": registry.url}, wire_format="avro")
    with pytest.raises(ConfigurationError, match="not registered under subject 'pay-value'"):
        codec.encoder(PaymentV1, "pay")
    auto = RegistryCodec(
        {"url": registry.url},
        wire_format="avro",
        subject_name_strategy="RecordNameStrategy",
        auto_register=True,
    )
    auto.encoder(PaymentV1, "pay")
    assert client.get_subjects() == ["payments.Payment"]


class Note(sg.Contract):
    __subject__ = "notes"
    __version__ = 1
    text: str


def test_encode_does_not_copy_the_schema_per_record(
    registry: RegistryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """encode() looks up the record name per record: since json_schema() returns a
    deep copy, that copied the whole JSON Schema for every record encoded. It reads
    the contract's shared schema instead."""
    codec = RegistryCodec(
        {"url": registry.url},
        wire_format="json",
        subject_name_strategy="RecordNameStrategy",
        auto_register=True,
    )

    def copied(cls: type[sg.Contract]) -> dict[str, object]:
        raise AssertionError("json_schema() copied the schema")

    monkeypatch.setattr(Note, "json_schema", classmethod(copied))
    first, second = codec.encode(Note(text="a")), codec.encode(Note(text="b"))
    assert first[5:] == b'{"text":"a"}'
    assert second[5:] == b'{"text":"b"}'


def test_unregistered_hint_names_the_subject_mapping_and_where_the_schema_is(
    registry: RegistryServer, client: SchemaRegistryClient
) -> None:
    """`schema register --registry` without registry_subject registers under __subject__,
    while TopicNameStrategy looks under <topic>-value: the hint names the pyproject
    mapping that makes the two agree, and the subject the schema was found under."""
    codec = RegistryCodec({"url": registry.url}, wire_format="avro")
    mapping = 'registry_subject = "pay-value" under [tool.streamguard.subjects."payments.Payment"]'
    with pytest.raises(ConfigurationError) as info:
        codec.encoder(PaymentV1, "pay")
    assert mapping in str(info.value)
    assert "it is registered under subject" not in str(info.value)
    schema_id = client.register_schema("payments.Payment", avro(PaymentV1))
    with pytest.raises(ConfigurationError) as info:
        codec.encoder(PaymentV1, "pay")
    assert mapping in str(info.value)
    assert f"registered under subject 'payments.Payment' (id {schema_id})" in str(info.value)


def test_subject_name_strategies() -> None:
    """Subjects are named as Confluent's serializers name them."""
    assert subject_name("TopicNameStrategy", "orders", "a.B") == "orders-value"
    assert subject_name("RecordNameStrategy", "orders", "a.B") == "a.B"
    assert subject_name("TopicRecordNameStrategy", "orders", "a.B") == "orders-a.B"
    with pytest.raises(ConfigurationError, match="unknown subject name strategy"):
        subject_name("Nope", "orders", "a.B")  # type: ignore[arg-type]


def test_config_layers_and_redaction(monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit config wins over the environment, which wins over pyproject's URL;
    secrets never show in a producer's or service's repr."""
    monkeypatch.setenv(REGISTRY_URL_ENV, "http://env:8081")
    assert resolve_registry_config("http://flag:8081", "http://toml:8081") == {
        "url": "http://flag:8081"
    }
    assert resolve_registry_config(None, "http://toml:8081") == {"url": "http://env:8081"}
    monkeypatch.delenv(REGISTRY_URL_ENV)
    assert resolve_registry_config(None, "http://toml:8081") == {"url": "http://toml:8081"}
    assert resolve_registry_config(None) is None
    with pytest.raises(ConfigurationError, match="needs a 'url'"):
        resolve_registry_config({"basic.auth.user.info": "u:p"})

    config = {"url": f"http://bob:{SECRET}@127.0.0.1:1"}
    producer = sg.GuardedProducer("127.0.0.1:1", schema_registry=config)
    assert SECRET not in repr(producer)
    assert "bob" in repr(producer)
    auth = {"url": "http://127.0.0.1:1", "basic.auth.user.info": f"bob:{SECRET}"}
    assert SECRET not in repr(RegistryCodec(auth))

    class Service(sg.ConsumerService):
        topic = "t"
        contract = PaymentV1
        group_id = "g"

        def handle(self, event: PaymentV1, ctx: sg.MessageContext) -> None:
            """Nothing to do: the test only reads the repr."""

    service = Service("127.0.0.1:1", schema_registry=auth)
    assert SECRET not in repr(service)
    assert "schema_registry=" in repr(service)


@pytest.mark.parametrize(
    "url",
    [
        f"bob:{SECRET}@registry:8081",  # the scheme forgotten
        f"http://bob:{SECRET}@r1:8081,bob:{SECRET}@r2:8081/",
    ],
)
def test_a_url_the_client_refuses_is_quoted_without_its_password(url: str) -> None:
    """The client refuses a URL without an http(s) scheme by quoting it; the
    ConfigurationError saying so (which ``streamguard`` prints) shows it redacted."""
    with pytest.raises(ConfigurationError, match="Invalid url") as info:
        RegistryCodec({"url": url})
    assert SECRET not in str(info.value)
    assert "bob:***@r" in str(info.value)


@pytest.mark.parametrize("cut", ["/", "?", "#"])
def test_a_password_that_ends_the_host_early_is_refused_without_quoting_it(cut: str) -> None:
    """A '/', '?' or '#' left unencoded in a URL's password ends its host part there:
    the HTTP client then read the password's start as the port, and its "Invalid port"
    error, quoted by ``schema check --registry`` and the producer, showed it."""
    url = f"http://bob:{SECRET[:7]}{cut}{SECRET[7:]}@127.0.0.1:1"
    with pytest.raises(ConfigurationError, match="percent-encode") as info:
        RegistryCodec({"url": url})
    assert SECRET[:7] not in str(info.value)
    encoded = url.replace(cut, {"/": "%2F", "?": "%3F", "#": "%23"}[cut], 1)
    RegistryCodec({"url": encoded})  # the encoded form is taken


def test_refused_credentials_and_server_errors_wait_not_found_does_not() -> None:
    """401/403, 429 and 5xx answers mean "not now" (records wait); 404 means the schema
    does not exist (the record is dead-lettered)."""
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    from streamguard.registry.client import is_unavailable

    for status in (401, 403, 429, 500, 503):
        assert is_unavailable(SchemaRegistryError(status, status * 100 + 1, "no"))
    assert not is_unavailable(SchemaRegistryError(404, 40403, "Schema not found"))
    assert not is_unavailable(SchemaRegistryError(409, 409, "incompatible"))


def test_known_and_refused_ids_decode_while_another_id_is_fetched(
    registry: RegistryServer, client: SchemaRegistryClient
) -> None:
    """The codec's lock is held for the whole of a registry request; an id already
    fetched, or refused a moment ago, is answered from memory without waiting for it
    (an event loop decodes those itself: ``unfetched`` says they need no request)."""
    import time

    from tests.registry.conftest import SlowRegistryClient

    client.register_schema("p-value", avro(PaymentV1))
    slow = SlowRegistryClient({"url": registry.url, "max.retries": 0})
    codec = RegistryCodec(slow, wire_format="avro")
    record = RegistryCodec(client, wire_format="avro").encoder(PaymentV1, "p")(
        PaymentV1(payment_id="p", amount_cents=1)
    )
    decode = codec.decoder(PaymentV1)
    decode(record)  # fetched: known from now on
    with pytest.raises(DecodeError):
        decode(framed(77, b"{}"))  # refused: remembered

    def fetch_another() -> None:
        with pytest.raises(DecodeError):
            decode(framed(78, b""))

    other = threading.Thread(target=fetch_another)
    other.start()  # holds the lock for slow.delay
    try:
        # Its request has begun (under the lock) once it is counted: decode from then on.
        deadline = time.monotonic() + 10
        while slow.fetches < 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert slow.fetches == 3, "the other thread's fetch never began"
        started = time.monotonic()
        assert decode(record).payment_id == "p"
        with pytest.raises(DecodeError, match="schema id 77"):
            decode(framed(77, b"{}"))
        assert time.monotonic() - started < slow.delay / 2
    finally:
        other.join(10)
    assert slow.fetches == 3


def test_a_service_with_a_registry_keeps_its_json_codec_s_max_depth() -> None:
    """A service whose JsonCodec sets max_depth keeps that limit with a registry. The
    registry's codec left it out, so deeper JSON than the service allows was parsed."""
    from streamguard.demo.contracts import OrderPlaced
    from streamguard.registry.codec import reading_codec

    class Deep(sg.ConsumerService):
        topic = "orders"
        contract = OrderPlaced
        group_id = "g"
        codec = sg.JsonCodec(max_depth=2)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            pass

    codec = reading_codec(Deep.contract, Deep.codec, {"url": "http://127.0.0.1:9"})
    assert isinstance(codec, RegistryCodec)
    with pytest.raises(DecodeError, match=r"deep|depth|nest"):
        codec.decode(b'{"x": [[[[1]]]]}', OrderPlaced)


def test_a_producer_without_its_registry_says_nothing_was_sent() -> None:
    """The registry's error said "records needing it wait and are retried", what a
    consumer does; a producer queues nothing, and nothing retries it."""
    producer = sg.GuardedProducer(
        "127.0.0.1:1", schema_registry={"url": f"http://127.0.0.1:{closed_port()}"}
    )
    event = PaymentV1(payment_id="p-1", amount_cents=100)
    with pytest.raises(sg.RegistryUnavailable) as raised:
        producer.send("payments", event)
    assert "nothing was sent" in str(raised.value)
    assert "retried" not in str(raised.value)


def test_a_producer_whose_registry_fails_reading_back_says_nothing_was_sent() -> None:
    """The id of the event's schema was found, but reading the framed record back asks
    the registry again (by id alone), and that request failed: the error still says
    nothing was sent. It said the consumer's "records needing it wait and are retried"."""
    text, _ = registry_schema(PaymentV1)

    class Registry(JsonHandler):
        def do_POST(self) -> None:  # the lookup of the schema under its subject
            self.read_body()
            self.answer(200, {"subject": "payments-value", "id": 7, "version": 1, "schema": text})

        def do_GET(self) -> None:  # the schema by id: the registry fails
            self.answer(500, {"error_code": 50001, "message": "storage error"})

    with serving(Registry) as url:
        producer = sg.GuardedProducer("127.0.0.1:1", schema_registry={"url": url})
        with pytest.raises(sg.RegistryUnavailable) as raised:
            producer.send("payments", PaymentV1(payment_id="p-1", amount_cents=100))
        assert "nothing was sent" in str(raised.value)
        assert "retried" not in str(raised.value)


def test_a_producer_with_a_registry_keeps_its_codec_s_size_limit(
    registry: RegistryServer, client: SchemaRegistryClient
) -> None:
    """A registry's framing keeps the limits of the producer's ``codec``, as a consumer's
    does: an event over its ``max_bytes`` is refused, nothing sent. The producer framed
    with the default limit instead (1 MiB), so it sent what a consumer configured with
    the same codec dead-letters as oversize."""
    client.register_schema("payments-value", avro(PaymentV1))
    codec = sg.AvroCodec(max_bytes=64)
    producer = sg.GuardedProducer("127.0.0.1:1", codec=codec, schema_registry=registry.url)
    event = PaymentV1(payment_id="p" * 100, amount_cents=1)
    with pytest.raises(DecodeError) as raised:
        producer.send("payments", event)
    assert raised.value.reason == "oversize"


def test_a_framed_record_s_drift_check_never_waits_for_an_unreachable_registry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The contract's own schema id is looked up in the background: with the registry
    unreachable, the check of a Confluent-framed record returns at once, passes the
    record even under drift="dead_letter", counts it as no kind (not no_schema_headers),
    and the failed lookup is logged by the error's class, naming the service and topic."""
    from prometheus_client import CollectorRegistry

    from streamguard.observe.metrics import ServiceMetrics
    from streamguard.runtime.drift import DriftCheck

    codec = RegistryCodec({"url": f"http://127.0.0.1:{closed_port()}"}, wire_format="avro")
    metrics = CollectorRegistry()
    check = DriftCheck(
        PaymentV2,
        ServiceMetrics(metrics),
        dead_letter=True,
        codec=codec,
        topic="t",
        service="Billing",
    )
    caplog.set_level(logging.WARNING, logger="streamguard.runtime")
    started = time.monotonic()
    assert check.check(None, framed(1, b"")) is None
    assert time.monotonic() - started < 0.5
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(
        r.getMessage() == "schema drift lookup failed" for r in caplog.records
    ):
        time.sleep(0.02)
    failed = [r for r in caplog.records if r.getMessage() == "schema drift lookup failed"]
    assert len(failed) == 1
    fields = ("service", "topic", "subject")
    assert tuple(failed[0].__dict__.get(f) for f in fields) == ("Billing", "t", "t-value")
    for kind in ("no_schema_headers", "older_version", "newer_version", "other_subject"):
        labels = {"runtime": "consumer", "subject": PaymentV2.__subject__, "kind": kind}
        assert metrics.get_sample_value("streamguard_schema_drift_total", labels) == 0


def test_a_drift_line_logged_after_its_id_resolved_names_the_cached_version(
    registry: RegistryServer, client: SchemaRegistryClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A framed record whose id is resolved already is judged on the consumer's thread:
    its `schema drift` line (here written by a later record, the line of the first one
    having been over the log budget) gives the subject's version of the id from the
    cache, and the id. It gave writer_version None."""
    from prometheus_client import CollectorRegistry

    from streamguard.observe.metrics import ServiceMetrics
    from streamguard.observe.untrusted import LogBudget
    from streamguard.runtime.drift import DriftCheck

    v1_id = client.register_schema("t-value", avro(PaymentV1))
    client.register_schema("t-value", avro(PaymentV2))
    codec = RegistryCodec({"url": registry.url}, wire_format="avro")
    metrics = CollectorRegistry()
    now = [0.0]
    budget = LogBudget(rate=1, per=60, clock=lambda: now[0])
    check = DriftCheck(
        PaymentV2,
        ServiceMetrics(metrics),
        False,
        log_budget=budget,
        codec=codec,
        topic="t",
        service="Billing",
    )
    labels = {"runtime": "consumer", "subject": PaymentV2.__subject__, "kind": "older_version"}
    caplog.set_level(logging.WARNING, logger="streamguard.runtime")
    assert budget.allow()  # spent: the first record's line (written late) is suppressed
    assert check.check(None, framed(v1_id, b"")) is None  # not resolved yet
    assert wait_for(
        lambda: metrics.get_sample_value("streamguard_schema_drift_total", labels) == 1,
        timeout=10,
    )
    assert [r for r in caplog.records if r.getMessage() == "schema drift"] == []

    now[0] = 60.0  # a new budget window
    assert check.check(None, framed(v1_id, b"")) is None  # resolved: counted now
    assert metrics.get_sample_value("streamguard_schema_drift_total", labels) == 2
    (line,) = [r for r in caplog.records if r.getMessage() == "schema drift"]
    assert (line.__dict__.get("writer_version"), line.__dict__.get("schema_id")) == ("1", v1_id)


class NoteV1(sg.Contract):
    __subject__ = "notes.Note"
    __version__ = 1
    text: str


class NoteV2(sg.Contract):
    __subject__ = "notes.Note"
    __version__ = 2
    text: str
    tag: str = ""


def test_the_drift_line_of_a_record_with_the_contract_s_own_id_names_its_version(
    registry: RegistryServer, client: SchemaRegistryClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A JSON record framed with the contract's own schema id, with a field the contract
    lacks, is `unknown_fields`; its line gives the subject's version of that id. When the
    lookup was started by a record of another id, the own id was resolved without its
    version, so the line said writer_version None for as long as the service ran."""
    from prometheus_client import CollectorRegistry

    from streamguard.observe.metrics import ServiceMetrics
    from streamguard.runtime.drift import DriftCheck

    v1_id = client.register_schema("t-value", Schema(*registry_schema(NoteV1)))
    own_id = client.register_schema("t-value", Schema(*registry_schema(NoteV2)))
    codec = RegistryCodec({"url": registry.url}, wire_format="json")
    metrics = CollectorRegistry()
    check = DriftCheck(
        NoteV2, ServiceMetrics(metrics), False, codec=codec, topic="t", service="Billing"
    )
    older = {"runtime": "consumer", "subject": "notes.Note", "kind": "older_version"}
    caplog.set_level(logging.WARNING, logger="streamguard.runtime")
    assert check.check(None, framed(v1_id, b'{"text": "a"}')) is None  # starts the lookup
    assert wait_for(
        lambda: metrics.get_sample_value("streamguard_schema_drift_total", older) == 1,
        timeout=10,
    )

    assert check.check(None, framed(own_id, b'{"text": "a", "extra": 1}')) is None
    (line,) = [
        r
        for r in caplog.records
        if r.getMessage() == "schema drift" and r.__dict__.get("kind") == "unknown_fields"
    ]
    assert (line.__dict__.get("writer_version"), line.__dict__.get("schema_id")) == ("2", own_id)


def test_a_drift_lookup_refused_by_the_registry_names_its_error_code(
    registry: RegistryServer, client: SchemaRegistryClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A subject that does not hold the contract's schema (deployed before CI
    registered it) failed the lookup with only the class, SchemaRegistryError, as an
    error of any other kind does: the line now gives the registry's code (40403) too."""
    from prometheus_client import CollectorRegistry

    from streamguard.observe.metrics import ServiceMetrics
    from streamguard.runtime.drift import DriftCheck

    v1_id = client.register_schema("t-value", avro(PaymentV1))
    codec = RegistryCodec({"url": registry.url}, wire_format="avro")
    check = DriftCheck(
        PaymentV2,
        ServiceMetrics(CollectorRegistry()),
        False,
        codec=codec,
        topic="t",
        service="Billing",
    )
    caplog.set_level(logging.WARNING, logger="streamguard.runtime")
    assert check.check(None, framed(v1_id, b"")) is None

    def failed() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage() == "schema drift lookup failed"]

    assert wait_for(lambda: failed() != [], timeout=10)
    (line,) = failed()
    assert (line.__dict__["error"], line.__dict__.get("error_code")) == (
        "SchemaRegistryError",
        40403,
    )


def test_the_drift_line_of_a_record_whose_id_is_not_resolved_yet_waits_for_its_version(
    registry: RegistryServer, client: SchemaRegistryClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The first JSON record framed with the contract's own id, with a field the
    contract lacks, is `unknown_fields` before its id is resolved: its line was written at
    once with writer_version None (read as "not one of the subject's") and, being the
    producer's first of the kind, no later line corrected it. It is written once the
    lookup answers, with the id's version."""
    from prometheus_client import CollectorRegistry

    from streamguard.observe.metrics import ServiceMetrics
    from streamguard.runtime.drift import DriftCheck

    client.register_schema("t-value", Schema(*registry_schema(NoteV1)))
    own_id = client.register_schema("t-value", Schema(*registry_schema(NoteV2)))
    codec = RegistryCodec({"url": registry.url}, wire_format="json")
    check = DriftCheck(
        NoteV2,
        ServiceMetrics(CollectorRegistry()),
        False,
        codec=codec,
        topic="t",
        service="Billing",
    )
    caplog.set_level(logging.WARNING, logger="streamguard.runtime")

    def lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage() == "schema drift"]

    assert check.check(None, framed(own_id, b'{"text": "a", "extra": 1}')) is None
    assert wait_for(lambda: lines() != [], timeout=10)
    (line,) = lines()
    got = {k: line.__dict__.get(k) for k in ("kind", "writer_version", "schema_id")}
    assert got == {"kind": "unknown_fields", "writer_version": "2", "schema_id": own_id}


def test_a_held_drift_line_is_written_without_a_version_when_the_lookup_fails(
    registry: RegistryServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A line held for its id's version is written, with writer_version None, after
    the `schema drift lookup failed` line, when the registry refuses the lookup (here
    the subject lacks the contract's schema): held until a lookup answered, it was never
    written while the registry kept refusing."""
    from prometheus_client import CollectorRegistry

    from streamguard.observe.metrics import ServiceMetrics
    from streamguard.runtime.drift import DriftCheck

    codec = RegistryCodec({"url": registry.url}, wire_format="json")
    check = DriftCheck(
        NoteV2,
        ServiceMetrics(CollectorRegistry()),
        False,
        codec=codec,
        topic="unregistered",
        service="Billing",
    )
    caplog.set_level(logging.WARNING, logger="streamguard.runtime")

    def events() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("schema drift")]

    assert check.check(None, framed(7, b'{"text": "a", "extra": 1}')) is None
    assert wait_for(lambda: "schema drift" in events(), timeout=10), events()
    assert events() == ["schema drift lookup failed", "schema drift"]
    (line,) = [r for r in caplog.records if r.getMessage() == "schema drift"]
    got = {k: line.__dict__.get(k) for k in ("kind", "writer_version", "schema_id")}
    assert got == {"kind": "unknown_fields", "writer_version": None, "schema_id": 7}

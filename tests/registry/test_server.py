"""The embedded registry, driven endpoint by endpoint with confluent-kafka's own client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

import streamguard as sg
from streamguard.registry import RegistryServer
from tests.registry.conftest import record

V1 = Schema(record([("id", "string")]), "AVRO")
V2_FIELDS = [{"name": "id", "type": "string"}, {"name": "n", "type": "long", "default": 0}]
V2 = Schema(json.dumps({**json.loads(V1.schema_str), "fields": V2_FIELDS}), "AVRO")
BREAKS = Schema(record([("id", "string"), ("must", "long")]), "AVRO")
JSON_SCHEMA = Schema(
    json.dumps({"type": "object", "properties": {"a": {"type": "string"}}}), "JSON"
)


def refused(call: object, *args: object, **kwargs: object) -> SchemaRegistryError:
    """The error a client call raises (the test fails if it does not raise)."""
    assert callable(call)
    with pytest.raises(SchemaRegistryError) as info:
        call(*args, **kwargs)
    return info.value


def test_register_returns_stable_ids_and_versions(client: SchemaRegistryClient) -> None:
    """Registering gives an id; the same schema again gives the same id and no new
    version; the same schema under another subject shares the id."""
    first = client.register_schema("s-value", V1)
    assert client.register_schema("s-value", V1) == first
    second = client.register_schema("s-value", V2)
    assert second != first
    assert client.get_versions("s-value") == [1, 2]
    assert client.register_schema("other-value", V1) == first
    assert client.get_subjects() == ["other-value", "s-value"]


def test_get_versions_and_schema_by_id(client: SchemaRegistryClient) -> None:
    """A version is read by number or as latest, a schema by its id; unknown subjects,
    versions and ids answer 40401, 40402 and 40403."""
    schema_id = client.register_schema("s-value", V1)
    client.register_schema("s-value", V2)
    got = client.get_version("s-value", 1)
    assert (got.version, got.schema_id, got.schema.schema_str) == (1, schema_id, V1.schema_str)
    assert client.get_latest_version("s-value").version == 2
    assert client.get_schema(schema_id).schema_str == V1.schema_str
    assert refused(client.get_version, "nope-value", 1).error_code == 40401
    assert refused(client.get_version, "s-value", 7).error_code == 40402
    assert refused(client.get_schema, 999).error_code == 40403
    assert refused(client.get_version, "s-value", 0).error_code == 42202
    assert client.get_subjects_by_schema_id(schema_id) == ["s-value"]


def test_lookup_finds_the_version_of_a_schema(client: SchemaRegistryClient) -> None:
    """Looking a schema up gives its id and version; one the subject lacks is 40403,
    a subject that does not exist 40401."""
    client.register_schema("s-value", V1)
    client.register_schema("s-value", V2)
    found = SchemaRegistryClient({"url": client.config()["url"]}).lookup_schema("s-value", V1)
    assert (found.version, found.subject) == (1, "s-value")
    assert refused(client.lookup_schema, "s-value", BREAKS).error_code == 40403
    assert refused(client.lookup_schema, "nope-value", V1).error_code == 40401


def test_incompatible_schema_is_refused_with_409(client: SchemaRegistryClient) -> None:
    """A schema that breaks the subject's level is refused (409), naming the field and
    the rule of streamguard's engine; under NONE it is accepted."""
    client.register_schema("s-value", V1)
    error = refused(client.register_schema, "s-value", BREAKS)
    assert (error.http_status_code, error.error_code) == (409, 409)
    assert "must" in error.error_message
    assert "FIELD_ADDED_WITHOUT_DEFAULT" in error.error_message
    client.set_compatibility("s-value", "NONE")
    assert client.register_schema("s-value", BREAKS) > 0


def test_invalid_schema_is_refused_with_42201(client: SchemaRegistryClient) -> None:
    """A schema that does not parse is refused with 422 / 42201."""
    error = refused(client.register_schema, "s-value", Schema('{"type": "record"}', "AVRO"))
    assert (error.http_status_code, error.error_code) == (422, 42201)
    error = refused(client.register_schema, "s-value", Schema("not json", "JSON"))
    assert error.error_code == 42201


def test_json_schemas_register_and_report_their_type(client: SchemaRegistryClient) -> None:
    """A JSON Schema registers with its type, which reads back from version and id."""
    schema_id = client.register_schema("j-value", JSON_SCHEMA)
    assert client.get_schema(schema_id).schema_type == "JSON"
    assert client.get_latest_version("j-value").schema.schema_type == "JSON"
    assert client.get_schema_types() == ["AVRO", "JSON"]


def test_soft_and_permanent_delete(client: SchemaRegistryClient) -> None:
    """A soft delete hides versions but keeps ids readable; a permanent delete needs a
    soft one first (40405/40407); deleted ids are never given to another schema."""
    first = client.register_schema("s-value", V1)
    client.register_schema("s-value", V2)
    assert client.delete_version("s-value", 1) == 1
    assert client.get_versions("s-value") == [2]
    assert client.get_versions("s-value", deleted=True) == [1, 2]
    assert client.get_schema(first).schema_str == V1.schema_str  # consumers still need it
    assert refused(client.delete_version, "s-value", 2, permanent=True).error_code == 40407
    assert client.delete_version("s-value", 1, permanent=True) == 1
    assert refused(client.delete_subject, "s-value", permanent=True).error_code == 40405
    assert client.delete_subject("s-value") == [2]
    assert client.get_subjects() == []
    assert client.delete_subject("s-value", permanent=True) == [2]
    assert refused(client.get_versions, "s-value").error_code == 40401
    assert refused(SchemaRegistryClient({"url": client.config()["url"]}).get_schema, first)
    assert client.register_schema("s-value", BREAKS) not in (first, first + 1)


def test_soft_deleting_a_soft_deleted_version_again_is_40406(
    client: SchemaRegistryClient,
) -> None:
    """As in Confluent's registry: a second soft delete of a version is 40406 (version
    soft-deleted), also by ``latest`` once the subject has no live version left;
    reading it or a version never registered stays 40402. Before, the embedded registry
    said 40402, or 40401 once the subject's last version was deleted."""
    client.register_schema("s-value", V1)
    client.register_schema("s-value", V2)
    assert client.delete_version("s-value", 1) == 1
    assert refused(client.delete_version, "s-value", 1).error_code == 40406
    assert refused(client.get_version, "s-value", 1).error_code == 40402
    assert refused(client.delete_version, "s-value", 3).error_code == 40402
    assert client.delete_version("s-value", 2) == 2
    assert refused(client.delete_version, "s-value", 2).error_code == 40406
    assert refused(client.delete_version, "s-value", "latest").error_code == 40406
    assert refused(client.delete_version, "t-value", 1).error_code == 40401
    assert client.delete_version("s-value", 2, permanent=True) == 2


def test_global_and_subject_config(client: SchemaRegistryClient) -> None:
    """The global level defaults to BACKWARD; a subject's own level is 40408 until set,
    can be deleted back to the global one; an unknown level is 42203."""
    client.register_schema("s-value", V1)
    assert client.get_compatibility() == "BACKWARD"
    assert refused(client.get_compatibility, "s-value").error_code == 40408
    # The client returns the body as Confluent's registry sends it: {"compatibility": ...}.
    set_level = client.set_compatibility("s-value", "full_transitive")
    assert set_level == {"compatibility": "FULL_TRANSITIVE"}
    assert client.get_compatibility("s-value") == "FULL_TRANSITIVE"
    assert client.get_config("s-value").compatibility_level == "FULL_TRANSITIVE"
    client.delete_config("s-value")
    assert refused(client.get_compatibility, "s-value").error_code == 40408
    assert client.set_compatibility(level="FORWARD") == {"compatibility": "FORWARD"}
    assert client.get_compatibility() == "FORWARD"
    assert refused(client.set_compatibility, level="SIDEWAYS").error_code == 42203


def test_compatibility_endpoints(client: SchemaRegistryClient) -> None:
    """The compatibility check answers against latest, a given version, or all the
    level requires (transitive: every version)."""
    client.register_schema("s-value", Schema(record([("id", "string")]), "AVRO"))
    client.set_compatibility("s-value", "NONE")
    client.register_schema("s-value", Schema(record([("id", "long")]), "AVRO"))
    client.set_compatibility("s-value", "BACKWARD")
    as_string = Schema(record([("id", "string")]), "AVRO")
    assert client.test_compatibility("s-value", as_string, version=1) is True
    assert client.test_compatibility("s-value", as_string) is False  # latest holds a long
    client.set_compatibility("s-value", "BACKWARD_TRANSITIVE")
    assert client.test_compatibility_all_versions("s-value", as_string) is False
    as_long = Schema(record([("id", "long")]), "AVRO")
    assert client.test_compatibility_all_versions("s-value", as_long) is False  # v1 breaks
    error = refused(client.test_compatibility, "nope-value", as_string)
    assert error.error_code == 40401


def test_state_survives_a_restart_in_its_directory(tmp_path: Path) -> None:
    """With a directory, ids, versions and levels survive a restart, and new ids go on
    from the highest ever given."""
    with RegistryServer(port=0, directory=tmp_path) as server:
        client = SchemaRegistryClient({"url": server.url})
        first = client.register_schema("s-value", V1)
        client.set_compatibility("s-value", "FULL")
    with RegistryServer(port=0, directory=tmp_path) as server:
        client = SchemaRegistryClient({"url": server.url})
        assert client.get_schema(first).schema_str == V1.schema_str
        assert client.get_compatibility("s-value") == "FULL"
        assert client.register_schema("s-value", V2) == first + 1


def test_unknown_endpoint_answers_404(registry: RegistryServer) -> None:
    """A path the API does not have answers 404 with an error body, as Confluent's does."""
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{registry.url}/nothing/here", timeout=5)
    assert info.value.code == 404
    assert json.loads(info.value.read())["error_code"] == 404


def test_schema_text_versions_of_an_id_references_and_mode(
    registry: RegistryServer, client: SchemaRegistryClient
) -> None:
    """The raw schema of a version, the subject-versions of an id, the (empty) referenced-by
    list and the READWRITE mode answer as Confluent's registry does."""
    import urllib.request

    schema_id = client.register_schema("a-value", V1)
    client.register_schema("b-value", V1)
    versions = client.get_schema_versions(schema_id)
    assert [(v.subject, v.version) for v in versions] == [("a-value", 1), ("b-value", 1)]
    assert client.get_referenced_by("a-value", 1) == []
    assert client.get_mode("a-value") == "READWRITE"
    with urllib.request.urlopen(f"{registry.url}/subjects/a-value/versions/1/schema") as reply:
        assert json.loads(reply.read()) == json.loads(V1.schema_str)
    found = client.lookup_schema("a-value", V1, deleted=True)
    assert found.schema_id == schema_id


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b'"FULL"', {}, 422),  # a JSON string, not an object
        (b'["FULL"]', {}, 422),
        (b'{"compatibility": "FULL"}', {"Content-Length": "x"}, 400),
        (b'{"compatibility": "FULL"}', {"Content-Length": "-1"}, 400),  # read(-1) hung
    ],
    ids=["string-body", "list-body", "bad-length", "negative-length"],
)
def test_malformed_requests_get_a_client_error_not_500(
    registry: RegistryServer, body: bytes, headers: dict[str, str], status: int
) -> None:
    """A body that is not an object, or a Content-Length that is not a number, is the
    client's error with an error code, as Confluent's registry answers; it was a 500."""
    import http.client

    host, port = registry.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        connection.putrequest("PUT", "/config")
        connection.putheader("Content-Type", "application/vnd.schemaregistry.v1+json")
        connection.putheader("Content-Length", headers.get("Content-Length", str(len(body))))
        connection.endheaders(body)
        reply = connection.getresponse()
        assert reply.status == status
        assert json.loads(reply.read())["error_code"] == status
    finally:
        connection.close()


@pytest.mark.parametrize("content", ["{not json", "{}"])
def test_a_state_file_it_did_not_write_is_a_configuration_error(
    tmp_path: Path, content: str
) -> None:
    """A corrupt or foreign registry.json names itself and the fix (exit 2 from the CLI),
    not a traceback."""
    (tmp_path / "registry.json").write_text(content)
    with pytest.raises(sg.ConfigurationError, match="is not a registry state this server wrote"):
        RegistryServer(port=0, directory=tmp_path).start()


def test_set_config_sets_the_compatibility_level(client: SchemaRegistryClient) -> None:
    """confluent-kafka's set_config sends compatibilityLevel (PUT /config's other
    spelling): it was refused with 42203."""
    from confluent_kafka.schema_registry import ServerConfig
    from confluent_kafka.schema_registry.common.schema_registry_client import (
        ConfigCompatibilityLevel,
    )

    level = ConfigCompatibilityLevel.FULL
    client.set_config("s-value", ServerConfig(compatibility_level=level))  # type: ignore[no-untyped-call]
    assert client.get_compatibility("s-value") == "FULL"


@pytest.mark.parametrize(
    "schema",
    [
        {"type": 5},
        {"type": "object", "properties": {"a": 5}},
        {"type": "object", "required": "a"},
    ],
    ids=["type-not-a-name", "property-not-a-schema", "required-not-a-list"],
)
def test_an_invalid_json_schema_is_refused_with_42201_not_500(
    client: SchemaRegistryClient, schema: dict[str, object]
) -> None:
    """A JSON Schema its metaschema refuses is 42201, first version or not, as Confluent
    answers: it was registered, and the next registration in the subject answered 500
    (which clients retry, and `schema register --registry` reported as unreachable)."""
    invalid = Schema(json.dumps(schema), "JSON")
    assert refused(client.register_schema, "fresh-value", invalid).error_code == 42201
    client.register_schema("j-value", JSON_SCHEMA)
    for call in (client.register_schema, client.test_compatibility):
        error = refused(call, "j-value", invalid)
        assert (error.http_status_code, error.error_code) == (422, 42201)


def test_a_json_schema_the_engine_cannot_compare_is_42201_not_500(
    client: SchemaRegistryClient,
) -> None:
    """A $ref outside the document is valid JSON Schema that streamguard's engine does
    not follow: comparing it is the schema's refusal (42201), not a backend error."""
    remote = {"type": "object", "properties": {"a": {"$ref": "https://example.com/a.json"}}}
    client.register_schema("j-value", JSON_SCHEMA)
    error = refused(client.register_schema, "j-value", Schema(json.dumps(remote), "JSON"))
    assert (error.http_status_code, error.error_code) == (422, 42201)
    assert "$ref" in error.error_message

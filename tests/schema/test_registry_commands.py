"""``streamguard schema check/register --registry``: the same checks against a live registry."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from schema_project import Project

from streamguard.codecs import JsonCodec
from streamguard.errors import ContractViolation
from streamguard.registry import RegistryServer
from streamguard.registry.client import REGISTRY_URL_ENV
from tests.json_http import JsonHandler, serving

Cli = Callable[..., tuple[int, str, str]]

V1 = """
class Customer(BaseModel):
    id: str

class OrderPlaced(sg.Contract):
    __subject__ = "orders.OrderPlaced"
    __version__ = 1
    order_id: str
    customer: Customer
"""
V2_BREAKING = V1.replace("__version__ = 1", "__version__ = 2").replace(
    "    id: str\n", '    id: str\n    tier: Literal["gold", "silver"]\n'
)
V2_COMPATIBLE = V1.replace("__version__ = 1", "__version__ = 2").replace(
    "    id: str\n", '    id: str\n    tier: Literal["gold", "silver"] = "silver"\n'
)
V2_OPTIONAL_FIELD = V1.replace("__version__ = 1", "__version__ = 2").replace(
    "    order_id: str\n", "    order_id: str\n    note: str | None = None\n"
)


@pytest.fixture
def registry() -> Iterator[RegistryServer]:
    """An embedded registry in memory on a free loopback port."""
    with RegistryServer(port=0) as server:
        yield server


def registered(project_factory: Callable[[], Project], cli: Cli, url: str) -> Project:
    project = project_factory()
    project.contracts(V1)
    code, out, err = cli("schema", "register", "--registry", url)
    assert code == 0, err
    assert "orders.OrderPlaced: v1 registered as version 1" in out
    return project


def test_a_subject_the_registry_lacks_is_named_with_the_mapping_to_set(
    project_factory: Callable[[], Project], cli: Cli, registry: RegistryServer
) -> None:
    """A contract whose registry subject holds nothing passes (exit 0), but the report says
    so and names the mapping: producers register under <topic>-value, so an unmapped
    contract was checked against an empty subject and any break passed green."""
    project_factory().contracts(V1)
    code, out, _ = cli("schema", "check", "--registry", registry.url)
    assert code == 0
    assert "the registry holds no version of orders.OrderPlaced" in out
    assert '[tool.streamguard.subjects."orders.OrderPlaced"]' in out
    code, out, _ = cli("schema", "check", "--registry", registry.url, "--format", "github")
    assert code == 0
    assert out.startswith("::warning title=orders.OrderPlaced not in the registry::")
    # The json format says it too (it said nothing: a script could not tell).
    code, out, _ = cli("schema", "check", "--registry", registry.url, "--format", "json")
    assert code == 0
    (subject,) = json.loads(out)["subjects"]
    assert (subject["registry_subject"], subject["in_registry"]) == ("orders.OrderPlaced", False)


def test_register_then_unchanged(
    project_factory: Callable[[], Project], cli: Cli, registry: RegistryServer
) -> None:
    """register --registry registers the contract's schema once; again, it is unchanged
    and check reports the version that holds it."""
    registered(project_factory, cli, registry.url)
    code, out, _ = cli("schema", "register", "--registry", registry.url)
    assert code == 0
    assert "v1 unchanged (version 1)" in out
    code, out, _ = cli("schema", "check", "--registry", registry.url)
    assert code == 0
    assert "is registered as version 1 [BACKWARD]" in out


def test_breaking_change_fails_naming_the_field(
    project_factory: Callable[[], Project], cli: Cli, registry: RegistryServer
) -> None:
    """A breaking change fails check --registry (exit 1) naming the field, and the json
    report carries the registry's own verdict, which agrees."""
    project = registered(project_factory, cli, registry.url)
    project.contracts(V2_BREAKING)
    code, out, _ = cli("schema", "check", "--registry", registry.url)
    assert code == 1
    assert "customer.tier" in out
    assert "the registry says incompatible" in out
    code, out, _ = cli("schema", "check", "--registry", registry.url, "--format", "json")
    report = json.loads(out)
    assert code == 1
    assert [c["path"] for c in report["changes"] if c["breaking"]] == ["customer.tier"]
    (subject,) = report["subjects"]
    assert subject["registry_subject"] == "orders.OrderPlaced"
    assert (subject["compatible"], subject["registry_compatible"]) == (False, False)
    assert subject["disagreement"] is False
    assert subject["in_registry"] is True
    code, _, err = cli("schema", "register", "--registry", registry.url)
    assert code == 1
    assert "refused" in err


def test_compatible_change_passes_and_registers(
    project_factory: Callable[[], Project], cli: Cli, registry: RegistryServer
) -> None:
    """A compatible change passes check --registry (exit 0) and registers as version 2."""
    project = registered(project_factory, cli, registry.url)
    project.contracts(V2_COMPATIBLE)
    code, out, _ = cli("schema", "check", "--registry", registry.url)
    assert code == 0
    assert "the registry says compatible" in out
    code, out, _ = cli("schema", "register", "--registry", registry.url)
    assert code == 0
    assert "v2 registered as version 2" in out
    client = SchemaRegistryClient({"url": registry.url})
    assert client.get_versions("orders.OrderPlaced") == [1, 2]


def test_each_subject_s_changes_come_with_its_registry_verdict(
    project_factory: Callable[[], Project], cli: Cli, registry: RegistryServer
) -> None:
    """Two subjects broken at once: each one's changes are followed by what the registry
    says of it, not every subject's changes first and the verdicts after them all."""
    refunds = """
class RefundIssued(sg.Contract):
    __subject__ = "refunds.RefundIssued"
    __version__ = 1
    refund_id: str
"""
    project = project_factory()
    project.contracts(V1 + refunds)
    code, _, err = cli("schema", "register", "--registry", registry.url)
    assert code == 0, err
    broken = refunds.replace("__version__ = 1", "__version__ = 2") + "    reason: str\n"
    project.contracts(V2_BREAKING + broken)
    code, out, _ = cli("schema", "check", "--registry", registry.url)
    assert code == 1
    lines = out.splitlines()
    verdicts = [i for i, line in enumerate(lines) if "the registry says incompatible" in line]
    assert len(verdicts) == 2, out
    first = [i for i, line in enumerate(lines) if line.startswith("orders.OrderPlaced")]
    second = [i for i, line in enumerate(lines) if line.startswith("refunds.RefundIssued")]
    assert max(first) < min(second), out
    assert "customer.tier" in "\n".join(lines[: min(second)]), out
    assert "reason" in "\n".join(lines[min(second) :]), out


def test_disagreement_is_reported_and_fails(
    project_factory: Callable[[], Project], cli: Cli
) -> None:
    """When the registry judges stricter than streamguard (here: Confluent's strict
    reading of open models), the disagreement is reported and the check fails."""
    with RegistryServer(port=0, policy="strict") as strict:
        project = registered(project_factory, cli, strict.url)
        project.contracts(V2_OPTIONAL_FIELD)
        code, out, _ = cli("schema", "check", "--registry", strict.url)
        assert code == 1
        assert "DISAGREEMENT" in out
        code, out, _ = cli("schema", "check", "--registry", strict.url, "--format", "github")
        assert code == 1
        assert "::warning title=orders.OrderPlaced registry verdict::" in out
        code, _, err = cli(
            "schema", "register", "--registry", strict.url, "--force", "--reason", "test"
        )
        assert code == 1
        assert "refused v2 (409)" in err


def test_url_from_environment_and_registry_subject_mapping(
    project_factory: Callable[[], Project],
    cli: Cli,
    registry: RegistryServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--registry without a URL takes $STREAMGUARD_SCHEMA_REGISTRY_URL, and a subject's
    registry_subject in pyproject names its registry subject."""
    project = project_factory()
    project.contracts(V1)
    toml = project.root / "pyproject.toml"
    toml.write_text(
        toml.read_text()
        + '[tool.streamguard.subjects."orders.OrderPlaced"]\nregistry_subject = "orders-value"\n'
    )
    monkeypatch.setenv(REGISTRY_URL_ENV, registry.url)
    code, out, _ = cli("schema", "register", "--registry")
    assert code == 0
    assert "orders-value: v1 registered" in out


def test_unreachable_registry_exits_2(
    project_factory: Callable[[], Project], cli: Cli, registry: RegistryServer
) -> None:
    """A registry that cannot be reached is exit 2, and the URL's password is not shown."""
    url = registry.url.replace("http://", "http://ci:s3cret-pw@")
    registry.stop()
    project_factory().contracts(V1)
    code, _, err = cli("schema", "check", "--registry", url)
    assert code == 2
    assert "cannot reach the schema registry" in err
    assert "s3cret-pw" not in err


def test_an_unreachable_registry_is_a_github_error_annotation_too(
    project_factory: Callable[[], Project], cli: Cli, registry: RegistryServer
) -> None:
    """Under ``--format github`` a check that cannot run is an ``::error`` annotation as
    well as exit 2: it printed to stderr only, which the run's summary does not show."""
    url = registry.url.replace("http://", "http://ci:s3cret-pw@")
    registry.stop()
    project_factory().contracts(V1)
    code, out, err = cli("schema", "check", "--registry", url, "--format", "github")
    assert code == 2
    assert "cannot reach the schema registry" in err
    (line,) = out.splitlines()
    assert line.startswith("::error title=streamguard schema check could not run::cannot reach")
    assert "s3cret-pw" not in out + err


def test_a_refusal_mid_check_exits_2_with_the_registry_s_answer(
    project_factory: Callable[[], Project], cli: Cli
) -> None:
    """A registry that lists version 1 and then refuses to give it (deleted between the
    two requests: 40402) ends the check with exit 2 and what it answered. The refusal
    escaped as a traceback and exit 1, which CI reads as an incompatible change."""

    class Racing(JsonHandler):
        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path.startswith("/config"):
                self.answer(200, {"compatibilityLevel": "BACKWARD"})
            elif path.endswith("/versions"):
                self.answer(200, [1])
            else:
                self.answer(404, {"error_code": 40402, "message": "Version 1 not found."})

        def do_POST(self) -> None:  # the lookup of this schema: not registered
            self.read_body()
            self.answer(404, {"error_code": 40403, "message": "Schema not found"})

    project_factory().contracts(V1)
    with serving(Racing) as url:
        code, _, err = cli("schema", "check", "--registry", url)
    assert code == 2, err
    assert "refused a request" in err
    assert "Traceback" not in err


def test_mode_with_registry_is_a_usage_error(
    project_factory: Callable[[], Project], cli: Cli, registry: RegistryServer
) -> None:
    """--mode cannot override the registry's own level: said at once (exit 2), rather than
    ignored while the registry's level decides."""
    registered(project_factory, cli, registry.url)
    for command in ("check", "register"):
        code, _, err = cli("schema", command, "--registry", registry.url, "--mode", "NONE")
        assert code == 2
        assert "--mode does not apply with --registry" in err


def test_a_revert_to_an_older_registered_schema_is_judged_against_the_latest(
    project_factory: Callable[[], Project], cli: Cli, registry: RegistryServer
) -> None:
    """v2 drops ``customer`` (safe: v2 readers ignore it in v1 data); v3 brings v1's schema
    back, which the subject holds as version 1. Consumers on v3 require ``customer`` and
    reject v2's records, so check --registry fails, as the offline check does. It passed
    ("registered as version 1") without comparing anything or asking the registry."""
    project = registered(project_factory, cli, registry.url)
    v2 = V1.replace("__version__ = 1", "__version__ = 2").replace("    customer: Customer\n", "")
    project.contracts(v2)
    assert cli("schema", "register", "--registry", registry.url)[0] == 0
    module = project.contracts(V1.replace("__version__ = 1", "__version__ = 3"))
    v3 = importlib.import_module(module).OrderPlaced
    with pytest.raises(ContractViolation):
        JsonCodec().decode(b'{"order_id": "o-1"}', v3)  # a record v2 wrote
    code, out, _ = cli("schema", "check", "--registry", registry.url)
    assert code == 1
    assert "v3 is registered as version 1, older than the latest (2) [BACKWARD]" in out
    assert "REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL" in out
    assert "the registry says incompatible" in out
    code, _, err = cli("schema", "register", "--registry", registry.url)
    assert code == 1
    assert "refused" in err


def test_a_change_without_a_version_bump_fails_against_the_store(
    project_factory: Callable[[], Project], cli: Cli, registry: RegistryServer
) -> None:
    """v1 is in schemas/ and in the registry; the contract then gains a field but stays
    v1. The registry keeps no __version__, but schemas/ does: check --registry fails as
    the offline check does, and register --registry registers nothing, even forced
    (check passed and register made it the subject's version 2, a second schema under
    sg-version 1). Bumped to v2, it passes."""
    project = registered(project_factory, cli, registry.url)
    assert cli("schema", "register")[0] == 0
    unbumped = V2_OPTIONAL_FIELD.replace("__version__ = 2", "__version__ = 1")
    project.contracts(unbumped)
    code, out, _ = cli("schema", "check", "--registry", registry.url)
    assert code == 1
    assert "orders.OrderPlaced: v1 (stored) -> v1 [version check]: 1 breaking change(s)" in out
    assert "SCHEMA_CHANGED_WITHOUT_VERSION_BUMP" in out
    assert "the registry says compatible" in out
    assert "DISAGREEMENT" not in out
    code, out, _ = cli("schema", "check", "--registry", registry.url, "--format", "json")
    report = json.loads(out)
    assert [c["rule"] for c in report["changes"] if c["breaking"]] == [
        "SCHEMA_CHANGED_WITHOUT_VERSION_BUMP"
    ]
    assert report["subjects"][0]["compatible"] is False
    for force in ([], ["--force", "--reason", "test"]):
        code, _, err = cli("schema", "register", "--registry", registry.url, *force)
        assert code == 1
        assert "changed without a __version__ bump" in err
    assert SchemaRegistryClient({"url": registry.url}).get_versions("orders.OrderPlaced") == [1]
    project.contracts(V2_OPTIONAL_FIELD)
    assert cli("schema", "check", "--registry", registry.url)[0] == 0


def test_a_type_change_names_the_old_and_the_new_type(
    project_factory: Callable[[], Project], cli: Cli, registry: RegistryServer
) -> None:
    """check --registry names the old and the new type of a changed field (text and json
    ``old_type``/``new_type``), and the two schema types of a switch of wire format."""
    project = registered(project_factory, cli, registry.url)
    retyped = V1.replace("__version__ = 1", "__version__ = 2").replace(
        "order_id: str", "order_id: int"
    )
    project.contracts(retyped)
    code, out, _ = cli("schema", "check", "--registry", registry.url)
    assert code == 1
    assert "  BREAKING order_id  TYPE_CHANGED string -> integer" in out.splitlines()
    code, out, _ = cli("schema", "check", "--registry", registry.url, "--format", "json")
    assert code == 1
    (change,) = json.loads(out)["changes"]
    assert (change["rule"], change["old_type"], change["new_type"]) == (
        "TYPE_CHANGED",
        "string",
        "integer",
    )
    project.contracts(
        V1.replace("__version__ = 1", '__version__ = 2\n    __wire_format__ = "avro"')
    )
    code, out, _ = cli("schema", "check", "--registry", registry.url)
    assert code == 1
    assert "  BREAKING (root)  SCHEMA_TYPE_CHANGED JSON -> Avro" in out.splitlines()

"""The ``streamguard schema`` commands: exit codes, reports, the store, --force."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from schema_project import Project

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
V2_BREAKING = """
class Customer(BaseModel):
    id: str
    tier: Literal["gold", "silver"]

class OrderPlaced(sg.Contract):
    __subject__ = "orders.OrderPlaced"
    __version__ = 2
    order_id: str
    customer: Customer
"""
V2_COMPATIBLE = """
class Customer(BaseModel):
    id: str
    tier: Literal["gold", "silver"] = "silver"

class OrderPlaced(sg.Contract):
    __subject__ = "orders.OrderPlaced"
    __version__ = 2
    order_id: str
    customer: Customer
"""


def registered(project_factory: Callable[[], Project], cli: Cli) -> Project:
    project = project_factory()
    project.contracts(V1)
    assert cli("schema", "register")[0] == 0
    return project


def test_check_without_stored_versions_passes(
    project_factory: Callable[[], Project], cli: Cli
) -> None:
    """A subject with nothing stored has nothing to break: exit 0, with a note that says
    to register it (until it is stored, every later change would pass as well); once
    stored, the note says there is nothing older to compare with."""
    project_factory().contracts(V1)
    code, out, _ = cli("schema", "check")
    assert code == 0
    assert "orders.OrderPlaced: v1 is not stored in schemas/ yet" in out
    assert "streamguard schema register" in out
    assert cli("schema", "register")[0] == 0
    code, out, _ = cli("schema", "check")
    assert code == 0
    assert "orders.OrderPlaced: v1 has nothing to compare with" in out


def test_github_format_warns_of_a_subject_not_stored_yet(
    project_factory: Callable[[], Project], cli: Cli
) -> None:
    """The CI job the docs give runs --format github: a schemas/ never committed (or a
    schemas_dir that names the wrong folder) must show there, not pass in silence."""
    project_factory().contracts(V1)
    code, out, _ = cli("schema", "check", "--format", "github")
    assert code == 0
    assert out.startswith("::warning title=orders.OrderPlaced not stored yet::")
    assert "streamguard schema register" in out
    assert cli("schema", "register")[0] == 0
    assert cli("schema", "check", "--format", "github")[:2] == (0, "")


def test_json_format_says_a_subject_is_not_stored_yet(
    project_factory: Callable[[], Project], cli: Cli
) -> None:
    """The text and github formats say a subject never stored passed unchecked; the json
    list said nothing (an empty list, as for a subject checked and unchanged)."""
    project_factory().contracts(V1)
    code, out, _ = cli("schema", "check", "--format", "json")
    assert code == 0
    [entry] = json.loads(out)
    assert entry["subject"] == "orders.OrderPlaced"
    assert (entry["old_version"], entry["new_version"]) == (None, "v1")
    assert (entry["rule"], entry["breaking"], entry["breaking_in"]) == (
        "SUBJECT_NOT_STORED",
        False,
        [],
    )
    assert "streamguard schema register" in entry["hint"]
    assert cli("schema", "register")[0] == 0
    assert json.loads(cli("schema", "check", "--format", "json")[1]) == []


def test_check_outside_the_project_says_there_is_no_pyproject(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: Cli
) -> None:
    """Run from another folder than the project's (a CI step's working directory), the
    check said to list modules in a pyproject.toml, not that there was none to read."""
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("schema", "check")
    assert code == 2
    assert f"no pyproject.toml in {tmp_path.resolve()}" in err
    assert "--config" in err


def test_register_stores_version_and_changelog(
    project_factory: Callable[[], Project], cli: Cli
) -> None:
    """register writes schemas/<subject>/v<N>.json (the contract's schema) and a CHANGELOG line."""
    project = registered(project_factory, cli)
    stored = project.schemas / "orders.OrderPlaced" / "v1.json"
    assert sorted(json.loads(stored.read_text())["required"]) == ["customer", "order_id"]
    assert "v1 registered (BACKWARD" in (stored.parent / "CHANGELOG").read_text()
    code, out, _ = cli("schema", "register")
    assert code == 0
    assert "v1 unchanged" in out


def test_check_reports_breaking_change(project_factory: Callable[[], Project], cli: Cli) -> None:
    """A breaking change exits 1 and names subject, versions, path, rule and a hint."""
    project = registered(project_factory, cli)
    project.contracts(V2_BREAKING)
    code, out, _ = cli("schema", "check")
    assert code == 1
    assert "orders.OrderPlaced: v1 -> v2 [BACKWARD]: 1 breaking change(s)" in out
    assert "customer.tier  REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL" in out
    assert "consumers on v2 reject data written with v1" in out
    assert "hint: give the new field a default" in out


def test_check_passes_compatible_change(project_factory: Callable[[], Project], cli: Cli) -> None:
    """A field added with a default is BACKWARD compatible: exit 0."""
    project = registered(project_factory, cli)
    project.contracts(V2_COMPATIBLE)
    code, out, _ = cli("schema", "check")
    assert code == 0, out
    assert "v1 -> v2 [BACKWARD]: compatible" in out


def test_mode_flag_overrides_config(project_factory: Callable[[], Project], cli: Cli) -> None:
    """--mode FORWARD judges the other direction: the required field is fine there."""
    project = registered(project_factory, cli)
    project.contracts(V2_BREAKING)
    assert cli("schema", "check", "--mode", "FORWARD")[0] == 0
    code, out, _ = cli("schema", "check", "--mode", "NONE")
    assert code == 0
    # Not "nothing to compare with", which read as if v1 were not stored.
    assert "orders.OrderPlaced: v2 is not compared with the stored versions [NONE]" in out
    assert cli("schema", "check", "--mode", "FULL")[0] == 1


def test_unknown_mode_is_usage_error(project_factory: Callable[[], Project], cli: Cli) -> None:
    """An unknown --mode is a usage error: exit 2 with the valid choices."""
    project_factory().contracts(V1)
    code, _, err = cli("schema", "check", "--mode", "SIDEWAYS")
    assert code == 2
    assert "BACKWARD_TRANSITIVE" in err


@pytest.mark.parametrize("action", [["check"], ["register"], ["diff", "orders.OrderPlaced"]])
def test_an_empty_mode_is_usage_error(
    project_factory: Callable[[], Project], cli: Cli, action: list[str]
) -> None:
    """--mode "" (an unset $MODE in CI) is refused, not judged in the configured mode:
    it passed a change the mode the job asked for would have refused."""
    project = registered(project_factory, cli)
    project.contracts(V2_BREAKING, mode="NONE")
    code, _, err = cli("schema", *action, "--mode", "")
    assert code == 2
    assert "unknown compatibility mode ''" in err


def test_missing_contracts_is_configuration_error(
    project_factory: Callable[[], Project], cli: Cli
) -> None:
    """A project without contracts configured exits 2 and says what to add."""
    project = project_factory()
    (project.root / "pyproject.toml").write_text("[tool.streamguard]\n")
    code, _, err = cli("schema", "check")
    assert code == 2
    assert "contracts = " in err


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        ({"properties": ["order_id", "customer"]}, "'properties' must be an object, not a list"),
        ({"dependencies": ["order_id"]}, "'dependencies' must be an object, not a list"),
        ({"required": [{"name": "order_id"}]}, "'required' must list strings only"),
        ({"anyOf": {"type": "object"}}, "'anyOf' must be a list, not an object"),
        ({"minimum": "0"}, "'minimum' must be a number, not a string"),
        ({"exclusiveMaximum": None}, "'exclusiveMaximum' must be a number, not null"),
    ],
)
def test_hand_edited_schema_of_the_wrong_shape_is_a_configuration_error(
    project_factory: Callable[[], Project], cli: Cli, edit: dict[str, object], said: str
) -> None:
    """A stored file whose keyword has the wrong shape exits 2 saying which keyword: it
    ended the check with a traceback and exit 1, read by CI as a breaking change."""
    project = registered(project_factory, cli)
    stored = project.schemas / "orders.OrderPlaced" / "v1.json"
    stored.write_text(json.dumps({**json.loads(stored.read_text()), **edit}))
    project.contracts(V2_COMPATIBLE)
    code, _, err = cli("schema", "check")
    assert code == 2
    assert f"{stored}: {said}" in err  # which file to mend, among many subjects
    assert "Traceback" not in err


def test_a_stored_schema_of_null_is_a_configuration_error(
    project_factory: Callable[[], Project], cli: Cli
) -> None:
    """A stored file holding JSON ``null`` exits 2 naming the file: it was read as no
    schema at all (SCHEMA_ADDED, exit 1), a breaking change that is not there."""
    project = registered(project_factory, cli)
    stored = project.schemas / "orders.OrderPlaced" / "v1.json"
    stored.write_text("null\n")
    project.contracts(V2_COMPATIBLE)
    code, out, err = cli("schema", "check")
    assert (code, "SCHEMA_ADDED" in out) == (2, False)
    assert f"{stored}: null is not a schema" in err
    other = project.root / "other.json"
    other.write_text("{}")
    for old, new in ((stored, other), (other, stored)):
        code, _, err = cli("schema", "diff", "--old", str(old), "--new", str(new))
        assert code == 2
        assert f"{stored}: null is not a schema" in err


def test_json_and_github_formats(project_factory: Callable[[], Project], cli: Cli) -> None:
    """--format json prints a machine list; --format github prints ::error annotations."""
    project = registered(project_factory, cli)
    project.contracts(V2_BREAKING)
    code, out, _ = cli("schema", "check", "--format", "json")
    assert code == 1
    [entry] = json.loads(out)
    assert entry["subject"] == "orders.OrderPlaced"
    assert (entry["old_version"], entry["new_version"]) == ("v1", "v2")
    assert entry["path"] == "customer.tier"
    assert entry["pointer"] == "#/properties/customer/properties/tier"
    assert entry["rule"] == "REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL"
    assert entry["breaking"] is True
    code, out, _ = cli("schema", "check", "--format", "github")
    assert code == 1
    assert out.startswith("::error title=orders.OrderPlaced REQUIRED_PROPERTY_ADDED")
    assert "customer.tier" in out


def test_register_refuses_breaking_change(project_factory: Callable[[], Project], cli: Cli) -> None:
    """register exits 1 with the report and stores nothing when a change breaks the mode."""
    project = registered(project_factory, cli)
    project.contracts(V2_BREAKING)
    code, out, err = cli("schema", "register")
    assert code == 1
    assert "REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL" in out
    assert "nothing was registered" in err
    assert not (project.schemas / "orders.OrderPlaced" / "v2.json").exists()


def test_force_needs_reason(project_factory: Callable[[], Project], cli: Cli) -> None:
    """--force without --reason is a usage error (exit 2): a forced break must say why."""
    project = registered(project_factory, cli)
    project.contracts(V2_BREAKING)
    code, _, err = cli("schema", "register", "--force")
    assert code == 2
    assert "--reason" in err


def test_force_records_reason_and_breaks(project_factory: Callable[[], Project], cli: Cli) -> None:
    """--force --reason stores the version and records FORCED, the reason and the broken rules."""
    project = registered(project_factory, cli)
    project.contracts(V2_BREAKING)
    code, _, _ = cli("schema", "register", "--force", "--reason", "topic was drained")
    assert code == 0
    folder = project.schemas / "orders.OrderPlaced"
    assert (folder / "v2.json").exists()
    last = (folder / "CHANGELOG").read_text().splitlines()[-1]
    assert "v2 FORCED past BACKWARD: reason: topic was drained" in last
    assert "REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL at customer.tier (v1->v2)" in last


@pytest.mark.parametrize("sep", ["\n", "\r", "\x0b", "\x85", "\u2028", "\t"])
def test_a_reason_with_a_line_break_is_refused(
    project_factory: Callable[[], Project], cli: Cli, sep: str
) -> None:
    """--reason is one CHANGELOG line: a line break in it wrote a second line, which could
    forge a FORCED registration that `check` then honours. Exit 2, nothing stored."""
    project = registered(project_factory, cli)
    project.contracts(V2_BREAKING)
    forged = f"drained{sep}2026-01-01T00:00:00Z v3 FORCED past BACKWARD: reason: x"
    code, _, err = cli("schema", "register", "--force", "--reason", forged)
    assert (code, "Traceback" in err) == (2, False)
    assert "--reason must be one line of text, not a U+" in err
    folder = project.schemas / "orders.OrderPlaced"
    assert not (folder / "v2.json").exists()
    assert "FORCED" not in (folder / "CHANGELOG").read_text()


def test_a_forced_change_of_type_is_recorded_with_its_types(
    project_factory: Callable[[], Project], cli: Cli
) -> None:
    """The CHANGELOG line of a forced version names a changed field's old and new type,
    as the check's report does: the rule and path alone sent a reader to the schemas."""
    project = registered(project_factory, cli)
    project.contracts(V1.replace("order_id: str", "order_id: int").replace("= 1", "= 2"))
    code, _, _ = cli("schema", "register", "--force", "--reason", "ids are numbers now")
    assert code == 0
    last = (project.schemas / "orders.OrderPlaced" / "CHANGELOG").read_text().splitlines()[-1]
    assert "TYPE_CHANGED string -> integer at order_id (v1->v2)" in last


def test_changed_schema_without_version_bump_fails(
    project_factory: Callable[[], Project], cli: Cli
) -> None:
    """A schema that changed while __version__ stayed the same fails check, whatever the mode."""
    project = registered(project_factory, cli)
    project.contracts(V2_COMPATIBLE.replace("__version__ = 2", "__version__ = 1"))
    for mode in ("BACKWARD", "NONE"):
        code, out, _ = cli("schema", "check", "--mode", mode)
        assert code == 1
        assert "SCHEMA_CHANGED_WITHOUT_VERSION_BUMP" in out
        assert "bump __version__" in out


THREE = """
class Event(sg.Contract):
    __subject__ = "events.Event"
    __version__ = {version}
    id: str
{extra}
"""


def test_transitive_checks_every_stored_version(
    project_factory: Callable[[], Project], cli: Cli
) -> None:
    """v3 is compatible with v2 but not v1: BACKWARD passes, BACKWARD_TRANSITIVE fails."""
    project = project_factory()
    project.contracts(THREE.format(version=1, extra="    note: str | None = None"))
    assert cli("schema", "register")[0] == 0
    project.contracts(THREE.format(version=2, extra=""))
    assert cli("schema", "register")[0] == 0
    project.contracts(THREE.format(version=3, extra="    note: int | None = None"))
    assert cli("schema", "check", "--mode", "BACKWARD")[0] == 0
    code, out, _ = cli("schema", "check", "--mode", "BACKWARD_TRANSITIVE")
    assert code == 1
    assert "events.Event: v1 -> v3 [BACKWARD_TRANSITIVE]: " in out
    assert "events.Event: v2 -> v3 [BACKWARD_TRANSITIVE]: compatible" in out
    assert "note" in out


def test_diff_subject_lists_every_change(project_factory: Callable[[], Project], cli: Cli) -> None:
    """diff SUBJECT V1 V2 lists compatible changes too, and exits on the mode's verdict."""
    project = registered(project_factory, cli)
    project.contracts(V2_COMPATIBLE)
    assert cli("schema", "register")[0] == 0
    code, out, _ = cli("schema", "diff", "orders.OrderPlaced", "1", "v2")
    assert code == 0
    assert "ok       customer.tier  OPTIONAL_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL" in out
    code, out, _ = cli("schema", "diff", "orders.OrderPlaced", "1", "v2", "--policy", "strict")
    assert code == 1
    assert "BREAKING customer.tier" in out


def test_diff_shows_a_change_made_without_a_version_bump(
    project_factory: Callable[[], Project], cli: Cli
) -> None:
    """With one version stored and the contract changed under the same version, diff
    SUBJECT compares the stored one with the contract (what check refuses), instead of
    asking for two versions; an unknown subject says it is unknown."""
    project = registered(project_factory, cli)
    project.contracts(V2_BREAKING.replace("__version__ = 2", "__version__ = 1"))
    code, out, _ = cli("schema", "diff", "orders.OrderPlaced")
    assert code == 1
    assert "v1 (stored) -> v1" in out
    assert "BREAKING customer.tier" in out
    code, _, err = cli("schema", "diff", "orders.Unknown")
    assert code == 2
    assert "no stored version and no contract" in err


def test_diff_raw_files(tmp_path: Path, cli: Cli) -> None:
    """diff --old/--new on raw files exits 0 compatible, 1 breaking, 2 unreadable."""
    old, new = tmp_path / "a.json", tmp_path / "b.json"
    old.write_text(json.dumps({"type": "string", "maxLength": 10}))
    new.write_text(json.dumps({"type": "string", "maxLength": 5}))
    assert cli("schema", "diff", "--old", str(old), "--new", str(new))[0] == 1
    code, out, _ = cli("schema", "diff", "--old", str(new), "--new", str(old))
    assert code == 0
    # The files alone, where a subject stands ("a: ..." named it after the new file),
    # and why an ok line whose sentence says who rejects what is ok.
    assert out.splitlines()[0] == f"{new} -> {old} [BACKWARD]: compatible"
    assert out.splitlines()[2].endswith(
        f"consumers on {new} reject data written with {old}. "
        "Allowed under BACKWARD, which does not check FORWARD."
    )
    assert cli("schema", "diff", "--old", str(old), "--new", str(new), "--mode", "FORWARD")[0] == 0
    assert cli("schema", "diff", "--old", str(old), "--new", str(tmp_path / "none.json"))[0] == 2


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path: Path) -> None:
    """`streamguard ... | head`: a command whose reader closed the pipe ended in a
    BrokenPipeError traceback (or Python's "Exception ignored" as it flushed stdout at
    exit). It exits 1, as a pipeline's `pipefail` expects, and says nothing more."""
    old, new = tmp_path / "a.json", tmp_path / "b.json"
    old.write_text(json.dumps({"type": "string", "maxLength": 10}))
    new.write_text(json.dumps({"type": "string", "maxLength": 5}))
    cmd = [sys.executable, "-m", "streamguard.cli", "schema", "diff"]
    proc = subprocess.Popen(
        [*cmd, "--old", str(new), "--new", str(old)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the command writes (it imports first)
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 1
    assert "Traceback" not in err, err
    assert "BrokenPipeError" not in err, err


def test_export_stdout_and_out_dir(project_factory: Callable[[], Project], cli: Cli) -> None:
    """export prints every contract's normalised schema, or writes them under --out."""
    project = project_factory()
    project.contracts(V1)
    code, out, _ = cli("schema", "export")
    assert code == 0
    [doc] = json.loads(out)
    assert doc["subject"] == "orders.OrderPlaced"
    assert doc["json_schema"]["properties"]["order_id"] == {"title": "Order Id", "type": "string"}
    code, _, _ = cli("schema", "export", "--out", str(project.root / "out"))
    assert code == 0
    assert (project.root / "out" / "orders.OrderPlaced" / "v1.json").exists()


AVRO_V1 = """
class Payment(sg.Contract):
    __subject__ = "payments.Payment"
    __version__ = 1
    __wire_format__ = "avro"
    id: str
    amount: int
"""


def test_avro_contract_uses_schema_resolution(
    project_factory: Callable[[], Project], cli: Cli
) -> None:
    """An Avro contract is stored as .avsc too and judged by Avro's resolution rules."""
    project = project_factory()
    project.contracts(AVRO_V1)
    assert cli("schema", "register")[0] == 0
    assert (project.schemas / "payments.Payment" / "v1.avsc").exists()
    project.contracts(
        AVRO_V1.replace("__version__ = 1", "__version__ = 2").replace(
            "amount: int", "amount: float"
        )
    )
    assert cli("schema", "check")[0] == 0  # long -> double is an Avro promotion
    project.contracts(AVRO_V1.replace("__version__ = 1", "__version__ = 2") + "    tag: str\n")
    code, out, _ = cli("schema", "check")
    assert code == 1
    assert "tag  FIELD_ADDED_WITHOUT_DEFAULT" in out


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        ({"fields": {"id": "string"}}, "'fields' at (root) must be a list, not an object"),
        ({"fields": [{"name": "id"}]}, "'fields' at (root) must be an object with a 'type'"),
        (
            {"fields": [{"name": "id", "type": {"type": "array"}}]},
            "Avro array at id needs 'items'",
        ),
        (
            {"fields": [{"name": "id", "type": {"type": "enum", "name": "E", "symbols": "AB"}}]},
            "'symbols' at id must be a list of strings, not a string",
        ),
    ],
)
def test_hand_edited_avsc_of_the_wrong_shape_is_a_configuration_error(
    project_factory: Callable[[], Project], cli: Cli, edit: dict[str, object], said: str
) -> None:
    """A stored .avsc the Avro rules cannot read exits 2 saying where, as a wrong-shaped
    JSON Schema does: it ended the check with a traceback and exit 1, a breaking change
    to CI."""
    project = project_factory()
    project.contracts(AVRO_V1)
    assert cli("schema", "register")[0] == 0
    stored = project.schemas / "payments.Payment" / "v1.avsc"
    stored.write_text(json.dumps({**json.loads(stored.read_text()), **edit}))
    project.contracts(AVRO_V1.replace("__version__ = 1", "__version__ = 2"))
    code, _, err = cli("schema", "check")
    assert code == 2
    assert f"{stored}: " in err
    assert said in err
    assert "Traceback" not in err


def test_diff_of_an_avsc_and_a_json_file_is_a_usage_error(
    project_factory: Callable[[], Project], cli: Cli
) -> None:
    """--old A.avsc --new B.json was judged by the JSON Schema rules, the Avro schema read
    as one (TYPE_CHANGED record -> object, exit 1): the two formats have no common rules,
    so the mix exits 2 naming both. Two .avsc files still use Avro's rules."""
    project = project_factory()
    project.contracts(AVRO_V1)
    assert cli("schema", "register")[0] == 0
    folder = project.schemas / "payments.Payment"
    avsc, json_schema = folder / "v1.avsc", folder / "v1.json"
    for old, new, said in (
        (avsc, json_schema, "--old is an Avro schema (.avsc), --new a JSON Schema"),
        (json_schema, avsc, "--old is a JSON Schema, --new an Avro schema (.avsc)"),
    ):
        code, out, err = cli("schema", "diff", "--old", str(old), "--new", str(new))
        assert (code, "TYPE_CHANGED" in out) == (2, False)
        assert said in err
    assert cli("schema", "diff", "--old", str(avsc), "--new", str(avsc))[0] == 0


def test_console_script_in_project(project_factory: Callable[[], Project], cli: Cli) -> None:
    """The installed `streamguard` script reads ./pyproject.toml and exits 1 on a break."""
    project = registered(project_factory, cli)
    project.contracts(V2_BREAKING)
    script = Path(sys.executable).parent / "streamguard"
    env = {**os.environ, "PYTHONPATH": ""}
    done = subprocess.run(
        [str(script), "schema", "check"],
        cwd=project.root,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL" in done.stdout
    ok = subprocess.run(
        [str(script), "schema", "check", "--mode", "NONE"],
        cwd=project.root,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr


def test_force_never_rewrites_a_registered_version(
    project_factory: Callable[[], Project], cli: Cli
) -> None:
    """--force overrides a compatibility break, never a version number already taken:
    the stored v1 stays as it was, and the error names the version to bump to."""
    project = registered(project_factory, cli)
    stored = (project.schemas / "orders.OrderPlaced" / "v1.json").read_text()
    project.contracts(V2_BREAKING.replace("__version__ = 2", "__version__ = 1"))
    code, _, err = cli("schema", "register", "--force", "--reason", "oops")
    assert code == 1
    assert "already registered" in err
    assert "bump __version__ to 2" in err
    assert (project.schemas / "orders.OrderPlaced" / "v1.json").read_text() == stored


def test_contracts_module_failing_at_import_is_a_configuration_error(
    project_factory: Callable[[], Project], cli: Cli
) -> None:
    """A contracts module raising at import (not only ImportError) exits 2, not 1, so CI
    never reports a broken setup as a breaking change."""
    project = project_factory()
    project.contracts("undefined_name_at_import_time\n")
    code, _, err = cli("schema", "check")
    assert code == 2
    assert "NameError" in err


def test_subjects_that_are_not_tables_are_a_configuration_error(
    project_factory: Callable[[], Project], cli: Cli
) -> None:
    """A malformed [tool.streamguard] subjects entry exits 2 with a hint."""
    project = project_factory()
    project.contracts(V1)
    with (project.root / "pyproject.toml").open("a") as toml:
        toml.write('subjects = "orders.OrderPlaced"\n')
    code, _, err = cli("schema", "check")
    assert code == 2
    assert "table of tables" in err


def test_a_subject_table_naming_no_contract_is_a_configuration_error(
    project_factory: Callable[[], Project], cli: Cli
) -> None:
    """A misspelt subject in [tool.streamguard.subjects] was ignored, and the contract
    checked in the default mode (BACKWARD where FULL was meant), passing in silence."""
    project = project_factory()
    project.contracts(V1)
    with (project.root / "pyproject.toml").open("a") as toml:
        toml.write('[tool.streamguard.subjects."orders.OrderPlace"]\ncompatibility = "FULL"\n')
    code, _, err = cli("schema", "check")
    assert code == 2
    assert '[tool.streamguard.subjects."orders.OrderPlace"] names no contract' in err
    assert "did you mean 'orders.OrderPlaced'?" in err


def test_a_retired_subject_s_table_is_not_a_configuration_error(
    project_factory: Callable[[], Project], cli: Cli
) -> None:
    """A subject whose contract was removed, its versions still in schemas/, keeps its
    table (``schema diff`` reads its mode there): only a subject with nothing stored and
    no contract is taken for a misspelling."""
    project = project_factory()
    project.contracts(V1)
    assert cli("schema", "register")[0] == 0
    project.contracts(V1.replace("orders.OrderPlaced", "orders.OrderShipped"))
    with (project.root / "pyproject.toml").open("a") as toml:
        toml.write('[tool.streamguard.subjects."orders.OrderPlaced"]\ncompatibility = "FULL"\n')
    code, out, err = cli("schema", "check")
    assert code == 0, err
    assert "orders.OrderShipped" in out


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ('compatability = "FULL"\n', "'compatability'; did you mean 'compatibility'?"),
        (
            '[tool.streamguard.subjects."orders.OrderPlaced"]\ncompatiblity = "FULL"\n',
            "'compatiblity'; did you mean 'compatibility'?",
        ),
    ],
)
def test_a_misspelt_config_key_is_a_configuration_error(
    project_factory: Callable[[], Project], cli: Cli, extra: str, named: str
) -> None:
    """A key [tool.streamguard] does not take exits 2 naming it and the likely key: a
    misspelt compatibility was ignored, and the subject checked in the default mode."""
    project = project_factory()
    project.contracts(V1)
    with (project.root / "pyproject.toml").open("a") as toml:
        toml.write(extra)
    code, _, err = cli("schema", "check")
    assert code == 2
    assert named in err


AVRO_PAY = """
class Pay(sg.Contract):
    __subject__ = "pay.Pay"
    __version__ = 1
    __wire_format__ = "avro"
    cents: int = 0
    note: str = ""
"""
AVRO_PAY_REORDERED = """
class Pay(sg.Contract):
    __subject__ = "pay.Pay"
    __version__ = 1
    __wire_format__ = "avro"
    note: str = ""
    cents: int = 0
"""


def test_reordering_an_avro_contracts_fields_is_a_change(
    project_factory: Callable[[], Project], cli: Cli
) -> None:
    """Field order is part of an Avro schema (its encoding and fingerprint) though not of
    the sorted JSON Schema: reordering without a bump fails check, as any change does
    (it passed, and consumers of the stored v1.avsc could not read the new records)."""
    project = project_factory()
    project.contracts(AVRO_PAY)
    assert cli("schema", "register")[0] == 0
    project.contracts(AVRO_PAY_REORDERED)
    code, out, _ = cli("schema", "check")
    assert code == 1
    assert "SCHEMA_CHANGED_WITHOUT_VERSION_BUMP" in out


JSON_PAY = AVRO_PAY.replace('    __wire_format__ = "avro"\n', "")


@pytest.mark.parametrize(
    ("before", "after"),
    [(JSON_PAY, AVRO_PAY), (AVRO_PAY, JSON_PAY)],
    ids=["json-to-avro", "avro-to-json"],
)
def test_switching_the_wire_format_without_a_bump_is_a_change(
    project_factory: Callable[[], Project], cli: Cli, before: str, after: str
) -> None:
    """A version stored as JSON and now Avro, or the reverse, fails check and is not
    registered over: its JSON Schema and sg-fingerprint are unchanged, yet consumers of
    that version cannot decode the new records (check passed, and register called it
    unchanged and never stored the .avsc)."""
    project = project_factory()
    project.contracts(before)
    assert cli("schema", "register")[0] == 0
    project.contracts(after)
    code, out, _ = cli("schema", "check", "--mode", "NONE")
    assert code == 1
    assert "SCHEMA_CHANGED_WITHOUT_VERSION_BUMP" in out
    code, _, err = cli("schema", "register")
    assert code == 1
    assert "bump __version__ to 2" in err
    # diff shows how (it said "fewer than two versions to compare", exit 2)
    code, out, _ = cli("schema", "diff", "pay.Pay")
    assert code == 1
    assert "stored) -> v1 (" in out
    assert "SCHEMA_TYPE_CHANGED" in out


@pytest.mark.parametrize(
    ("before", "after", "formats"),
    [
        (JSON_PAY, AVRO_PAY, "v1 (JSON) -> v2 (Avro)"),
        (AVRO_PAY, JSON_PAY, "v1 (Avro) -> v2 (JSON)"),
    ],
    ids=["json-to-avro", "avro-to-json"],
)
@pytest.mark.parametrize("mode", ["BACKWARD", "FORWARD", "FULL_TRANSITIVE"])
def test_switching_the_wire_format_with_a_bump_breaks(
    project_factory: Callable[[], Project],
    cli: Cli,
    before: str,
    after: str,
    formats: str,
    mode: str,
) -> None:
    """v1 JSON and v2 Avro (or the reverse) of one subject: JsonCodec refuses the Avro
    records and AvroCodec the JSON ones (both dead-letter them as decode_error), so the
    switch breaks every mode but NONE. It passed: the Avro side was compared by its JSON
    Schema, which the switch leaves as it was."""
    project = project_factory()
    project.contracts(before, mode=mode)
    assert cli("schema", "register")[0] == 0
    project.contracts(after.replace("__version__ = 1", "__version__ = 2"), mode=mode)
    code, out, _ = cli("schema", "check")
    assert code == 1
    assert f"pay.Pay: {formats} [{mode}]: 1 breaking change(s)" in out
    assert (
        "SCHEMA_TYPE_CHANGED " + formats.replace("v1 (", "").replace("v2 (", "").replace(")", "")
        in out
    )
    assert "publish the new format under a new subject" in out
    assert cli("schema", "diff", "pay.Pay")[0] == 1
    assert cli("schema", "register")[0] == 1
    assert cli("schema", "check", "--mode", "NONE")[0] == 0


def test_two_contracts_of_one_subject_and_version_are_refused(
    project_factory: Callable[[], Project], cli: Cli
) -> None:
    """Two different schemas claiming one subject and version: a usage error naming both,
    not one of them silently kept."""
    project = project_factory()
    project.contracts(
        V1
        + V1.replace("class OrderPlaced", "class OrderCopy").replace(
            "order_id: str", "order_id: int"
        )
    )
    code, _, err = cli("schema", "check")
    assert code == 2
    assert "are both orders.OrderPlaced v1" in err


def test_schemas_dir_must_be_a_path(project_factory: Callable[[], Project], cli: Cli) -> None:
    """A non-string schemas_dir is a usage error, not a folder named after a list."""
    project = project_factory()
    project.contracts(V1)
    text = (project.root / "pyproject.toml").read_text()
    (project.root / "pyproject.toml").write_text(
        text.replace('schemas_dir = "schemas"', 'schemas_dir = ["schemas"]')
    )
    code, _, err = cli("schema", "check")
    assert code == 2
    assert "schemas_dir must be a path" in err


@pytest.mark.parametrize("value", ["5", '["orders-value"]', '""'])
def test_registry_subject_must_be_a_name(
    project_factory: Callable[[], Project], cli: Cli, value: str
) -> None:
    """A registry_subject that is no text, or empty, is a usage error, not a registry
    subject named "5" or "['orders-value']" that no producer looks up."""
    project = project_factory()
    project.contracts(V1)
    with (project.root / "pyproject.toml").open("a") as pyproject:
        pyproject.write(
            f'[tool.streamguard.subjects."orders.OrderPlaced"]\nregistry_subject = {value}\n'
        )
    code, _, err = cli("schema", "check")
    assert (code, "Traceback" in err) == (2, False)
    assert "registry_subject must be a subject name" in err


def test_schema_files_that_cannot_be_read_are_configuration_errors(
    project_factory: Callable[[], Project], cli: Cli, tmp_path: Path
) -> None:
    """A stored version or CHANGELOG that is not UTF-8 or not a file, a schemas/ that is
    a file, and unreadable --old/--new or pyproject files exit 2 naming the file, never
    a traceback with exit 1, which CI would read as a breaking change."""
    project = registered(project_factory, cli)
    project.contracts(V2_COMPATIBLE)
    stored = project.schemas / "orders.OrderPlaced" / "v1.json"
    changelog = project.schemas / "orders.OrderPlaced" / "CHANGELOG"
    text = stored.read_bytes()

    stored.write_bytes(b"\xff\xfe" + text)
    code, _, err = cli("schema", "check")
    assert (code, "Traceback" in err) == (2, False)
    assert f"{stored}: not UTF-8" in err
    stored.unlink()
    stored.mkdir()
    code, _, err = cli("schema", "check")
    assert (code, "Traceback" in err) == (2, False)
    assert f"cannot read {stored}" in err
    stored.rmdir()
    stored.write_bytes(text)
    changelog.write_bytes(b"\xff FORCED\n")
    code, _, err = cli("schema", "check")
    assert (code, "Traceback" in err) == (2, False)
    assert f"{changelog}: not UTF-8" in err
    code, _, err = cli("schema", "diff", "--old", str(changelog), "--new", str(stored))
    assert (code, "Traceback" in err) == (2, False)
    assert f"{changelog}: not UTF-8" in err

    pyproject = project.root / "pyproject.toml"
    pyproject.write_bytes(pyproject.read_bytes() + b"# \xff\n")
    code, _, err = cli("schema", "check")
    assert (code, "Traceback" in err) == (2, False)
    assert "not UTF-8" in err
    code, _, err = cli("schema", "check", "--config", str(tmp_path))
    assert (code, "Traceback" in err) == (2, False)
    assert "is not a file" in err


def test_a_schemas_dir_that_cannot_be_written_is_a_configuration_error(
    project_factory: Callable[[], Project], cli: Cli
) -> None:
    """register and export --out into a path that is a file exit 2 naming it."""
    project = project_factory()
    project.contracts(V1)
    project.schemas.write_text("not a folder\n")
    code, _, err = cli("schema", "register")
    assert (code, "Traceback" in err) == (2, False)
    assert f"cannot write {project.schemas / 'orders.OrderPlaced'}" in err
    code, _, err = cli("schema", "export", "--out", str(project.schemas))
    assert (code, "Traceback" in err) == (2, False)
    assert "cannot write" in err


def test_a_forced_version_leaves_ci_green_and_starts_the_subject_anew(
    project_factory: Callable[[], Project], cli: Cli
) -> None:
    """After ``register --force --reason``, ``check`` passes (the break is on record), and
    a later version is compared with the forced one onwards only, even in a transitive
    mode: CI stayed red on every later pull request."""
    project = project_factory()
    project.contracts(V1, mode="BACKWARD_TRANSITIVE")
    assert cli("schema", "register")[0] == 0
    project.contracts(V2_BREAKING, mode="BACKWARD_TRANSITIVE")
    assert cli("schema", "check")[0] == 1
    assert cli("schema", "register", "--force", "--reason", "topic drained")[0] == 0
    assert cli("schema", "check")[0] == 0
    v3 = V2_BREAKING.replace("__version__ = 2", "__version__ = 3").replace(
        "    customer: Customer\n", "    customer: Customer\n    note: str | None = None\n"
    )
    project.contracts(v3, mode="BACKWARD_TRANSITIVE")
    code, out, _ = cli("schema", "check")
    assert code == 0, out
    assert "v1 -> v3" not in out


def test_an_avro_and_a_json_contract_of_one_subject_and_version_are_refused(
    project_factory: Callable[[], Project], cli: Cli
) -> None:
    """Same fields, one Avro and one JSON: the sorted JSON Schema alone cannot tell them
    apart, the wire can."""
    project = project_factory()
    project.contracts(
        AVRO_PAY
        + AVRO_PAY_REORDERED.replace("class Pay", "class PayJson").replace(
            '    __wire_format__ = "avro"\n', ""
        )
    )
    code, _, err = cli("schema", "check")
    assert code == 2
    assert "are both pay.Pay v1" in err


BEFORE_UNBUMPED = """
class Customer(BaseModel):
    id: str

class OrderPlaced(sg.Contract):
    __subject__ = "orders.OrderPlaced"
    __version__ = 1
    order_id: str
    channel: str = "web-sentinel"
    customer: Customer
"""
UNBUMPED = """
class Customer(BaseModel):
    id: str
    tier: str = "gold-sentinel"

class OrderPlaced(sg.Contract):
    __subject__ = "orders.OrderPlaced"
    __version__ = 1
    order_id: int
    channel: str = "app-sentinel"
    customer: Customer
    note: str
"""


def test_an_unbumped_change_names_the_fields_behind_it(
    project_factory: Callable[[], Project], cli: Cli
) -> None:
    """check lists what changed under the unbumped version, as diff finds it, in every
    format, by field and rule only: a CI log said just SCHEMA_CHANGED_WITHOUT_VERSION_BUMP,
    and the developer had to run diff. No default value appears (they may be data)."""
    project = project_factory()
    project.contracts(BEFORE_UNBUMPED)
    assert cli("schema", "register")[0] == 0
    project.contracts(UNBUMPED)
    code, out, _ = cli("schema", "check")
    assert code == 1
    lines = out.splitlines()
    start = lines.index(
        " " * 11 + "what changed: customer.tier  OPTIONAL_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL"
    )
    assert lines[start + 1 : start + 4] == [
        " " * 25 + "order_id  TYPE_CHANGED string -> integer (breaks BACKWARD and FORWARD)",
        " " * 25 + "note  REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL (breaks BACKWARD)",
        " " * 11 + "hint: bump __version__ and register the new version; the check then "
        "judges the changes listed against the compatibility mode",
    ]
    code, github, _ = cli("schema", "check", "--format", "github")
    assert code == 1
    assert (
        "What changed: customer.tier OPTIONAL_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL; "
        "order_id TYPE_CHANGED string -> integer (breaks BACKWARD and FORWARD); "
        "note REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL (breaks BACKWARD). Fix: "
    ) in github
    code, text, _ = cli("schema", "check", "--format", "json")
    (entry,) = json.loads(text)
    assert entry["rule"] == "SCHEMA_CHANGED_WITHOUT_VERSION_BUMP"
    assert {c["path"]: c["breaking_in"] for c in entry["changed"]} == {
        "customer.tier": [],
        "order_id": ["BACKWARD", "FORWARD"],
        "note": ["BACKWARD"],
    }
    (typed,) = (c for c in entry["changed"] if "old_type" in c)
    assert (typed["path"], typed["old_type"], typed["new_type"]) == (
        "order_id",
        "string",
        "integer",
    )
    for shown in (out, github, text):
        assert "sentinel" not in shown  # channel's default changed too: never its value
    # Only a default changed: the fingerprint differs, no rule of the differ fires.
    project.contracts(BEFORE_UNBUMPED.replace("web-sentinel", "app-sentinel"))
    code, out, _ = cli("schema", "check")
    assert code == 1
    assert "what changed: nothing that changes which values are valid: a default," in out
    assert "sentinel" not in out


TYPED_V1 = """
class Order(sg.Contract):
    __subject__ = "orders.Order"
    __version__ = 1
    __wire_format__ = "{fmt}"
    amount: int
    tier: Literal["gold-secret", "silver-secret"] = "gold-secret"
"""
TYPED_V2 = """
class Order(sg.Contract):
    __subject__ = "orders.Order"
    __version__ = 2
    __wire_format__ = "{fmt}"
    amount: str
    tier: Literal["gold-secret", "silver-secret"] | None = None
"""


@pytest.mark.parametrize(
    ("fmt", "amount", "tier"),
    [
        ("json", "integer -> string", "string -> string | null"),
        ("avro", "long -> string", "string -> null | string"),
    ],
)
def test_a_type_change_names_the_old_and_the_new_type_in_every_format(
    project_factory: Callable[[], Project], cli: Cli, fmt: str, amount: str, tier: str
) -> None:
    """check and diff name the old and the new type of a changed field in text, github
    and json (``old_type``/``new_type`` beside the keys that were there): ``TYPE_CHANGED
    at amount`` alone sent the reader to both schemas. Types only: the Literal's values
    and the defaults stay out of every format."""
    project = project_factory()
    project.contracts(TYPED_V1.format(fmt=fmt))
    assert cli("schema", "register")[0] == 0
    project.contracts(TYPED_V2.format(fmt=fmt))
    code, text, _ = cli("schema", "check")
    assert code == 1
    assert f"  BREAKING amount  TYPE_CHANGED {amount}" in text.splitlines()
    old, new = amount.split(" -> ")
    assert f"type changed from {old} to {new} at amount: consumers" in text
    code, github, _ = cli("schema", "check", "--format", "github")
    assert code == 1
    assert f"type changed from {old} to {new} at amount" in github
    code, out, _ = cli("schema", "check", "--format", "json")
    assert code == 1
    (entry,) = (e for e in json.loads(out) if e["rule"] == "TYPE_CHANGED")
    assert (entry["path"], entry["old_type"], entry["new_type"]) == ("amount", old, new)
    assert {"subject", "pointer", "breaking_in", "message", "hint", "mode"} <= set(entry)
    code, diff, _ = cli("schema", "diff", "orders.Order")
    assert code == 1
    assert f"amount  TYPE_CHANGED {amount}" in diff
    assert f"tier  SUM_TYPE_EXTENDED {tier}" in diff
    for shown in (text, github, out, diff):
        assert "secret" not in shown

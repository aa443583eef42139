"""`streamguard demo` runs end to end on its own embedded broker."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from streamguard.demo.run import _registry_demo, _replay_hint, run_demo

pytestmark = pytest.mark.broker  # starts brokers of its own


def test_demo_handles_retries_and_dead_letters_everything(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The demo exits 0, every order reaches an outcome, the DLQ summary shows each
    reason the demo provokes, and the Confluent-framed Avro topic is handled too."""
    assert run_demo() == 0
    out = capsys.readouterr().out
    assert "handled        21" in out
    for line in (
        "dead-lettered  2  decode_error",
        "dead-lettered  1  contract_violation",
        "dead-lettered  1  permanent_error",
        "dead-lettered  1  retries_exhausted",
    ):
        assert line in out
    assert "the producer refused an invalid order before sending it" in out
    assert "orders.dlq: 5 dead-lettered record(s)" in out
    # Next to the JSON topic: Confluent-framed Avro through an embedded registry.
    assert "framed as [00 00 00 00 01] + Avro" in out
    assert "handled        12  (writer schema fetched once by id" in out
    assert "dead-lettered  1  decode_error (schema id 999 is unknown)" in out
    assert "production" in out


def test_demo_skips_the_registry_part_without_the_registry_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With only the broker extra installed (no confluent_kafka.schema_registry deps),
    the Avro part is skipped with the extra to install, not a traceback."""
    monkeypatch.setitem(sys.modules, "confluent_kafka.schema_registry", None)
    assert _registry_demo("127.0.0.1:9") is True  # returns before touching a broker
    out = capsys.readouterr().out
    assert "skipped the Confluent-framed Avro topic" in out
    assert "registry extra" in out


def test_the_replay_hint_says_where_revalidate_finds_the_demo_contracts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Run from an installed wheel outside the checkout, the demo's suggested
    `dlq replay --revalidate` failed with "found no contracts": the hint now says which
    pyproject.toml it needs there, and stays the bare command where it is listed."""
    monkeypatch.chdir(tmp_path)  # no pyproject.toml, as in a user's empty directory
    assert 'contracts = ["streamguard.demo.contracts"]' in _replay_hint()
    (tmp_path / "pyproject.toml").write_text(
        '[tool.streamguard]\ncontracts = ["streamguard.demo.contracts"]\n'
    )
    assert _replay_hint() == "`streamguard dlq replay orders.dlq --revalidate --dry-run`"

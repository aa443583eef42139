"""The schema store's files: versions, loading, subject names, the CHANGELOG."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from streamguard.errors import ConfigurationError
from streamguard.schema.store import SchemaStore, dump_schema


def test_versions_sorted_numerically(tmp_path: Path) -> None:
    """Stored versions are listed as numbers, ascending, ignoring other files."""
    store = SchemaStore(tmp_path)
    for v in (10, 2, 1):
        store.write("s.A", v, {"type": "object"})
    (tmp_path / "s.A" / "notes.txt").write_text("x")
    assert store.versions("s.A") == [1, 2, 10]
    assert store.subjects() == ["s.A"]
    assert store.load("s.A", 10) == {"type": "object"}


def test_a_folder_that_cannot_be_listed_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subject's folder the check may not list (its permissions; the tests run as root,
    for whom none apply, hence the patched listing) is a configuration error naming it:
    it ended `schema check` with a traceback and exit 1, which CI reads as a break."""
    store = SchemaStore(tmp_path)
    store.write("s.A", 1, {"type": "object"})
    folder = tmp_path / "s.A"
    listing = Path.iterdir

    def refused(self: Path) -> Iterator[Path]:
        if self == folder:
            raise PermissionError(13, "Permission denied", str(self))
        return listing(self)

    monkeypatch.setattr(Path, "iterdir", refused)
    with pytest.raises(ConfigurationError, match=rf"cannot list {folder}: Permission denied"):
        store.versions("s.A")
    with pytest.raises(ConfigurationError, match="cannot list"):
        store.subjects()


def test_stored_text_is_stable(tmp_path: Path) -> None:
    """A stored schema has sorted keys and a final newline, so diffs stay small."""
    assert dump_schema({"b": 1, "a": {"d": 2, "c": 3}}).splitlines()[1] == '  "a": {'
    assert dump_schema({}).endswith("\n")


def test_missing_version_names_stored_ones(tmp_path: Path) -> None:
    """Loading a missing version is a configuration error listing what is stored."""
    store = SchemaStore(tmp_path)
    store.write("s.A", 1, {})
    with pytest.raises(ConfigurationError, match=r"no stored v3\.json \(stored: v1\)"):
        store.load("s.A", 3)


@pytest.mark.parametrize("subject", ["../etc", "a/b", "", ".hidden"])
def test_subject_must_be_a_plain_name(tmp_path: Path, subject: str) -> None:
    """A subject that would escape or nest folders is refused."""
    with pytest.raises(ConfigurationError, match="cannot be a folder name"):
        SchemaStore(tmp_path).subject_dir(subject)


def test_changelog_appends_dated_lines(tmp_path: Path) -> None:
    """log() appends one UTC-dated line per call."""
    store = SchemaStore(tmp_path)
    store.write("s.A", 1, {})
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    store.log("s.A", "v1 registered", now=now)
    store.log("s.A", "v2 registered", now=now)
    lines = (tmp_path / "s.A" / "CHANGELOG").read_text().splitlines()
    assert lines == ["2026-01-02T03:04:05Z v1 registered", "2026-01-02T03:04:05Z v2 registered"]

"""Fixtures for schema tests: a throw-away project with its own pyproject and contracts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from schema_project import Project

from streamguard.cli import main


@pytest.fixture
def project_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], Project]:
    """Make a project in a temporary folder and run the CLI from it."""

    def make() -> Project:
        monkeypatch.chdir(tmp_path)
        return Project(tmp_path)

    return make


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run ``streamguard`` in-process: (exit code, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run

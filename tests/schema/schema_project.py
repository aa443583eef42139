"""A throw-away streamguard project for CLI tests (imported by conftest and tests)."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

HEADER = """\
from __future__ import annotations
from typing import Literal
from pydantic import BaseModel, ConfigDict, Field
import streamguard as sg
"""


class Project:
    """A project folder; each ``contracts()`` call writes a new module and points config at it.

    A fresh module name per call keeps Python's import cache from serving an old version.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.schemas = root / "schemas"

    def contracts(self, source: str, *, mode: str = "BACKWARD") -> str:
        name = f"sgt_contracts_{uuid.uuid4().hex[:10]}"
        (self.root / f"{name}.py").write_text(HEADER + textwrap.dedent(source))
        (self.root / "pyproject.toml").write_text(
            "[tool.streamguard]\n"
            f'contracts = ["{name}"]\n'
            'schemas_dir = "schemas"\n'
            f'compatibility = "{mode}"\n'
        )
        return name

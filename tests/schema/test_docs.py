"""docs/schema-compatibility.md shows real output: its example reports are regenerated here."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from schema_project import Project

DOC = Path(__file__).resolve().parents[2] / "docs" / "schema-compatibility.md"

MODELS = """
class Customer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    tier: Literal[{tiers}]

class OrderPlaced(sg.Contract):
    __subject__ = "orders.OrderPlaced"
    __version__ = {version}
    order_id: str
    amount: {amount}
    customer: Customer
{extra}
"""


@pytest.mark.parametrize(
    ("tiers", "version", "heading"),
    [
        ('"gold"', 2, r"v1 -> v2"),  # a breaking change, bumped
        ('"gold", "silver"', 1, r"v1 \(stored\) -> v1"),  # a change without a version bump
    ],
    ids=["breaking", "unbumped"],
)
def test_example_report_is_real_output(
    project_factory: Callable[[], Project],
    cli: Callable[..., tuple[int, str, str]],
    tiers: str,
    version: int,
    heading: str,
) -> None:
    """Each report block in the docs is exactly what `schema check` prints for its
    example: a breaking change, and a change without a version bump with the changes
    behind it listed."""
    project = project_factory()
    project.contracts(MODELS.format(tiers='"gold", "silver"', version=1, amount="int", extra=""))
    assert cli("schema", "register")[0] == 0
    project.contracts(
        MODELS.format(tiers=tiers, version=version, amount="float", extra="    note: str")
    )
    code, out, _ = cli("schema", "check")
    assert code == 1
    blocks = re.findall(rf"```\n(orders\.OrderPlaced: {heading} .*?)```", DOC.read_text(), re.S)
    assert blocks == [out]
    code, out, _ = cli("schema", "check", "--format", "github")
    assert out.splitlines()[0] in DOC.read_text()

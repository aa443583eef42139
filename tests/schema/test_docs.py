"""docs/schema-compatibility.md shows real output: its example report is regenerated here."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

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


def test_example_report_is_real_output(
    project_factory: Callable[[], Project], cli: Callable[..., tuple[int, str, str]]
) -> None:
    """The report block in the docs is exactly what `schema check` prints for its example."""
    project = project_factory()
    project.contracts(MODELS.format(tiers='"gold", "silver"', version=1, amount="int", extra=""))
    assert cli("schema", "register")[0] == 0
    project.contracts(
        MODELS.format(tiers='"gold"', version=2, amount="float", extra="    note: str")
    )
    code, out, _ = cli("schema", "check")
    assert code == 1
    blocks = re.findall(r"```\n(orders\.OrderPlaced: v1 -> v2 .*?)```", DOC.read_text(), re.S)
    assert blocks == [out]
    code, out, _ = cli("schema", "check", "--format", "github")
    assert out.splitlines()[0] in DOC.read_text()


def test_unbumped_example_is_real_output(
    project_factory: Callable[[], Project], cli: Callable[..., tuple[int, str, str]]
) -> None:
    """The docs' report of a change without a version bump, with the changes behind it,
    is exactly what `schema check` prints for its example."""
    project = project_factory()
    project.contracts(MODELS.format(tiers='"gold", "silver"', version=1, amount="int", extra=""))
    assert cli("schema", "register")[0] == 0
    project.contracts(
        MODELS.format(tiers='"gold", "silver"', version=1, amount="float", extra="    note: str")
    )
    code, out, _ = cli("schema", "check")
    assert code == 1
    blocks = re.findall(
        r"```\n(orders\.OrderPlaced: v1 \(stored\) -> v1 .*?)```", DOC.read_text(), re.S
    )
    assert blocks == [out]
    code, out, _ = cli("schema", "check", "--format", "github")
    assert out.splitlines()[0] in DOC.read_text()

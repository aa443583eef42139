"""Import every module that registers contenders; add a module here to add rows."""

from __future__ import annotations

from peerbench import baselines, frameworks, guarded
from peerbench.registry import CONTENDERS, Contender

__all__ = ["CONTENDERS", "Contender", "baselines", "frameworks", "guarded"]

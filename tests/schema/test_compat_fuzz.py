"""A change `schema check` passes never breaks a consumer: a differential fuzz over pydantic."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from compat_fuzz import Finding, run_case

from streamguard.schema.jsonschema_compat import Policy

CASES = {"lenient": 100, "strict": 40}  # about 3 s together


@pytest.mark.parametrize("policy", list(CASES))
def test_passed_changes_never_break_a_reader(policy: Policy, tmp_path: Path) -> None:
    """Over a fixed seed, no evolution the check passes (in any mode) has a record its
    reader rejects: every v1 -> v2 -> v3 of a random model, judged by `check_contract`, is
    replayed with instances the writer version produces (`JsonCodec().encode`)."""
    unsound: list[Finding] = []
    refused = 0
    judged = 0
    for index in range(CASES[policy]):
        found = run_case(random.Random(f"{policy}-{index}"), tmp_path, index, policy)
        judged += found is not None
        unsound += [f for f in found or [] if f.kind == "unsound"]
        refused += sum(f.kind == "strict" for f in found or [])
    assert not unsound, "\n".join(f"{f.mode} {f.labels}: {f.detail}" for f in unsound[:5])
    assert judged >= CASES[policy] * 9 // 10  # nearly every random contract is buildable
    assert refused  # the fuzz reaches changes the check refuses, not only harmless ones

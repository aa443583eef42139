"""Agreement of ``streamguard schema diff`` with Confluent Schema Registry's own diff cases.

Usage::

    python benchmarks/confluent_yardstick.py PATH/TO/confluent-json-schema-diff [-v]

The folder holds Confluent's ``diff-schema-examples.json`` and
``diff-combined-schema-examples.json`` (not shipped with streamguard: they are under
Confluent's licence). Each case has an original and an update schema and Confluent's
verdict for the update reading data of the original (BACKWARD) under its STRICT policy
(``compatible``) and, where it differs, under LENIENT (``compatible_lenient``). This
script runs both policies through the same code as the CLI and prints the agreement.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from streamguard.schema.changes import diff_json_schemas
from streamguard.schema.jsonschema_compat import POLICIES

FILES = ("diff-schema-examples.json", "diff-combined-schema-examples.json")


def load_cases(folder: Path) -> list[dict[str, Any]]:
    """Every case of both files, in file order."""
    cases: list[dict[str, Any]] = []
    for name in FILES:
        cases += json.loads((folder / name).read_text())
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the confluent-json-schema-diff folder")
    parser.add_argument("-v", "--verbose", action="store_true", help="list disagreements")
    args = parser.parse_args(argv)
    cases = load_cases(args.folder)
    disagreements = 0
    for policy in POLICIES:
        agree = 0
        for index, case in enumerate(cases):
            expected = case["compatible"]
            if policy == "lenient":
                expected = case.get("compatible_lenient", expected)
            changes = diff_json_schemas(case["original_schema"], case["update_schema"], policy)
            got = not any("BACKWARD" in c.breaking_in for c in changes)
            if got == expected:
                agree += 1
            elif args.verbose:
                print(f"  [{policy}] #{index} {case['description']}: expected {expected}")
                print(f"      confluent: {case['changes']}")
                ours = [(c.pointer, c.rule, sorted(c.breaking_in)) for c in changes]
                print(f"      ours:      {ours}")
        disagreements += len(cases) - agree
        print(f"policy {policy}: {agree}/{len(cases)} agree with Confluent")
    return 0 if disagreements == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""README.md describes what `.ci/run` runs and which benchmarks there are, as they are."""

from __future__ import annotations

import re
from pathlib import Path

from benchmarks.__main__ import SUITES

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_readme_shows_every_command_ci_runs_in_order() -> None:
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    runs = [
        line
        for line in script.splitlines()
        if line.strip() and not line.startswith(("#", "set ", "cd "))
    ]
    described = README[README.index("`.ci/run` is what CI runs") :]
    block = re.search(r"```sh\n(.*?)```", described, re.DOTALL)
    assert block is not None
    assert block.group(1).splitlines() == runs


def test_the_readme_lists_every_benchmark_suite() -> None:
    listed = re.findall(r"^\| `(\w+)` \|", README, re.MULTILINE)
    assert listed == SUITES

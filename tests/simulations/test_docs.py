"""docs/simulation.md says what the simulator does: its example scenario converges as
written, and the worked example's tables and docs/sim-example/ are what the commands it
shows give. When a change moves those figures, `python docs/sim-example/generate.py`
regenerates them."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import tomllib
from pathlib import Path
from types import ModuleType

from blazemesh.simulations import cli as sim_cli
from blazemesh.simulations.scenario import Scenario, from_mapping
from tests.simulations.test_harness import run

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGE = DOCS / "simulation.md"
REGENERATE = "stale: run `python docs/sim-example/generate.py` and commit what it changes"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate", DOCS / "sim-example/generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scenario_of(argv: list[str]) -> Scenario:
    """The scenario ``blazemesh`` builds from ``argv`` (``sim run ...``)."""
    parser = argparse.ArgumentParser()
    sim_cli.register(parser.add_subparsers(), help="")
    return sim_cli.scenario_from(parser.parse_args(argv))


def test_the_example_scenario_converges_as_written() -> None:
    page = PAGE.read_text(encoding="utf-8")
    example = re.search(r"```toml\n(.*?)```", page, re.DOTALL)
    assert example is not None
    report = run(from_mapping(tomllib.loads(example.group(1))))
    assert report.failures == []
    assert report.converged_at_s is not None


def test_the_worked_example_is_what_its_commands_give() -> None:
    generate = generator()
    page = PAGE.read_text(encoding="utf-8")
    commands = generate.commands(page)
    assert set(commands) == {"star", "mesh"}
    reports = {}
    for name, argv in commands.items():
        report = run(scenario_of(argv))
        assert report.failures == []
        kept = generate.HERE / name
        assert (kept / "summary.txt").read_text(encoding="utf-8") == report.summary() + "\n", (
            f"docs/sim-example/{name}/summary.txt is {REGENERATE}"
        )
        fresh = json.loads(json.dumps(report.to_json()))
        committed = json.loads((kept / "report.json").read_text(encoding="utf-8"))
        assert committed == fresh, f"docs/sim-example/{name}/report.json is {REGENERATE}"
        reports[name] = fresh
    assert generate.blocks(page) == generate.tables(reports), f"docs/simulation.md is {REGENERATE}"


def test_every_plot_the_page_shows_exists() -> None:
    page = PAGE.read_text(encoding="utf-8")
    shown = re.findall(r"\]\((sim-example/[^)]+)\)", page)
    assert shown
    assert [path for path in shown if not (DOCS / path).is_file()] == []

"""What a command loads (docs/performance.md, "Start-up"): the parser, trio and the
control socket's client. The node, the replica, the signing code and the simulator load
only for the commands that run them, so a command that reaches the agent starts in less
than twice the time of ``python -c "import trio"``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.agents import Agent, new_mesh, ok, running

pytestmark = pytest.mark.system

LOADED_ONLY_WHEN_NEEDED = (
    "blazemesh.simulations",  # blazemesh sim
    "trio.testing",
    "pytest",
    "blazemesh.agent.service",  # blazemesh agent
    "blazemesh.agent.links.node",
    "blazemesh.agent.discovery.peering",
    "zeroconf",
    "blazemesh.agent.api.operations",  # a command run with no agent
    "blazemesh.agent.storage.replica",
    "blazemesh.agent.trust.identity",  # init, join, invite, rotate-secret
    "nacl.signing",
)
# Runs the command in this interpreter, then writes what it loaded to the file argv[1].
PROBE = """
import json, sys
from blazemesh.cli import main
out, sys.argv[1:] = sys.argv[1], sys.argv[2:]
try:
    main()
finally:
    with open(out, "w") as f:
        json.dump(sorted(sys.modules), f)
"""


def loaded(tmp_path: Path, *argv: str) -> tuple[str, set[str]]:
    """What ``blazemesh ARGV`` prints, and the modules it loaded."""
    out = tmp_path / "modules.json"
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(out), *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout, set(json.loads(out.read_text()))


def needless(modules: set[str]) -> list[str]:
    return sorted(
        name
        for name in modules
        for heavy in LOADED_ONLY_WHEN_NEEDED
        if name == heavy or name.startswith(heavy + ".")
    )


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    data_dir = tmp_path / "node"
    new_mesh([data_dir])
    with running([Agent(data_dir, ["--listen", "127.0.0.1:0", "--discovery", "none"])]) as (agent,):
        yield agent


def test_version_loads_no_command(tmp_path: Path) -> None:
    printed, modules = loaded(tmp_path, "--version")
    assert printed.startswith("blazemesh ")
    assert needless(modules) == []


def test_a_command_that_reaches_the_agent_loads_only_its_client(
    tmp_path: Path, agent: Agent
) -> None:
    data_dir = str(agent.data_dir)
    ok("put", "--data-dir", data_dir, "notes", "n1", "title=hello")
    printed, modules = loaded(tmp_path, "get", "--data-dir", data_dir, "notes", "n1")
    assert json.loads(printed) == {"title": "hello"}
    assert needless(modules) == []

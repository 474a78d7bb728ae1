"""`blazemesh agent` refuses a bad configuration with one line and a non-zero exit."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.system.agents import Agent, wait_for_line

pytestmark = pytest.mark.system


BLAZEMESH = str(Path(sys.executable).with_name("blazemesh"))  # the installed command


def blazemesh(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BLAZEMESH, *argv], capture_output=True, text=True, timeout=60)


@pytest.fixture
def node(tmp_path: Path) -> Path:
    data_dir = tmp_path / "node"
    assert blazemesh("init", "--data-dir", str(data_dir), "--mesh", "lab").returncode == 0
    return data_dir


def refused(result: subprocess.CompletedProcess[str], why: str) -> bool:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert lines[-1].startswith("blazemesh: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return why in lines[-1]


def test_no_data_directory(tmp_path: Path) -> None:
    result = blazemesh("agent", "--data-dir", str(tmp_path / "nowhere"))
    assert refused(result, "no data directory")


def test_no_identity(tmp_path: Path) -> None:
    result = blazemesh("agent", "--data-dir", str(tmp_path))
    assert refused(result, "no identity")


def test_no_mesh(tmp_path: Path) -> None:
    assert blazemesh("init", "--data-dir", str(tmp_path / "n")).returncode == 0
    result = blazemesh("agent", "--data-dir", str(tmp_path / "n"))
    assert refused(result, "belongs to no mesh")


def test_data_directory_open_to_others(node: Path) -> None:
    node.chmod(0o755)
    assert refused(blazemesh("agent", "--data-dir", str(node)), f"run `chmod 700 {node}`")


def test_port_in_use(node: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.71", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = blazemesh("agent", "--data-dir", str(node), "--listen", f"127.0.0.71:{port}")
    assert refused(result, "the port is in use")


@pytest.mark.parametrize(
    ("option", "value", "why"),
    [("--peer", "host:port", "--peer"), ("--listen", "127.0.0.71:99999", "out of range")],
)
def test_bad_addresses(node: Path, option: str, value: str, why: str) -> None:
    assert refused(blazemesh("agent", "--data-dir", str(node), option, value), why)


def test_a_discovery_bound_below_one_is_refused(node: Path) -> None:
    result = blazemesh("agent", "--data-dir", str(node), "--max-peers", "0")
    assert refused(result, "--max-peers must be at least 1, got 0")


def test_sigterm_while_the_agent_starts_stops_it_cleanly(node: Path) -> None:
    """A supervisor may stop an agent the moment it starts: the signal must stop it
    cleanly (status 0, database closed), not kill it half way because the handler was
    not installed yet."""
    agent = Agent(node, ["--listen", "127.0.0.72:0", "--discovery", "none"])
    with agent.log.open("ab") as log:
        agent.process = subprocess.Popen(
            [BLAZEMESH, "agent", "--data-dir", str(node), *agent.args], stdout=log, stderr=log
        )
    wait_for_line(agent.log, "in mesh", agent.process)  # its first line: still starting
    assert agent.stop() == 0
    assert "stopped; links closed, database closed" in agent.log.read_text()

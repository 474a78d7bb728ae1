"""Agents that find each other by mDNS alone (real zeroconf, pinned to loopback addresses)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.system.agents import BLAZEMESH, Agent, new_mesh, ok, running, wait_for_keys

pytestmark = pytest.mark.system

HOSTS = ["127.0.0.101", "127.0.0.102", "127.0.0.103"]
STRANGER = "127.0.0.104"


def agent(data_dir: Path, host: str) -> Agent:
    return Agent(data_dir, ["--listen", f"{host}:7420", "--interface", host])


def test_three_agents_discover_each_other_and_converge(tmp_path: Path) -> None:
    dirs = [tmp_path / name for name in "abc"]
    new_mesh(dirs)
    new_mesh([tmp_path / "x"], name="another")
    agents = [agent(d, host) for d, host in zip(dirs, HOSTS, strict=True)]
    stranger = agent(tmp_path / "x", STRANGER)
    with running([*agents, stranger]):
        for a in agents:
            ok(
                "put",
                "--data-dir",
                str(a.data_dir),
                "notes",
                a.data_dir.name,
                "by=" + a.data_dir.name,
            )
        for a in agents:
            wait_for_keys(a, "notes", {"a", "b", "c"})
        assert len({a.info()["digest"] for a in agents}) == 1
        assert stranger.info()["changes_held"] == 0
        found = [
            json.loads(line)
            for line in ok("discover", "--data-dir", str(dirs[0]), "--json").splitlines()
        ]
        status = {entry["addresses"][0]: entry["status"] for entry in found}
        assert status[f"{STRANGER}:7420"] == "not linked: another mesh"
        assert status[f"{HOSTS[1]}:7420"] == "linked"


def test_the_demo_converges_and_cleans_up() -> None:
    result = subprocess.run(
        [BLAZEMESH, "demo", "--nodes", "3"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all 3 replicas identical" in result.stdout
    top = Path(re.search(r"data in (\S+)", result.stdout).group(1))  # type: ignore[union-attr]
    assert not top.exists()


def test_a_static_peer_works_beside_mdns(tmp_path: Path) -> None:
    dirs = [tmp_path / "a", tmp_path / "c"]
    new_mesh(dirs)
    loud = agent(dirs[0], "127.0.0.105")
    loud.args += ["--peer", "127.0.0.106:7420"]  # mDNS on, and a peer that has it off
    quiet = Agent(dirs[1], ["--listen", "127.0.0.106:7420", "--discovery", "none"])
    with running([quiet, loud]):
        ok("put", "--data-dir", str(dirs[1]), "notes", "from-quiet", "x=1")
        wait_for_keys(loud, "notes", {"from-quiet"})

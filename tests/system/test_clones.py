"""Two running agents with one identity, on real TCP and Noise (issue 19, section 1).

A and B link by --peer (no discovery). A's data directory is copied with `cp -a` while A
runs, and started as A2 on another address, dialling B. B catches the two instances and
refuses them; its log, `peers` and `info` say so, and so do the two instances' logs and
`info`; B loses nothing it held.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from blazemesh.agent.trust.identity import load_identity
from tests.system.agents import Agent, new_mesh, ok, running, wait_for_keys, wait_for_line
from tests.system.test_agents import free_port

pytestmark = pytest.mark.system

HOSTS = {"a": "127.0.0.71", "b": "127.0.0.72", "a2": "127.0.0.73"}
CAUGHT_TIMEOUT_S = 30.0  # the instances redial every few seconds: caught within one or two


@pytest.fixture
def top() -> Iterator[Path]:
    """A short directory for the data directories (their sockets' paths are bounded)."""
    with tempfile.TemporaryDirectory(prefix="bm-") as path:
        yield Path(path)


def agent(top: Path, name: str, ports: dict[str, int], peer: str) -> Agent:
    listen, dial = f"{HOSTS[name]}:{ports[name]}", f"{HOSTS[peer]}:{ports[peer]}"
    args = ["--listen", listen, "--peer", dial, "--discovery", "none", "--log-level", "info"]
    return Agent(top / name, args)


def put(agent: Agent, key: str) -> None:
    ok("put", "c", key, "v=1", "--data-dir", str(agent.data_dir))


def test_a_copy_started_beside_its_original_is_caught_refused_and_told(top: Path) -> None:
    ports = {name: free_port(host) for name, host in HOSTS.items()}
    a, b = agent(top, "a", ports, "b"), agent(top, "b", ports, "a")
    a2 = agent(top, "a2", ports, "b")
    new_mesh([a.data_dir, b.data_dir])
    with running([a, b]):
        put(b, "b-own")
        put(a, "a-before-the-copy")
        wait_for_keys(b, "c", {"a-before-the-copy"})
        wait_for_keys(a, "c", {"b-own"})
        subprocess.run(["cp", "-a", str(a.data_dir), str(a2.data_dir)], check=True)
        with running([a2]):
            put(a2, "a2-own")
            put(a, "a-own")
            assert a2.process is not None
            assert b.process is not None
            wait_for_line(b.log, "runs as two instances", b.process, CAUGHT_TIMEOUT_S)
            for instance in (a, a2):
                assert instance.process is not None
                wait_for_line(instance.log, "refuses this node", instance.process, 10)

            short = load_identity(a.data_dir).short
            peers = ok("peers", "--json", "--data-dir", str(b.data_dir)).splitlines()
            cloned = [json.loads(row) for row in peers if json.loads(row)["state"] == "cloned"]
            assert [(row["short_id"], row["cloned"]) for row in cloned] == [(short, "it")]
            text = ok("peers", "--data-dir", str(b.data_dir))
            assert "two running devices hold its identity" in text
            assert b.info()["clones"] == [short]
            for instance in (a, a2):
                in_use = instance.info()["identity_in_use"]
                assert in_use is not None
                assert in_use["peer"] == load_identity(b.data_dir).short
            assert "IN USE ON ANOTHER RUNNING DEVICE" in ok("info", "--data-dir", str(a2.data_dir))

            # B lost nothing: what it held, and its own.
            for key in ("b-own", "a-before-the-copy"):
                got = ok("get", "c", key, "--data-dir", str(b.data_dir))
                assert json.loads(got) == {"v": 1}
    for log in (a.log, a2.log, b.log):
        assert "Traceback" not in log.read_text()
    caught = [line for line in b.log.read_text().splitlines() if "ERROR" in line]
    assert len(caught) == 1, caught  # once an episode
    assert "runs as two instances" in caught[0]

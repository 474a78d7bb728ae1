"""Issue 19, section 5: an agent starts on a machine with no interface but loopback (an
offline laptop, a bare container) and syncs with a `--peer` there.

The machine is a network namespace of its own, which starts with loopback alone; two
agents run in it, each on 127.0.0.1 with its own port. Needs root and iproute2: skipped,
with the reason, where they are missing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.system.agents import Agent, new_mesh, ok, running, wait_for_keys
from tests.system.lan import ip, unavailable

UNAVAILABLE = unavailable()
pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or ""),
]


def test_agents_on_a_host_with_loopback_alone_start_and_sync(tmp_path: Path) -> None:
    host = f"bmoff{os.getpid() % 100_000}"
    ip("netns", "add", host)
    try:
        ip("-n", host, "link", "set", "lo", "up")
        links = subprocess.run(
            ["ip", "-n", host, "-o", "link"], capture_output=True, text=True, check=True
        ).stdout.splitlines()
        assert [line.split(":")[1].strip() for line in links] == ["lo"]
        inside = ["ip", "netns", "exec", host]
        dirs = [tmp_path / "a", tmp_path / "b"]
        new_mesh(dirs)
        a = Agent(dirs[0], ["--listen", "127.0.0.1:7420"], prefix=inside)
        b = Agent(
            dirs[1], ["--listen", "127.0.0.1:7421", "--peer", "127.0.0.1:7420"], prefix=inside
        )
        with running([a, b]):
            ok("put", "--data-dir", str(dirs[0]), "c", "k", "n=1")
            wait_for_keys(b, "c", {"k"})
        for agent in (a, b):  # no --discovery given: mDNS is off, and the log says so
            assert "besides loopback: discovery by mDNS is off" in agent.log.read_text()
    finally:
        ip("netns", "delete", host)

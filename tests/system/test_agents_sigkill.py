"""Three agents on real TCP: writes everywhere, one agent SIGKILLed mid-stream and
restarted; all converge and no acknowledged write is missing (issue 4)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.system.agents import Agent, new_mesh, ok, running, wait_for_keys

pytestmark = pytest.mark.system

WRITER = Path(__file__).with_name("control_writer.py")
HOSTS = {"a": "127.0.0.61:7461", "b": "127.0.0.62:7462", "c": "127.0.0.63:7463"}
PEERS = {"a": [], "b": ["a"], "c": ["a", "b"]}


def writer(agent: Agent, prefix: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WRITER), str(agent.data_dir), prefix, str(count)],
        stdout=subprocess.PIPE,
        text=True,
    )


def acknowledged(proc: subprocess.Popen[str], stop_after: int | None = None) -> list[str]:
    """Keys the writer reported as acknowledged; with ``stop_after``, return after that many
    (the writer keeps going)."""
    assert proc.stdout is not None
    keys = []
    for line in proc.stdout:
        keys.append(line.strip())
        if stop_after is not None and len(keys) == stop_after:
            break
    return keys


def test_sigkill_mid_stream_loses_nothing_acknowledged(tmp_path: Path) -> None:
    dirs = {name: tmp_path / name for name in HOSTS}
    new_mesh(list(dirs.values()))
    agents = {
        name: Agent(
            dirs[name],
            [
                "--discovery",
                "none",
                "--listen",
                HOSTS[name],
                *[arg for peer in PEERS[name] for arg in ("--peer", HOSTS[peer])],
            ],
        )
        for name in HOSTS
    }
    with running(list(agents.values())), contextlib.ExitStack() as procs:
        writers = {
            name: procs.enter_context(writer(agent, name, 5_000 if name == "b" else 400))
            for name, agent in agents.items()
        }
        before_kill = acknowledged(writers["b"], stop_after=50)
        agents["b"].kill()  # mid-stream: b's writer is still writing, a's and c's too
        before_kill += acknowledged(writers["b"])
        writers["b"].wait(30)
        assert len(before_kill) < 5_000  # the kill interrupted it
        keys = set(before_kill)
        agents["b"].start()
        for name in ("a", "c"):
            keys |= set(acknowledged(writers[name]))
            assert writers[name].wait(30) == 0
        late = procs.enter_context(writer(agents["b"], "b-after", 50))
        keys |= set(acknowledged(late))
        assert late.wait(30) == 0
        assert len(keys) >= 850  # a and c wrote 400 each; b at least 50 before and after
        for agent in agents.values():
            wait_for_keys(agent, "w", keys, timeout_s=60)
        digests = {agent.info()["digest"] for agent in agents.values()}
        assert len(digests) == 1
        for agent in agents.values():
            links = [
                json.loads(line)
                for line in ok("peers", "--json", "--data-dir", str(agent.data_dir)).splitlines()
            ]
            assert sorted(link["state"] for link in links) == ["in sync", "in sync"], links

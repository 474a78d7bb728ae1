"""Issue 19, section 1, with real agents: a node put back to an earlier copy of its data
never splits the mesh, and nothing written on either side is lost.

The case nothing reveals at open is the hard one: a disk snapshot put back in place (the
database file keeps its identity), and writes made while no peer is reachable reuse the
seqs of the writes the snapshot lost, which the peer holds. Version vectors are then
equal while the contents differ; the links' fingerprints find it and the two exchange
the versions each lacks (docs/protocol.md 8.5)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from blazemesh.agent.storage.paths import DB_FILE
from tests.system.agents import Agent, new_mesh, ok, running, wait_for_keys, wait_for_line
from tests.system.test_agents import free_port

pytestmark = pytest.mark.system

HOST = "127.0.0.1"
REPAIR_TIMEOUT_S = 30.0  # two SUMMARY periods (5 s) and a few round trips, with room to spare


def put(agent: Agent, key: str, value: int) -> None:
    ok("put", "--data-dir", str(agent.data_dir), "c", key, f"v={value}")


def get(agent: Agent, key: str) -> str:
    return ok("get", "--data-dir", str(agent.data_dir), "c", key).strip()


def test_a_snapshot_put_back_and_written_before_its_peer_is_reached_converges(
    tmp_path: Path,
) -> None:
    dirs = [tmp_path / "a", tmp_path / "b"]
    new_mesh(dirs)
    listen = [f"{HOST}:{free_port(HOST)}" for _ in dirs]
    a, b = (
        Agent(d, ["--discovery", "none", "--listen", listen[i], "--peer", listen[1 - i]])
        for i, d in enumerate(dirs)
    )
    snapshot = tmp_path / "snapshot"
    with running([a, b]):
        put(a, "k1", 1)
        wait_for_keys(b, "c", {"k1"})
        a.stop()
        shutil.copytree(dirs[0], snapshot)  # the disk snapshot
        a.start()
        put(a, "k2", 2)
        put(a, "k3", 3)
        wait_for_keys(b, "c", {"k2", "k3"})
        a.stop()
        b.stop()
        for name in (DB_FILE, DB_FILE + ".id"):  # put back in place: the same files
            shutil.copyfile(snapshot / name, dirs[0] / name)
        for name in (DB_FILE + "-wal", DB_FILE + "-shm"):
            (dirs[0] / name).unlink(missing_ok=True)
        # A alone: nothing tells it that it lost two writes; these take their seqs.
        put(a, "k4", 4)
        put(a, "k1", 100)
        a.start()
        b.start()
        # Found, repaired, and compared again: the log says the contents agree.
        assert a.process is not None
        wait_for_line(a.log, "hold the same contents of", a.process, REPAIR_TIMEOUT_S)
        assert a.info()["digest"] == b.info()["digest"]
        for agent in (a, b):
            assert get(agent, "k1") == '{"v":100}'
            assert get(agent, "k2") == '{"v":2}'
            assert get(agent, "k3") == '{"v":3}'
            assert get(agent, "k4") == '{"v":4}'
    assert "but other contents" in a.log.read_text() + b.log.read_text()

"""A node whose data directory is an earlier copy (issue 19, section 1): restored from a
backup, imaged onto another device, its database recreated. Changes it made after the
copy are on its peers: it takes them back, and never issues a seq it may have issued
before, so nothing collides and nothing is lost."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import trio
import trio.testing

from blazemesh.agent.api.operations import Operations
from blazemesh.agent.storage.paths import DB_FILE
from blazemesh.agent.storage.replica import open_replica
from blazemesh.agent.storage.sqlite import mark_restored
from tests.agent.cluster import cluster

PAIR = [(1, 0)]


async def write(tmp_path: Path, i: int, records: dict[str, int]) -> None:
    """Run the pair, write ``records`` on node ``i``, and let them reach the other."""
    async with cluster(tmp_path, 2, PAIR) as c:
        for key, value in records.items():
            await c.replicas[i].put("c", key, {"v": value})
        await c.until_converged()


def restore(backup: Path, data_dir: Path) -> None:
    """Put ``backup`` back as ``data_dir``, as `cp -a` does: every file a new one."""
    shutil.rmtree(data_dir)
    shutil.copytree(backup, data_dir)


@pytest.mark.parametrize("how", ["cp -a", "database deleted", "blazemesh restore"])
async def test_a_restored_node_takes_back_what_it_lost_and_collides_with_nothing(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, how: str
) -> None:
    a = tmp_path / "n0"
    await write(tmp_path, 0, {"k1": 1})
    backup = tmp_path / "backup"
    shutil.copytree(a, backup)
    await write(tmp_path, 0, {"k2": 2, "k3": 3})  # made after the copy: B holds them
    if how == "cp -a":
        restore(backup, a)
    elif how == "database deleted":
        for name in (DB_FILE, DB_FILE + "-wal", DB_FILE + "-shm"):
            (a / name).unlink(missing_ok=True)
    else:
        restore(backup, a)
        (a / (DB_FILE + ".id")).unlink()  # restored onto a new device: nothing recorded
        mark_restored(a / DB_FILE)
    async with cluster(tmp_path, 2, PAIR) as c:
        ra, rb = c.replicas
        await ra.put("c", "k4", {"v": 4})
        await ra.put("c", "k1", {"v": 100})
        await c.until_converged()
        assert ra.digest() == rb.digest()
        for replica in (ra, rb):
            assert await replica.get("c", "k2") == {"v": 2}  # taken back by A
            assert await replica.get("c", "k4") == {"v": 4}
            assert await replica.get("c", "k1") == {"v": 100}
        assert ra.vv == rb.vv


async def test_a_node_opened_twice_on_its_own_database_is_not_taken_for_a_copy(
    tmp_path: Path,
) -> None:
    for _ in range(3):
        async with open_replica(tmp_path, create=True) as replica:
            change = await replica.put("c", "k", {})
    assert change.seq == 3  # no jump: the same file each time


async def test_a_copy_nothing_reveals_at_open_learns_it_from_its_peers(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A disk snapshot put back: the database file is the same file, with the old bytes,
    and the record beside it agrees. The first peer to say hello holds changes under the
    node's id past the last it holds: the node takes them back and writes on past them."""
    a = tmp_path / "n0"
    await write(tmp_path, 0, {"k1": 1})
    snapshot = tmp_path / "snapshot"
    shutil.copytree(a, snapshot)
    await write(tmp_path, 0, {"k2": 2, "k3": 3})
    for name in (DB_FILE, DB_FILE + ".id"):  # back in place: the same files, old bytes
        shutil.copyfile(snapshot / name, a / name)
    for name in (DB_FILE + "-wal", DB_FILE + "-shm"):
        (a / name).unlink(missing_ok=True)
    async with cluster(tmp_path, 2, PAIR) as c:
        ra, rb = c.replicas
        await c.until_converged()  # A takes back from B the seqs it lost: B's hello told it
        assert "its data directory is an earlier copy" in caplog.text
        await ra.put("c", "k4", {"v": 4})
        await c.until_converged()
        assert ra.digest() == rb.digest()
        assert await ra.get("c", "k3") == {"v": 3}
        assert await rb.get("c", "k4") == {"v": 4}


async def test_writes_a_snapshot_made_before_any_peer_told_it_are_kept_and_converge(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 19, section 1, as reported: a disk snapshot put back (nothing tells the node
    at open) and two writes made before any peer is reached reuse the seqs of the two it
    lost. Equal version vectors, other contents: the link's fingerprints find it, and
    both sides end with every write, the lost ones and the new ones."""
    a = tmp_path / "n0"
    await write(tmp_path, 0, {"k1": 1})
    snapshot = tmp_path / "snapshot"
    shutil.copytree(a, snapshot)
    await write(tmp_path, 0, {"k2": 2, "k3": 3})  # made after the snapshot: B holds them
    for name in (DB_FILE, DB_FILE + ".id"):
        shutil.copyfile(snapshot / name, a / name)
    for name in (DB_FILE + "-wal", DB_FILE + "-shm"):
        (a / name).unlink(missing_ok=True)
    async with open_replica(a) as replica:  # no peer reachable: nothing says it is a copy
        await replica.put("c", "k4", {"v": 4})
        await replica.put("c", "k1", {"v": 100})
    async with cluster(tmp_path, 2, PAIR) as c:
        ra, rb = c.replicas
        assert ra.vv == rb.vv  # the same seqs ...
        assert ra.digest() != rb.digest()  # ... over other contents
        await c.until_converged()
        assert ra.digest() == rb.digest()
        for replica in (ra, rb):
            assert await replica.get("c", "k1") == {"v": 100}
            assert await replica.get("c", "k2") == {"v": 2}
            assert await replica.get("c", "k3") == {"v": 3}
            assert await replica.get("c", "k4") == {"v": 4}
        assert "but other contents" in caplog.text
        await trio.sleep(12)  # virtual: two SUMMARY periods, compared on both sides
        (peer,) = c.nodes[0].peers()
        assert peer.sync.in_sync
        assert peer.sync.verified
        shown = await Operations(ra, node=c.nodes[0]).peers({})
        assert isinstance(shown, list)
        assert [(s["state"], s["contents"], s["differ"]) for s in shown] == [
            ("in sync", "verified", 0)
        ]


async def test_a_snapshot_put_back_twice_takes_back_what_the_first_restore_wrote(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Two snapshots, put back one after the other: the first restore writes a window
    further on (seq 2^32 + 2); the second copy holds less than that window's start and
    no record of it. Its peer's claim is a window and more past what it holds: it is
    still taken back (a bound of one window left the two apart for good)."""
    a = tmp_path / "n0"

    def snapshot(name: str) -> Path:
        shutil.copytree(a, tmp_path / name)
        return tmp_path / name

    def put_back(snapshot: Path) -> None:
        for name in (DB_FILE, DB_FILE + ".id"):  # in place: the same files, old bytes
            shutil.copyfile(snapshot / name, a / name)
        for name in (DB_FILE + "-wal", DB_FILE + "-shm"):
            (a / name).unlink(missing_ok=True)

    await write(tmp_path, 0, {"k1": 1})
    first = snapshot("first")
    await write(tmp_path, 0, {"k2": 2})
    second = snapshot("second")
    put_back(first)
    async with cluster(tmp_path, 2, PAIR) as c:
        await c.until_converged()  # A took back seq 2 from B: it knows it is a copy
        change = await c.replicas[0].put("c", "k3", {"v": 3})
        assert change.seq > 1 << 32
        await c.until_converged()
    put_back(second)
    async with cluster(tmp_path, 2, PAIR) as c:
        ra, rb = c.replicas
        await c.until_converged()
        assert ra.digest() == rb.digest()
        assert await ra.get("c", "k3") == {"v": 3}
        assert (await ra.put("c", "k4", {"v": 4})).seq > change.seq

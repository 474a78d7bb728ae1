"""A full disk, on a small tmpfs (issue 17, item 9): writes fail with one clear line,
nothing acknowledged is lost, and stopping loses nothing and says why it could not tidy
up: the replica closes without a raw SQLite error, and SIGTERM ends the agent with 0.

Mounting a tmpfs needs root (CI runs as root); elsewhere these tests are skipped.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from blazemesh.agent.api.client import AgentCallError, AgentClient
from blazemesh.agent.errors import StorageError
from blazemesh.agent.storage.paths import DB_FILE
from blazemesh.agent.storage.replica import open_replica
from tests.system.agents import STOP_TIMEOUT_S, Agent, blazemesh, new_mesh

pytestmark = pytest.mark.system

DISK_BYTES = 3 << 20  # room for a few dozen of the records below
ROOMY_DISK_BYTES = 64 << 20  # what the disk is grown to, to check what it held
FIELD = "x" * (100 << 10)  # each record takes about 100 KiB
MAX_PUTS = 200  # writes attempted before the disk must have filled
STORAGE_FULL = "database or disk is full"


def _mount(mountpoint: Path, size: int, *options: str) -> subprocess.CompletedProcess[str]:
    settings = ",".join([f"size={size}", "mode=0700", *options])
    return subprocess.run(
        ["mount", "-t", "tmpfs", "-o", settings, "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A mounted tmpfs of `DISK_BYTES`; `grow` gives it room again."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir(mode=0o700)
    mounted = _mount(mountpoint, DISK_BYTES)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "--lazy", str(mountpoint)], check=True)


def grow(disk: Path) -> None:
    mounted = _mount(disk, ROOMY_DISK_BYTES, "remount")
    assert mounted.returncode == 0, mounted.stderr


async def fill(put: Any) -> tuple[list[str], Exception]:
    """Call ``put(key)`` with new keys until it fails; the keys acknowledged and the error."""
    acknowledged: list[str] = []
    for i in range(MAX_PUTS):
        try:
            await put(f"k{i}")
        except Exception as exc:  # the test looks at whatever it is
            return acknowledged, exc
        acknowledged.append(f"k{i}")
    raise AssertionError(f"{MAX_PUTS} writes of {len(FIELD)} bytes fitted in {DISK_BYTES}")


async def held(data_dir: Path, keys: list[str]) -> None:
    async with open_replica(data_dir) as replica:
        for key in keys:
            assert await replica.get("c", key) == {"x": FIELD}, key


async def test_a_replica_on_a_full_disk_refuses_writes_and_closes_cleanly(
    disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = disk / "node"
    # Fewer commits than a checkpoint waits for: all is in the WAL, and the checkpoint
    # at close has to grow the database file.
    async with open_replica(data_dir, create=True) as replica:

        async def put(key: str) -> None:
            await replica.put("c", key, {"x": FIELD})

        acknowledged, error = await fill(put)
        assert isinstance(error, StorageError), repr(error)
        assert STORAGE_FULL in str(error)
        assert await replica.get("c", acknowledged[-1]) == {"x": FIELD}  # still reads
        with pytest.raises(StorageError, match=STORAGE_FULL):
            await put("one more")
    # The close could not checkpoint: it said so and raised nothing. All is in the WAL.
    assert f"could not checkpoint {data_dir / DB_FILE}: {STORAGE_FULL}" in caplog.text
    await held(data_dir, acknowledged)  # while the disk is still full
    grow(disk)
    await held(data_dir, acknowledged)


def test_an_agent_on_a_full_disk_stops_cleanly_on_sigterm(disk: Path, tmp_path: Path) -> None:
    data_dir = disk / "node"
    new_mesh([data_dir])
    agent = Agent(data_dir, ["--discovery", "none", "--listen", "127.0.0.82:0"])
    agent.log = tmp_path / "blazemesh.agent.log"  # not on the full disk
    agent.start()
    try:

        async def fill_through_the_agent() -> tuple[list[str], Exception]:
            client = await AgentClient.connect(data_dir)
            assert client is not None

            async def put(key: str) -> None:
                await client.call("put", {"collection": "c", "key": key, "fields": {"x": FIELD}})

            try:
                return await fill(put)
            finally:
                await client.aclose()

        acknowledged, error = trio.run(fill_through_the_agent)
        assert isinstance(error, AgentCallError), repr(error)
        assert STORAGE_FULL in str(error)
        refused = blazemesh("put", "c", "cli", f"x={FIELD}", "--data-dir", str(data_dir))
        assert refused.returncode == 1
        assert refused.stderr.count("\n") == 1, refused.stderr
        assert STORAGE_FULL in refused.stderr
    finally:
        assert agent.process is not None
        agent.process.send_signal(signal.SIGTERM)
        code = agent.process.wait(STOP_TIMEOUT_S)
    log = agent.log.read_text()
    assert code == 0, log
    assert "Traceback" not in log
    assert f"could not checkpoint {data_dir / DB_FILE}: {STORAGE_FULL}" in log
    assert log.rstrip().endswith("stopped; links closed, database closed")
    trio.run(held, data_dir, acknowledged)
    grow(disk)
    trio.run(held, data_dir, acknowledged)

"""``blazemesh backup`` and ``restore`` (issue 19, section 1)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import trio

from blazemesh.agent.errors import ConfigError
from blazemesh.agent.storage.backup import backup, restore
from blazemesh.agent.storage.paths import DB_FILE, KEY_FILE
from blazemesh.agent.storage.replica import open_replica


async def test_a_backup_taken_while_writes_go_on_is_one_consistent_snapshot(
    tmp_path: Path,
) -> None:
    data_dir, target = tmp_path / "node", tmp_path / "backup"
    async with open_replica(data_dir, create=True) as replica, trio.open_nursery() as nursery:

        async def keep_writing() -> None:
            for i in range(400):
                await replica.put("c", f"k{i}", {"i": i})

        nursery.start_soon(keep_writing)
        await trio.to_thread.run_sync(backup, data_dir, target)
    for name in (DB_FILE, KEY_FILE):
        assert stat.S_IMODE((target / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    restored = tmp_path / "restored"
    restore(target, restored)
    async with open_replica(restored) as copy:
        held = copy.info().changes_held
        records = await copy.query("c")
        assert len(records) == held  # every change it holds applied, no half-written one
        assert copy.store.lost is not None  # it knows it is a copy


async def test_a_backup_goes_into_a_new_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no database to back up"):
        backup(tmp_path, tmp_path / "backup")
    async with open_replica(tmp_path / "node", create=True):
        pass
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "something").write_text("")
    with pytest.raises(ConfigError, match="not an empty directory"):
        backup(tmp_path / "node", tmp_path / "backup")


async def test_a_backup_is_restored_only_onto_its_own_node(tmp_path: Path) -> None:
    for name in ("a", "b"):
        async with open_replica(tmp_path / name, create=True) as replica:
            await replica.put("c", "k", {})
    backup(tmp_path / "a", tmp_path / "backup")
    with pytest.raises(ConfigError, match="the backup of another node"):
        restore(tmp_path / "backup", tmp_path / "b")
    with pytest.raises(ConfigError, match="not a blazemesh backup"):
        restore(tmp_path / "nothing", tmp_path / "c")
    assert restore(tmp_path / "backup", tmp_path / "a") == [DB_FILE]


async def test_a_restore_onto_a_running_node_says_to_stop_its_agent(tmp_path: Path) -> None:
    from blazemesh.agent.cli.backup import cmd_restore
    from blazemesh.agent.errors import DataDirLockedError

    node, copy = tmp_path / "node", tmp_path / "copy"
    async with open_replica(node, create=True):
        backup(node, copy)
        with pytest.raises(DataDirLockedError, match="stop its agent first"):
            cmd_restore(node, copy)  # the replica holds the directory, as an agent does

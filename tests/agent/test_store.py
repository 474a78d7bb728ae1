from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.errors import StorageError
from agent.paths import DB_FILE
from agent.replica import open_replica
from agent.schema import SCHEMA_VERSION


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    async with open_replica(tmp_path, create=True):
        pass
    db = sqlite3.connect(tmp_path / DB_FILE)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StorageError, match="upgrade blazemesh"):
        async with open_replica(tmp_path):
            pass


async def test_garbage_database_file_is_a_clear_error(tmp_path: Path) -> None:
    async with open_replica(tmp_path, create=True):
        pass
    (tmp_path / DB_FILE).write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError, match="cannot open"):
        async with open_replica(tmp_path):
            pass


async def test_database_of_another_identity_is_refused(tmp_path: Path) -> None:
    async with open_replica(tmp_path / "a", create=True):
        pass
    async with open_replica(tmp_path / "b", create=True):
        pass
    (tmp_path / "b" / DB_FILE).unlink()
    (tmp_path / "a" / DB_FILE).rename(tmp_path / "b" / DB_FILE)
    with pytest.raises(StorageError, match="another node identity"):
        async with open_replica(tmp_path / "b"):
            pass


async def test_corrupt_record_metadata_is_reported_not_crashed(tmp_path: Path) -> None:
    async with open_replica(tmp_path, create=True) as replica:
        await replica.put("c", "k", {"a": 1})
    db = sqlite3.connect(tmp_path / DB_FILE)
    db.execute("UPDATE records SET meta = x'c1'")
    db.commit()
    db.close()
    async with open_replica(tmp_path) as replica:
        with pytest.raises(StorageError, match=r"c/k .* is corrupt"):
            await replica.put("c", "k", {"a": 2})
        await replica.put("c", "other", {"a": 3})  # the replica carries on
        assert await replica.get("c", "other") == {"a": 3}


async def test_version_vector_survives_reopen(tmp_path: Path) -> None:
    async with open_replica(tmp_path, create=True) as replica:
        for i in range(3):
            await replica.put("c", str(i), {})
        vv = replica.store.vv.copy()
    async with open_replica(tmp_path) as replica:
        assert replica.store.vv == vv
        assert replica.info().changes_held == 3


async def test_wal_is_checkpointed_on_close(tmp_path: Path) -> None:
    async with open_replica(tmp_path, create=True) as replica:
        for i in range(50):
            await replica.put("c", str(i), {"x": "y" * 100})
    wal = tmp_path / (DB_FILE + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0

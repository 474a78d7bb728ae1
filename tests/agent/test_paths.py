"""Who may read a data directory (issue 17, item 10): its owner alone; where its files are."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from blazemesh.agent.errors import ConfigError
from blazemesh.agent.storage.paths import (
    CONTROL_SOCKET,
    DB_FILE,
    KEY_FILE,
    LOCK_FILE,
    lock_data_dir,
)
from blazemesh.agent.storage.replica import open_replica
from blazemesh.agent.trust.identity import create_identity, load_identity
from blazemesh.agent.trust.membership import MESH_FILE, load_mesh, new_mesh, save_mesh

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_the_control_socket_is_where_the_docs_and_earlier_clients_look() -> None:
    # The package's move renamed it blazemesh.agent.sock in passing (a rename of the module
    # path agent. to blazemesh.agent.): clients of 0.1 found no agent, the docs another file.
    assert CONTROL_SOCKET == "agent.sock"
    for doc in ("api.md", "security.md"):
        assert f"DATA_DIR/{CONTROL_SOCKET}" in (DOCS / doc).read_text(encoding="utf-8"), doc


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The most permissive umask: whatever is private is so because blazemesh made it so."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("open_umask")
async def test_a_new_data_directory_and_every_file_in_it_are_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    async with open_replica(data_dir, create=True) as replica:
        await replica.put("c", "k", {"x": 1})
        save_mesh(data_dir, new_mesh("lab"))
        files = [KEY_FILE, MESH_FILE, LOCK_FILE, DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm"]
        modes = {name: mode(data_dir / name) for name in files}
    assert mode(data_dir) == 0o700
    assert modes == dict.fromkeys(files, 0o600)


@pytest.mark.parametrize("open_mode", [0o755, 0o750, 0o711, 0o701, 0o770, 0o707], ids=oct)
async def test_a_data_directory_others_can_enter_is_refused(tmp_path: Path, open_mode: int) -> None:
    data_dir = tmp_path / "node"
    async with open_replica(data_dir, create=True):
        save_mesh(data_dir, new_mesh("lab"))
    data_dir.chmod(open_mode)
    fix = f"chmod 700 {data_dir}"
    with pytest.raises(ConfigError, match=f"mode {open_mode:04o}.*{fix}"):
        async with open_replica(data_dir):
            pass
    with pytest.raises(ConfigError, match=fix):
        async with open_replica(data_dir, create=True):
            pass
    with pytest.raises(ConfigError, match=fix):
        load_identity(data_dir)
    with pytest.raises(ConfigError, match=fix):
        load_mesh(data_dir)
    assert mode(data_dir) == open_mode  # refused, not changed behind the owner's back
    data_dir.chmod(0o700)
    async with open_replica(data_dir):
        pass


def test_no_identity_is_written_into_a_directory_others_can_read(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    with pytest.raises(ConfigError, match=f"chmod 700 {tmp_path}"):
        create_identity(tmp_path)
    assert not (tmp_path / KEY_FILE).exists()


async def test_a_database_an_older_version_left_open_is_made_private(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "node"
    async with open_replica(data_dir, create=True) as replica:
        await replica.put("c", "k", {"x": 1})
    db = data_dir / DB_FILE
    wal = data_dir / f"{DB_FILE}-wal"
    db.chmod(0o644)
    wal.touch(0o644)  # SQLite reads an empty WAL as no WAL
    wal.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        async with open_replica(data_dir) as replica:
            assert await replica.get("c", "k") == {"x": 1}
            assert (mode(db), mode(wal)) == (0o600, 0o600)
    assert f"{db} was open to other users (mode 0644): made it 0600" in caplog.text
    assert f"{wal} was open to other users (mode 0644): made it 0600" in caplog.text


def test_the_mesh_file_is_private_whatever_a_crash_left_behind(tmp_path: Path) -> None:
    (tmp_path / MESH_FILE).with_suffix(".tmp").touch(0o644)  # from a save cut short
    (tmp_path / MESH_FILE).with_suffix(".tmp").chmod(0o644)
    save_mesh(tmp_path, new_mesh("lab"))
    assert mode(tmp_path / MESH_FILE) == 0o600
    assert load_mesh(tmp_path).name == "lab"


def test_a_lock_file_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    data_dir.mkdir(mode=0o700)
    (data_dir / LOCK_FILE).mkdir()  # a read-only disk or a mistake: not a file we can open
    with (
        pytest.raises(ConfigError, match=r"cannot open the lock file .*lock: Is a directory"),
        lock_data_dir(data_dir),
    ):
        pass

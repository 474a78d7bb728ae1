"""Backups of a data directory, consistent while an agent writes to it, and restores.

A backup is a directory holding what a node needs to come back: its database (copied by
SQLite's online backup, one consistent snapshot even while the agent commits), its key
and its membership, each readable by its owner alone. A restore puts them back and
records that the database is a copy (`sqlite.mark_restored`): the node then takes back
from its peers the changes it made after the backup, and never reuses their seqs
(docs/operations.md, "Backups and restores").

Both block (file copies, SQLite): call them from a worker thread.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

from blazemesh.agent.errors import ConfigError, StorageError
from blazemesh.agent.storage.paths import (
    DB_FILE,
    DB_SIDE_FILES,
    KEY_FILE,
    lock_data_dir,
    make_data_dir,
    private_database,
)
from blazemesh.agent.storage.sqlite import mark_restored
from blazemesh.agent.trust.membership import MESH_FILE


def backup(data_dir: Path, target: Path) -> list[str]:
    """Copy ``data_dir``'s database, key and membership into ``target``, a new (or
    empty) directory; return the names of the files written."""
    if not (data_dir / DB_FILE).exists():
        raise ConfigError(f"{data_dir} holds no database to back up")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(f"{target} is not an empty directory: back up into a new one")
    make_data_dir(target)
    database = target / DB_FILE
    private_database(database)
    try:
        source = sqlite3.connect(f"file:{data_dir / DB_FILE}?mode=ro", uri=True)
        try:
            copy = sqlite3.connect(database)
            try:
                source.backup(copy)
            finally:
                copy.close()
        finally:
            source.close()
    except sqlite3.Error as exc:
        raise StorageError(f"cannot back up {data_dir / DB_FILE}: {exc}") from None
    written = [DB_FILE]
    for name in (KEY_FILE, MESH_FILE):
        if (data_dir / name).exists():
            _copy_private(data_dir / name, target / name)
            written.append(name)
    return written


def restore(source: Path, data_dir: Path) -> list[str]:
    """Put the backup in ``source`` back as ``data_dir`` (no agent may run on it); return
    the names of the files restored. The data directory's own membership, if it has one,
    is kept (its secret may have been rotated since the backup); its key must be the
    backup's."""
    for name in (DB_FILE, KEY_FILE):
        if not (source / name).is_file():
            raise ConfigError(f"{source} is not a blazemesh backup: it has no {name}")
    make_data_dir(data_dir)
    key = data_dir / KEY_FILE
    if key.exists() and key.read_bytes() != (source / KEY_FILE).read_bytes():
        raise ConfigError(
            f"{source} is the backup of another node than {data_dir}'s: restore it into a "
            "new data directory"
        )
    with lock_data_dir(data_dir):
        for suffix in ("", *DB_SIDE_FILES):
            (data_dir / (DB_FILE + suffix)).unlink(missing_ok=True)
        _copy_private(source / DB_FILE, data_dir / DB_FILE)
        restored = [DB_FILE]
        for name in (KEY_FILE, MESH_FILE):
            if not (data_dir / name).exists() and (source / name).exists():
                _copy_private(source / name, data_dir / name)
                restored.append(name)
        mark_restored(data_dir / DB_FILE)
    return restored


def _copy_private(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target``, a new file readable by its owner alone."""
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out, source.open("rb") as f:
            shutil.copyfileobj(f, out)
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        raise ConfigError(f"cannot copy {source} to {target}: {exc.strerror}") from None

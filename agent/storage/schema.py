"""The SQLite schema and its migrations.

``PRAGMA user_version`` holds the schema version. Opening a database runs, in one
transaction, every migration above its version; a database newer than this code is
refused rather than guessed at. A migration is appended here, never edited once released.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from blazemesh.agent.errors import StorageError


def _v1(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID")
    # The merged state: ``doc`` is what apps read (NULL while deleted), ``meta`` the stamps.
    db.execute(
        "CREATE TABLE records (collection TEXT NOT NULL, key TEXT NOT NULL, doc BLOB, "
        "meta BLOB NOT NULL, PRIMARY KEY (collection, key)) WITHOUT ROWID"
    )
    # Every change applied, in local arrival order (``lsn``), to serve peers and watchers.
    # ``last_stamp`` is the HLC stamp of its last op: replaying the log's tail on open
    # restores the clock past everything seen (see `agent.storage.store`, "Snapshots").
    db.execute(
        "CREATE TABLE log (lsn INTEGER PRIMARY KEY, origin BLOB NOT NULL, "
        "seq INTEGER NOT NULL, last_stamp INTEGER NOT NULL, change BLOB NOT NULL)"
    )
    db.execute("CREATE UNIQUE INDEX log_dot ON log (origin, seq)")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v1]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(db: sqlite3.Connection) -> None:
    """Bring the database to `SCHEMA_VERSION`, or refuse one that is newer."""
    (version,) = db.execute("PRAGMA user_version").fetchall()[0]
    if version > SCHEMA_VERSION:
        raise StorageError(
            f"the database has schema version {version}; this blazemesh knows up to "
            f"{SCHEMA_VERSION}: upgrade blazemesh to open it"
        )
    if version == SCHEMA_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        for step in MIGRATIONS[version:]:
            step(db)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise

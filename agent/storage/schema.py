"""The SQLite schema and its migrations.

``PRAGMA user_version`` holds the schema version. Opening a database runs, in one
transaction, every migration above its version; a database newer than this code is
refused rather than guessed at. A migration is appended here, never edited once released.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from blazemesh.agent.errors import StorageError
from blazemesh.protocol.fingerprints import change_digest


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


def signed(digest: int) -> int:
    """A 64-bit digest as SQLite keeps it: a signed integer."""
    return digest - (1 << 64) if digest >= 1 << 63 else digest


def unsigned(value: int) -> int:
    """A digest read back from SQLite (`signed`)."""
    return value + (1 << 64) if value < 0 else value


def _v2(db: sqlite3.Connection) -> None:
    """Versions and fingerprints (docs/design.md): each log entry keeps its change's
    digest, and a dot may have several entries, one per version. (Each origin's
    fingerprint is kept with the snapshot of the version vector; opening folds in the
    digests of the entries after it.)"""
    db.execute("ALTER TABLE log ADD COLUMN digest INTEGER NOT NULL DEFAULT 0")
    rows = db.execute("SELECT lsn, change FROM log").fetchall()
    db.executemany(
        "UPDATE log SET digest = ? WHERE lsn = ?",
        [(signed(change_digest(blob)), lsn) for lsn, blob in rows],
    )
    db.execute("DROP INDEX log_dot")
    db.execute("CREATE UNIQUE INDEX log_version ON log (origin, seq, digest)")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v1, _v2]
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

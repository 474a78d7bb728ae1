"""The agent's store: merged records, the change log and the version vector in SQLite.

`SqliteStore` is the durable `agent.storage.store.Store`. A batch of writes -- local
transactions and remote changes -- is applied in one SQLite transaction
(`agent.storage.merging`): a change and its effect commit together or not at all
(docs/design.md, "Storage"). Reads go through a separate connection and see only
committed batches.

Snapshots: the version vector and the clock are not written on every commit (each would
dirty one more page per commit). Every `SNAPSHOT_EVERY_CHANGES` changes, and at close,
they are saved in ``meta`` inside a batch's own transaction, with the log position they
cover; opening replays the log after that position. The log itself is the truth.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgpack

from blazemesh.agent.errors import StorageError
from blazemesh.agent.storage.merging import (
    READ_FAILED,
    LogRow,
    MergingStore,
    RecordRow,
    StoredRecord,
    page,
    record_digest,
    replay,
)
from blazemesh.agent.storage.schema import migrate, signed, unsigned
from blazemesh.agent.storage.store import LOG_PAGE_BYTES, Durability, Job, Outcome
from blazemesh.protocol.codec import CODEC_VERSION
from blazemesh.protocol.errors import ProtocolError
from blazemesh.protocol.hlc import HybridClock
from blazemesh.protocol.vv import VersionVector

log = logging.getLogger(__name__)

SNAPSHOT_EVERY_CHANGES = 4_096  # bounds the log tail replayed when the store opens
LOAD_CHUNK_KEYS = 250  # records fetched per SELECT when a batch touches many
INLINE_MAX_OPS = 128  # commits on the trio thread: ~2.5 ms, under the GIL's 5 ms switch
QUICK_CHECK_MAX_ERRORS = 10  # problems listed when a database is damaged: the first is shown


class SqliteStore(MergingStore):
    """The database of one replica. Not thread-safe: one writer, one thread at a time."""

    STORAGE_ERRORS = (sqlite3.Error,)

    def __init__(
        self,
        path: Path,
        *,
        node_id: bytes,
        durability: Durability,
        wall_ms: Callable[[], int],
        max_skew_ms: int,
    ) -> None:
        self.path = path
        self.durability = durability
        recorded = _recorded_file(path)
        with contextlib.ExitStack() as undo:
            try:
                self._check_pages()
                self._writer = self._connect()
                undo.callback(self._writer.close)
                self._reader = self._connect()
                undo.callback(self._reader.close)
                migrate(self._writer)
                self._check_owner(node_id)
                vv, fingerprints, clock, last_lsn = self._recover()
                taken = self._meta_runs("taken")
                lost_runs = self._meta_runs("lost")
            except sqlite3.DatabaseError as exc:
                raise StorageError(f"cannot open {path}: {exc}") from None
            except (
                ValueError,
                TypeError,
                IndexError,
                ProtocolError,
                msgpack.UnpackException,
            ) as exc:
                raise StorageError(f"cannot open {path}: corrupt snapshot ({exc})") from None
            undo.pop_all()
        super().__init__(
            node_id=node_id,
            wall_ms=wall_ms,
            clock=HybridClock(last=clock, max_skew_ms=max_skew_ms),
            vv=vv,
            last_lsn=last_lsn,
            taken=taken,
            fingerprints=fingerprints,
            lost=lost_runs[0] if lost_runs else None,
        )
        current = f"{_file_id(path)}:{self._meta('db_id', '')}"
        if recorded is not None and recorded != current:
            first, last = self.mark_restored()
            log.warning(
                "%s is not the database this node last opened (restored from a backup, "
                "copied from another device, or recreated): changes it made after that copy "
                "may be on its peers, so it takes them back (seqs %d to %d) and writes on "
                "from seq %d",
                path,
                first,
                last,
                last + 1,
            )
        if recorded != current:
            _record_file(path, current)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(f"PRAGMA synchronous = {self.durability.name}")
        db.execute("PRAGMA busy_timeout = 5000")
        # Checkpoints run off the trio thread (`checkpoint`), never inside a commit.
        db.execute("PRAGMA wal_autocheckpoint = 0")
        return db

    def _check_pages(self) -> None:
        """Refuse a database whose pages are damaged (bytes flipped on disk), before
        anything reads them: ``PRAGMA quick_check`` reads every page once, 0.06 s for a
        110 MB database in the page cache (docs/operations.md). On a
        connection of its own, so that the pages it read stay out of the others' caches
        (they read from the file, as later damage would show)."""
        try:
            with contextlib.closing(sqlite3.connect(self.path, isolation_level=None)) as db:
                rows = db.execute(f"PRAGMA quick_check({QUICK_CHECK_MAX_ERRORS})").fetchall()
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorname", None) != "SQLITE_CORRUPT":
                raise  # not a database at all: "cannot open" says so
            rows = [(str(exc),)]  # damage where the check starts (the schema) stops it
        if rows == [("ok",)]:
            return
        problems = [
            line
            for (text,) in rows
            for line in str(text).splitlines()
            if line and not line.startswith("***")
        ]
        raise StorageError(
            f"{self.path} is damaged ({problems[0] if problems else rows}; PRAGMA quick_check "
            f"lists {len(problems)} problems): restore it from a backup"
        )

    def _check_owner(self, node_id: bytes) -> None:
        owner = self._meta("node_id", None)
        if owner is None:
            with self._transaction():
                self._set_meta("node_id", node_id)
                self._set_meta("codec_version", CODEC_VERSION)
                self._set_meta("db_id", secrets.token_hex(16))
        elif owner != node_id:
            raise StorageError(f"{self.path} belongs to another node identity")

    def _recover(self) -> tuple[VersionVector, dict[bytes, int], int, int]:
        """Load the last snapshot of vector, fingerprints and clock, then replay the log
        after it; return the vector, the fingerprints, the clock's last stamp and the
        last log position."""
        snapshot = self._meta("snapshot", None)
        lsn = clock = 0
        entries: list[Any] = []
        fingerprints: dict[bytes, int] = {}
        if snapshot is not None:
            assert isinstance(snapshot, bytes)
            lsn, clock, entries, *rest = msgpack.unpackb(snapshot)
            if rest:
                fingerprints = dict(rest[0])
            else:  # a snapshot of schema 1, which had none: from the log it covers
                for origin, digest in self._writer.execute(
                    "SELECT origin, digest FROM log WHERE lsn <= ?", (lsn,)
                ):
                    fingerprints[origin] = fingerprints.get(origin, 0) ^ unsigned(digest)
        vv = VersionVector.from_parts(
            {origin: base for origin, base, _ in entries},
            {origin: _snapshot_runs(runs) for origin, _, runs in entries},
        )
        self._snapshot_lsn = lsn
        rows = self._writer.execute(
            "SELECT lsn, origin, seq, last_stamp, digest FROM log WHERE lsn > ? ORDER BY lsn",
            (lsn,),
        )
        lsn, clock = replay(vv, fingerprints, _unsigned_digests(rows), lsn, clock)
        return vv, fingerprints, clock, lsn

    def close(self) -> None:
        """Save a snapshot if the log has grown past the last one, and close. Never
        raises for SQLite: a snapshot that cannot be written (a full disk) is logged."""
        try:
            if self._last_lsn > self._snapshot_lsn:
                with self._transaction():
                    self._save_snapshot(self.vv)
        except sqlite3.Error as exc:
            # The snapshot is an optimisation: the log replays on the next open.
            log.warning(
                "could not save a snapshot in %s (%s): the next open replays the log instead",
                self.path,
                exc,
            )
        finally:
            self._reader.close()
            self._writer.close()

    def _where(self) -> str:
        return str(self.path)

    def commits_inline(self, ops: int) -> bool:
        """Small batches, without an fsync to wait for: a thread hop would cost more than
        the commit (docs/design.md, "Keeping SQLite off the loop")."""
        return self.durability is Durability.NORMAL and ops <= INLINE_MAX_OPS

    # -- the rows of `MergingStore` -----------------------------------------------------

    def _transaction(self) -> sqlite3.Connection:
        """Begin a write transaction: the connection returned, as a context manager,
        commits it, or rolls it back if the block raises."""
        self._writer.execute("BEGIN IMMEDIATE")
        return self._writer

    def write_batch(self, jobs: Sequence[Job], *, with_updates: bool = True) -> list[Outcome]:
        """`Store.write_batch`; a snapshot the batch saved goes with it if it fails."""
        snapshot_lsn = self._snapshot_lsn
        try:
            return super().write_batch(jobs, with_updates=with_updates)
        except BaseException:
            self._snapshot_lsn = snapshot_lsn
            raise

    def _load_records(self, collection: str, keys: list[str]) -> Iterable[StoredRecord]:
        for i in range(0, len(keys), LOAD_CHUNK_KEYS):
            chunk = keys[i : i + LOAD_CHUNK_KEYS]
            marks = ",".join("?" * len(chunk))
            yield from self._writer.execute(
                f"SELECT key, doc, meta FROM records WHERE collection = ? AND key IN ({marks})",
                [collection, *chunk],
            )

    def _save_records(self, rows: list[RecordRow]) -> None:
        self._writer.executemany("INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?)", rows)

    def _append_log(self, rows: list[LogRow]) -> None:
        self._writer.executemany(
            "INSERT INTO log VALUES (?, ?, ?, ?, ?, ?)", [(*r[:5], signed(r[5])) for r in rows]
        )

    def _versions(self, origin: bytes, seq: int) -> set[int]:
        rows = self._writer.execute(
            "SELECT digest FROM log WHERE origin = ? AND seq = ?", (origin, seq)
        )
        return {unsigned(digest) for (digest,) in rows}

    def _digests(self, origin: bytes, first: int, last: int) -> Iterable[int]:
        cursor = self._reader.execute(
            "SELECT digest FROM log WHERE origin = ? AND seq BETWEEN ? AND ?", (origin, first, last)
        )
        with contextlib.closing(cursor):
            return [unsigned(digest) for (digest,) in cursor]

    def _save_taken(self, runs: list[tuple[int, int]]) -> None:
        self._set_meta("taken", msgpack.packb(runs))

    def _save_lost(self, lost: tuple[int, int]) -> None:
        self._set_meta("lost", msgpack.packb([lost]))

    def _written(
        self, lsn: int, added: dict[bytes, dict[int, int]], fingerprints: dict[bytes, int]
    ) -> None:
        if lsn - self._snapshot_lsn >= SNAPSHOT_EVERY_CHANGES:
            vv = self.vv.copy()
            for origin, seqs in added.items():
                for seq in seqs:
                    vv.add(origin, seq)
            self._save_snapshot(vv, lsn, {**self._written_fps, **fingerprints})

    def _own_ahead(self, stamp: int) -> list[tuple[int, bytes]]:
        return self._writer.execute(
            "SELECT lsn, change FROM log WHERE origin = ? AND last_stamp > ? ORDER BY seq",
            (self.node_id, stamp),
        ).fetchall()

    def _last_stamp_but_own_ahead(self, stamp: int) -> int:
        (rest,) = first_row(
            self._writer,
            "SELECT coalesce(max(last_stamp), 0) FROM log "
            "WHERE NOT (origin = ? AND last_stamp > ?)",
            (self.node_id, stamp),
        )
        return int(rest)

    def _rewrite_log(self, lsn: int, blob: bytes, stamp: int, digest: int) -> None:
        self._writer.execute(
            "UPDATE log SET change = ?, last_stamp = ?, digest = ? WHERE lsn = ?",
            (blob, stamp, signed(digest), lsn),
        )

    def _whole_log(self) -> Iterable[bytes]:
        for (blob,) in self._writer.execute("SELECT change FROM log ORDER BY lsn"):
            yield blob

    def _restamped(self) -> None:
        self._save_snapshot(self.vv)

    def _save_snapshot(
        self,
        vv: VersionVector,
        lsn: int | None = None,
        fingerprints: dict[bytes, int] | None = None,
    ) -> None:
        """Save the vector, the clock and the fingerprints (as written, unless given) as
        of ``lsn`` (the last, unless given)."""
        entries = [(origin, vv.base(origin), vv.runs(origin)) for origin in vv.origins()]
        lsn = self._last_lsn if lsn is None else lsn
        fps = list((self._written_fps if fingerprints is None else fingerprints).items())
        self._set_meta("snapshot", msgpack.packb((lsn, self.clock.last, entries, fps)))
        self._snapshot_lsn = lsn

    def checkpoint(self, *, truncate: bool = False) -> None:
        """Copy the WAL back into the database file; call it off the trio thread.

        Raises `StorageError` if it cannot (a full disk): the WAL then keeps every
        change, and reads and writes go on as before.
        """
        mode = "TRUNCATE" if truncate else "PASSIVE"
        with (
            self._failing("could not checkpoint {where}: {error}"),
            contextlib.closing(sqlite3.connect(self.path, isolation_level=None)) as db,
        ):
            db.execute(f"PRAGMA wal_checkpoint({mode})")

    # -- reading ------------------------------------------------------------------------

    def _read_document(self, collection: str, key: str) -> bytes | None:
        row = first_row(
            self._reader,
            "SELECT doc FROM records WHERE collection = ? AND key = ?",
            (collection, key),
        )
        return None if row is None else row[0]

    @contextlib.contextmanager
    def scan(self, collection: str, start: str, *, inclusive: bool) -> Iterator[sqlite3.Cursor]:
        """`Store.scan`: the cursor reads one snapshot from its own connection. SQLite's
        errors while the block runs, the caller's fetches included, are `StorageError`."""
        with self._failing(READ_FAILED), contextlib.closing(self._connect()) as db:
            op = ">=" if inclusive else ">"
            yield db.execute(
                f"SELECT key, doc FROM records WHERE collection = ? AND key {op} ? "
                "AND doc IS NOT NULL ORDER BY key",
                (collection, start),
            )

    def log_since(
        self, lsn: int, limit: int, max_bytes: int = LOG_PAGE_BYTES
    ) -> list[tuple[int, bytes]]:
        """`Store.log_since`."""
        with self._failing(READ_FAILED):
            return _log_since(self._reader, lsn, limit, max_bytes)

    def changes_in(
        self, origin: bytes, first: int, last: int, max_bytes: int = LOG_PAGE_BYTES
    ) -> list[tuple[int, bytes]]:
        """`Store.changes_in`."""
        with self._failing(READ_FAILED):
            cursor = self._reader.execute(
                "SELECT seq, change FROM log WHERE origin = ? AND seq BETWEEN ? AND ? "
                "ORDER BY seq, digest",  # the index's order: no sort
                (origin, first, last),
            )
            return _page(cursor, max_bytes)

    def digest(self) -> str:
        """`Store.digest`."""
        with self._failing(READ_FAILED):
            return record_digest(
                self._reader.execute(
                    "SELECT collection, key, doc FROM records WHERE doc IS NOT NULL "
                    "ORDER BY collection, key"
                )
            )

    def counts(self) -> dict[str, tuple[int, int]]:
        """`Store.counts`."""
        with self._failing(READ_FAILED):
            rows = self._reader.execute(
                "SELECT collection, count(doc), count(*) - count(doc) FROM records "
                "GROUP BY collection"
            ).fetchall()
        return {c: (live, dead) for c, live, dead in rows}

    # -- metadata -----------------------------------------------------------------------

    def _meta(self, name: str, default: object) -> object:
        row = first_row(self._writer, "SELECT value FROM meta WHERE name = ?", (name,))
        return default if row is None else row[0]

    def _meta_runs(self, name: str) -> list[tuple[int, int]]:
        blob = self._meta(name, None)
        if blob is None:
            return []
        assert isinstance(blob, bytes)
        return _snapshot_runs(msgpack.unpackb(blob))

    def _set_meta(self, name: str, value: object) -> None:
        self._writer.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))


# Beside the database, which database it is (the file's device and inode as this node last
# opened it, and the random id the database got when it was created): a database that is
# not that one was put there from a copy, or created anew (`SqliteStore`, "Restores").
FILE_ID_SUFFIX = ".id"
RESTORED = "restored"  # what `blazemesh restore` records: no file is that one


def _file_id(path: Path) -> str:
    info = path.stat()
    return f"{info.st_dev}:{info.st_ino}"


def _recorded_file(path: Path) -> str | None:
    """The file identity recorded beside ``path``, or None if none is (a new data
    directory, or one from before the record existed)."""
    try:
        return path.with_name(path.name + FILE_ID_SUFFIX).read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"cannot read {path}{FILE_ID_SUFFIX}: {exc.strerror}") from None


def _record_file(path: Path, file_id: str) -> None:
    """Record ``file_id`` beside ``path`` (written whole, mode 0600)."""
    target = path.with_name(path.name + FILE_ID_SUFFIX)
    tmp = target.with_name(target.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(file_id + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        raise StorageError(f"cannot write {target}: {exc.strerror}") from None


def mark_restored(path: Path) -> None:
    """Record that the database at ``path`` was put there from a backup: the next open
    treats it as a restored copy (`MergingStore.mark_restored`)."""
    _record_file(path, RESTORED)


def _unsigned_digests(
    rows: Iterable[tuple[int, bytes, int, int, int]],
) -> Iterator[tuple[int, bytes, int, int, int]]:
    for lsn, origin, seq, stamp, digest in rows:
        yield lsn, origin, seq, stamp, unsigned(digest)


def _snapshot_runs(items: list[Any]) -> list[tuple[int, int]]:
    """A snapshot's runs above an origin's prefix: ``[first, last]`` pairs, or single
    seqs as snapshots written before runs (blazemesh 0.1, protocol version 2) held them."""
    return [(item, item) if isinstance(item, int) else (item[0], item[1]) for item in items]


def first_row(db: sqlite3.Connection, sql: str, params: Sequence[object] = ()) -> Any:
    """The first row of ``sql``, or None, with the statement run to its end.

    ``fetchone()`` would leave the statement active, and with it a read transaction that
    keeps every WAL checkpoint on the database from completing.
    """
    rows = db.execute(sql, params).fetchall()
    return rows[0] if rows else None


def _log_since(
    db: sqlite3.Connection, lsn: int, limit: int, max_bytes: int
) -> list[tuple[int, bytes]]:
    cursor = db.execute(
        "SELECT lsn, change FROM log WHERE lsn > ? ORDER BY lsn LIMIT ?", (lsn, limit)
    )
    return _page(cursor, max_bytes)


def _page(cursor: sqlite3.Cursor, max_bytes: int) -> list[tuple[int, bytes]]:
    """`page` over a cursor, which is then closed: that ends the statement, and its read
    transaction (see `first_row`)."""
    with contextlib.closing(cursor):
        return page(cursor, max_bytes)


class LogReader:
    """Read-only access to another process's change log, for following it.

    SQLite has no cross-process change notification; `changed` is the cheap test
    (``PRAGMA data_version``) a follower polls between reads.
    """

    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise StorageError(f"no database at {path}")
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._version = -1

    def close(self) -> None:
        self._db.close()

    def last_lsn(self) -> int:
        row = first_row(self._db, "SELECT coalesce(max(lsn), 0) FROM log")
        assert row is not None
        lsn: int = row[0]
        return lsn

    def since(
        self, lsn: int, limit: int, max_bytes: int = LOG_PAGE_BYTES
    ) -> list[tuple[int, bytes]]:
        """As `Store.log_since`."""
        return _log_since(self._db, lsn, limit, max_bytes)

    def changed(self) -> bool:
        """Whether another connection has committed since the last call."""
        row = first_row(self._db, "PRAGMA data_version")
        assert row is not None
        version: int = row[0]
        changed, self._version = version != self._version, version
        return changed

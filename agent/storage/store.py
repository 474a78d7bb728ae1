"""The replica's SQLite database: merged records, the change log and the version vector.

`Store` is synchronous and owned by one writer at a time (the replica's committer). A
batch of writes -- local transactions and remote changes -- is applied in one SQLite
transaction: for each change the affected records are loaded, merged by `protocol.crdt`,
and written back together with the change's log entry and the version vector, so a
change and its effect commit together or not at all (docs/design.md, "Storage").

Reads go through a separate connection and see only committed batches.

Snapshots: the version vector and the clock are not written on every commit (each would
dirty one more page per commit). Every `SNAPSHOT_EVERY_CHANGES` changes, and at close,
they are saved in ``meta`` inside a batch's own transaction, with the log position they
cover; opening replays the log after that position. The log itself is the truth.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from blazemesh.agent.errors import StorageError
from blazemesh.agent.storage.schema import migrate
from blazemesh.protocol.admission import MAX_RUNS_HELD, Admission
from blazemesh.protocol.codec import (
    CODEC_VERSION,
    decode_change,
    decode_document,
    decode_meta,
    encode_change,
    encode_document,
    encode_meta,
)
from blazemesh.protocol.crdt import RecordKey, RecordState, apply_change
from blazemesh.protocol.errors import OwnOriginError, ProtocolError, ValidationError
from blazemesh.protocol.hlc import COUNTER_BITS, HybridClock
from blazemesh.protocol.model import (
    MAX_CHANGE_BYTES,
    MAX_SEQ,
    Change,
    Op,
    Value,
    change_objects,
    held_bytes,
)
from blazemesh.protocol.vv import VersionVector

log = logging.getLogger(__name__)


class Durability(enum.Enum):
    """How much a returned write survives (docs/operations.md, "Durability")."""

    NORMAL = "normal"  # survives a crash of the process: WAL, synchronous=NORMAL
    FULL = "full"  # survives power loss too: synchronous=FULL (an fsync per commit)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordUpdate:
    """A record as a change left it; ``document`` is None when the record is deleted."""

    collection: str
    key: str
    document: dict[str, Value] | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Applied:
    """A change that was committed, with its local log position and its visible effect.

    ``change_bytes`` and ``updates_bytes`` are what holding ``change`` and ``updates``
    costs, as `held_bytes` estimates it: the byte bounds of the caches and buffers that
    hold them count these (docs/design.md, "Memory bounds").
    """

    lsn: int
    change: Change
    updates: tuple[RecordUpdate, ...]
    change_bytes: int
    updates_bytes: int  # 0 when ``updates`` is empty


@dataclass(frozen=True, slots=True)
class LocalWrite:
    """The ops of one local transaction, to be stamped and sequenced by the store."""

    ops: tuple[Op, ...]


Job = LocalWrite | Change
Outcome = Applied | ProtocolError | None  # None: a remote change already held


SNAPSHOT_EVERY_CHANGES = 4_096  # bounds the log tail replayed when the store opens
LOAD_CHUNK_KEYS = 250  # records fetched per SELECT when a batch touches many
# Encoded changes read from the log at a time by a reader that follows it (a watch, a
# catch-up): a page holds this much, or one change if that is larger.
LOG_PAGE_BYTES = 1 << 20


class Store:
    """The database of one replica. Not thread-safe: one writer, one thread at a time."""

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
        self.node_id = node_id
        self.durability = durability
        self.wall_ms = wall_ms  # the HLC's wall clock
        with contextlib.ExitStack() as undo:
            try:
                self._writer = self._connect()
                undo.callback(self._writer.close)
                self._reader = self._connect()
                undo.callback(self._reader.close)
                migrate(self._writer)
                self._check_owner()
                self._recover(max_skew_ms)
                # Seqs of this node's own id that peers hold changes under and this node
                # never made (`OwnOriginError`): its own writes skip them, so that a forged
                # change does not shadow a real one. Kept in ``meta``, bounded like gaps.
                self._taken = VersionVector.from_parts({}, {node_id: self._meta_runs("taken")})
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
        self._next_seq = self.vv.max_seq(node_id) + 1
        self.commits = 0  # transactions committed since opening: group commit shows here

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(f"PRAGMA synchronous = {self.durability.name}")
        db.execute("PRAGMA busy_timeout = 5000")
        # Checkpoints run off the trio thread (`checkpoint`), never inside a commit.
        db.execute("PRAGMA wal_autocheckpoint = 0")
        return db

    def _check_owner(self) -> None:
        owner = self._meta("node_id", None)
        if owner is None:
            with self._transaction():
                self._set_meta("node_id", self.node_id)
                self._set_meta("codec_version", CODEC_VERSION)
        elif owner != self.node_id:
            raise StorageError(f"{self.path} belongs to another node identity")

    def _recover(self, max_skew_ms: int) -> None:
        """Load the last snapshot of vector and clock, then replay the log after it."""
        snapshot = self._meta("snapshot", None)
        lsn = clock = 0
        entries = []
        if snapshot is not None:
            assert isinstance(snapshot, bytes)
            lsn, clock, entries = msgpack.unpackb(snapshot)
        self.vv = VersionVector.from_parts(
            {origin: base for origin, base, _ in entries},
            {origin: _snapshot_runs(runs) for origin, _, runs in entries},
        )
        self._snapshot_lsn = lsn
        rows = self._writer.execute(
            "SELECT lsn, origin, seq, last_stamp FROM log WHERE lsn > ? ORDER BY lsn", (lsn,)
        )
        for row_lsn, origin, seq, last_stamp in rows:
            self.vv.add(origin, seq)
            clock = max(clock, last_stamp)
            lsn = row_lsn
        self._last_lsn: int = lsn
        self.clock = HybridClock(last=clock, max_skew_ms=max_skew_ms)

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

    @contextlib.contextmanager
    def _failing(self, doing: str) -> Iterator[None]:
        """Raise SQLite's errors in the block as `StorageError`, saying what failed."""
        try:
            yield
        except sqlite3.Error as exc:
            raise StorageError(f"could not {doing} {self.path}: {exc}") from exc

    # -- writing ------------------------------------------------------------------------

    def write_batch(self, jobs: Sequence[Job], *, with_updates: bool = True) -> list[Outcome]:
        """Apply every job in one transaction and return one outcome per job.

        A local write becomes a change with the next seq and fresh HLC stamps; a remote
        change already held is a no-op (None); a job the rules refuse gets its error and
        the others go on. If SQLite fails, nothing is committed and `StorageError` is
        raised. Call `finish` with the outcomes once the batch has returned.
        ``with_updates=False`` leaves `Applied.updates` empty, for when nobody observes.
        """
        before = self._next_seq, self._taken, self._last_lsn, self._snapshot_lsn
        try:
            with self._transaction():
                outcomes = self._write_batch(jobs, with_updates)
        except sqlite3.Error as exc:
            # Rolled back: the seqs, log positions and snapshot it took were never written.
            self._next_seq, self._taken, self._last_lsn, self._snapshot_lsn = before
            raise StorageError(f"write to {self.path} failed: {exc}") from exc
        self.commits += 1
        return outcomes

    def _write_batch(self, jobs: Sequence[Job], with_updates: bool) -> list[Outcome]:
        outcomes: list[Outcome] = [None] * len(jobs)
        admitted: list[tuple[int, Change, bytes]] = []
        added: dict[bytes, set[int]] = {}
        admission = Admission(self.node_id, self.vv)
        for i, job in enumerate(jobs):
            try:
                change, blob = self._admit(job, added, admission)
            except OwnOriginError as exc:
                outcomes[i] = exc
                assert isinstance(job, Change)
                self._take(job.seq)
                continue
            except ProtocolError as exc:
                outcomes[i] = exc
                continue
            if change is not None:
                admitted.append((i, change, blob))
                added.setdefault(change.origin, set()).add(change.seq)
        if not admitted:
            return outcomes
        states = self._load_states(
            {(op.collection, op.key) for _, c, _ in admitted for op in c.ops}
        )
        dirty: set[RecordKey] = set()
        log_rows = []
        lsn = self._last_lsn
        for i, change, blob in admitted:
            touched = apply_change(change, states)
            dirty |= touched
            updates: tuple[RecordUpdate, ...] = ()
            if with_updates:
                updates = tuple(
                    RecordUpdate(collection=c, key=k, document=states[c, k].document())
                    for c, k in dict.fromkeys((op.collection, op.key) for op in change.ops)
                    if (c, k) in touched
                )
            lsn += 1
            last_stamp = change.hlc + len(change.ops) - 1
            log_rows.append((lsn, change.origin, change.seq, last_stamp, blob))
            outcomes[i] = Applied(
                lsn=lsn,
                change=change,
                updates=updates,
                change_bytes=held_bytes(len(blob), change_objects(change)),
                updates_bytes=0,  # known once every change of the batch is applied (below)
            )
        doc_bytes = self._save_states(states, dirty, sizes=with_updates)
        if with_updates:
            # A record that several changes of the batch touched counts as it ended.
            for i, *_ in admitted:
                applied = outcomes[i]
                assert isinstance(applied, Applied)
                held = sum(doc_bytes[u.collection, u.key] for u in applied.updates if u.document)
                outcomes[i] = dataclasses.replace(applied, updates_bytes=held)
        self._writer.executemany("INSERT INTO log VALUES (?, ?, ?, ?, ?)", log_rows)
        if lsn - self._snapshot_lsn >= SNAPSHOT_EVERY_CHANGES:
            vv = self.vv.copy()
            for origin, seqs in added.items():
                for seq in seqs:
                    vv.add(origin, seq)
            self._save_snapshot(vv, lsn)
        self._last_lsn = lsn
        return outcomes

    def _admit(
        self, job: Job, added: dict[bytes, set[int]], admission: Admission
    ) -> tuple[Change | None, bytes]:
        """Stamp a local write, or check a remote change; return it and its log encoding."""
        if isinstance(job, LocalWrite):
            seq = self._taken.next_gap(self.node_id, self._next_seq)
            if seq > MAX_SEQ:
                raise ValidationError("this node has used up its sequence numbers")
            change = Change(
                origin=self.node_id,
                seq=seq,
                hlc=self.clock.tick(self.wall_ms(), width=len(job.ops)),
                ops=job.ops,
            )
            blob = encode_change(change)
            if len(blob) > MAX_CHANGE_BYTES:
                raise ValidationError(
                    f"the transaction is {len(blob)} bytes encoded; the limit is {MAX_CHANGE_BYTES}"
                )
            self._next_seq = seq + 1
            return change, blob
        if job.dot in self.vv or job.seq in added.get(job.origin, ()):
            return None, b""
        admission.admit(job)
        self.clock.receive(job.hlc + len(job.ops) - 1, self.wall_ms())
        return job, encode_change(job)

    def _take(self, seq: int) -> None:
        """Remember, in this batch's transaction, that peers hold a change under this
        node's id and ``seq`` that it never made, unless that would pass the gap bound."""
        taken, node_id = self._taken, self.node_id
        if (node_id, seq) in taken or (
            taken.opens_run(node_id, seq) and len(taken.runs(node_id)) >= MAX_RUNS_HELD
        ):
            return
        taken = taken.copy()
        taken.add(node_id, seq)
        runs = [(1, taken.base(node_id))] if taken.base(node_id) else []
        self._set_meta("taken", msgpack.packb(runs + list(taken.runs(node_id))))
        self._taken = taken

    def _save_states(
        self, states: dict[RecordKey, RecordState], keys: Iterable[RecordKey], *, sizes: bool
    ) -> dict[RecordKey, int]:
        """Write the records of ``keys``; with ``sizes``, return the held bytes of each
        document left (else nothing)."""
        rows = []
        doc_bytes: dict[RecordKey, int] = {}
        for c, k in keys:
            state = states[c, k]
            document = state.document()
            doc = None
            if document is not None:
                doc = encode_document(document)
                if sizes:
                    doc_bytes[c, k] = held_bytes(len(doc), 1 + len(document))
            rows.append((c, k, doc, encode_meta(state)))
        self._writer.executemany("INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?)", rows)
        return doc_bytes

    def restamp_ahead(self) -> int:
        """Give this node's own changes stamped more than the skew limit ahead of the wall
        clock fresh stamps, and set the clock back; return how many were re-stamped.

        For a node whose clock ran ahead and was set right (docs/operations.md, "Clocks"):
        every peer refused those changes (their stamps were ahead of its clock), so they are
        nowhere else, and re-stamped they no longer win against everything written until
        the wall clock reaches their old stamps. Each keeps its seq and ops; the records
        they touched are merged again from the whole log. One transaction; reads the whole
        log, so it takes as long as a full scan.
        """
        now_ms = self.wall_ms()
        ahead = ((now_ms + self.clock.max_skew_ms + 1) << COUNTER_BITS) - 1  # stamps past this
        try:
            with self._transaction():
                rows = self._writer.execute(
                    "SELECT lsn, change FROM log WHERE origin = ? AND last_stamp > ? ORDER BY seq",
                    (self.node_id, ahead),
                ).fetchall()
                (rest,) = first_row(
                    self._writer,
                    "SELECT coalesce(max(last_stamp), 0) FROM log "
                    "WHERE NOT (origin = ? AND last_stamp > ?)",
                    (self.node_id, ahead),
                )
                clock = HybridClock(last=rest, max_skew_ms=self.clock.max_skew_ms)
                keys: set[RecordKey] = set()
                for lsn, blob in rows:
                    old = decode_change(blob)
                    change = Change(
                        origin=old.origin,
                        seq=old.seq,
                        hlc=clock.tick(now_ms, width=len(old.ops)),
                        ops=old.ops,
                    )
                    last_stamp = change.hlc + len(change.ops) - 1
                    self._writer.execute(
                        "UPDATE log SET change = ?, last_stamp = ? WHERE lsn = ?",
                        (encode_change(change), last_stamp, lsn),
                    )
                    keys.update((op.collection, op.key) for op in change.ops)
                states: dict[RecordKey, RecordState] = {}
                for (blob,) in self._writer.execute("SELECT change FROM log ORDER BY lsn"):
                    change = decode_change(blob)
                    if any((op.collection, op.key) in keys for op in change.ops):
                        apply_change(change, states)
                self._save_states(states, keys, sizes=False)
                clock, self.clock = self.clock, clock
                self._save_snapshot(self.vv)  # with the new clock
        except (sqlite3.Error, ProtocolError) as exc:
            self.clock = clock
            raise StorageError(f"re-stamping in {self.path} failed: {exc}") from exc
        return len(rows)

    def _load_states(self, keys: set[RecordKey]) -> dict[RecordKey, RecordState]:
        states = {rk: RecordState() for rk in keys}
        by_collection: dict[str, list[str]] = {}
        for collection, key in keys:
            by_collection.setdefault(collection, []).append(key)
        db = self._writer
        for collection, names in by_collection.items():
            for i in range(0, len(names), LOAD_CHUNK_KEYS):
                chunk = names[i : i + LOAD_CHUNK_KEYS]
                marks = ",".join("?" * len(chunk))
                rows = db.execute(
                    f"SELECT key, doc, meta FROM records WHERE collection = ? AND key IN ({marks})",
                    [collection, *chunk],
                )
                for key, doc, meta in rows:
                    states[collection, key] = self._decode_state(collection, key, doc, meta)
        return states

    def _decode_state(
        self, collection: str, key: str, doc: bytes | None, meta: bytes
    ) -> RecordState:
        try:
            return decode_meta(meta, None if doc is None else decode_document(doc))
        except (ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException) as exc:
            raise StorageError(
                f"record {collection}/{key} in {self.path} is corrupt: {exc}"
            ) from None

    def _save_snapshot(self, vv: VersionVector, lsn: int | None = None) -> None:
        entries = [(origin, vv.base(origin), vv.runs(origin)) for origin in vv.origins()]
        lsn = self._last_lsn if lsn is None else lsn
        self._set_meta("snapshot", msgpack.packb((lsn, self.clock.last, entries)))
        self._snapshot_lsn = lsn

    def finish(self, outcomes: Sequence[Outcome]) -> None:
        """Fold a returned batch's new dots into the in-memory version vector.

        Kept apart from `write_batch` so that, when a batch runs in a worker thread, the
        vector is only ever changed on the thread that reads it.
        """
        for outcome in outcomes:
            if isinstance(outcome, Applied):
                self.vv.add(outcome.change.origin, outcome.change.seq)

    def _transaction(self) -> sqlite3.Connection:
        """Begin a write transaction: the connection returned, as a context manager,
        commits it, or rolls it back if the block raises."""
        self._writer.execute("BEGIN IMMEDIATE")
        return self._writer

    def checkpoint(self, *, truncate: bool = False) -> None:
        """Copy the WAL back into the database file; call it off the trio thread.

        Raises `StorageError` if it cannot (a full disk): the WAL then keeps every
        change, and reads and writes go on as before.
        """
        mode = "TRUNCATE" if truncate else "PASSIVE"
        with (
            self._failing("checkpoint"),
            contextlib.closing(sqlite3.connect(self.path, isolation_level=None)) as db,
        ):
            db.execute(f"PRAGMA wal_checkpoint({mode})")

    # -- reading ------------------------------------------------------------------------

    def get(self, collection: str, key: str) -> dict[str, Value] | None:
        """The committed document of a record, or None if it is absent or deleted."""
        with self._failing("read"):
            row = first_row(
                self._reader,
                "SELECT doc FROM records WHERE collection = ? AND key = ?",
                (collection, key),
            )
        if row is None or row[0] is None:
            return None
        return decode_document(row[0])

    @contextlib.contextmanager
    def scan(self, collection: str, start: str, *, inclusive: bool) -> Iterator[sqlite3.Cursor]:
        """A cursor over ``(key, doc)`` of visible records from ``start`` on, in key order.

        The cursor reads one snapshot from its own connection, so a caller may page
        through it across trio checkpoints and still never see half a change. SQLite's
        errors while the block runs, the caller's fetches included, are `StorageError`.
        """
        with self._failing("read"), contextlib.closing(self._connect()) as db:
            op = ">=" if inclusive else ">"
            yield db.execute(
                f"SELECT key, doc FROM records WHERE collection = ? AND key {op} ? "
                "AND doc IS NOT NULL ORDER BY key",
                (collection, start),
            )

    def log_since(
        self, lsn: int, limit: int, max_bytes: int = LOG_PAGE_BYTES
    ) -> list[tuple[int, bytes]]:
        """Up to ``limit`` log entries ``(lsn, encoded change)`` after ``lsn``, in order,
        of at most ``max_bytes`` encoded (or the first entry alone, if it is larger)."""
        with self._failing("read"):
            return _log_since(self._reader, lsn, limit, max_bytes)

    def changes_in(
        self, origin: bytes, first: int, last: int, max_bytes: int = LOG_PAGE_BYTES
    ) -> list[tuple[int, bytes]]:
        """``(seq, encoded change)`` of ``origin`` with seqs in ``first..last`` that the
        log holds, in order, of at most ``max_bytes`` encoded (or the first alone, if it
        is larger): read on from the last seq for more."""
        with self._failing("read"):
            cursor = self._reader.execute(
                "SELECT seq, change FROM log WHERE origin = ? AND seq BETWEEN ? AND ? ORDER BY seq",
                (origin, first, last),
            )
            return _page(cursor, max_bytes)

    def digest(self) -> str:
        """BLAKE2b over every visible record in (collection, key) order, as hex."""
        h = hashlib.blake2b(digest_size=16)
        with self._failing("read"):
            rows = self._reader.execute(
                "SELECT collection, key, doc FROM records WHERE doc IS NOT NULL "
                "ORDER BY collection, key"
            )
            for collection, key, doc in rows:
                h.update(msgpack.packb((collection, key, doc)))
        return h.hexdigest()

    def counts(self) -> dict[str, tuple[int, int]]:
        """Per collection: (visible records, deleted records still held as tombstones)."""
        with self._failing("read"):
            rows = self._reader.execute(
                "SELECT collection, count(doc), count(*) - count(doc) FROM records "
                "GROUP BY collection"
            ).fetchall()
        return {c: (live, dead) for c, live, dead in rows}

    @property
    def last_lsn(self) -> int:
        return self._last_lsn

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
    """The rows ``(number, encoded change)`` of ``cursor`` up to ``max_bytes`` of changes,
    or the first alone if it is larger; the cursor is closed."""
    out: list[tuple[int, bytes]] = []
    size = 0
    try:
        for row in cursor:
            size += len(row[1])
            if out and size > max_bytes:
                break
            out.append(row)
    finally:
        cursor.close()  # ends the statement, and its read transaction (see `first_row`)
    return out


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

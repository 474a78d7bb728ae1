"""What every store that merges records does the same, whatever keeps its bytes.

`MergingStore` takes a batch of jobs (`Store.write_batch`): it stamps and sequences local
writes, checks remote changes (`protocol.admission`, `protocol.hlc`), merges them into the
records they touch (`protocol.crdt`), and hands the subclass the rows to write: records,
log entries, the seqs taken from this node. A subclass keeps those rows (SQLite tables, or
dicts in memory) inside one transaction of its own, and serves the reads.

Records are kept encoded, as ``(document, stamps)`` (`protocol.codec.encode_document`,
`encode_meta`; no document while deleted), and log entries as `encode_change` gives them:
every store then reads back exactly what it was given, and equal records digest equally
(`record_digest`).
"""

from __future__ import annotations

import contextlib
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence

import msgpack

from blazemesh.agent.errors import StorageError
from blazemesh.agent.storage.store import Applied, Job, LocalWrite, Outcome, RecordUpdate
from blazemesh.protocol.admission import MAX_RUNS_HELD, Admission
from blazemesh.protocol.codec import (
    decode_change,
    decode_document,
    decode_meta,
    encode_change,
    encode_document,
    encode_meta,
)
from blazemesh.protocol.crdt import RecordKey, RecordState, apply_change
from blazemesh.protocol.errors import (
    OwnOriginError,
    ProtocolError,
    ValidationError,
    VersionLimitError,
)
from blazemesh.protocol.fingerprints import change_digest
from blazemesh.protocol.hlc import COUNTER_BITS, HybridClock
from blazemesh.protocol.ids import node_id_short
from blazemesh.protocol.model import (
    MAX_CHANGE_BYTES,
    MAX_SEQ,
    Change,
    Value,
    change_objects,
    held_bytes,
)
from blazemesh.protocol.vv import VersionVector

# A record as stored: (collection, key, encoded document or None while deleted, stamps).
RecordRow = tuple[str, str, bytes | None, bytes]
StoredRecord = tuple[str, bytes | None, bytes]  # a record of a known collection: key, doc, stamps
# A log entry as stored: (lsn, origin, seq, the last HLC stamp of its ops, encoded change,
# its digest). A dot has several entries when its origin issued it more than once, one per
# version (docs/design.md, "Versions and fingerprints").
LogRow = tuple[int, bytes, int, int, bytes, int]

# How far a restored copy's own seqs jump (`MergingStore.mark_restored`): past every change
# the node can have made after the copy (4 billion), with room for 2 billion restores.
SEQ_EPOCH = 1 << 32
# How far past the last of its own seqs a node holds it believes a peer that holds more:
# a copy restored k times may have written k windows further on; 256 restores' worth. A
# member's forged claim makes a node skip no more seqs than this (of 2^63).
MAX_TAKE_BACK_SEQS = 256 * SEQ_EPOCH
# Versions of one dot kept (`_admit`): a seq issued by a node, by a restored copy of it
# and by a clone or two; past that, further versions are refused.
MAX_VERSIONS_PER_DOT = 4

# What a failure of the storage says (`MergingStore._failing`).
WRITE_FAILED = "write to {where} failed: {error}"
READ_FAILED = "could not read {where}: {error}"
RESTAMP_FAILED = "re-stamping in {where} failed: {error}"
# What decoding stored bytes that are not what was stored (damage on disk) raises.
DECODE_ERRORS = (ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException)


def stored_document(doc: bytes, collection: str, key: str, where: str) -> dict[str, Value]:
    """Decode the stored document of ``collection/key``; `StorageError` naming the record
    and the store ``where`` if its bytes are damaged."""
    try:
        return decode_document(doc)
    except DECODE_ERRORS as exc:
        raise StorageError(_corrupt_record(collection, key, where, exc)) from None


def _corrupt_record(collection: str, key: str, where: str, exc: Exception) -> str:
    return (
        f"record {collection}/{key} in {where} is corrupt ({type(exc).__name__}: {exc}): "
        "the database is damaged; restore it from a backup"
    )


def corrupt_log_entry(lsn: int, where: str, exc: Exception) -> StorageError:
    """The error for log entry ``lsn`` of ``where`` that does not decode."""
    return StorageError(
        f"log entry {lsn} in {where} is corrupt ({exc}): the database is damaged; "
        "restore it from a backup"
    )


def last_stamp(change: Change) -> int:
    """The stamp of a change's last op: the clock stands at least there once it is held."""
    return change.hlc + len(change.ops) - 1


def replay(
    vv: VersionVector,
    fingerprints: dict[bytes, int],
    rows: Iterable[tuple[int, bytes, int, int, int]],
    lsn: int = 0,
    stamp: int = 0,
) -> tuple[int, int]:
    """Add the dots of log entries ``(lsn, origin, seq, last stamp, digest)`` to ``vv``
    and their digests to ``fingerprints``, as on opening; return the last lsn and the
    greatest stamp, starting from ``lsn``, ``stamp``."""
    for row_lsn, origin, seq, last, digest in rows:
        vv.add(origin, seq)
        fingerprints[origin] = fingerprints.get(origin, 0) ^ digest
        stamp = max(stamp, last)
        lsn = row_lsn
    return lsn, stamp


def page(rows: Iterable[tuple[int, bytes]], max_bytes: int) -> list[tuple[int, bytes]]:
    """The rows ``(number, encoded change)`` up to ``max_bytes`` of changes, or the first
    alone if it is larger; never some of the rows of one number but not all (the
    versions of one seq), so that the next page starts at the next number."""
    out: list[tuple[int, bytes]] = []
    size = 0
    for row in rows:
        size += len(row[1])
        if out and size > max_bytes and row[0] != out[-1][0]:
            break
        out.append(row)
    return out


def record_digest(rows: Iterable[tuple[str, str, bytes]]) -> str:
    """BLAKE2b of visible records ``(collection, key, encoded document)`` given in
    (collection, key) order, as hex: `Store.digest`."""
    h = hashlib.blake2b(digest_size=16)
    for collection, key, doc in rows:
        h.update(msgpack.packb((collection, key, doc)))
    return h.hexdigest()


def _document_bytes(update: RecordUpdate, doc_bytes: dict[RecordKey, int]) -> int:
    """The held bytes of ``update``'s document: those of the record as the batch left
    it, or, if the batch deleted it, of this document itself."""
    document = update.document
    if document is None:
        return 0
    size = doc_bytes.get((update.collection, update.key))
    if size is None:
        size = _held_document(encode_document(document), document)
    return size


def _held_document(doc: bytes, document: dict[str, Value]) -> int:
    return held_bytes(len(doc), 1 + len(document))


class MergingStore(ABC):
    """What every merging `Store` shares, over a subclass's rows. Not thread-safe."""

    def __init__(
        self,
        *,
        node_id: bytes,
        wall_ms: Callable[[], int],
        clock: HybridClock,
        vv: VersionVector,
        last_lsn: int,
        taken: Sequence[tuple[int, int]],
        fingerprints: dict[bytes, int],
        lost: tuple[int, int] | None = None,
    ) -> None:
        """Start from what the subclass recovered: the clock and the vector of the
        changes held, the last log position, the runs of this node's seqs taken, the
        fingerprint of each origin's changes held (`protocol.fingerprints`), and the
        seqs an earlier copy of this node may have issued (`mark_restored`)."""
        self.node_id = node_id
        self.wall_ms = wall_ms  # the HLC's wall clock
        self.clock = clock
        self.vv = vv
        self._last_lsn = last_lsn
        # Seqs of this node's own id that peers hold changes under and this node never
        # made (`OwnOriginError`): its own writes skip them, so that a forged change does
        # not shadow a real one. Bounded like gaps.
        self._taken = VersionVector.from_parts({}, {node_id: list(taken)})
        self._lost = lost
        self._next_seq = max(vv.max_seq(node_id), lost[1] if lost else 0) + 1
        # Fingerprints as committed (the writer's) and as `finish` published them (the
        # readers'): a batch may run in a worker thread while links read.
        self._written_fps = fingerprints
        self._fingerprints = dict(fingerprints)
        self.commits = 0  # transactions committed since opening: group commit shows here

    @property
    def last_lsn(self) -> int:
        return self._last_lsn

    # -- what a subclass provides ---------------------------------------------------------

    # The exceptions by which the subclass's storage fails (sqlite3.Error, say): they
    # come out as `StorageError`, saying what failed (`_failing`).
    STORAGE_ERRORS: tuple[type[Exception], ...] = ()

    @abstractmethod
    def _where(self) -> str:
        """The store's name in messages: its file, say."""

    @abstractmethod
    def _transaction(self) -> contextlib.AbstractContextManager[object]:
        """A write transaction: commits if the block returns, rolls back if it raises."""

    @abstractmethod
    def _load_records(self, collection: str, keys: list[str]) -> Iterable[StoredRecord]:
        """The stored records of those of ``keys`` that ``collection`` holds."""

    @abstractmethod
    def _save_records(self, rows: list[RecordRow]) -> None:
        """Write (insert or replace) records, in the transaction."""

    @abstractmethod
    def _append_log(self, rows: list[LogRow]) -> None:
        """Add log entries, in the transaction."""

    @abstractmethod
    def _versions(self, origin: bytes, seq: int) -> set[int]:
        """The digests of the versions of ``(origin, seq)`` the log holds."""

    @abstractmethod
    def _digests(self, origin: bytes, first: int, last: int) -> Iterable[int]:
        """The digests of every version the log holds of ``origin`` in ``first..last``."""

    @abstractmethod
    def _save_taken(self, runs: list[tuple[int, int]]) -> None:
        """Keep, in the transaction, the runs of this node's seqs taken (`_take`)."""

    @abstractmethod
    def _save_lost(self, lost: tuple[int, int]) -> None:
        """Keep, in the transaction, the seqs an earlier copy may have issued."""

    @abstractmethod
    def _own_ahead(self, stamp: int) -> list[tuple[int, bytes]]:
        """``(lsn, encoded change)`` of this node's changes whose last stamp is past
        ``stamp``, by seq."""

    @abstractmethod
    def _last_stamp_but_own_ahead(self, stamp: int) -> int:
        """The greatest last stamp of the log's changes but those of `_own_ahead`."""

    @abstractmethod
    def _rewrite_log(self, lsn: int, blob: bytes, stamp: int, digest: int) -> None:
        """Replace the change at ``lsn``, its last stamp and digest, in the transaction."""

    @abstractmethod
    def _whole_log(self) -> Iterable[bytes]:
        """Every encoded change of the log, by lsn."""

    @abstractmethod
    def _written(
        self, lsn: int, added: dict[bytes, dict[int, int]], fingerprints: dict[bytes, int]
    ) -> None:
        """Called inside each batch's transaction once its rows are written, with the
        last lsn, the dots it adds and the new fingerprints of their origins
        (`SqliteStore` saves a snapshot there)."""

    @abstractmethod
    def _restamped(self) -> None:
        """Called inside `restamp_ahead`'s transaction once the new clock is set."""

    @contextlib.contextmanager
    def _failing(self, message: str) -> Iterator[None]:
        """Raise `STORAGE_ERRORS` in the block as `StorageError` with ``message``, which
        names the store as ``{where}`` and the error as ``{error}``."""
        try:
            yield
        except self.STORAGE_ERRORS as exc:
            raise StorageError(message.format(where=self._where(), error=exc)) from exc

    # -- writing --------------------------------------------------------------------------

    def write_batch(self, jobs: Sequence[Job], *, with_updates: bool = True) -> list[Outcome]:
        """`Store.write_batch`."""
        before = self._next_seq, self._taken, self._last_lsn
        try:
            with self._failing(WRITE_FAILED), self._transaction():
                outcomes, fps = self._write_batch(jobs, with_updates)
        except BaseException:
            # Rolled back: the seqs and log positions it took were never written.
            self._next_seq, self._taken, self._last_lsn = before
            raise
        self._written_fps.update(fps)
        self.commits += 1
        return outcomes

    def _write_batch(
        self, jobs: Sequence[Job], with_updates: bool
    ) -> tuple[list[Outcome], dict[bytes, int]]:
        """Write the batch's rows; return the outcomes and the new fingerprints of the
        origins the batch adds to."""
        outcomes: list[Outcome] = [None] * len(jobs)
        admitted: list[tuple[int, Change, bytes, int, bool]] = []
        added: dict[bytes, dict[int, int]] = {}  # origin -> seq -> digest, new dots only
        admission = Admission(self.node_id, self.vv, own_lost=self._lost)
        versions: dict[tuple[bytes, int], set[int]] = {}  # of dots held, as admitted
        for i, job in enumerate(jobs):
            try:
                change, blob, another = self._admit(job, added, admission, versions)
            except OwnOriginError as exc:
                outcomes[i] = exc
                assert isinstance(job, Change)
                self._take(job.seq)
                continue
            except ProtocolError as exc:
                outcomes[i] = exc
                continue
            if change is not None:
                digest = change_digest(blob)
                admitted.append((i, change, blob, digest, another))
                if another:
                    versions[change.dot].add(digest)
                else:
                    added.setdefault(change.origin, {})[change.seq] = digest
        if not admitted:
            return outcomes, {}
        states = self._load_states(
            {(op.collection, op.key) for _, c, *_ in admitted for op in c.ops}
        )
        dirty: set[RecordKey] = set()
        log_rows: list[LogRow] = []
        applied: list[tuple[int, tuple[RecordUpdate, ...]]] = []  # lsn, updates
        lsn = self._last_lsn
        for _, change, blob, digest, _ in admitted:
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
            log_rows.append((lsn, change.origin, change.seq, last_stamp(change), blob, digest))
            applied.append((lsn, updates))
        doc_bytes = self._save_states(states, dirty, sizes=with_updates)
        for (i, change, blob, digest, another), (at, updates) in zip(
            admitted, applied, strict=True
        ):
            outcomes[i] = Applied(
                lsn=at,
                change=change,
                updates=updates,
                change_bytes=held_bytes(len(blob), change_objects(change)),
                # A record that several changes of the batch touched counts as it ended,
                # or as this change left it if a later one deleted it.
                updates_bytes=sum(_document_bytes(u, doc_bytes) for u in updates),
                digest=digest,
                another_version=another,
            )
        fps: dict[bytes, int] = {}
        for _, change, _, digest, _ in admitted:
            origin = change.origin
            fps[origin] = fps.get(origin, self._written_fps.get(origin, 0)) ^ digest
        self._append_log(log_rows)
        self._written(lsn, added, fps)
        self._last_lsn = lsn
        return outcomes, fps

    def _admit(
        self,
        job: Job,
        added: dict[bytes, dict[int, int]],
        admission: Admission,
        versions: dict[tuple[bytes, int], set[int]],
    ) -> tuple[Change | None, bytes, bool]:
        """Stamp a local write, or check a remote change; return it (None for a change
        held), its log encoding, and whether it is another version of a dot held."""
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
            return change, blob, False
        blob = encode_change(job)
        batch = added.get(job.origin, {})
        if job.dot in self.vv or job.seq in batch:
            return self._another_version(job, blob, versions, batch.get(job.seq)), blob, True
        admission.admit(job)
        self.clock.receive(last_stamp(job), self.wall_ms())
        return job, blob, False

    def _another_version(
        self,
        change: Change,
        blob: bytes,
        versions: dict[tuple[bytes, int], set[int]],
        in_batch: int | None,
    ) -> Change | None:
        """``change`` if it is a version of a held dot (``in_batch``: the digest of the
        first version of a dot new in this batch) that neither the log nor the batch
        holds, else None (docs/design.md, "Versions and fingerprints"): its ops merge
        like any change's, so every replica that holds the same versions holds the same
        records."""
        dot = change.dot
        held = versions.get(dot)
        if held is None:
            held = versions[dot] = self._versions(*dot) if in_batch is None else {in_batch}
        if change_digest(blob) in held:
            return None
        if len(held) >= MAX_VERSIONS_PER_DOT:
            raise VersionLimitError(
                f"change {change.seq} of {node_id_short(change.origin)} has "
                f"{MAX_VERSIONS_PER_DOT} versions here already, the limit"
            )
        self.clock.receive(last_stamp(change), self.wall_ms())
        return change

    @property
    def lost(self) -> tuple[int, int] | None:
        """The seqs of this node's id that an earlier copy of its data may have issued
        after the copy was made: taken back from peers, never issued again."""
        return self._lost

    def mark_restored(self, through: int = 0) -> tuple[int, int]:
        """This store holds an earlier copy of the node's data (restored from a backup,
        copied to a new device, recreated empty): changes the node made after the copy
        may be on its peers, under the seqs that follow the last it holds (through
        ``through`` at least, which a peer showed). From now on its own writes take seqs
        `SEQ_EPOCH` further on (or past ``through``), and remote changes under its id
        with seqs in between are taken back as its own (docs/design.md, "Restores").
        Return the window of such seqs."""
        first = self.vv.max_seq(self.node_id) + 1
        lost = (first, max(first + SEQ_EPOCH - 1, through))
        if self._lost is not None:
            lost = (min(self._lost[0], first), max(self._lost[1], lost[1]))
        with self._failing(WRITE_FAILED), self._transaction():
            self._save_lost(lost)
        self._lost = lost
        self._next_seq = max(self._next_seq, lost[1] + 1)
        return lost

    def take_back(self, claimed: int) -> tuple[int, int] | None:
        """A peer holds changes under this node's id up to seq ``claimed``, past the last
        this store holds: it is an earlier copy that nothing at open revealed (a disk
        snapshot put back, a device imaged from another). Mark it restored and return
        the window of seqs taken back; None if ``claimed`` needs nothing (already held
        or taken back) or is further than a copy of this node is believed to have
        written (`MAX_TAKE_BACK_SEQS` past what it holds: a claim to ignore)."""
        held = self.vv.max_seq(self.node_id)
        lost = self._lost
        if claimed <= held or (lost is not None and claimed <= lost[1]):
            return None
        if claimed - held > MAX_TAKE_BACK_SEQS:
            return None
        return self.mark_restored(through=claimed)

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
        self._save_taken(runs + list(taken.runs(node_id)))
        self._taken = taken

    def _load_states(self, keys: set[RecordKey]) -> dict[RecordKey, RecordState]:
        states = {rk: RecordState() for rk in keys}
        by_collection: dict[str, list[str]] = {}
        for collection, key in keys:
            by_collection.setdefault(collection, []).append(key)
        for collection, names in by_collection.items():
            for key, doc, meta in self._load_records(collection, names):
                states[collection, key] = self._decode_state(collection, key, doc, meta)
        return states

    def _decode_state(
        self, collection: str, key: str, doc: bytes | None, meta: bytes
    ) -> RecordState:
        try:
            return decode_meta(meta, None if doc is None else decode_document(doc))
        except DECODE_ERRORS as exc:
            raise StorageError(_corrupt_record(collection, key, self._where(), exc)) from None

    def _save_states(
        self, states: dict[RecordKey, RecordState], keys: Iterable[RecordKey], *, sizes: bool
    ) -> dict[RecordKey, int]:
        """Write the records of ``keys``; with ``sizes``, return the held bytes of each
        document left (else nothing)."""
        rows: list[RecordRow] = []
        doc_bytes: dict[RecordKey, int] = {}
        for c, k in keys:
            state = states[c, k]
            document = state.document()
            doc = None
            if document is not None:
                doc = encode_document(document)
                if sizes:
                    doc_bytes[c, k] = _held_document(doc, document)
            rows.append((c, k, doc, encode_meta(state)))
        self._save_records(rows)
        return doc_bytes

    def finish(self, outcomes: Sequence[Outcome]) -> None:
        """Fold a returned batch's new dots into the in-memory version vector.

        Kept apart from `write_batch` so that, when a batch runs in a worker thread, the
        vector is only ever changed on the thread that reads it.
        """
        fps = self._fingerprints
        for outcome in outcomes:
            if isinstance(outcome, Applied):
                origin = outcome.change.origin
                self.vv.add(origin, outcome.change.seq)
                fps[origin] = fps.get(origin, 0) ^ outcome.digest

    # -- fingerprints (`protocol.fingerprints.Holdings`) ----------------------------------

    def fingerprint(self, origin: bytes) -> int:
        """`Holdings.fingerprint`, as of the last `finish`."""
        return self._fingerprints.get(origin, 0)

    def range_fingerprint(self, origin: bytes, first: int, last: int) -> int:
        """`Holdings.range_fingerprint`, as committed."""
        fp = 0
        with self._failing(READ_FAILED):
            for digest in self._digests(origin, first, last):
                fp ^= digest
        return fp

    def restamp_ahead(self) -> int:
        """`Store.restamp_ahead`, for a node whose clock ran ahead and was set right.

        Every peer refused those changes (their stamps were ahead of its clock), so they
        are nowhere else, and re-stamped they no longer win against everything written
        until the wall clock reaches their old stamps. Each keeps its seq and ops; the
        records they touched are merged again from the whole log. One transaction;
        reads the whole log, so it takes as long as a full scan. If it fails, nothing
        changes, the clock included.
        """
        now_ms = self.wall_ms()
        old, old_fp = self.clock, self._written_fps.get(self.node_id, 0)
        ahead = ((now_ms + old.max_skew_ms + 1) << COUNTER_BITS) - 1  # stamps past this
        try:
            with self._failing(RESTAMP_FAILED), self._transaction():
                rows = self._own_ahead(ahead)
                clock = HybridClock(
                    last=self._last_stamp_but_own_ahead(ahead), max_skew_ms=old.max_skew_ms
                )
                keys: set[RecordKey] = set()
                fp = old_fp
                for lsn, blob in rows:
                    was = decode_change(blob)
                    change = Change(
                        origin=was.origin,
                        seq=was.seq,
                        hlc=clock.tick(now_ms, width=len(was.ops)),
                        ops=was.ops,
                    )
                    new = encode_change(change)
                    digest = change_digest(new)
                    fp ^= change_digest(blob) ^ digest
                    self._rewrite_log(lsn, new, last_stamp(change), digest)
                    keys.update((op.collection, op.key) for op in change.ops)
                states: dict[RecordKey, RecordState] = {}
                for blob in self._whole_log():
                    change = decode_change(blob)
                    if any((op.collection, op.key) in keys for op in change.ops):
                        apply_change(change, states)
                self._save_states(states, keys, sizes=False)
                self.clock = clock
                self._written_fps[self.node_id] = fp
                self._restamped()  # a snapshot, with the new clock and fingerprint
        except ProtocolError as exc:  # a log entry that does not decode
            self.clock, self._written_fps[self.node_id] = old, old_fp
            raise StorageError(RESTAMP_FAILED.format(where=self._where(), error=exc)) from exc
        except BaseException:
            self.clock, self._written_fps[self.node_id] = old, old_fp
            raise
        self._fingerprints[self.node_id] = fp
        return len(rows)

    # -- reading --------------------------------------------------------------------------

    def get(self, collection: str, key: str) -> dict[str, Value] | None:
        """`Store.get`."""
        with self._failing(READ_FAILED):
            doc = self._read_document(collection, key)
        return None if doc is None else stored_document(doc, collection, key, self._where())

    @abstractmethod
    def _read_document(self, collection: str, key: str) -> bytes | None:
        """The committed encoded document of a record, or None if absent or deleted."""

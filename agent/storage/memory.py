"""A store that keeps everything in memory, for tests and tools: `MemoryStore`.

It is the same store as `agent.storage.sqlite.SqliteStore` to everyone who uses it
(tests/agent/storage_contract.py checks both): the rules, the merge and the encodings are
`agent.storage.merging`'s; only where the rows live differs. They live in a
`MemoryData`, which outlives the store as a database file does: a new store opened on it
recovers the vector and the clock from its log, like a restart.

A batch runs on the calling thread without yielding, so no reader sees half of one; a
batch that raises is undone (`_transaction`). Nothing survives the process.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from blazemesh.agent.errors import StorageError
from blazemesh.agent.storage.merging import (
    LogRow,
    MergingStore,
    RecordRow,
    StoredRecord,
    page,
    record_digest,
    replay,
)
from blazemesh.agent.storage.store import LOG_PAGE_BYTES
from blazemesh.protocol.hlc import DEFAULT_MAX_SKEW_MS, HybridClock
from blazemesh.protocol.vv import VersionVector

WHERE = "the in-memory store"  # its name in messages


@dataclass(slots=True, kw_only=True)
class MemoryData:
    """The rows of a `MemoryStore`: what a database file would hold."""

    owner: bytes | None = None  # the node id of the store that first opened it
    # collection -> key -> (encoded document, or None while deleted; encoded stamps)
    records: dict[str, dict[str, tuple[bytes | None, bytes]]] = field(default_factory=dict)
    log: list[LogRow] = field(default_factory=list)  # entry ``lsn`` at index ``lsn - 1``
    seqs: dict[bytes, list[int]] = field(default_factory=dict)  # origin -> its seqs, sorted
    lsns: dict[tuple[bytes, int], list[int]] = field(default_factory=dict)  # dot -> its
    # lsns, one per version
    taken: list[tuple[int, int]] = field(default_factory=list)  # `MergingStore._take`
    lost: tuple[int, int] | None = None  # `MergingStore.mark_restored`

    def held_bytes(self) -> int:
        """The bytes of the encoded changes and records held (the file size's analogue)."""
        records = sum(
            len(doc or b"") + len(meta)
            for keys in self.records.values()
            for doc, meta in keys.values()
        )
        return records + sum(len(row[4]) for row in self.log)


class _Rows:
    """A scan's rows, copied when it began."""

    def __init__(self, rows: list[tuple[str, bytes]]) -> None:
        self._rows = rows
        self._at = 0

    def fetchmany(self, size: int) -> list[tuple[str, bytes]]:
        rows = self._rows[self._at : self._at + size]
        self._at += len(rows)
        return rows


class MemoryStore(MergingStore):
    """A `Store` in a `MemoryData` (a fresh one if none is given). Not thread-safe."""

    def __init__(
        self,
        data: MemoryData | None = None,
        *,
        node_id: bytes,
        wall_ms: Callable[[], int],
        max_skew_ms: int = DEFAULT_MAX_SKEW_MS,
    ) -> None:
        self.data = data = MemoryData() if data is None else data
        if data.owner is None:
            data.owner = node_id
        elif data.owner != node_id:
            raise StorageError(f"{WHERE} belongs to another node identity")
        vv = VersionVector()
        fingerprints: dict[bytes, int] = {}
        rows = (
            (lsn, origin, seq, stamp, digest) for lsn, origin, seq, stamp, _, digest in data.log
        )
        last_lsn, clock = replay(vv, fingerprints, rows)
        super().__init__(
            node_id=node_id,
            wall_ms=wall_ms,
            clock=HybridClock(last=clock, max_skew_ms=max_skew_ms),
            vv=vv,
            last_lsn=last_lsn,
            taken=data.taken,
            fingerprints=fingerprints,
            lost=data.lost,
        )
        self._undo: list[Callable[[], object]] | None = None  # while a transaction runs

    def close(self) -> None:
        """Nothing to let go of: the rows stay in `data`."""

    def checkpoint(self, *, truncate: bool = False) -> None:
        """Nothing to copy: every batch is already where reads find it."""

    def commits_inline(self, ops: int) -> bool:
        """Always: there is no I/O to wait for, only the merge's Python, which would hold
        the GIL in a worker thread just the same."""
        return True

    def _where(self) -> str:
        return WHERE

    # -- the rows of `MergingStore` -----------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """Writes go straight to `data`, each noting how to undo it; if the block
        raises, they are undone, newest first."""
        self._undo = []
        try:
            yield
        except BaseException:
            for undo in reversed(self._undo):
                undo()
            raise
        finally:
            self._undo = None

    def _note(self, undo: Callable[[], object]) -> None:
        assert self._undo is not None, "a write outside a transaction"
        self._undo.append(undo)

    def _load_records(self, collection: str, keys: list[str]) -> Iterable[StoredRecord]:
        records = self.data.records.get(collection, {})
        for key in keys:
            if key in records:
                yield (key, *records[key])

    def _save_records(self, rows: list[RecordRow]) -> None:
        data = self.data
        for collection, key, doc, meta in rows:
            records = data.records.setdefault(collection, {})
            was = records.get(key)
            records[key] = (doc, meta)
            if was is None:
                self._note(functools.partial(records.pop, key))
            else:
                self._note(functools.partial(records.__setitem__, key, was))

    def _append_log(self, rows: list[LogRow]) -> None:
        data = self.data
        for row in rows:
            lsn, origin, seq, *_ = row
            data.log.append(row)
            lsns = data.lsns.setdefault((origin, seq), [])
            if not lsns:
                bisect.insort(data.seqs.setdefault(origin, []), seq)
            lsns.append(lsn)
            self._note(functools.partial(self._drop_last, origin, seq))

    def _drop_last(self, origin: bytes, seq: int) -> None:
        data = self.data
        data.log.pop()
        lsns = data.lsns[origin, seq]
        lsns.pop()
        if not lsns:
            data.seqs[origin].remove(seq)
            del data.lsns[origin, seq]

    def _versions(self, origin: bytes, seq: int) -> set[int]:
        data = self.data
        return {data.log[lsn - 1][5] for lsn in data.lsns.get((origin, seq), ())}

    def _digests(self, origin: bytes, first: int, last: int) -> Iterable[int]:
        data = self.data
        seqs = data.seqs.get(origin, [])
        held = seqs[bisect.bisect_left(seqs, first) : bisect.bisect_right(seqs, last)]
        return [data.log[lsn - 1][5] for seq in held for lsn in data.lsns[origin, seq]]

    def _save_taken(self, runs: list[tuple[int, int]]) -> None:
        was, self.data.taken = self.data.taken, runs
        self._note(functools.partial(setattr, self.data, "taken", was))

    def _save_lost(self, lost: tuple[int, int]) -> None:
        was, self.data.lost = self.data.lost, lost
        self._note(functools.partial(setattr, self.data, "lost", was))

    def _written(
        self, lsn: int, added: dict[bytes, dict[int, int]], fingerprints: dict[bytes, int]
    ) -> None:
        """No snapshot to save: opening replays the whole log."""

    def _restamped(self) -> None:
        """No snapshot to save: opening replays the whole log."""

    def _own_ahead(self, stamp: int) -> list[tuple[int, bytes]]:
        data, me = self.data, self.node_id
        lsns = [lsn for seq in data.seqs.get(me, ()) for lsn in data.lsns[me, seq]]
        return [(lsn, data.log[lsn - 1][4]) for lsn in lsns if data.log[lsn - 1][3] > stamp]

    def _last_stamp_but_own_ahead(self, stamp: int) -> int:
        me = self.node_id
        return max(
            (s for _, origin, _, s, *_ in self.data.log if not (origin == me and s > stamp)),
            default=0,
        )

    def _rewrite_log(self, lsn: int, blob: bytes, stamp: int, digest: int) -> None:
        log = self.data.log
        was = log[lsn - 1]
        log[lsn - 1] = (lsn, was[1], was[2], stamp, blob, digest)
        self._note(functools.partial(log.__setitem__, lsn - 1, was))

    def _whole_log(self) -> Iterable[bytes]:
        return [row[4] for row in self.data.log]

    # -- reading ------------------------------------------------------------------------

    def _read_document(self, collection: str, key: str) -> bytes | None:
        record = self.data.records.get(collection, {}).get(key)
        return None if record is None else record[0]

    @contextlib.contextmanager
    def scan(self, collection: str, start: str, *, inclusive: bool) -> Iterator[_Rows]:
        """`Store.scan`: the rows are copied when it begins."""
        records = self.data.records.get(collection, {})
        keys = sorted(
            key
            for key, (doc, _) in records.items()
            if doc is not None and (key >= start if inclusive else key > start)
        )
        yield _Rows([(key, doc) for key in keys if (doc := records[key][0]) is not None])

    def log_since(
        self, lsn: int, limit: int, max_bytes: int = LOG_PAGE_BYTES
    ) -> list[tuple[int, bytes]]:
        """`Store.log_since`."""
        rows = self.data.log[max(lsn, 0) : max(lsn, 0) + max(limit, 0)]
        return page(((row[0], row[4]) for row in rows), max_bytes)

    def changes_in(
        self, origin: bytes, first: int, last: int, max_bytes: int = LOG_PAGE_BYTES
    ) -> list[tuple[int, bytes]]:
        """`Store.changes_in`."""
        data = self.data
        seqs = data.seqs.get(origin, [])
        held = (seqs[i] for i in range(bisect.bisect_left(seqs, first), len(seqs)))
        return page(
            (
                (seq, data.log[lsn - 1][4])
                for seq in itertools.takewhile(lambda seq: seq <= last, held)
                for lsn in data.lsns[origin, seq]
            ),
            max_bytes,
        )

    def digest(self) -> str:
        """`Store.digest`."""
        records = self.data.records
        return record_digest(
            (collection, key, doc)
            for collection in sorted(records)
            for key in sorted(records[collection])
            if (doc := records[collection][key][0]) is not None
        )

    def counts(self) -> dict[str, tuple[int, int]]:
        """`Store.counts`."""
        out = {}
        for collection, records in self.data.records.items():
            live = sum(doc is not None for doc, _ in records.values())
            out[collection] = (live, len(records) - live)
        return out

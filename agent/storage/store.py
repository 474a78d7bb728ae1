"""The storage interface: what a replica and its node need of a store (docs/design.md,
"Storage").

A store holds one node's change log, the records merged from it and the version vector of
the changes it holds. Two implementations pass one contract (tests/agent/storage_contract.py):
`agent.storage.sqlite.SqliteStore`, the agent's, durable; and
`agent.storage.memory.MemoryStore`, for tests and tools. Both build on
`agent.storage.merging.MergingStore`, which holds what a store that merges does the same
whatever keeps its bytes: admission, stamping, sequencing, the merge (by `protocol`).

The interface comes in two parts, for the relay to come, which stores and forwards sealed
changes it cannot read: `ChangeLog` is what the sync engine reads (the vector, and the log
of encoded changes by position and by origin), which such a store can serve; `Store` adds
what only a replica can do: stamp local writes, merge changes into records and read them.

Stores are synchronous and owned by one writer at a time (the replica's committer).
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from blazemesh.protocol.errors import ProtocolError
from blazemesh.protocol.hlc import HybridClock
from blazemesh.protocol.model import Change, Op, Value
from blazemesh.protocol.vv import VersionVector

# Encoded changes read from the log at a time by a reader that follows it (a watch, a
# catch-up): a page holds this much, or one change if that is larger.
LOG_PAGE_BYTES = 1 << 20


class Durability(enum.Enum):
    """How much a returned write survives, in a store that keeps files
    (docs/operations.md, "Durability")."""

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
    digest: int = 0  # of the change (`protocol.fingerprints.change_digest`)
    another_version: bool = False  # of a change held: the same dot, other contents


@dataclass(frozen=True, slots=True)
class LocalWrite:
    """The ops of one local transaction, to be stamped and sequenced by the store."""

    ops: tuple[Op, ...]


Job = LocalWrite | Change
Outcome = Applied | ProtocolError | None  # None: a remote change already held


class Rows(Protocol):
    """Rows ``(key, encoded document)`` of a scan, fetched a page at a time."""

    def fetchmany(self, size: int) -> list[tuple[str, bytes]]:
        """Up to ``size`` more rows; none once the scan is done."""
        ...


class ChangeLog(Protocol):
    """The changes a node holds: what the sync engine reads to serve its peers.

    Log positions (``lsn``) number changes in the order this store took them, from 1;
    a change's encoding is `protocol.codec.encode_change`'s (or, in a relay's store, a
    sealed form of it).
    """

    @property
    def vv(self) -> VersionVector:
        """The live version vector of the changes held, grown by each batch's `finish`.
        Callers share it by reference and read it; only the store writes it."""
        ...

    @property
    def last_lsn(self) -> int:
        """The log position of the last change taken (0 for none)."""
        ...

    def log_since(
        self, lsn: int, limit: int, max_bytes: int = LOG_PAGE_BYTES
    ) -> list[tuple[int, bytes]]:
        """Up to ``limit`` log entries ``(lsn, encoded change)`` after ``lsn``, in order,
        of at most ``max_bytes`` encoded (or the first entry alone, if it is larger)."""
        ...

    def changes_in(
        self, origin: bytes, first: int, last: int, max_bytes: int = LOG_PAGE_BYTES
    ) -> list[tuple[int, bytes]]:
        """``(seq, encoded change)`` of ``origin`` with seqs in ``first..last`` that the
        log holds, in order, of at most ``max_bytes`` encoded (or the first alone, if it
        is larger): read on from the last seq for more. Every version of a seq held
        comes (docs/design.md, "Versions and fingerprints"), all in one page, in an
        order of the store's choosing."""
        ...

    def fingerprint(self, origin: bytes) -> int:
        """`protocol.fingerprints.Holdings`: the XOR of the digests of every version of
        ``origin``'s changes held, as of the last `finish` (0 for none)."""
        ...

    def range_fingerprint(self, origin: bytes, first: int, last: int) -> int:
        """`protocol.fingerprints.Holdings`: the same, over seqs ``first..last``, as
        committed."""
        ...

    def checkpoint(self, *, truncate: bool = False) -> None:
        """Make what committed cheaper to reopen (a WAL copied back); off the trio
        thread. Raises `StorageError` if it cannot; reads and writes go on as before."""
        ...

    def close(self) -> None:
        """Let go of the store; never raises for its storage (a failure is logged)."""
        ...


class Store(ChangeLog, Protocol):
    """One replica's store: the change log, the records merged from it, and the clock.

    Writes come in batches (`write_batch`) that commit whole or not at all; `finish`
    then folds a batch's new dots into `vv`, on the thread that reads it. Reads see
    committed batches only.
    """

    node_id: bytes
    clock: HybridClock  # the replica's HLC: stamps local writes, follows remote ones
    wall_ms: Callable[[], int]  # the HLC's wall clock
    commits: int  # batches committed since opening: group commit shows here

    def commits_inline(self, ops: int) -> bool:
        """Whether a batch of ``ops`` ops commits quickly enough to run on the trio
        thread rather than in a worker thread."""
        ...

    def write_batch(self, jobs: Sequence[Job], *, with_updates: bool = True) -> list[Outcome]:
        """Apply every job in one transaction and return one outcome per job.

        A local write becomes a change with the next free seq and fresh HLC stamps; a
        remote change already held is a no-op (None); a job the rules refuse
        (`protocol.admission`, the change size, the clock) gets its error and the others
        go on. If the storage fails, nothing is committed, no seq or log position is
        used up, and `StorageError` is raised. ``with_updates=False`` leaves
        `Applied.updates` empty, for when nobody observes.
        """
        ...

    def finish(self, outcomes: Sequence[Outcome]) -> None:
        """Fold a returned batch's new dots into `vv`."""
        ...

    def restamp_ahead(self) -> int:
        """Give this node's own changes stamped more than the skew limit ahead of the
        wall clock fresh stamps, merge the records they touched again, and set the clock
        back; return how many were re-stamped (docs/operations.md, "Clocks")."""
        ...

    def take_back(self, claimed: int) -> tuple[int, int] | None:
        """A peer holds this node's own changes up to seq ``claimed``, past what this store
        holds: take the missing ones back as the node's own, and issue no seq they may
        use (docs/design.md, "Restores"); the window of such seqs, or None."""
        ...

    def get(self, collection: str, key: str) -> dict[str, Value] | None:
        """The committed document of a record, or None if it is absent or deleted."""
        ...

    def scan(
        self, collection: str, start: str, *, inclusive: bool
    ) -> contextlib.AbstractContextManager[Rows]:
        """Rows ``(key, encoded document)`` of visible records from ``start`` on, in key
        order, as one snapshot while the block runs: a caller may page through it across
        trio checkpoints and never see half a batch."""
        ...

    def digest(self) -> str:
        """BLAKE2b over every visible record in (collection, key) order, as hex
        (`record_digest`): equal on two stores exactly when their records are."""
        ...

    def counts(self) -> dict[str, tuple[int, int]]:
        """Per collection: (visible records, deleted records still held as tombstones)."""
        ...

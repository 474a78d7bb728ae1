"""The replica API that apps and the CLI use: open, read, write, query, observe.

    async with open_replica("~/.local/share/blazemesh", create=True) as replica:
        await replica.put("bugs", "b-1", {"title": "crash on save", "open": True})
        print(await replica.get("bugs", "b-1"))

A replica runs over a `Store` (`agent.storage.store`): `open_replica` opens the data
directory's SQLite one; `serve_replica` runs over any other, such as a `MemoryStore`.

A write returns once it is committed to the store (durable before visible,
docs/design.md). A small write (`Store.commits_inline`: with SQLite and
`Durability.NORMAL`, up to 128 ops) commits right on the trio thread: a thread hop costs
more than the commit itself. Everything else -- big transactions, batches of remote
changes, and every write with `Durability.FULL`, whose fsync can take milliseconds -- is
queued to one committer task that runs everything queued as one transaction in a worker
thread, so concurrent writers share commits (group commit) and the loop never waits on
SQLite. docs/design.md, "Keeping SQLite off the loop", has the measurements behind the
split.

A WAL checkpoint runs in two passes: the first beside the writes, the second, which
copies only what was written during the first, in the committer, with writes held. A
checkpoint that only ever races writes never copies the last frames; the WAL is then
never started over, and it grows without bound.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import msgpack
import trio

from blazemesh.agent.errors import ClockAheadError, ReplicaClosedError, StorageError
from blazemesh.agent.storage.merging import corrupt_log_entry, stored_document
from blazemesh.agent.storage.observe import (
    DEFAULT_OBSERVER_BYTES,
    DEFAULT_OBSERVER_CAPACITY,
    Observer,
    ObserverHub,
)
from blazemesh.agent.storage.paths import (
    DB_FILE,
    KEY_FILE,
    check_data_dir,
    lock_data_dir,
    make_data_dir,
    private_database,
)
from blazemesh.agent.storage.sqlite import SqliteStore
from blazemesh.agent.storage.store import (
    LOG_PAGE_BYTES,
    Applied,
    Durability,
    Job,
    LocalWrite,
    Outcome,
    Store,
)
from blazemesh.agent.trust.identity import Identity, create_identity, load_identity
from blazemesh.protocol.codec import decode_change
from blazemesh.protocol.errors import RemoteProtocolError, ValidationError
from blazemesh.protocol.hlc import DEFAULT_MAX_SKEW_MS
from blazemesh.protocol.model import (
    MAX_COLLECTION_BYTES,
    MAX_KEY_BYTES,
    MAX_OPS_PER_CHANGE,
    Change,
    Delete,
    Fields,
    Op,
    Put,
    Value,
    validate_name,
    validate_op,
)
from blazemesh.protocol.vv import VersionVector

T = TypeVar("T")
log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_OPS = 2_000  # ops per group commit: bounds a batch's memory and latency
# The WAL grows by the pages each commit touches (12-15 KiB for a one-change commit),
# and a checkpoint copies them back. Whichever bound comes first: changes bound the WAL of
# batches, commits that of single writes (each to about 4 MiB; docs/design.md).
CHECKPOINT_EVERY_CHANGES = 4_096
CHECKPOINT_EVERY_COMMITS = 256
QUERY_PAGE_ROWS = 256  # rows read between checkpoints while a query runs


def wall_clock_ms() -> int:
    """Milliseconds since the Unix epoch: the default wall clock of the HLC."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """A visible record: its key and its fields."""

    collection: str
    key: str
    fields: dict[str, Value]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaInfo:
    """What `Replica.info` reports."""

    node_id: bytes
    data_dir: Path | None  # None: the store keeps no files
    last_lsn: int
    changes_held: int
    collections: dict[str, tuple[int, int]]  # name -> (records, tombstones)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClockReading:
    """The replica's hybrid logical clock, as `Replica.read_clock` finds it."""

    stamp: int  # the greatest stamp issued or received so far
    ahead_ms: int  # how far it stands ahead of the wall clock now (0 if it does not)


class _Pending:
    """Some jobs of one write call, waiting for the committer."""

    __slots__ = ("done", "jobs", "ops", "outcomes")

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs
        self.ops = sum(len(job.ops) for job in jobs)
        self.done = trio.Event()
        self.outcomes: list[Outcome] | StorageError = []


class Transaction:
    """Ops collected inside ``async with replica.transaction()``; they commit as one change.

    A transaction groups writes; it does not isolate reads: `Replica.get` inside it
    sees committed data, not the ops collected so far.
    """

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.change: Change | None = None  # set once committed

    def put(self, collection: str, key: str, fields: Fields) -> None:
        self._add(Put(collection=collection, key=key, fields=dict(fields)))

    def delete(self, collection: str, key: str) -> None:
        self._add(Delete(collection=collection, key=key))

    def _add(self, op: Op) -> None:
        if self.change is not None:
            raise ReplicaClosedError("this transaction has already committed")
        validate_op(op)
        if len(self.ops) >= MAX_OPS_PER_CHANGE:
            raise ValidationError(f"a transaction holds at most {MAX_OPS_PER_CHANGE} ops")
        self.ops.append(op)


class Replica:
    """One node's replica. Obtain it from `open_replica`; every method is trio-safe."""

    def __init__(
        self,
        *,
        store: Store,
        identity: Identity,
        data_dir: Path | None,
        max_batch_ops: int,
        threads: bool,
        checkpoint_every_commits: int,
    ) -> None:
        self._store = store
        self.identity = identity
        self.data_dir = data_dir
        # How messages name the store: its database file, or its kind.
        self._where = "the store" if data_dir is None else str(data_dir / DB_FILE)
        self._max_batch_ops = max_batch_ops
        self._threads = threads
        # Since open: changes received from peers, and how many were already held.
        self.received_changes = 0
        self.duplicate_changes = 0
        self._queue: deque[_Pending] = deque()
        self._work = trio.Event()
        self._busy = 0  # write calls in progress; close waits for them
        self._idle = trio.Event()
        self._idle.set()
        self._nursery: trio.Nursery | None = None
        self._committing = False  # the committer task holds a batch
        self._commit_listeners: list[Callable[[list[Applied]], None]] = []
        self._write_guard: Callable[[int, int], None] | None = None  # see `guard_writes`
        self._closed = False
        self._hub = ObserverHub(store.last_lsn)
        self._checkpoint_every_commits = checkpoint_every_commits
        self._changes_since_checkpoint = 0
        self._commits_since_checkpoint = 0
        self._checkpointing = False  # the first pass runs
        self._checkpoint_due = False  # the second pass waits for the committer

    @property
    def node_id(self) -> bytes:
        return self.identity.node_id

    @property
    def max_batch_ops(self) -> int:
        """The most ops one group commit holds."""
        return self._max_batch_ops

    @property
    def store(self) -> Store:
        """The underlying store, for tests and storage tools: apps and the node use the
        methods below."""
        return self._store

    @property
    def vv(self) -> VersionVector:
        """The live version vector of the changes held: the sync engine shares it by
        reference. Read it; only commits change it."""
        return self._store.vv

    @property
    def wall_ms(self) -> Callable[[], int]:
        """The wall clock this replica stamps by (the HLC's)."""
        return self._store.wall_ms

    @property
    def max_skew_ms(self) -> int:
        """How far ahead of the wall clock a remote stamp may be before it is refused."""
        return self._store.clock.max_skew_ms

    def read_clock(self) -> ClockReading:
        """The clock's last stamp, and how far it stands ahead of the wall clock now."""
        clock = self._store.clock
        return ClockReading(stamp=clock.last, ahead_ms=clock.ahead_ms(self._store.wall_ms()))

    # -- writing ------------------------------------------------------------------------

    async def put(self, collection: str, key: str, fields: Fields) -> Change:
        """Set ``fields`` on a record (creating it); return the committed change."""
        return await self.commit([Put(collection=collection, key=key, fields=dict(fields))])

    async def delete(self, collection: str, key: str) -> Change:
        """Delete a record: its fields written before now vanish everywhere."""
        return await self.commit([Delete(collection=collection, key=key)])

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """Collect ops in the block and commit them as one change when it exits cleanly."""
        tx = Transaction()
        yield tx
        if tx.ops:
            tx.change = await self._commit_valid(tx.ops)  # validated as they were added

    async def commit(self, ops: Sequence[Op], *, system: bool = False) -> Change:
        """Commit ``ops`` as one local change; return it once it is durable.

        ``system=True`` allows names starting with ``_``, which belong to blazemesh's own
        records (the mesh-wide settings). If the calling task is cancelled after
        submitting, the change may still commit.
        """
        if not ops:
            raise ValidationError("a change must hold at least one op")
        for op in ops:
            validate_op(op, system=system)
        return await self._commit_valid(ops)

    async def _commit_valid(self, ops: Sequence[Op]) -> Change:
        self.check_clock()
        (outcome,) = await self._write([LocalWrite(tuple(ops))])
        if isinstance(outcome, BaseException):
            raise outcome
        assert isinstance(outcome, Applied)
        return outcome.change

    async def apply_remote(self, changes: Sequence[Change]) -> list[Outcome]:
        """Apply changes received from peers; one outcome each (None if already held).

        Changes a rule refuses (a clock too far ahead, say) come back as their
        `RemoteProtocolError`; the others still apply. A change whose dot is held but
        whose contents are not is another version of it, and applies (docs/design.md,
        "Versions and fingerprints").
        """
        outcomes = await self._write(changes)
        self.received_changes += len(changes)
        self.duplicate_changes += outcomes.count(None)
        return outcomes

    async def _write(self, jobs: Sequence[Job]) -> list[Outcome]:
        self._check_open()
        if not self._busy:
            self._idle = trio.Event()
        self._busy += 1
        try:
            if self._inline_ok(sum(len(job.ops) for job in jobs)):
                outcomes = self._published(
                    self._store.write_batch(jobs, with_updates=self._hub.active)
                )
                await trio.lowlevel.checkpoint()
                return outcomes
            return await self._write_queued(jobs)
        finally:
            self._busy -= 1
            if not self._busy:
                self._idle.set()

    def _inline_ok(self, ops: int) -> bool:
        """Whether a batch may commit on the trio thread at once (module docstring)."""
        return (
            self._small(ops)
            and not self._committing
            and not self._queue
            and not self._checkpoint_due
        )

    def _small(self, ops: int) -> bool:
        return not self._threads or self._store.commits_inline(ops)

    async def _off_loop(self, fn: Callable[[], T]) -> T:
        return await _off_loop(fn, threads=self._threads)

    async def _write_queued(self, jobs: Sequence[Job]) -> list[Outcome]:
        pending = [_Pending(chunk) for chunk in _chunks(jobs, self._max_batch_ops)]
        self._queue.extend(pending)
        self._work.set()
        outcomes: list[Outcome] = []
        for p in pending:
            await p.done.wait()
            if isinstance(p.outcomes, StorageError):
                raise p.outcomes
            outcomes += p.outcomes
        return outcomes

    def _published(self, outcomes: list[Outcome]) -> list[Outcome]:
        self._store.finish(outcomes)
        applied = [o for o in outcomes if isinstance(o, Applied)]
        self._hub.publish(applied)
        for listener in self._commit_listeners:
            listener(applied)
        if applied:
            self._changes_since_checkpoint += len(applied)
            self._commits_since_checkpoint += 1
        if not (self._checkpointing or self._checkpoint_due) and (
            self._changes_since_checkpoint >= CHECKPOINT_EVERY_CHANGES
            or self._commits_since_checkpoint >= self._checkpoint_every_commits
        ):
            self._changes_since_checkpoint = self._commits_since_checkpoint = 0
            self._checkpointing = True
            assert self._nursery is not None
            self._nursery.start_soon(self._checkpoint)
        return outcomes

    async def _checkpoint(self) -> None:
        try:
            copied = await self._try_checkpoint()
        finally:
            self._checkpointing = False
        # Without threads no write ran beside it: it copied them all. After a failure the
        # next checkpoint that falls due tries again.
        if copied and self._threads:
            self._checkpoint_due = True
            self._work.set()

    async def _try_checkpoint(self, *, truncate: bool = False) -> bool:
        """Checkpoint the WAL and say whether it worked. A failure (a full disk) is
        logged, not raised: the WAL keeps every change until a checkpoint succeeds."""
        try:
            await self._off_loop(functools.partial(self._store.checkpoint, truncate=truncate))
        except StorageError as exc:
            log.warning("%s; the WAL keeps every change until a checkpoint succeeds", exc)
            return False
        return True

    async def _serve(self, *, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await self._commit_queued()

    async def _commit_queued(self) -> None:
        """Commit what `_write` queued: everything waiting shares one transaction.

        While a batch or a checkpoint runs in the worker thread the store is busy, so a
        small write that arrives meanwhile cannot take the inline path: it queues here
        instead (writes never run concurrently, nor beside a checkpoint's second pass).
        """
        while True:
            if self._checkpoint_due:
                self._committing = True  # writes queue until the second pass is done
                self._checkpoint_due = False
                await self._try_checkpoint()
            if not self._queue:
                self._committing = False
                self._work = trio.Event()
                await self._work.wait()
                continue
            self._committing = True
            batch = [self._queue.popleft()]
            ops = batch[0].ops
            while self._queue and ops + self._queue[0].ops <= self._max_batch_ops:
                ops += self._queue[0].ops
                batch.append(self._queue.popleft())
            jobs = [job for p in batch for job in p.jobs]
            try:
                write = functools.partial(
                    self._store.write_batch, jobs, with_updates=self._hub.active
                )
                outcomes = write() if self._small(ops) else await self._off_loop(write)
                self._published(outcomes)
            except StorageError as exc:
                for p in batch:
                    p.outcomes = exc
                    p.done.set()
                continue
            start = 0
            for p in batch:
                p.outcomes = outcomes[start : start + len(p.jobs)]
                start += len(p.jobs)
                p.done.set()
            await trio.lowlevel.checkpoint()

    async def take_back_own(self, claimed: int) -> tuple[int, int] | None:
        """A peer holds changes under this node's id up to seq ``claimed``, past the last
        this replica holds: this replica is an earlier copy of the node's data. Take
        those changes back as its own and write on past them (`Store.take_back`); the
        window of seqs taken back, or None if nothing was to do. Waits for writes in
        progress, so that none takes a seq meanwhile."""
        self._check_open()
        await self._idle.wait()
        return self._store.take_back(claimed)

    async def repair_clock(self) -> int:
        """Re-stamp this node's changes made while its clock ran ahead, once the clock is
        right again, and set the replica's clock back (`Store.restamp_ahead`); return
        how many were re-stamped. Waits for writes in progress; blocks the loop while it
        works (it reads the whole log): for `blazemesh repair-clock`, with no agent."""
        self._check_open()
        await self._idle.wait()
        return self._store.restamp_ahead()

    def check_clock(self) -> None:
        """Raise `ClockAheadError` if a local write now would be stamped so that every peer
        refused it (docs/operations.md, "Clocks"): the clock stands ahead of the device's
        (it ran ahead once and the device's clock was set back), or the guard says most
        peers' clocks are behind. Every local write is checked so first."""
        store = self._store
        now_ms = store.wall_ms()
        clock = store.clock
        ahead = clock.ahead_ms(now_ms)
        if ahead > clock.max_skew_ms:
            raise ClockAheadError(
                f"this replica's clock stands {duration_text(ahead)} ahead of this device's clock "
                "(it ran ahead once), so every peer would refuse its writes: if the device's "
                "clock is right now, stop the agent and run `blazemesh repair-clock`"
            )
        if self._write_guard is not None:
            self._write_guard(clock.next_ms(now_ms), now_ms)

    def guard_writes(self, check: Callable[[int, int], None]) -> Callable[[], None]:
        """Call ``check(stamp_ms, now_ms)`` before each local write is stamped; it raises
        `ClockAheadError` to refuse the write. For the node, which knows its peers' clocks.
        Return a function that removes it."""
        self._write_guard = check

        def remove() -> None:
            self._write_guard = None

        return remove

    def on_commit(self, listener: Callable[[list[Applied]], None]) -> Callable[[], None]:
        """Call ``listener(applied)`` synchronously after every commit; return a remover.

        For the sync engine, which must learn of every change (a listener cannot fall
        behind, so it must not block); apps use `observe`.
        """
        self._commit_listeners.append(listener)
        return lambda: self._commit_listeners.remove(listener)

    # -- reading ------------------------------------------------------------------------

    async def get(self, collection: str, key: str) -> dict[str, Value] | None:
        """The record's fields, or None if it does not exist or is deleted."""
        await trio.lowlevel.checkpoint()
        self._check_open()
        validate_name("collection", collection, MAX_COLLECTION_BYTES, system=True)
        validate_name("key", key, MAX_KEY_BYTES, system=True)
        return self._store.get(collection, key)

    def get_nowait(self, collection: str, key: str) -> dict[str, Value] | None:
        """`get` without a checkpoint or checks, for a commit listener (the node's
        services read their settings so)."""
        self._check_open()
        return self._store.get(collection, key)

    async def query(
        self,
        collection: str,
        *,
        where: Mapping[str, Value] | None = None,
        prefix: str = "",
        after: str | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        """Visible records of ``collection`` in key order.

        ``where`` keeps records whose fields equal the given values (same type and
        value); ``prefix`` keeps keys that start with it; ``after`` starts past that key
        (for paging); ``limit`` caps the result. The whole query reads one snapshot.
        Filtering reads every record in the key range: there are no secondary indexes.
        """
        self._check_open()
        validate_name("collection", collection, MAX_COLLECTION_BYTES, system=True)
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        conditions = [(f, _comparable(v)) for f, v in (where or {}).items()]
        start, inclusive = prefix, True
        if after is not None and after >= prefix:
            start, inclusive = after, False
        out: list[Record] = []
        with self._store.scan(collection, start, inclusive=inclusive) as cursor:
            while limit is None or len(out) < limit:
                rows = cursor.fetchmany(QUERY_PAGE_ROWS)
                if not rows:
                    break
                for key, doc in rows:
                    if not key.startswith(prefix):
                        return out
                    fields = stored_document(doc, collection, key, self._where)
                    if all(_comparable(fields.get(f, _ABSENT)) == want for f, want in conditions):
                        out.append(Record(collection=collection, key=key, fields=fields))
                        if limit is not None and len(out) >= limit:
                            return out
                await trio.lowlevel.checkpoint()
        await trio.lowlevel.checkpoint()
        return out

    def changes_since(
        self, lsn: int, *, limit: int = 1_000, max_bytes: int = LOG_PAGE_BYTES
    ) -> list[tuple[int, Change]]:
        """Committed changes after log position ``lsn``, oldest first, with their
        positions: at most ``limit`` of them, and at most ``max_bytes`` encoded (at least
        one, however large). Call again from the last position for the rest."""
        self._check_open()
        out = []
        for position, blob in self._store.log_since(lsn, limit, max_bytes):
            try:
                out.append((position, decode_change(blob)))
            except RemoteProtocolError as exc:
                raise corrupt_log_entry(position, self._where, exc) from None
        return out

    def changes_in(self, origin: bytes, first: int, last: int) -> list[tuple[int, bytes]]:
        """``(seq, encoded change)`` of ``origin``'s changes held with seqs in
        ``first..last``, in order, one page (`LOG_PAGE_BYTES`, or one change if it is
        larger): read on from the last seq for more. For the sync engine, which sends
        them as they are."""
        return self._store.changes_in(origin, first, last)

    @contextlib.contextmanager
    def observe(
        self,
        collection: str | None = None,
        *,
        capacity: int = DEFAULT_OBSERVER_CAPACITY,
        capacity_bytes: int = DEFAULT_OBSERVER_BYTES,
    ) -> Iterator[Observer]:
        """Observe committed changes (local and remote) from now on, while the block runs.

        The observer buffers at most ``capacity`` changes and ``capacity_bytes`` of them
        (`agent.storage.observe`); past either it overflows."""
        self._check_open()
        observer = self._hub.add(
            collection=collection, capacity=capacity, capacity_bytes=capacity_bytes
        )
        try:
            yield observer
        finally:
            observer.close()

    def digest(self) -> str:
        """A hash of every visible record: equal on two replicas exactly when they agree."""
        self._check_open()
        return self._store.digest()

    def info(self) -> ReplicaInfo:
        self._check_open()
        return ReplicaInfo(
            node_id=self.node_id,
            data_dir=self.data_dir,
            last_lsn=self._store.last_lsn,
            changes_held=self._store.vv.count(),
            collections=self._store.counts(),
        )

    def _check_open(self) -> None:
        if self._closed:
            raise ReplicaClosedError("the replica is closed")

    async def _drain(self) -> None:
        self._closed = True
        await self._idle.wait()
        self._hub.close_all()


_ABSENT = object()


def duration_text(ms: int) -> str:
    """``ms`` for people: seconds under two minutes, then minutes, hours or days."""
    seconds = ms / 1000
    for unit, size in (("days", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def _comparable(value: object) -> object:
    """A form in which equal means same type and same value (True is not 1, 1 is not 1.0)."""
    if isinstance(value, list | dict):
        return msgpack.packb(value, use_bin_type=True)
    return (type(value), value)


def _chunks(jobs: Sequence[Job], max_ops: int) -> list[list[Job]]:
    """Split ``jobs``, in order, into runs of at most ``max_ops`` ops (each at least one job)."""
    chunks: list[list[Job]] = []
    ops = max_ops
    for job in jobs:
        if ops + len(job.ops) > max_ops:
            chunks.append([])
            ops = 0
        chunks[-1].append(job)
        ops += len(job.ops)
    return chunks


@contextlib.asynccontextmanager
async def open_replica(
    data_dir: Path | str,
    *,
    create: bool = False,
    durability: Durability = Durability.NORMAL,
    wall_ms: Callable[[], int] = wall_clock_ms,
    max_skew_ms: int = DEFAULT_MAX_SKEW_MS,
    max_batch_ops: int = DEFAULT_MAX_BATCH_OPS,
    threads: bool = True,
    lock_wait_s: float = 0.0,
    checkpoint_every_commits: int = CHECKPOINT_EVERY_COMMITS,
) -> AsyncIterator[Replica]:
    """Open the replica in ``data_dir`` for this process alone, until the block exits.

    If another process holds the directory, wait up to ``lock_wait_s`` for it to let go.

    With ``create=True`` a missing directory and identity are created; otherwise they
    must exist (``blazemesh init``). Pending writes commit before the block returns.
    With ``threads=False`` nothing leaves the trio thread (the open, every commit,
    checkpoints, the close), so that a run on a virtual clock (tests, the simulator)
    depends on nothing but its own tasks; the loop then waits whenever SQLite works.
    A checkpoint copies the WAL back into the database at least every
    ``checkpoint_every_commits`` commits (that bounds the WAL's size; see
    `CHECKPOINT_EVERY_COMMITS`).
    """
    _check_options(max_batch_ops, checkpoint_every_commits)

    def open_files(stack: contextlib.ExitStack) -> tuple[SqliteStore, Identity, Path]:
        path = Path(data_dir).expanduser()
        if create:
            make_data_dir(path)
        else:
            check_data_dir(path)
        stack.enter_context(lock_data_dir(path, wait_s=lock_wait_s))
        has_key = (path / KEY_FILE).exists()
        identity = create_identity(path) if create and not has_key else load_identity(path)
        try:
            private_database(path / DB_FILE)
        except OSError as exc:
            raise StorageError(f"cannot open {path / DB_FILE}: {exc.strerror}") from None
        store = SqliteStore(
            path / DB_FILE,
            node_id=identity.node_id,
            durability=durability,
            wall_ms=wall_ms,
            max_skew_ms=max_skew_ms,
        )
        stack.callback(store.close)
        return store, identity, path

    with contextlib.ExitStack() as stack:
        store, identity, path = await _off_loop(
            functools.partial(open_files, stack), threads=threads
        )
        async with serve_replica(
            store,
            identity=identity,
            data_dir=path,
            max_batch_ops=max_batch_ops,
            threads=threads,
            checkpoint_every_commits=checkpoint_every_commits,
        ) as replica:
            yield replica


@contextlib.asynccontextmanager
async def serve_replica(
    store: Store,
    *,
    identity: Identity,
    data_dir: Path | None = None,
    max_batch_ops: int = DEFAULT_MAX_BATCH_OPS,
    threads: bool = True,
    checkpoint_every_commits: int = CHECKPOINT_EVERY_COMMITS,
) -> AsyncIterator[Replica]:
    """Run a replica over an open ``store`` until the block exits (`open_replica` for
    the options); pending writes commit before it returns. The caller closes the store
    afterwards. ``data_dir``: where the replica's files are, if it has any."""
    _check_options(max_batch_ops, checkpoint_every_commits)
    replica = Replica(
        store=store,
        identity=identity,
        data_dir=data_dir,
        max_batch_ops=max_batch_ops,
        threads=threads,
        checkpoint_every_commits=checkpoint_every_commits,
    )
    # The caller's exception is carried past the nursery so that it comes out as
    # itself, not wrapped in an ExceptionGroup (the background tasks never raise).
    body_error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        await nursery.start(replica._serve)
        try:
            yield replica
        except BaseException as exc:
            body_error = exc
        with trio.CancelScope(shield=True):
            await replica._drain()
        nursery.cancel_scope.cancel()
    if body_error is not None:
        raise body_error
    with trio.CancelScope(shield=True):
        await replica._try_checkpoint(truncate=True)


def _check_options(max_batch_ops: int, checkpoint_every_commits: int) -> None:
    if max_batch_ops < 1:
        raise ValueError(f"max_batch_ops must be >= 1, got {max_batch_ops}")
    if checkpoint_every_commits < 1:
        raise ValueError(f"checkpoint_every_commits must be >= 1, got {checkpoint_every_commits}")


async def _off_loop(fn: Callable[[], T], *, threads: bool) -> T:
    """``fn()`` in a worker thread, or right here (after a checkpoint) without threads."""
    if threads:
        return await trio.to_thread.run_sync(fn)
    await trio.lowlevel.checkpoint()
    return fn()

"""Change observers: bounded buffers that never block writers and never drop silently.

Each observer has its own buffer of committed changes, bounded both in changes and in
bytes (`Applied.change_bytes` plus `Applied.updates_bytes`; a change larger than the
byte bound still fits in an empty buffer, so a reader that keeps up never overflows).
When a slow observer's buffer is full, further changes are not queued: the buffer is
cleared and the observer's next read is an `Overflow` naming the last log position it
received, from which it can catch up with `Replica.changes_since` (or simply re-read
what it shows). Writers only ever append to buffers; they never wait for an observer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import trio

from blazemesh.agent.storage.store import Applied

DEFAULT_OBSERVER_CAPACITY = 1_024  # changes buffered per observer before it overflows
DEFAULT_OBSERVER_BYTES = 16 << 20  # and their held bytes: 1,024 changes could be 4 GiB


@dataclass(frozen=True, slots=True, kw_only=True)
class Overflow:
    """The observer fell behind: changes after ``resume_lsn`` were not delivered."""

    resume_lsn: int
    missed: int


ObserverEvent = Applied | Overflow


class Observer:
    """An async iterator of `Applied` changes (optionally of one collection) and `Overflow`s."""

    def __init__(
        self, hub: ObserverHub, *, collection: str | None, capacity: int, capacity_bytes: int
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if capacity_bytes < 1:
            raise ValueError(f"capacity_bytes must be >= 1, got {capacity_bytes}")
        self._hub = hub
        self._collection = collection
        self._capacity = capacity
        self._capacity_bytes = capacity_bytes
        self._buffer: deque[Applied] = deque()
        self._buffered_bytes = 0
        self._delivered_lsn = hub.last_lsn
        self._missed = 0
        self._ready = trio.Event()
        self.closed = False

    def offer(self, applied: Applied) -> None:
        """Buffer a committed change for this observer; never blocks."""
        if self._collection is not None and all(
            u.collection != self._collection for u in applied.updates
        ):
            return
        if self._missed:
            self._missed += 1
            return
        size = applied.change_bytes + applied.updates_bytes
        if self._buffer and (
            len(self._buffer) >= self._capacity
            or self._buffered_bytes + size > self._capacity_bytes
        ):
            self._missed = len(self._buffer) + 1
            self._buffer.clear()
            self._buffered_bytes = 0
        else:
            self._buffer.append(applied)
            self._buffered_bytes += size
        self._ready.set()

    @property
    def buffered_bytes(self) -> int:
        """The held bytes of the changes buffered now (at most ``capacity_bytes``, or one
        change)."""
        return self._buffered_bytes

    def __aiter__(self) -> Observer:
        return self

    async def __anext__(self) -> ObserverEvent:
        while not self._buffer and not self._missed:
            if self.closed:
                raise StopAsyncIteration
            self._ready = trio.Event()
            await self._ready.wait()
        await trio.lowlevel.checkpoint()
        if self._missed:
            overflow = Overflow(resume_lsn=self._delivered_lsn, missed=self._missed)
            self._missed = 0
            return overflow
        applied = self._buffer.popleft()
        self._buffered_bytes -= applied.change_bytes + applied.updates_bytes
        self._delivered_lsn = applied.lsn
        return applied

    def close(self) -> None:
        """Stop observing; iteration ends once the buffered changes are read."""
        self.closed = True
        self._hub.remove(self)
        self._ready.set()


class ObserverHub:
    """The set of live observers of one replica."""

    def __init__(self, last_lsn: int) -> None:
        self._observers: set[Observer] = set()
        self.last_lsn = last_lsn

    def add(self, *, collection: str | None, capacity: int, capacity_bytes: int) -> Observer:
        observer = Observer(
            self, collection=collection, capacity=capacity, capacity_bytes=capacity_bytes
        )
        self._observers.add(observer)
        return observer

    @property
    def active(self) -> bool:
        """Whether anyone observes (if not, commits need not build events)."""
        return bool(self._observers)

    def remove(self, observer: Observer) -> None:
        self._observers.discard(observer)

    def publish(self, changes: Iterable[Applied]) -> None:
        for applied in changes:
            self.last_lsn = applied.lsn
            for observer in self._observers:
                observer.offer(applied)

    def close_all(self) -> None:
        for observer in list(self._observers):
            observer.close()

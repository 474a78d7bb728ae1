"""One live link: a `protocol.sync.SyncLink` driven over a stream by three small tasks.

- the reader feeds received bytes to the link and queues incoming batches;
- the applier applies and commits each batch, in order, then lets the link acknowledge it;
- the writer sends whatever the link has to say, fetching the changes it plans.

The link's timers (keepalives, summaries, dead and stall detection) run in `tick`, which
the node calls for all its links from one task (a task per link woke thousands of times
a second in a large simulated mesh, for nothing most of the time).

Incoming batches wait in a queue that the window bounds: the peer sends no more than
`SyncConfig.window_bytes` before this side acknowledges, and this side acknowledges only
what it has committed. Any failure ends the link with a reason, which `run` returns.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import assert_never

import trio

from blazemesh.agent.errors import AgentError, StorageError
from blazemesh.agent.links.network import RECEIVE_BYTES, Address, format_address
from blazemesh.agent.storage.replica import Replica, duration_text
from blazemesh.agent.storage.store import Outcome
from blazemesh.protocol.clones import CLONE_REASON
from blazemesh.protocol.errors import ChangeRefusedError, ProtocolError, RemoteProtocolError
from blazemesh.protocol.ids import node_id_short
from blazemesh.protocol.model import Change, Value
from blazemesh.protocol.sync import (
    Compared,
    Incoming,
    LinkStatus,
    PeerHello,
    PeerRefused,
    Range,
    SyncLink,
)

log = logging.getLogger(__name__)

# What a peer's refusal means, by its reason (docs/protocol.md 8.3).
REFUSAL_TEXT = {
    "clock": "their stamps are too far ahead of its clock",
    "own-origin": "they bear its own node id (forged by a member, or this node runs on a copy "
    "of its data directory)",
    "gaps": "they leave too many gaps in their origin's changes (taken once the gaps close)",
    "origins": "it holds changes of as many origins as it keeps",
    "invalid": "they break a rule of the data model",
    "versions": "it holds as many versions of those changes' seqs as it keeps",
    CLONE_REASON: "another running device holds this node's identity (a copied data "
    "directory or disk image): the peer refuses both for a while",
}
INCOMING_HELD_BYTES = 64 << 20  # decoded changes received and not yet applied, about: a
# reader past this waits for the applier (the wire bound alone lets 9 MiB hold ~200 MB)
TICK_S = 0.25  # timer resolution of a link: the node calls `Link.tick` this often
PROGRESS_EVERY_S = 5.0  # how often a long catch-up is logged
PROGRESS_MIN_CHANGES = 10_000  # catch-ups smaller than this are not worth a log line
FAREWELL_TIMEOUT_S = 2.0  # a refused link's last words wait this long for a peer that
# does not read, then the link closes without them


class LinkEndedError(AgentError):
    """Raised inside a link's tasks to end it (the peer closed it, or the node keeps
    another link to the same peer); the message is the reason. `Link.run` catches it."""


class Link:
    """A link to one peer over ``stream``; `run` until it ends."""

    def __init__(
        self,
        *,
        stream: trio.abc.Stream,
        sync: SyncLink,
        replica: Replica,
        fetch: Callable[[Sequence[Range]], Iterable[Change]],
        on_hello: Callable[[Link], None],
        on_applied: Callable[[Link, Sequence[Change], Sequence[Outcome]], None],
        on_cloned: Callable[[Link], None],
        address: Address,
        initiated: bool,
    ) -> None:
        self.stream = stream
        self.sync = sync
        self.address = address
        self.initiated = initiated
        self.since = trio.current_time()
        self._replica = replica
        self._fetch = fetch
        self._on_hello = on_hello
        self._on_applied = on_applied
        self._on_cloned = on_cloned
        self.peer_meta: Mapping[str, Value] = {}  # the peer's HELLO meta, once it said hello
        self._refusing = False  # `refuse` was called: the writer says so, then ends the link
        self._wake = trio.Event()
        # Bounded by `SyncConfig.receive_limit_bytes` on the wire, and by what the decoded
        # changes hold: the reader waits past `INCOMING_HELD_BYTES` (see `_reader`).
        self._incoming_send, self._incoming = trio.open_memory_channel[Incoming](float("inf"))
        self._incoming_held = 0
        self._incoming_drained = trio.Event()
        self._scope: trio.CancelScope | None = None
        self._last_progress = self.since
        self.reason: str | None = None
        self.misbehaved = False  # the peer broke the protocol (worth a warning)

    @property
    def peer_id(self) -> bytes | None:
        return self.sync.peer_id

    @property
    def name(self) -> str:
        peer = "?" if self.peer_id is None else node_id_short(self.peer_id)
        return f"{peer} ({format_address(self.address)})"

    def status(self) -> LinkStatus:
        return self.sync.status()

    def wake(self) -> None:
        """Something happened (a commit, bytes received, a timer): wake the writer if the
        link has something to send now.

        Most events leave nothing to send (the peer sent the change just committed; small
        batches wait for an ACK, whose arrival wakes the writer again), and a task switch
        for nothing costs as much as deciding so.
        """
        if self.sync.ready():
            self._wake.set()

    def end(self, reason: str) -> None:
        """End the link from outside (it was replaced, the node is stopping, or its
        timers found it dead or stalled)."""
        if self.reason is None:
            self.reason = reason
        if self._scope is not None:
            self._scope.cancel()

    def refuse(self, why: str) -> None:
        """Tell the peer that this node refuses it as one of two running instances of one
        node (REFUSED "clone", docs/protocol.md 8.3), then end the link with ``why``."""
        self.sync.refused((), CLONE_REASON)
        if self.reason is None:
            self.reason = why
        self._refusing = True
        self._wake.set()

    def tick(self, now: float) -> None:
        """Run the link's timers; end the link if it is dead or stalled (call every
        `TICK_S`)."""
        if self._incoming_held > INCOMING_HELD_BYTES:
            self.sync.reading_paused(now)
        down = self.sync.tick(now)
        if down is not None:
            self.end(down.reason)
            return
        self.wake()
        if now - self._last_progress >= PROGRESS_EVERY_S and self.sync.open:
            self._last_progress = now
            behind = self.sync.status().behind_in
            if behind >= PROGRESS_MIN_CHANGES:
                log.info("catching up from %s: %d changes to go", self.name, behind)

    async def run(self) -> str:
        """Drive the link until it ends; close the stream; return why it ended."""
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                for task in (self._reader, self._applier, self._writer):
                    nursery.start_soon(self._guard, task)
        finally:
            with trio.CancelScope(shield=True):
                await self.stream.aclose()
        return self.reason or "closed"

    async def _guard(self, task: Callable[[], Awaitable[None]]) -> None:
        try:
            await task()
        except LinkEndedError as exc:
            self.end(str(exc))
        except RemoteProtocolError as exc:
            self.misbehaved = True
            self.end(f"protocol error: {exc}")
        except StorageError as exc:
            self.end(f"storage error: {exc}")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.end(f"connection lost: {exc}")

    async def _reader(self) -> None:
        sync = self.sync
        while True:
            data = await self.stream.receive_some(RECEIVE_BYTES)
            if not data:
                raise LinkEndedError("the peer closed the link")
            sync.receive_data(data, trio.current_time())
            while (event := sync.next_event()) is not None:
                match event:
                    case PeerHello():
                        self.peer_meta = event.meta
                        self._on_hello(self)
                    case PeerRefused():
                        self._peer_refused(event)
                    case Compared():
                        self._compared(event)
                    case Incoming():
                        self._incoming_held += event.held_bytes
                        self._incoming_send.send_nowait(event)
                    case _:
                        assert_never(event)
            self.wake()
            # Small ops decode to many times their bytes on the wire (a change of 65,535
            # ops: 0.8 MiB sent, 22 MB held): past the bound the reader stops taking more
            # until the applier catches up, and TCP holds the peer back.
            while self._incoming_held > INCOMING_HELD_BYTES:
                self._incoming_drained = trio.Event()
                await self._incoming_drained.wait()

    def _peer_refused(self, event: PeerRefused) -> None:
        if event.reason == CLONE_REASON:
            self._on_cloned(self)  # the node says it once, whatever the links
            return
        why = REFUSAL_TEXT.get(
            event.reason, f"for a reason this version does not know ({event.reason!r})"
        )
        if event.reason == "clock":
            offset = event.clock_offset_ms
            side = "ahead of" if offset > 0 else "behind"
            why += f" (its clock is {duration_text(abs(offset))} {side} this node's)"
        log.warning("%s refused %d of this node's changes: %s", self.name, event.changes, why)

    def _compared(self, event: Compared) -> None:
        if event.differ:
            log.warning(
                "%s holds the same seqs as this node of %s but other contents: that origin "
                "issued seqs twice (its data restored from a copy, or cloned onto another "
                "device); the two sides exchange the versions they lack (docs/protocol.md 8.6)",
                self.name,
                ", ".join(map(node_id_short, event.differ)),
            )
        if event.agree:
            log.info(
                "%s and this node hold the same contents of %s again",
                self.name,
                ", ".join(map(node_id_short, event.agree)),
            )

    async def _applier(self) -> None:
        async for first in self._incoming:
            last, changes, held = self._with_queued(first)
            outcomes = await self._replica.apply_remote(changes)
            self._refuse(changes, outcomes)
            self._on_applied(self, changes, outcomes)
            # The commit woke this node's observers, which wait on the app; the ACK does
            # not (the window is megabytes). They go first: they were woken before
            # `apply_remote` returned (it ends with a checkpoint, or waits for the
            # committer), and the writer this wakes runs in the scheduling round after.
            self.sync.applied(last)
            self._incoming_held -= held
            self._incoming_drained.set()
            self.wake()

    def _refuse(self, changes: Sequence[Change], outcomes: Sequence[Outcome]) -> None:
        """Tell the peer which of its changes this node refused, and why (protocol.md 8.3)."""
        refused: dict[str, list[tuple[bytes, int]]] = {}
        first: dict[str, ProtocolError] = {}
        for change, outcome in zip(changes, outcomes, strict=True):
            if isinstance(outcome, ProtocolError):
                reason = outcome.reason if isinstance(outcome, ChangeRefusedError) else "invalid"
                refused.setdefault(reason, []).append(change.dot)
                first.setdefault(reason, outcome)
        for reason, dots in refused.items():
            log.warning("refused %d changes from %s: %s", len(dots), self.name, first[reason])
            self.sync.refused(dots, reason)

    def _with_queued(self, first: Incoming) -> tuple[int, list[Change], int]:
        """``first`` and the batches queued behind it: the last batch number, the changes,
        and what they hold.

        Batches that queued while the previous ones committed share one transaction and
        one ACK, so a receiver that falls behind catches up in bigger commits instead of
        paying a commit and an ACK per batch. At most one group commit's worth, so that
        ACKs keep flowing and the sender's window keeps moving.
        """
        last, changes, held = first.batch, list(first.changes), first.held_bytes
        ops = sum(len(change.ops) for change in changes)
        while ops < self._replica.max_batch_ops:
            try:
                batch = self._incoming.receive_nowait()
            except trio.WouldBlock:
                break
            last = batch.batch
            changes += batch.changes
            held += batch.held_bytes
            ops += sum(len(change.ops) for change in batch.changes)
        return last, changes, held

    async def _writer(self) -> None:
        sync = self.sync
        while True:
            if self._refusing:
                with trio.move_on_after(FAREWELL_TIMEOUT_S):
                    await self.stream.send_all(sync.data_to_send())
                raise LinkEndedError(self.reason or "refused")
            # Plan and fetch without awaiting in between, so that nothing planned is lost.
            while ranges := sync.plan():
                sync.send_changes(self._fetch(ranges))
            data = sync.data_to_send()
            if data:
                await self.stream.send_all(data)
                continue
            await self._wake.wait()
            self._wake = trio.Event()

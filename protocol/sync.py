"""The sync protocol for one link, sans-IO (docs/protocol.md, section 8).

Theory of operation. Each side of a link keeps, for its peer:

- ``peer_has``: the dots it believes the peer holds: what the peer stated (in its HELLO,
  then in each SUMMARY), what the peer sent, and what this side has sent it;
- ``peer_told``: what the peer itself stated, plus what it sent: the truth as of then.

What to send is always ``missing(have, peer_has)``: the local version vector ``have``
(shared with the store, and grown by every commit, local or remote) minus what the peer
holds. Catching up after a reconnect, streaming new local writes and forwarding changes
that arrived from other peers are all that one rule, so none of them can be forgotten:
a link that has nothing in flight and nothing missing is in sync, and `status` says so.
(The difference is computed only for the origins where it may have changed: those
``have`` grew in since the last look, and every origin after a SUMMARY.)

`plan` names the next ranges to send; the agent fetches their changes lazily and hands
them to `send_changes`, which takes what the window holds and counts those as sent. Bytes
of CHANGES not yet acknowledged are bounded by the window, whatever the changes' sizes:
a slow peer fills its own link's window and then gets nothing more until it
acknowledges, while every other link carries on. The receiver reports each CHANGES
message as an `Incoming` event, applies and commits it, then calls `applied`, which
queues a cumulative ACK; for the changes it refused it calls `refused`, which tells the
peer why (REFUSED, docs/protocol.md 8.3; the peer sees a `PeerRefused` event).

Every `summary_every_s` each side sends a SUMMARY of its whole vector. The receiver
resets ``peer_has`` to it (plus what is still unacknowledged), which repairs whatever a
push missed: a change the peer refused (say, its clock said it came from the future) is
offered again. `tick` also sends keepalive PINGs, measures round trips and the peer's
clock offset from the PONGs (HELLO gives the first), declares the link dead when nothing
has arrived for `dead_after_s`, and declares it stalled when the peer is behind and
acknowledges nothing, or ahead and sends nothing, for `stall_after_s`: the agent then
drops and redials the link, and says why. Replies to the peer (PONG, SUMMARY, REFUSED)
wait one of a kind until the writer takes the output, and what the link remembers of
its peer stays within a version vector's bounds: nothing the peer sends grows this
side's memory without bound.

Feeding. That one rule sends a change to every neighbour of every node that holds it, so
in a mesh each change arrives many times. So each side says which origins it wants
pushed on the link ("eager"; the others are "lazy"): by arcs of the ring (ARCS, sent by
`ask_for`: the origins whose places lie on them, `protocol.ring`), less the origins it
pruned (PRUNE), plus those it grafted back (GRAFT); new arcs cancel earlier prunes and
grafts. Which is the node's choice, since it sees all its links (`protocol.forwarding`):
by the ring in a mesh, so that each origin has one tree before its first change, or by
pruning the links that bring duplicates in any other graph, as in Plumtree (Leitao et
al., "Epidemic Broadcast Trees", 2007). Either way this side grafts a lazy origin back by
itself when the peer's SUMMARY shows it holds changes of it that this side still lacks
`graft_after_s` later: SUMMARY is the lazy path, in the role of Plumtree's IHAVE.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import assert_never

from blazemesh.protocol.codec import PROTOCOL_VERSION
from blazemesh.protocol.codec.messages import (
    MAX_MESSAGE_BYTES,
    MAX_REFUSED_RANGES,
    MAX_VV_ORIGINS,
    MAX_VV_TOTAL_RUNS,
    Ack,
    Arcs,
    Changes,
    Fingerprints,
    Graft,
    Hello,
    MessageDecoder,
    MessageEncoder,
    Ping,
    Pong,
    Prune,
    Refused,
    Summary,
)
from blazemesh.protocol.errors import LocalProtocolError, RemoteProtocolError
from blazemesh.protocol.fingerprints import (
    MAX_FINGERPRINT_ENTRIES,
    MAX_NARROWINGS_PER_PERIOD,
    Entry,
    Holdings,
    apart,
    narrow,
)
from blazemesh.protocol.model import Change, Value, held_bytes
from blazemesh.protocol.ring import WHOLE_RING, Arc, covers, place
from blazemesh.protocol.vv import SeqRange, VersionVector, missing

Range = tuple[bytes, SeqRange]
ACK_EVERY_BATCHES = 2  # CHANGES messages applied before an ACK goes at once (as TCP acks
# every second segment, RFC 5681 section 4.2): a sender holding back small batches while
# two await their ACK (`SyncConfig.small_in_flight`) then never waits for a delayed one


class SyncError(RemoteProtocolError):
    """Raised when a peer breaks the sync protocol: a message out of turn or out of order,
    a hello naming a node other than the one the channel authenticated."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncConfig:
    """Limits and timers of a link; both sides need not agree on them."""

    window_bytes: int = 4 << 20  # CHANGES bytes in flight, unacknowledged
    batch_changes: int = 1_024  # changes per `plan`
    keepalive_s: float = 1.0  # a PING this often, answered by a PONG
    dead_after_s: float = 5.0  # silence this long means the link is dead
    summary_every_s: float = 5.0  # anti-entropy: a SUMMARY this often
    stall_after_s: float = 15.0  # behind, with no progress this long: reset the link
    graft_after_s: float = 1.0  # behind on a pruned origin this long: graft it back
    receive_limit_bytes: int = (4 << 20) + MAX_MESSAGE_BYTES  # CHANGES received, not yet
    # applied: a peer past this ignores flow control (an honest sender's window is at most
    # 4 MiB, which it passes by one change, in one message, at most)
    small_in_flight: int = 2  # CHANGES messages short of a full batch awaiting their ACK at
    # once; changes beyond wait for an ACK and go together (Nagle's rule, see `plan`)

    def __post_init__(self) -> None:
        if self.dead_after_s <= self.keepalive_s:
            raise LocalProtocolError("dead_after_s must exceed keepalive_s")
        if self.window_bytes < 1 or self.batch_changes < 1:
            raise LocalProtocolError("window_bytes and batch_changes must be positive")
        if self.small_in_flight < ACK_EVERY_BATCHES:
            raise LocalProtocolError(
                f"small_in_flight must be at least {ACK_EVERY_BATCHES}: a peer acknowledges a "
                "lone batch at its next tick, and that many at once"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerHello:
    """The peer's hello: the link is open."""

    node_id: bytes
    meta: Mapping[str, Value]


@dataclass(frozen=True, slots=True, kw_only=True)
class Incoming:
    """Changes from the peer: apply and commit them, then call `SyncLink.applied(batch)`."""

    batch: int
    changes: Sequence[Change]
    held_bytes: int  # what ``changes`` hold in memory, about (`protocol.model.held_bytes`)


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkDown:
    """The link should be dropped: it is dead, or stalled while behind."""

    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerRefused:
    """The peer refused ``changes`` of this node's changes, for ``reason``
    (docs/protocol.md 8.3); ``clock_offset_ms`` is its clock minus this node's then."""

    reason: str
    changes: int
    clock_offset_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Compared:
    """The peer's SUMMARY showed, for these origins, the same seqs as this node holds but
    other contents (``differ``: a seq issued twice, docs/protocol.md 8.6), or the same
    contents again after they differed (``agree``)."""

    differ: tuple[bytes, ...]
    agree: tuple[bytes, ...]


SyncEvent = PeerHello | Incoming | PeerRefused | Compared


@dataclass(frozen=True, slots=True, kw_only=True)
class Refusals:
    """Changes one side of a link refused of the other's: how many so far, and the reason
    and time (`now`) of the last refusal."""

    changes: int
    reason: str
    last_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkStatus:
    """What `blazemesh peers` shows for one link."""

    open: bool
    rtt_s: float | None
    last_contact: float
    behind_in: int  # changes the peer holds that this node lacks
    behind_out: int  # changes this node holds that the peer lacks (or has not acknowledged)
    bytes_sent: int
    bytes_received: int
    changes_sent: int
    changes_received: int
    in_flight_bytes: int
    clock_offset_ms: int | None  # the peer's wall clock minus this node's, last measured
    refused_in: Refusals | None  # the peer's changes this node refused
    refused_out: Refusals | None  # this node's changes the peer refused
    differ: int  # origins held alike by seq, but with other contents (see `Compared`)
    verified: bool  # the last SUMMARY's fingerprints matched every origin held alike

    @property
    def in_sync(self) -> bool:
        return self.open and not self.behind_in and not self.behind_out and not self.differ


@dataclass(slots=True)
class _Feed:
    """Which origins one direction of a link pushes: those on the receiver's arcs, less
    those it pruned, plus those it grafted. Both ends keep one per direction, changed by
    the same messages."""

    arcs: tuple[Arc, ...] = WHOLE_RING
    pruned: set[bytes] = field(default_factory=set)
    grafted: set[bytes] = field(default_factory=set)

    def pushes(self, origin: bytes) -> bool:
        if origin in self.pruned:
            return False
        return self.arcs is WHOLE_RING or origin in self.grafted or covers(self.arcs, place(origin))

    def everything(self) -> bool:
        return self.arcs is WHOLE_RING and not self.pruned

    def prune(self, origins: Iterable[bytes]) -> None:
        self.pruned.update(origins)
        self.grafted.difference_update(self.pruned)

    def graft(self, origins: Iterable[bytes]) -> None:
        self.grafted.update(origins)
        self.pruned.difference_update(self.grafted)

    def reset(self, arcs: Sequence[Arc]) -> None:
        self.arcs = WHOLE_RING if tuple(arcs) == WHOLE_RING else tuple(arcs)
        self.pruned.clear()
        self.grafted.clear()


@dataclass(slots=True)
class _Batch:
    batch: int
    size: int
    dots: list[tuple[bytes, int]] = field(default_factory=list)


class SyncLink:
    """One side of one link. ``have`` is the node's live version vector and ``holdings``
    its fingerprints (both read, never written)."""

    def __init__(
        self,
        *,
        node_id: bytes,
        have: VersionVector,
        holdings: Holdings,
        now: float,
        wall_ms: Callable[[], int],
        config: SyncConfig | None = None,
        meta: Mapping[str, Value] | None = None,
        expect_peer: bytes | None = None,
    ) -> None:
        self._node_id = node_id
        self._have = have
        self._holdings = holdings
        self._wall_ms = wall_ms
        self._config = config or SyncConfig()
        self._expect_peer = expect_peer
        self._encoder = MessageEncoder()
        self._decoder = MessageDecoder()
        self._out: list[bytes] = []
        # Replies a peer's messages call for wait here, one of each kind, and are encoded
        # when the writer takes the output: a peer that sends and never reads cannot grow
        # the output (PONGs and REFUSED while a send blocks; a SUMMARY per tick).
        self._pong_due: int | None = None  # the token of the last PING, to answer
        self._summary_due = False
        self._refusals_due: dict[str, VersionVector] = {}  # reason -> the dots refused
        self._asks_due: list[Entry] = []  # FINGERPRINTS to answer ...
        self._tells_due: list[Entry] = []  # ... and not to (`protocol.fingerprints.narrow`)
        self._resend: list[Range] = []  # every version held in these goes again
        self._differ: set[bytes] = set()  # see `Compared`
        self._narrowings_left = MAX_NARROWINGS_PER_PERIOD  # FINGERPRINTS still answered
        self._verified = False
        self.peer_id: bytes | None = None
        self._peer_has = VersionVector()
        self._peer_told = VersionVector()
        self._unsure = have.origins()  # pushed origins where `have` may hold what
        # `peer_has` lacks (all of them pushed: the peer has not asked for less yet)
        self._have_stamp = have.stamp  # ... as of this stamp of `have`
        self._feed_out = _Feed()  # what this side pushes to the peer, as the peer asked
        self._feed_in = _Feed()  # what the peer pushes to this side, as this side asked
        self._unacked: deque[_Batch] = deque()
        self._in_flight = 0
        self._small_unacked = 0  # of `_unacked`, those short of a full batch (see `plan`)
        self._next_batch = 1  # the number of this side's next CHANGES message
        self._peer_acked = 0  # the highest of this side's batches the peer acknowledged
        self._received_batch = 0  # the highest of the peer's batches received
        self._applied_batch = 0  # ... and applied here
        self._ack_sent = 0  # ... and acknowledged to the peer
        self._refused = VersionVector()  # the peer's changes this node refused (see `refused`)
        self._lacking_key: tuple[int, int, int] | None = None  # see `_lacking`
        self._lacking_ranges: list[Range] = []
        self._unapplied: deque[tuple[int, int]] = deque()  # (batch, bytes) received, unapplied
        self._unapplied_bytes = 0
        self._now = now
        self._last_received = now
        self._last_ping = now
        self._ping_token = 0
        self._ping_sent: float | None = None
        self._last_summary = now
        self._waiting_since = now  # for an ACK, while bytes are in flight
        self._behind_since: float | None = None
        self._last_changes = now
        self.rtt_s: float | None = None
        self.clock_offset_ms: int | None = None  # see `LinkStatus`
        self._refused_in: Refusals | None = None
        self._refused_out: Refusals | None = None
        self.bytes_sent = self.bytes_received = 0
        self.changes_sent = self.changes_received = 0
        hello = Hello(
            version=PROTOCOL_VERSION,
            node_id=node_id,
            vv=have,
            clock_ms=wall_ms(),
            meta=dict(meta or {}),
        )
        self._out.append(self._encoder.encode(hello))

    @property
    def open(self) -> bool:
        return self.peer_id is not None

    # -- inbound ---------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray, now: float) -> None:
        self._now = self._last_received = now
        self.bytes_received += len(data)
        self._decoder.feed(data)

    def reading_paused(self, now: float) -> None:
        """The agent is not reading from the peer for now (changes received wait to be
        applied): the silence is this side's, not the peer's (see `tick`)."""
        self._now = self._last_received = now

    def next_event(self) -> SyncEvent | None:
        """The next event the received bytes make, or None until more arrive."""
        for message in self._decoder:
            if self.peer_id is None:
                if not isinstance(message, Hello):
                    raise SyncError(f"expected a hello, got {type(message).__name__}")
                return self._hello(message)
            match message:
                case Changes():
                    return self._changes(message)
                case Refused():
                    return self._peer_refused(message)
                case Ack():
                    self._ack(message.batch)
                case Summary():
                    compared = self._summary(message)
                    if compared is not None:
                        return compared
                case Fingerprints():
                    self._narrow(message)
                case Arcs():
                    self._feed_out.reset(message.arcs)
                    self._unsure = self._pushed(self._have.origins())
                case Prune():
                    self._feed_out.prune(message.origins)
                    self._unsure.difference_update(message.origins)
                case Graft():
                    self._feed_out.graft(message.origins)
                    self._unsure.update(message.origins)
                case Ping():
                    self._pong_due = message.token
                case Pong():
                    self._pong(message)
                case Hello():
                    raise SyncError("a second hello on one link")
                case _:
                    assert_never(message)
        return None

    def _hello(self, hello: Hello) -> PeerHello:
        if hello.version != PROTOCOL_VERSION:
            raise SyncError(f"the peer speaks sync version {hello.version}, not {PROTOCOL_VERSION}")
        if hello.node_id == self._node_id:
            raise SyncError("the link leads back to this node")
        if self._expect_peer is not None and hello.node_id != self._expect_peer:
            raise SyncError("the hello names another node than the channel authenticated")
        self.peer_id = hello.node_id
        self._measure_clock(hello.clock_ms, 0)
        self._peer_has.merge(hello.vv)
        self._peer_told.merge(hello.vv)
        self._check_behind()
        return PeerHello(node_id=hello.node_id, meta=hello.meta)

    def _pong(self, pong: Pong) -> None:
        if self._ping_sent is not None and pong.token == self._ping_token:
            self.rtt_s = self._now - self._ping_sent
            self._ping_sent = None
            # The peer read its clock about half a round trip ago.
            self._measure_clock(pong.clock_ms, round(self.rtt_s * 500))

    def _measure_clock(self, peer_ms: int, transit_ms: int) -> None:
        self.clock_offset_ms = peer_ms + transit_ms - self._wall_ms()

    def _peer_refused(self, message: Refused) -> PeerRefused:
        changes = _count(list(message.ranges))
        before = self._refused_out.changes if self._refused_out is not None else 0
        self._refused_out = Refusals(
            changes=before + changes, reason=message.reason, last_at=self._now
        )
        return PeerRefused(
            reason=message.reason,
            changes=changes,
            clock_offset_ms=message.clock_ms - self._wall_ms(),
        )

    def _changes(self, message: Changes) -> Incoming:
        if message.batch != self._received_batch + 1:
            raise SyncError(f"batch {message.batch} arrived after {self._received_batch}")
        self._received_batch = message.batch
        size = self._decoder.last_size
        self._unapplied.append((message.batch, size))
        self._unapplied_bytes += size
        if self._unapplied_bytes > self._config.receive_limit_bytes:
            raise SyncError(
                f"the peer sent {self._unapplied_bytes} bytes of changes not yet applied, over "
                f"the limit of {self._config.receive_limit_bytes}: it ignores flow control"
            )
        for change in message.changes:
            self._peer_has.add(change.origin, change.seq)
            self._peer_told.add(change.origin, change.seq)
        _check_bounded(self._peer_told, "the changes the peer sent")
        _check_bounded(self._peer_has, "the changes the peer sent")
        self.changes_received += len(message.changes)
        self._last_changes = self._now
        held = held_bytes(size, self._decoder.last_objects)
        return Incoming(batch=message.batch, changes=message.changes, held_bytes=held)

    def _ack(self, batch: int) -> None:
        if not self._peer_acked <= batch < self._next_batch:
            raise SyncError(f"ack of batch {batch}, but {self._next_batch - 1} were sent")
        self._peer_acked = batch
        while self._unacked and self._unacked[0].batch <= batch:
            acked = self._unacked.popleft()
            self._in_flight -= acked.size
            self._small_unacked -= len(acked.dots) < self._config.batch_changes
        self._waiting_since = self._now

    def _summary(self, summary: Summary) -> Compared | None:
        vv = summary.vv
        told = vv.copy()
        has = vv.copy()
        for sent in self._unacked:
            for origin, seq in sent.dots:
                has.add(origin, seq)
        self._peer_told, self._peer_has = told, has
        self._lacking_key = None  # a new vector: its stamp says nothing
        self._unsure = self._pushed(self._have.origins())
        self._check_behind()
        return self._compare(vv, summary.fingerprints)

    def _compare(self, vv: VersionVector, fingerprints: Mapping[bytes, int]) -> Compared | None:
        """Compare the fingerprints of the origins of which the peer holds the seqs this
        side holds; ask about those that differ (docs/protocol.md 8.6)."""
        have, holdings = self._have, self._holdings
        alike = [
            o for o in vv.origins() if vv.base(o) == have.base(o) and vv.runs(o) == have.runs(o)
        ]
        differ = {o for o in alike if fingerprints[o] != holdings.fingerprint(o)}
        self._verified = not differ
        asks = [(o, 1, have.max_seq(o), holdings.fingerprint(o)) for o in sorted(differ)]
        self._asks_due = (self._asks_due + asks)[:MAX_FINGERPRINT_ENTRIES]
        found = differ - self._differ
        agree = self._differ.intersection(alike) - differ
        self._differ = (self._differ - agree) | differ
        if not found and not agree:
            return None
        return Compared(differ=tuple(sorted(found)), agree=tuple(sorted(agree)))

    def _narrow(self, message: Fingerprints) -> None:
        if not self._narrowings_left:
            return  # past the bound: the next SUMMARY's comparison starts again
        self._narrowings_left -= 1
        narrowed = narrow(message.entries, answer=message.answer, holdings=self._holdings)
        self._asks_due = (self._asks_due + narrowed.ask)[:MAX_FINGERPRINT_ENTRIES]
        self._tells_due = (self._tells_due + narrowed.tell)[:MAX_FINGERPRINT_ENTRIES]
        self.resend(narrowed.resend)

    def _lacking(self) -> list[Range]:
        """What the peer stated it holds that this node lacks and has not refused
        (recomputed only when one of the three vectors grew)."""
        told, have, refused = self._peer_told, self._have, self._refused
        key = (told.stamp, have.stamp, refused.stamp)
        if key != self._lacking_key:
            known = have
            if refused.origins():
                known = have.copy()
                known.merge(refused)
            self._lacking_key, self._lacking_ranges = key, missing(told, known)
        return self._lacking_ranges

    def _check_behind(self) -> None:
        if not self._lacking():
            self._behind_since = None
        elif self._behind_since is None:
            self._behind_since = self._now

    def applied(self, batch: int) -> None:
        """The changes of ``batch`` (an `Incoming` event) are committed: acknowledge them
        (at once if `ACK_EVERY_BATCHES` await it, else with the next message or `tick`)."""
        if batch > self._received_batch:
            raise LocalProtocolError(f"batch {batch} was never received")
        self._applied_batch = max(self._applied_batch, batch)
        while self._unapplied and self._unapplied[0][0] <= batch:
            self._unapplied_bytes -= self._unapplied.popleft()[1]

    def refused(self, dots: Sequence[tuple[bytes, int]], reason: str) -> None:
        """This node refused these changes of the peer's, for ``reason`` (a name of
        docs/protocol.md 8.3: "clock", say): tell the peer.

        They are offered again after each SUMMARY, and do not count as lag meanwhile: a
        change no one here will accept yet must not make the link look stalled.
        """
        refused = self._refusals_due.setdefault(reason, VersionVector())
        for origin, seq in dots:
            self._refused.add(origin, seq)
            refused.add(origin, seq)
        _check_bounded(self._refused, "the peer's changes this node refused")
        before = self._refused_in.changes if self._refused_in is not None else 0
        self._refused_in = Refusals(changes=before + len(dots), reason=reason, last_at=self._now)

    def resend(self, ranges: Iterable[Range]) -> None:
        """Send every version held in ``ranges`` again, whatever the peer holds: the
        node took another version of a change held (docs/protocol.md 8.6), which the
        peer, holding the dot, would otherwise get only by comparing fingerprints."""
        self._resend = (self._resend + list(ranges))[:MAX_FINGERPRINT_ENTRIES]

    def peer_holds_own(self) -> int:
        """The greatest seq of this node's own changes the peer said it holds: past the
        last this node holds, it runs on an earlier copy of its data."""
        return self._peer_told.max_seq(self._node_id)

    def pushes(self, origins: Iterable[bytes]) -> bool:
        """Whether this side pushes changes of any of ``origins`` to the peer: whether a
        commit of such changes may give the link something to send."""
        return any(map(self._feed_out.pushes, origins))

    def pushed_here(self, origin: bytes) -> bool:
        """Whether the peer pushes changes of ``origin`` to this side (it is eager)."""
        return self._feed_in.pushes(origin)

    def ask_for(self, arcs: Sequence[Arc]) -> None:
        """Ask the peer to push the changes of the origins on ``arcs`` of the ring, and no
        others (`protocol.ring.WHOLE_RING`: all); this cancels earlier prunes and grafts."""
        feed = self._feed_in
        if feed.arcs != tuple(arcs) or feed.pruned or feed.grafted:
            feed.reset(arcs)
            self._out.append(self._encoder.encode(Arcs(arcs=list(arcs))))

    def prune(self, origins: Iterable[bytes]) -> None:
        """Ask the peer to stop pushing changes of ``origins`` (this node gets them
        another way); they come back by `graft`, by hand or when this side falls behind."""
        fresh = sorted({o for o in origins if self._feed_in.pushes(o)})
        if fresh and self.open:
            self._feed_in.prune(fresh)
            self._out.append(self._encoder.encode(Prune(origins=fresh)))

    def graft(self, origins: Iterable[bytes] | None = None) -> None:
        """Ask the peer to push changes of ``origins`` (default: every pruned one) again."""
        feed = self._feed_in
        wanted = feed.pruned if origins is None else origins
        back = sorted({o for o in wanted if not feed.pushes(o)})
        if back:
            feed.graft(back)
            self._out.append(self._encoder.encode(Graft(origins=back)))

    # -- outbound --------------------------------------------------------------------------

    def plan(self) -> list[Range]:
        """The next ranges the peer lacks: fetch their changes, lazily and in order, for
        `send_changes`, which takes what the window holds; the rest is planned again.

        Nothing is planned while the window is full, and less than a full batch only
        while fewer than `small_in_flight` such batches await their ACK (Nagle's rule): a
        write on an idle link goes at once, and writes that come faster than the peer
        acknowledges travel together, each message and each commit on the peer carrying
        many.
        """
        return self._next_ranges()

    def ready(self) -> bool:
        """Whether `plan` or `data_to_send` would give anything now: worth waking for."""
        return self._output_due() or self._ack_due() or bool(self._next_ranges())

    def _output_due(self) -> bool:
        return bool(
            self._out
            or self._pong_due is not None
            or self._summary_due
            or self._refusals_due
            or self._asks_due
            or self._tells_due
        )

    def _ack_due(self) -> bool:
        """Whether an ACK goes now: two batches await it, or it can ride with other
        messages. A lone batch's ACK waits for the next `tick` (docs/protocol.md, 8.2
        rule 4): when changes come one at a time, half the ACKs are saved."""
        owed = self._applied_batch - self._ack_sent
        return owed >= ACK_EVERY_BATCHES or (owed > 0 and self._output_due())

    def _next_ranges(self) -> list[Range]:
        config = self._config
        if self.peer_id is None or self._in_flight >= config.window_bytes:
            return []
        if self._resend:
            # Versions the peer may lack under seqs it holds (`_narrow`), a batch's worth
            # at a time; what the window cuts off is found again by the next comparison.
            seqs = itertools.accumulate(last - first + 1 for _, (first, last) in self._resend)
            take = 1 + sum(1 for n in seqs if n < config.batch_changes)
            again, self._resend = self._resend[:take], self._resend[take:]
            return again
        have = self._have
        if have.stamp != self._have_stamp:
            self._unsure |= self._pushed(have.grown_since(self._have_stamp))
            self._have_stamp = have.stamp
        unsure = self._unsure
        if not unsure:
            return []
        lacking = missing(have, self._peer_has, unsure)
        self._unsure = {origin for origin, _ in lacking}
        budget = config.batch_changes
        ranges: list[Range] = []
        for origin, (first, last) in lacking:
            last = min(last, first + budget - 1)
            ranges.append((origin, (first, last)))
            budget -= last - first + 1
            if not budget:
                break
        if budget and self._small_unacked >= config.small_in_flight:
            return []
        return ranges

    def send_changes(self, changes: Iterable[Change]) -> None:
        """Queue ``changes`` (fetched for a `plan`) as CHANGES messages until the window
        is full (docs/protocol.md 8.2 rule 5): the bytes in flight then pass
        ``window_bytes`` by one change at most. ``changes`` is read no further."""
        budget = self._config.window_bytes - self._in_flight
        messages = self._encoder.encode_changes(self._next_batch, changes, budget_bytes=budget)
        if not messages:
            return
        if not self._unacked:
            self._waiting_since = self._now
        for message, data in messages:
            self._out.append(data)
            dots = [(c.origin, c.seq) for c in message.changes]
            self._sent(dots)
            self._unacked.append(_Batch(batch=message.batch, size=len(data), dots=dots))
            self._in_flight += len(data)
            self._small_unacked += len(dots) < self._config.batch_changes
            self._next_batch = message.batch + 1
            self.changes_sent += len(dots)

    def _sent(self, dots: list[tuple[bytes, int]]) -> None:
        """Count ``dots`` as the peer's, a run of consecutive seqs at a time (a plan's
        changes come in runs)."""
        peer_has = self._peer_has
        i = 0
        while i < len(dots):
            origin, first = dots[i]
            j = i + 1
            while j < len(dots) and dots[j] == (origin, first + j - i):
                j += 1
            peer_has.add_range(origin, first, first + j - i - 1)
            i = j

    def data_to_send(self) -> bytes:
        """Everything queued for the peer since the last call."""
        self._encode_replies()
        if self._ack_due():
            self._queue_ack()
        if not self._out:
            return b""
        data = b"".join(self._out)
        self._out.clear()
        self.bytes_sent += len(data)
        return data

    def _encode_replies(self) -> None:
        encode, out = self._encoder.encode, self._out
        if self._pong_due is not None:
            out.append(encode(Pong(token=self._pong_due, clock_ms=self._wall_ms())))
            self._pong_due = None
        if self._summary_due:
            holdings = self._holdings
            fps = {o: holdings.fingerprint(o) for o in self._have.origins()}
            out.append(encode(Summary(vv=self._have, fingerprints=fps)))
            self._summary_due = False
        for answer, entries in ((True, self._asks_due), (False, self._tells_due)):
            if entries:
                out.append(encode(Fingerprints(answer=answer, entries=apart(entries))))
        self._asks_due, self._tells_due = [], []
        for reason, dots in self._refusals_due.items():
            ranges = missing(dots, VersionVector())[:MAX_REFUSED_RANGES]
            out.append(encode(Refused(reason=reason, ranges=ranges, clock_ms=self._wall_ms())))
        self._refusals_due.clear()

    def _queue_ack(self) -> None:
        self._out.append(self._encoder.encode(Ack(batch=self._applied_batch)))
        self._ack_sent = self._applied_batch

    def tick(self, now: float) -> LinkDown | None:
        """Run the timers: delayed ACK, keepalive, anti-entropy, dead-link and stall
        detection."""
        self._now = now
        if self._applied_batch > self._ack_sent:
            self._queue_ack()
        config = self._config
        silent = now - self._last_received
        if silent >= config.dead_after_s:
            return LinkDown(reason=f"nothing received for {silent:.1f} s")
        if self.peer_id is None:
            return None
        if self._ping_sent is None and now - self._last_ping >= config.keepalive_s:
            self._ping_token += 1
            self._ping_sent = self._last_ping = now
            self._out.append(self._encoder.encode(Ping(token=self._ping_token)))
        if now - self._last_summary >= config.summary_every_s:
            self._last_summary = now
            self._summary_due = True
            self._narrowings_left = MAX_NARROWINGS_PER_PERIOD
        if self._unacked and now - self._waiting_since >= config.stall_after_s:
            return LinkDown(
                reason=f"the peer acknowledged nothing for {now - self._waiting_since:.1f} s "
                f"with {self._in_flight} bytes in flight"
            )
        self._check_behind()
        if self._behind_since is not None:
            if not self._feed_in.everything() and now - self._behind_since >= config.graft_after_s:
                self.graft(origin for origin, _ in self._lacking())
            idle = now - max(self._behind_since, self._last_changes)
            if idle >= config.stall_after_s:
                lag = _count(self._lacking())
                return LinkDown(
                    reason=f"the peer holds {lag} changes this node lacks but sent none for "
                    f"{idle:.1f} s"
                )
        return None

    def status(self) -> LinkStatus:
        in_flight = sum(len(b.dots) for b in self._unacked)
        return LinkStatus(
            open=self.open,
            rtt_s=self.rtt_s,
            last_contact=self._last_received,
            behind_in=_count(self._lacking()) if self.open else 0,
            behind_out=(_count(self._missing_pushed()) + in_flight) if self.open else 0,
            bytes_sent=self.bytes_sent,
            bytes_received=self.bytes_received,
            changes_sent=self.changes_sent,
            changes_received=self.changes_received,
            in_flight_bytes=self._in_flight,
            clock_offset_ms=self.clock_offset_ms,
            refused_in=self._refused_in,
            refused_out=self._refused_out,
            differ=len(self._differ) if self.open else 0,
            verified=self._verified,
        )

    def _missing_pushed(self) -> list[Range]:
        """What the peer lacks of the origins this side pushes to it (not the lazy ones:
        the peer gets those another way, and says what it holds in its SUMMARY)."""
        return missing(self._have, self._peer_has, self._pushed(self._have.origins()))

    def _pushed(self, origins: Iterable[bytes]) -> set[bytes]:
        """Those of ``origins`` this side pushes to the peer."""
        feed = self._feed_out
        return set(origins) if feed.everything() else set(filter(feed.pushes, origins))


def _check_bounded(vv: VersionVector, what: str) -> None:
    """A link's views of its peer grow by what the peer sends: they stay within what a
    version vector may hold on the wire, or the link ends."""
    if vv.run_count > MAX_VV_TOTAL_RUNS or vv.origin_count() > MAX_VV_ORIGINS:
        raise SyncError(
            f"{what} are scattered over more origins or gaps than a version vector holds "
            f"({MAX_VV_ORIGINS} origins, {MAX_VV_TOTAL_RUNS} gaps)"
        )


def _count(ranges: list[Range]) -> int:
    return sum(last - first + 1 for _, (first, last) in ranges)

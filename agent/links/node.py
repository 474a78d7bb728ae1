"""A node: a replica, its links to peers, and the listeners and dialers that make them.

The node keeps at most one link per peer. Every commit, local or remote, wakes every link,
whose `SyncLink` then plans what its peer lacks: that one rule streams new writes,
forwards changes across hops and resumes after reconnects. Recently committed changes
are kept in memory for the links to send; older ones are read back from the log.

Two nodes that dial each other at once end up with two links. When the second link says
hello, the node keeps one by a rule both sides evaluate the same way
(`protocol.forwarding.keeps_newer_link`). Which link feeds the node each origin's changes
is decided by `protocol.forwarding.Forwarding`: the node tells it what happens to its
links and carries out the commands it returns on the links they name.

Dialers retry with jittered exponential backoff ("full jitter": a uniform delay up to a
bound that doubles from `backoff_min_s` to `backoff_max_s`, and resets once a link has
stayed up for `stable_after_s`), drawing from the node's injected RNG.
"""

from __future__ import annotations

import functools
import logging
import os
import random
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import assert_never

import trio

from blazemesh.agent.errors import ClockAheadError
from blazemesh.agent.links.limits import MAX_HANDSHAKE_SLOTS, HandshakeSlots
from blazemesh.agent.links.link import TICK_S, Link, LinkEndedError
from blazemesh.agent.links.network import Address, Network, format_address
from blazemesh.agent.links.secure import (
    HANDSHAKE_TIMEOUT_S,
    ChannelError,
    LinkScopes,
    SecureStream,
    handshake,
)
from blazemesh.agent.storage.replica import Replica, duration_text
from blazemesh.agent.storage.store import Applied, Outcome
from blazemesh.agent.trust.identity import Identity
from blazemesh.agent.trust.membership import Mesh
from blazemesh.protocol.clones import (
    CLONE_COOLDOWN_S,
    RUN_ID_BYTES,
    RUN_META_KEY,
    Clone,
    Refuse,
    RunTracker,
    Told,
    run_of,
)
from blazemesh.protocol.codec import decode_change
from blazemesh.protocol.errors import OwnOriginError, ProtocolError
from blazemesh.protocol.forwarding import (
    Arrival,
    AskFor,
    Command,
    Forwarding,
    Graft,
    Prune,
    keeps_newer_link,
)
from blazemesh.protocol.hlc import PeersRefuse, refused_by_peers
from blazemesh.protocol.ids import node_id_short
from blazemesh.protocol.model import Change
from blazemesh.protocol.sync import LinkStatus, Range, SyncConfig, SyncLink

log = logging.getLogger(__name__)

# How loudly a failed handshake is logged, by `ChannelError.reason`; anything else (a
# wrong secret, forged traffic) is a warning.
_HANDSHAKE_FAILURE_LEVELS = {
    "timeout": logging.INFO,
    "closed": logging.INFO,
    "broken": logging.INFO,
    "evicted": logging.DEBUG,  # one per connection of a flood; `HandshakeSlots` logs the flood
}


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """How a node connects; every field has a production default."""

    listen: Sequence[Address] = ()
    peers: Sequence[Address] = ()
    secure: bool = True  # False only in simulation: links skip the Noise channel
    sync: SyncConfig = field(default_factory=SyncConfig)
    backoff_min_s: float = 0.2
    # On a LAN a connect attempt costs one SYN: retrying a missing peer every few seconds
    # is cheap, and a restarted peer is back in sync within that bound.
    backoff_max_s: float = 5.0
    stable_after_s: float = 10.0  # a link up this long resets its dialer's backoff
    # Accepted connections in their handshake at once; a new one beyond closes the oldest
    # (`agent.links.limits.HandshakeSlots`). The agent derives this and `max_links` from its
    # open-file limit (`agent.links.limits.connection_limits`).
    max_handshakes: int = MAX_HANDSHAKE_SLOTS
    max_links: int = 65_536  # links at once, either way; beyond, a new link is refused
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S  # counted from accept (or connect)
    connect_timeout_s: float = 3.0  # a host that does not answer a SYN is tried again later
    # Recent changes kept in memory for the links to send, at most this many and this many
    # bytes (`Applied.change_bytes`): what links send as soon as it commits, a window or
    # two each (4 MiB on the wire), and a short catch-up; anything older is read from the
    # log (docs/design.md, "Memory bounds").
    cache_changes: int = 65_536
    cache_bytes: int = 32 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheStatistics:
    """The node's cache of recent changes: how many, and their held bytes."""

    changes: int
    bytes: int


@dataclass(slots=True, kw_only=True)
class Dial:
    """An address this node keeps a link to, as `blazemesh peers` shows it while it is down."""

    address: Address
    attempts: int = 0
    last_error: str | None = None
    retry_at: float | None = None  # trio time of the next attempt, while waiting for it
    peer: bytes | None = None  # the node last reached there
    wake: trio.Event = field(default_factory=trio.Event, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerState:
    """One link as `blazemesh peers` shows it."""

    node_id: bytes
    address: Address
    initiated: bool
    up_since: float
    sync: LinkStatus


class Node:
    """One node of a mesh. `run` it in a nursery; it stops when cancelled."""

    def __init__(
        self,
        *,
        replica: Replica,
        identity: Identity,
        mesh: Mesh,
        network: Network,
        config: NodeConfig | None = None,
        rng: random.Random | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.replica = replica
        self.identity = identity
        self.mesh = mesh
        self.network = network
        self.config = config or NodeConfig()
        self._rng = rng or random.Random()
        self._random_bytes = random_bytes
        self._links: dict[bytes, Link] = {}
        # Every link, open or not, in creation order, with when this node began it if the
        # handshake proves the peer answered after then (`RunTracker.hello`'s ``opened``).
        self._running: dict[Link, float | None] = {}
        self.run_id = random_bytes(RUN_ID_BYTES)  # stated in every HELLO (`protocol.clones`)
        self._runs = RunTracker()
        self._forwarding = Forwarding(self.identity.node_id)
        self._link_gone: dict[bytes, trio.Event] = {}
        self._dials: dict[Address, Dial] = {}
        self._cache: OrderedDict[tuple[bytes, int], tuple[Change, int]] = OrderedDict()
        self._cache_bytes = 0  # the sum of the cached changes' held bytes
        self._scopes = LinkScopes(mesh)
        self._handshakes = HandshakeSlots(self.config.max_handshakes)
        self._nursery: trio.Nursery | None = None
        self._own_claimed = 0  # the greatest seq of its own a peer was seen to hold
        self.bound: list[Address] = []

    @property
    def node_id(self) -> bytes:
        return self.identity.node_id

    # -- running -----------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[list[Address]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen, dial the static peers, and serve links until cancelled."""
        stop_listening = self.replica.on_commit(self._committed)
        stop_guarding = self.replica.guard_writes(self._check_clock)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for address in self.config.listen:
                    bound = await nursery.start(self.network.serve, address, self._accept)
                    self.bound.append(bound)
                    log.info("listening on %s", format_address(bound))
                for address in self.config.peers:
                    self.dial(address)
                nursery.start_soon(self._tick_links)
                task_status.started(self.bound)
        finally:
            stop_listening()
            stop_guarding()
            self._scopes.close()

    async def _tick_links(self) -> None:
        """Run every link's timers every `TICK_S`, in the order the links were made."""
        while True:
            await trio.sleep(TICK_S)
            now = trio.current_time()
            for link in list(self._running):
                link.tick(now)

    def dial(self, address: Address) -> trio.CancelScope:
        """Keep a link to ``address`` up from now on (redialling with backoff), until the
        returned scope is cancelled."""
        assert self._nursery is not None, "dial() needs a running node"
        scope = trio.CancelScope()
        self._nursery.start_soon(self._dial_within, scope, address)
        return scope

    async def _dial_within(self, scope: trio.CancelScope, address: Address) -> None:
        with scope:
            await self._dial_forever(address)

    async def _dial_forever(self, address: Address) -> None:
        if address in self._dials:
            return  # another dialler (a static peer, say) already keeps this address linked
        dial = self._dials[address] = Dial(address=address)
        bound = self.config.backoff_min_s
        try:
            while True:
                started = trio.current_time()
                dial.retry_at, dial.attempts = None, dial.attempts + 1
                peer = None
                try:
                    with trio.fail_after(self.config.connect_timeout_s):
                        stream = await self.network.connect(address)
                    peer, dial.last_error = await self._serve_link(stream, address, initiated=True)
                    dial.peer = peer or dial.peer
                except OSError as exc:
                    # trio's "all attempts failed" hides the reason in its cause.
                    cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
                    dial.last_error = f"cannot connect: {cause.strerror or cause}"
                    log.debug("cannot reach %s: %s", format_address(address), exc)
                except trio.TooSlowError:
                    dial.last_error = "cannot connect: no answer"
                    log.debug("cannot reach %s: no answer", format_address(address))
                except Exception as exc:  # a fault met by one connection must not stop the node
                    dial.last_error = f"failed: {exc!r}"
                    log.exception("link to %s failed", format_address(address))
                if peer is not None and peer in self._links:
                    # We lost a duplicate to the peer's own link: wait until that one ends.
                    await self._gone(peer).wait()
                    bound = self.config.backoff_min_s
                    continue
                if trio.current_time() - started >= self.config.stable_after_s:
                    bound = self.config.backoff_min_s
                delay = self._rng.uniform(0, bound)
                dial.retry_at = trio.current_time() + delay
                with trio.move_on_after(delay):
                    await dial.wake.wait()  # `kick` cuts the wait short
                dial.wake = trio.Event()
                bound = min(bound * 2, self.config.backoff_max_s)
        finally:
            del self._dials[address]

    async def _accept(self, stream: trio.abc.Stream, remote: Address) -> None:
        """Serve a connection a peer opened; whatever happens to it ends it alone."""
        try:
            await self._serve_link(stream, remote, initiated=False)
        except Exception:  # a fault met by one connection must not stop the node
            log.exception("connection from %s failed", format_address(remote))
            await trio.aclose_forcefully(stream)

    async def _serve_link(
        self, stream: trio.abc.Stream, address: Address, *, initiated: bool
    ) -> tuple[bytes | None, str]:
        """Authenticate ``stream`` and run a link over it until it ends; return the peer's
        id (None if it never said who it is) and why the link ended."""
        # The secure handshake's answer comes after this moment; a plain stream's hello
        # may have been sent before it (`RunTracker.hello`).
        opened = trio.current_time() if self.config.secure else None
        expect = None
        if self.config.secure:
            try:
                stream = secure = await self._authenticate(stream, initiated=initiated)
            except ChannelError as exc:
                level = _HANDSHAKE_FAILURE_LEVELS.get(exc.reason, logging.WARNING)
                log.log(level, "no link with %s: %s", format_address(address), exc)
                return None, str(exc)
            expect = secure.peer_id
        if len(self._running) >= self.config.max_links:
            why = f"this node has {len(self._running)} links, its limit"
            log.warning("refusing a link with %s: %s", format_address(address), why)
            await stream.aclose()
            return None, why
        link = Link(
            stream=stream,
            sync=SyncLink(
                node_id=self.node_id,
                have=self.replica.vv,
                holdings=self.replica.store,
                now=trio.current_time(),
                wall_ms=self.replica.wall_ms,
                config=self.config.sync,
                meta={RUN_META_KEY: self.run_id},
                expect_peer=expect,
            ),
            replica=self.replica,
            fetch=self.fetch,
            on_hello=self._hello,
            on_applied=self._applied,
            on_cloned=self._cloned,
            address=address,
            initiated=initiated,
        )
        reason = "closed by this node"  # if cancelled: shutdown, or its dialler was stopped
        self._running[link] = opened
        try:
            if expect is not None:
                with self._scopes.link(expect):
                    reason = await link.run()
            else:
                reason = await link.run()
        finally:
            del self._running[link]
            self._forget(link, reason)
        return link.peer_id, reason

    async def _authenticate(self, stream: trio.abc.Stream, *, initiated: bool) -> SecureStream:
        """Run the handshake on ``stream``, within `NodeConfig.handshake_timeout_s` of now
        (of accept, for an accepted connection: it never waits for a slot); raise
        `ChannelError` if it fails or gives its slot to a newer connection."""
        run = functools.partial(
            handshake,
            stream,
            initiator=initiated,
            identity=self.identity,
            mesh=self.mesh,
            random_bytes=self._random_bytes,
            timeout_s=self.config.handshake_timeout_s,
        )
        if initiated:
            return await run()
        with self._handshakes.hold():
            return await run()
        raise ChannelError(
            "closed before its handshake ended, to make room for newer connections",
            reason="evicted",
        )

    def _hello(self, link: Link) -> None:
        """Register a link whose peer has said hello; end it if another link wins."""
        peer = link.peer_id
        assert peer is not None
        run = run_of(link.peer_meta)
        verdict = self._runs.hello(
            peer,
            run,
            opened=self._running[link],
            now=trio.current_time(),
            place=format_address(link.address),
        )
        if isinstance(verdict, Refuse):
            self._refuse_clone(link, verdict)
            return
        existing = self._links.get(peer)
        if existing is not None:
            if run is not None and run_of(existing.peer_meta) not in (None, run):
                # Another run of the peer: it restarted, and the old link is dead (or it
                # is a second instance, which, coming back, `RunTracker` catches).
                existing.end("replaced by a link of the peer's next run (it restarted)")
            elif not keeps_newer_link(
                self.node_id,
                peer,
                older_dialled=existing.initiated,
                newer_dialled=link.initiated,
            ):
                raise LinkEndedError("a link to this peer already exists")
            else:
                existing.end("replaced by a newer link to the same peer")
        self._links[peer] = link
        self._link_gone.pop(peer, None)
        log.info("link to %s up (%s)", link.name, "dialled" if link.initiated else "accepted")
        self._carry_out(self._forwarding.link_up(peer))
        self._check_own_history(link, link.sync.peer_holds_own())

    def _refuse_clone(self, link: Link, verdict: Refuse) -> None:
        """Refuse ``link``, whose peer runs as two instances; once caught, say so once and
        refuse the peer's link already up too."""
        clone = verdict.clone
        why = f"refused: {node_id_short(clone.node_id)} runs as two instances (one identity)"
        if verdict.caught:
            log.error(
                "node %s runs as two instances, seen at %s: two devices hold its identity "
                "(a data directory copied while it ran, or devices set up from one disk "
                "image). This node refuses both for %d s and tells them; nothing is deleted. "
                "On one of the two devices, give the copy its own identity "
                '(docs/operations.md, "Two devices with one identity")',
                node_id_short(clone.node_id),
                ", ".join(clone.places),
                CLONE_COOLDOWN_S,
            )
            existing = self._links.get(clone.node_id)
            if existing is not None:
                existing.refuse(why)
        link.refuse(why)

    def _cloned(self, link: Link) -> None:
        """``link``'s peer refuses this node as one of two instances of one node."""
        assert link.peer_id is not None
        place = format_address(link.address)
        if self._runs.told(link.peer_id, now=trio.current_time(), place=place):
            log.error(
                "%s refuses this node: another running device holds this node's identity "
                "(node %s: a data directory copied while it ran, or devices set up from one "
                "disk image), and its peers refuse both for a while. Nothing is lost: each "
                "keeps its data. Stop the agent on one of the two devices and give it its own "
                'identity (docs/operations.md, "Two devices with one identity")',
                link.name,
                self.identity.short,
            )

    def feed_by_ring(self, on: bool) -> None:
        """Take each origin's changes from the link nearest to it on the ring, or else
        from the link that brought its first change, pruning the links that bring
        duplicates (`protocol.forwarding`). Peering says which."""
        self._carry_out(self._forwarding.feed_by_ring(on))

    def _carry_out(self, commands: Iterable[Command]) -> None:
        """Carry out the forwarding tree's commands on the links they name, in order."""
        for command in commands:
            link = self._links[command.peer]
            match command:
                case AskFor():
                    link.sync.ask_for(command.arcs)
                case Prune():
                    link.sync.prune(command.origins)
                case Graft():
                    link.sync.graft(command.origins)
                case _:
                    assert_never(command)
            link.wake()

    def _forget(self, link: Link, reason: str) -> None:
        level = logging.WARNING if link.misbehaved else logging.INFO
        peer = link.peer_id
        if peer is None or self._links.get(peer) is not link:
            log.log(level, "link with %s ended before it opened: %s", link.name, reason)
            return
        del self._links[peer]
        self._gone(peer).set()
        self._carry_out(self._forwarding.link_down(peer))
        log.log(level, "link to %s down: %s", link.name, reason)

    def _gone(self, peer: bytes) -> trio.Event:
        return self._link_gone.setdefault(peer, trio.Event())

    # -- changes -----------------------------------------------------------------------

    def _committed(self, applied: list[Applied]) -> None:
        self._cache_changes(applied)
        origins = {item.change.origin for item in applied}
        versions = [
            (i.change.origin, (i.change.seq, i.change.seq)) for i in applied if i.another_version
        ]
        for link in self._links.values():
            if versions:
                link.sync.resend(versions)
            if versions or link.sync.pushes(origins):  # the others have nothing new to send
                link.wake()

    def _applied(self, link: Link, changes: Sequence[Change], outcomes: Sequence[Outcome]) -> None:
        """Tell the forwarding tree what became of the changes ``link`` brought."""
        refused_own = [
            change.seq
            for change, outcome in zip(changes, outcomes, strict=True)
            if isinstance(outcome, OwnOriginError)
        ]
        if refused_own:
            self._check_own_history(link, max(refused_own))
        peer = link.peer_id
        if peer is None or self._links.get(peer) is not link:
            return  # a link being replaced: the one that replaced it speaks for the peer
        sync = link.sync
        arrivals = (
            (change.origin, _arrival(sync, change.origin, outcome))
            for change, outcome in zip(changes, outcomes, strict=True)
        )
        self._carry_out(self._forwarding.applied(peer, arrivals))

    def _check_own_history(self, link: Link, claimed: int) -> None:
        """``link``'s peer holds this node's own changes up to seq ``claimed``: past what
        the replica holds, the replica is an earlier copy of the node's data (a snapshot
        put back, a device imaged from another) that nothing revealed at open. It takes
        them back (`Replica.take_back_own`); writes it made since it started may share
        seqs with them, which a log line says."""
        if claimed <= max(self.replica.vv.max_seq(self.node_id), self._own_claimed):
            return
        self._own_claimed = claimed
        assert self._nursery is not None
        self._nursery.start_soon(self._take_back_own, link.name, claimed)

    async def _take_back_own(self, peer: str, claimed: int) -> None:
        window = await self.replica.take_back_own(claimed)
        if window is not None:
            first, last = window
            log.error(
                "%s holds changes under this node's id up to seq %d, past the last this node "
                "holds: its data directory is an earlier copy (a snapshot or backup put back, "
                "or a device imaged from another). It takes them back (seqs %d to %d) and "
                "writes on from %d; changes it wrote since it started, before it knew, may "
                'share seqs with them (docs/operations.md, "Backups and restores")',
                peer,
                claimed,
                first,
                last,
                last + 1,
            )

    def _cache_changes(self, applied: list[Applied]) -> None:
        """Keep the newest changes, within `NodeConfig.cache_changes` and `cache_bytes`."""
        cache, config = self._cache, self.config
        for item in applied:
            if item.another_version:  # a dot of several versions: the log serves them all
                if (held := cache.pop(item.change.dot, None)) is not None:
                    self._cache_bytes -= held[1]
                continue
            cache[item.change.dot] = (item.change, item.change_bytes)
            self._cache_bytes += item.change_bytes
        while cache and (
            len(cache) > config.cache_changes or self._cache_bytes > config.cache_bytes
        ):
            self._cache_bytes -= cache.popitem(last=False)[1][1]

    def cache_statistics(self) -> CacheStatistics:
        """What the cache of recent changes holds now."""
        return CacheStatistics(changes=len(self._cache), bytes=self._cache_bytes)

    def fetch(self, ranges: Sequence[Range]) -> Iterator[Change]:
        """The changes of ``ranges``, in order, from memory if recent, else from the log,
        one page at a time: a link takes what its window holds (often much less than a
        plan of big changes), and stops reading."""
        cache = self._cache
        for origin, (first, last) in ranges:
            if all((origin, seq) in cache for seq in range(first, last + 1)):
                yield from (cache[origin, seq][0] for seq in range(first, last + 1))
                continue
            while first <= last and (page := self.replica.changes_in(origin, first, last)):
                yield from (decode_change(blob) for _, blob in page)
                first = page[-1][0] + 1

    # -- clocks -------------------------------------------------------------------------

    def clock_refused(self, stamp_ms: int, now_ms: int) -> PeersRefuse | None:
        """Whether most linked peers would refuse a stamp at ``stamp_ms`` as too far ahead
        of their clocks (as last measured on each link)."""
        offsets = [
            link.sync.clock_offset_ms
            for link in self._links.values()
            if link.sync.clock_offset_ms is not None
        ]
        return refused_by_peers(stamp_ms, now_ms, offsets, self.replica.max_skew_ms)

    def _check_clock(self, stamp_ms: int, now_ms: int) -> None:
        refused = self.clock_refused(stamp_ms, now_ms)
        if refused is not None:
            raise ClockAheadError(
                f"this device's clock is {duration_text(refused.ahead_ms)} ahead of its "
                f"peers' ({refused.refusing} of {refused.known} linked peers would refuse its "
                "writes): writes are refused until the clocks agree; set the wrong clock right"
            )

    # -- observing ---------------------------------------------------------------------

    def peers(self) -> list[PeerState]:
        """Every open link, by peer."""
        return [
            PeerState(
                node_id=peer,
                address=link.address,
                initiated=link.initiated,
                up_since=link.since,
                sync=link.status(),
            )
            for peer, link in sorted(self._links.items())
        ]

    def clones(self) -> list[Clone]:
        """Peers this node refuses now as two running instances of one node."""
        return self._runs.clones(trio.current_time())

    def told_cloned(self) -> Told | None:
        """Whether peers refuse this node now as one of two running instances."""
        return self._runs.told_now(trio.current_time())

    def dials_down(self) -> list[Dial]:
        """Addresses this node dials that have no link up now, with the last error."""
        linked = {link.address for link in self._links.values() if link.initiated}
        return [
            dial
            for address, dial in sorted(self._dials.items())
            if address not in linked and dial.peer not in self._links
        ]

    def dial_state(self, address: Address) -> Dial | None:
        """The dialler of ``address``, if one runs."""
        return self._dials.get(address)

    def kick(self, address: Address) -> None:
        """Redial ``address`` now if its dialler is waiting out a backoff (its node was
        just seen again, say)."""
        dial = self._dials.get(address)
        if dial is not None and dial.retry_at is not None:
            dial.wake.set()

    def linked(self, peer: bytes) -> bool:
        """Whether a link to ``peer`` is up."""
        return peer in self._links

    def linked_peers(self) -> list[bytes]:
        """The peers with a link up, by id (`peers` without the links' state)."""
        return sorted(self._links)

    def in_sync(self, peer: bytes) -> bool:
        """Whether a link to ``peer`` is up and neither side lacks anything of the other's."""
        link = self._links.get(peer)
        return link is not None and link.status().in_sync

    def __repr__(self) -> str:
        return f"<Node {node_id_short(self.node_id)} with {len(self._links)} links>"


def _arrival(sync: SyncLink, origin: bytes, outcome: Outcome) -> Arrival:
    """What a remote change's outcome in the store means to the forwarding tree."""
    if outcome is None:
        return Arrival.DUPLICATE
    if isinstance(outcome, ProtocolError):
        return Arrival.REFUSED
    return Arrival.NEW_EAGER if sync.pushed_here(origin) else Arrival.NEW_LAZY

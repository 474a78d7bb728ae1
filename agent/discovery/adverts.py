"""The `Discovery` edge: advertise this node on the LAN and report the nodes seen.

`ZeroconfDiscovery` uses mDNS/DNS-SD (RFC 6762, RFC 6763) through python-zeroconf, on
exactly the interface addresses it is given; `MemoryDiscovery` connects the nodes of one
trio run for tests and the simulator. Both pass the contract in
tests/agent/discovery_contract.py.

An advert is the service ``_blazemesh._tcp.local.`` with a TXT record of what a peer
needs before connecting (`protocol.discovery`, docs/protocol.md section 9). Adverts say
who might be there; whether a node is alive is for the links to tell: a crashed node's
advert stays in caches for minutes (RFC 6762 §10).

What a consumer is told is the difference between what it was last told and the adverts
as they are now, newest state per name (`_Tracker`): a slow consumer delays only itself
and never receives a stale one.

Discovery follows at most ``max_peers`` adverts at once (`DEFAULT_MAX_PEERS`; the agent's
``--max-peers``), of any mesh: what a flood of forged adverts can make a node hold. Past
it, new adverts are ignored until some go, and a warning says so once per episode (not
once per advert); the node then plans its links from a partial view, so the bound must
exceed the number of blazemesh nodes on the LAN (docs/operations.md).

Threading (STYLE.md practice 6): zeroconf runs its own asyncio loop in its own thread and
calls browser handlers from another. A handler only hands ``(name, gone)`` to trio with
`TrioToken.run_sync_soon` and never raises; every blocking zeroconf call (construct,
browse, register, update, resolve, unregister, close) runs in a trio worker thread, and resolves
at most `MAX_RESOLVING` at a time.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, NoReturn, Protocol

import trio

from blazemesh.agent.links.network import Address
from blazemesh.protocol.codec import PROTOCOL_VERSION
from blazemesh.protocol.discovery import (
    SERVICE_TYPE,
    AdvertInfo,
    encode_txt,
    host_label,
    instance_label,
    parse_endpoints,
    parse_txt,
)
from blazemesh.protocol.errors import InvalidRemoteDataError, LocalProtocolError

if TYPE_CHECKING:
    from zeroconf import ServiceBrowser, ServiceInfo, Zeroconf

__all__ = [
    "DEFAULT_MAX_PEERS",
    "MAX_RESOLVING",
    "RESOLVE_TIMEOUT_MS",
    "SERVICE_TYPE",
    "Advert",
    "Discovery",
    "DiscoveryEvent",
    "MemoryDiscovery",
    "PeerGone",
    "PeerSeen",
    "Readvertise",
    "ZeroconfDiscovery",
]

log = logging.getLogger(__name__)

RESOLVE_TIMEOUT_MS = 3_000  # an advert not resolved in this time waits for its next change
MAX_RESOLVING = 4  # resolves at once, each holding a worker thread: a burst of adverts
# cannot take the threads the rest of the node needs (trio's default limit is 40)
# Adverts followed at once unless configured: twice the largest mesh the design supports
# (the simulator's 5,000 nodes), so that another mesh on the same LAN fits as well; a
# flood of forged adverts beyond it is dropped, not stored.
DEFAULT_MAX_PEERS = 10_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Advert:
    """What this node announces: all ``addresses`` share one port (DNS-SD has one SRV)."""

    node_id: bytes
    addresses: tuple[Address, ...]
    mesh_tag: str
    version: int = PROTOCOL_VERSION
    hub_eligible: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerSeen:
    """An advert was seen, or what it says changed: ``name`` identifies it until `PeerGone`."""

    name: str
    node_id: bytes
    addresses: tuple[Address, ...]
    mesh_tag: str
    version: int
    hub_eligible: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerGone:
    """The advert ``name``, reported by a `PeerSeen` before, was withdrawn or expired."""

    name: str


DiscoveryEvent = PeerSeen | PeerGone
# Replaces what a running `Discovery` advertises (see `Discovery.run`).
Readvertise = Callable[[Advert], Awaitable[None]]


class Discovery(Protocol):
    """Advertise and browse."""

    async def run(
        self,
        advert: Advert,
        events: trio.MemorySendChannel[DiscoveryEvent],
        *,
        task_status: trio.TaskStatus[Readvertise],
    ) -> None:
        """Advertise ``advert`` and send what is seen to ``events`` until cancelled; then
        withdraw the advert. Reports started once browsing is live (the advert itself
        may still be being announced), with a `Readvertise` function: it replaces the
        advert (same node id) by a new one, which the others are then told of as a
        change (a new mesh tag after the membership changed, say).

        ``events`` gets a `PeerSeen` for every advert of another node, again whenever
        what it says changes, and a `PeerGone` once it is withdrawn or expires; never
        an advert with this node's id. Raises `LocalProtocolError` at once for an
        advert that cannot be announced (and `Readvertise` does for a new one), and
        `trio.BrokenResourceError` if the receiving end of ``events`` is closed.
        """


def _advert_info(advert: Advert) -> AdvertInfo:
    """The TXT content of ``advert``, or `LocalProtocolError` if it cannot be announced."""
    if not advert.addresses or len({port for _, port in advert.addresses}) != 1:
        raise LocalProtocolError(
            f"an advert needs one or more addresses, all with one port (DNS-SD has one "
            f"SRV record per service), got {advert.addresses!r}"
        )
    info = AdvertInfo(
        node_id=advert.node_id,
        version=advert.version,
        mesh_tag=advert.mesh_tag,
        hub_eligible=advert.hub_eligible,
    )
    encode_txt(info)  # raises for what no peer would accept
    return info


def _check_replacement(advert: Advert, new: Advert) -> None:
    """Raise `LocalProtocolError` unless ``new`` may replace ``advert``."""
    if new.node_id != advert.node_id:
        raise LocalProtocolError("a new advert must keep the node id of the one it replaces")
    _advert_info(new)


def _seen(name: str, advert: Advert) -> PeerSeen:
    return PeerSeen(
        name=name,
        node_id=advert.node_id,
        addresses=advert.addresses,
        mesh_tag=advert.mesh_tag,
        version=advert.version,
        hub_eligible=advert.hub_eligible,
    )


def check_max_peers(max_peers: int) -> int:
    """``max_peers`` if it is a valid bound, else `LocalProtocolError`."""
    if type(max_peers) is not int or max_peers < 1:
        raise LocalProtocolError(f"max_peers must be an integer of at least 1, got {max_peers!r}")
    return max_peers


class _Bound:
    """At most ``limit`` names followed; says once when it starts ignoring new ones, and
    once when it follows new ones again (an episode in between)."""

    def __init__(self, limit: int) -> None:
        self.limit = check_max_peers(limit)
        self._ignored = 0  # new names ignored in this episode; 0: not full

    def admits(self, name: str, followed: int) -> bool:
        """Whether a new name may be followed, given ``followed`` names followed now."""
        if followed < self.limit:
            if self._ignored:
                log.info(
                    "discovery follows new adverts again, having ignored %d while it "
                    "followed %d; those are followed once they change or come again",
                    self._ignored,
                    self.limit,
                )
                self._ignored = 0
            return True
        if not self._ignored:
            log.warning(
                "discovery follows %d adverts, its bound (--max-peers): ignoring %r and any "
                "new one until some go; if the LAN has this many blazemesh nodes, raise the "
                "bound, else this may be a flood of forged adverts",
                followed,
                name,
            )
        self._ignored += 1
        return False


class _Tracker:
    """What one consumer has been told, and what it is still to be told.

    Trio thread only. `seen` and `gone` never block and never raise; `pump` sends the
    difference, one event per name with news, oldest news first.
    """

    def __init__(self, own_id: bytes, *, max_peers: int) -> None:
        self._own_id = own_id
        self._now: dict[str, PeerSeen] = {}  # the adverts as they are now
        self._told: dict[str, PeerSeen] = {}  # as the consumer last heard of them
        self._news: dict[str, None] = {}  # names where the two may differ (ordered set)
        self._wakeup = trio.Event()
        self._bound = _Bound(max_peers)

    def seen(self, peer: PeerSeen) -> None:
        if peer.node_id == self._own_id:  # ours: another copy of this node, or its own
            self.gone(peer.name)
            return
        if peer.name not in self._now and not self._bound.admits(peer.name, len(self._now)):
            return
        self._now[peer.name] = peer
        self._news[peer.name] = None
        self._wakeup.set()

    def gone(self, name: str) -> None:
        if self._now.pop(name, None) is not None or name in self._told:
            self._news[name] = None
            self._wakeup.set()

    async def pump(self, events: trio.MemorySendChannel[DiscoveryEvent]) -> NoReturn:
        """Send the news to ``events`` forever: what the channel takes at once goes
        without a task switch per event (a hundred members coming up at once are a
        hundred events), and the pump waits only when it is full or there is no news."""
        while True:
            while not self._news:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
            name = next(iter(self._news))
            del self._news[name]
            now, told = self._now.get(name), self._told.get(name)
            if now == told:
                continue
            event = PeerGone(name=name) if now is None else now
            try:
                try:
                    events.send_nowait(event)
                except trio.WouldBlock:
                    await events.send(event)
            except BaseException:
                self._news[name] = None  # not delivered: still news
                raise
            if now is None:
                del self._told[name]
            else:
                self._told[name] = now


# -- in memory -----------------------------------------------------------------------


class MemoryDiscovery:
    """Every node of one trio run that shares this object sees every other's advert, each
    following at most ``max_peers`` (default `DEFAULT_MAX_PEERS`: a simulation of more
    nodes passes its own count).

    Names are taken as mDNS would with ``allow_name_change``: the second advert that
    wants a name gets ``-2``, the next ``-3`` (RFC 6762 §9).
    """

    def __init__(self, *, max_peers: int | None = None) -> None:
        # None is read here, not at import, so that a test can lower the default.
        self.max_peers = check_max_peers(DEFAULT_MAX_PEERS if max_peers is None else max_peers)
        self._nodes: dict[str, tuple[PeerSeen, _Tracker]] = {}

    async def run(
        self,
        advert: Advert,
        events: trio.MemorySendChannel[DiscoveryEvent],
        *,
        task_status: trio.TaskStatus[Readvertise] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        _advert_info(advert)
        label = instance_label(advert.node_id)
        name = f"{label}.{SERVICE_TYPE}"
        for number in itertools.count(2):
            if name not in self._nodes:
                break
            name = f"{label}-{number}.{SERVICE_TYPE}"
        me, tracker = _seen(name, advert), _Tracker(advert.node_id, max_peers=self.max_peers)
        for other, other_tracker in self._nodes.values():
            tracker.seen(other)
            other_tracker.seen(me)
        self._nodes[name] = (me, tracker)

        async def readvertise(new: Advert) -> None:
            _check_replacement(advert, new)
            await trio.lowlevel.checkpoint()
            if self._nodes.get(name, (None, None))[1] is not tracker:
                return  # stopped: nothing is advertised any more
            seen = _seen(name, new)
            self._nodes[name] = (seen, tracker)
            for other_name, (_, other_tracker) in self._nodes.items():
                if other_name != name:
                    other_tracker.seen(seen)

        try:
            task_status.started(readvertise)
            await tracker.pump(events)
        finally:
            del self._nodes[name]
            for _, other_tracker in self._nodes.values():
                other_tracker.gone(name)


# -- zeroconf ------------------------------------------------------------------------


class ZeroconfDiscovery:
    """mDNS on exactly ``interfaces``: IP addresses of this host, never "all"; at most
    ``max_peers`` adverts followed at once.

    Stopping waits for the resolves in flight (each at most `RESOLVE_TIMEOUT_MS`, as a
    worker thread cannot be interrupted) and for the goodbye packets (about 0.5 s).
    """

    def __init__(self, interfaces: Sequence[str], *, max_peers: int = DEFAULT_MAX_PEERS) -> None:
        self.max_peers = check_max_peers(max_peers)
        if not isinstance(interfaces, list | tuple) or not interfaces:
            raise LocalProtocolError(
                f"ZeroconfDiscovery needs a list of this host's interface addresses to use, "
                f"got {interfaces!r}"
            )
        for address in interfaces:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                raise LocalProtocolError(f"{address!r} is not an IP address") from None
            if ip.is_unspecified or ip.is_multicast:
                raise LocalProtocolError(
                    f"{address} is not one interface's address: pass the addresses to use"
                )
        self.interfaces = list(interfaces)

    async def run(
        self,
        advert: Advert,
        events: trio.MemorySendChannel[DiscoveryEvent],
        *,
        task_status: trio.TaskStatus[Readvertise] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        from zeroconf import ServiceBrowser, Zeroconf

        info = _service_info(advert)
        browse = _Browse(advert.node_id, max_peers=self.max_peers)
        handler = _BrowseHandler(trio.lowlevel.current_trio_token(), browse.changed)
        zc: Zeroconf | None = None
        browser: ServiceBrowser | None = None
        advertiser: _Advertiser | None = None
        try:
            zc = await trio.to_thread.run_sync(partial(Zeroconf, interfaces=self.interfaces))
            advertiser = _Advertiser(zc, info, self.interfaces)
            # Browse before registering: our first queries then go out while our own
            # name is still being probed (about a second, RFC 6762 §8.1), not after.
            browser = await trio.to_thread.run_sync(
                partial(ServiceBrowser, zc, SERVICE_TYPE, handlers=[handler])
            )

            async def readvertise(new: Advert) -> None:
                _check_replacement(advert, new)
                assert advertiser is not None
                await advertiser.update(new)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(browse.tracker.pump, events)
                for _ in range(MAX_RESOLVING):
                    nursery.start_soon(browse.resolve_forever, zc)
                nursery.start_soon(advertiser.register)
                task_status.started(readvertise)
        finally:
            with trio.CancelScope(shield=True):
                registered = None if advertiser is None else advertiser.registered
                await trio.to_thread.run_sync(_shutdown, zc, browser, registered)


def _service_info(advert: Advert, name: str | None = None) -> ServiceInfo:
    """The DNS-SD records of ``advert`` (under ``name``, a name taken before, if given);
    `LocalProtocolError` if it cannot be announced."""
    from zeroconf import ServiceInfo

    txt = encode_txt(_advert_info(advert))
    hosts = [host for host, _ in advert.addresses]
    try:
        parse_endpoints(hosts, advert.addresses[0][1])
    except InvalidRemoteDataError as exc:
        raise LocalProtocolError(f"this node's advert: {exc}") from None
    return ServiceInfo(
        SERVICE_TYPE,
        name or f"{instance_label(advert.node_id)}.{SERVICE_TYPE}",
        port=advert.addresses[0][1],
        properties=txt,
        # A host name of our own: if the instance name is taken and we are renamed,
        # our address records still do not mix with the other host's.
        server=f"{host_label(advert.node_id)}.local.",
        parsed_addresses=hosts,
    )


class _Advertiser:
    """This node's advert on ``zc``: registered once, then updated in place (trio thread
    only; one zeroconf call at a time, each in a worker thread)."""

    def __init__(self, zc: Zeroconf, info: ServiceInfo, interfaces: Sequence[str]) -> None:
        self._zc = zc
        self._info = info
        self._interfaces = interfaces
        self._lock = trio.Lock()
        self.registered: ServiceInfo | None = None  # once the name is ours: say goodbye

    async def register(self) -> None:
        from zeroconf import Error as ZeroconfError

        async with self._lock:
            info = self._info
            try:
                # A name another host holds is renamed (-2, -3, ...) rather than fought over.
                await trio.to_thread.run_sync(
                    partial(self._zc.register_service, info, allow_name_change=True)
                )
            except ZeroconfError as exc:
                log.error(
                    "cannot advertise on %s (%s: %s): this node still finds the others, "
                    "but they do not find it",
                    ", ".join(self._interfaces),
                    type(exc).__name__,
                    exc,
                )
                return
            self.registered = info
        log.info("advertising %s on %s", info.name, ", ".join(self._interfaces))

    async def update(self, advert: Advert) -> None:
        """Announce ``advert`` instead, under the name taken (RFC 6762 §8.4: a changed
        record is announced again); before registration ends, it is what registers."""
        from zeroconf import Error as ZeroconfError

        async with self._lock:
            info = _service_info(advert, self._info.name)
            self._info = info
            if self.registered is None:
                return
            try:
                await trio.to_thread.run_sync(self._zc.update_service, info)
            except ZeroconfError as exc:
                log.warning("could not update advert %s: %s", info.name, exc)
                return
            self.registered = info
        log.info("advert %s updated", info.name)


class _BrowseHandler:
    """The `ServiceBrowser` handler. It runs on zeroconf's thread: it only hands
    ``(name, gone)`` to the trio thread, and never raises (after the trio run has
    finished, the change is dropped)."""

    __slots__ = ("_deliver", "_removed", "_token")

    def __init__(
        self, token: trio.lowlevel.TrioToken, deliver: Callable[[str, bool], None]
    ) -> None:
        from zeroconf import ServiceStateChange

        self._token = token
        self._deliver = deliver
        self._removed = ServiceStateChange.Removed

    def __call__(
        self, zeroconf: object, service_type: str, name: str, state_change: object
    ) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._deliver, name, state_change is self._removed)


@dataclass(frozen=True, slots=True)
class _Records:
    """A resolved advert as plain values, copied out of zeroconf on its worker thread."""

    properties: tuple[tuple[bytes, bytes | None], ...]
    hosts: tuple[str, ...]
    port: int | None


class _Browse:
    """The trio side of browsing: which names to resolve, and what they said (trio
    thread only).

    Each browse change bumps the name's generation; a resolve whose name changed or went
    while it ran is discarded, and the newer change decides.
    """

    def __init__(self, own_id: bytes, *, max_peers: int) -> None:
        self.tracker = _Tracker(own_id, max_peers=max_peers)
        self._want: dict[str, int] = {}  # names to follow -> generation of their last change
        self._queue: dict[str, None] = {}  # names waiting for a resolver (ordered set)
        self._waiting = trio.lowlevel.ParkingLot()
        self._generations = itertools.count()
        self._refused: dict[str, str] = {}  # the reason last logged for each refused name
        self._bound = _Bound(max_peers)  # names browsed, blazemesh adverts or not

    def changed(self, name: str, gone: bool) -> None:
        """A browse change (from `_BrowseHandler`, on the trio thread); never raises."""
        if gone:
            self._want.pop(name, None)
            self._queue.pop(name, None)
            self._refused.pop(name, None)
            self.tracker.gone(name)
            return
        if name not in self._want and not self._bound.admits(name, len(self._want)):
            return
        self._want[name] = next(self._generations)
        self._queue[name] = None
        self._waiting.unpark()

    async def resolve_forever(self, zc: Zeroconf) -> NoReturn:
        """One of `MAX_RESOLVING` resolvers: resolve queued names, one at a time."""
        while True:
            while not self._queue:
                await self._waiting.park()
            name = next(iter(self._queue))
            del self._queue[name]
            generation = self._want.get(name)
            if generation is None:
                continue
            records = await trio.to_thread.run_sync(_resolve, zc, name)
            if self._want.get(name) == generation:
                self._resolved(name, records)

    def _resolved(self, name: str, records: _Records | str | None) -> None:
        if records is None:  # adverts are hints: keep what we knew, wait for a change
            log.debug("advert %r did not resolve within %d ms", name, RESOLVE_TIMEOUT_MS)
            return
        if isinstance(records, _Records):
            try:
                txt = parse_txt(dict(records.properties))
                addresses = parse_endpoints(records.hosts, records.port)
            except InvalidRemoteDataError as exc:
                records = str(exc)
            else:
                self._refused.pop(name, None)
                self.tracker.seen(
                    PeerSeen(
                        name=name,
                        node_id=txt.node_id,
                        addresses=addresses,
                        mesh_tag=txt.mesh_tag,
                        version=txt.version,
                        hub_eligible=txt.hub_eligible,
                    )
                )
                return
        if self._refused.get(name) != records:
            log.info("ignoring advert %r: %s", name, records)
            self._refused[name] = records
        self.tracker.gone(name)  # if it was a blazemesh advert, it is no longer one


def _resolve(zc: Zeroconf, name: str) -> _Records | str | None:
    """On a worker thread: ``name``'s records, None if they did not come in time, or
    why ``name`` cannot be resolved at all."""
    from zeroconf import Error as ZeroconfError

    try:
        info = zc.get_service_info(SERVICE_TYPE, name, RESOLVE_TIMEOUT_MS)
    except ZeroconfError as exc:  # a stranger's name outside our service type, say
        return f"{type(exc).__name__}: {exc}"
    if info is None:
        return None
    return _Records(
        properties=tuple(info.properties.items()),
        hosts=tuple(info.parsed_scoped_addresses()),
        port=info.port,
    )


def _shutdown(
    zc: Zeroconf | None, browser: ServiceBrowser | None, registered: ServiceInfo | None
) -> None:
    """On a worker thread: stop browsing, withdraw the advert (goodbye packets, RFC 6762
    §10.1) and stop zeroconf, joining its threads."""
    from zeroconf import Error as ZeroconfError

    if zc is None:
        return
    try:
        if browser is not None:
            browser.cancel()
        if registered is not None:
            try:
                zc.unregister_service(registered)
            except ZeroconfError as exc:  # the network may already be gone
                log.warning("could not withdraw advert %s: %s", registered.name, exc)
    finally:
        zc.close()

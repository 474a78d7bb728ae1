"""The `Discovery` edge: advertise this node on the LAN and report the nodes seen.

`ZeroconfDiscovery` uses mDNS/DNS-SD (RFC 6762, RFC 6763) through python-zeroconf, on
exactly the interface addresses it is given; `MemoryDiscovery` connects the nodes of one
trio run for tests and the simulator. Both pass tests/agent/test_discovery.py.

An advert is the service ``_blazemesh._tcp.local.`` with a TXT record of what a peer
needs before connecting: ``v`` (protocol version), ``id`` (node id, base32) and ``m``
(the mesh tag: a keyed hash of the mesh secret that lets members recognise each other
without telling outsiders the mesh name or secret). Adverts say who might be there;
whether a node is alive is for the links to tell: a crashed node's advert stays in caches
for minutes (RFC 6762 §10).

Threading (docs/design.md, "Discovery"): zeroconf runs its own asyncio loop in its own
thread and calls browser handlers from it. A handler only hands an immutable event to
trio with `TrioToken.run_sync_soon` and never raises; every blocking zeroconf call
(register, resolve, unregister, close) runs in a trio worker thread.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from agent.network import Address
from protocol.codec import PROTOCOL_VERSION
from protocol.discovery import AdvertInfo, encode_txt, parse_txt
from protocol.errors import InvalidRemoteDataError, LocalProtocolError
from protocol.ids import node_id_short

log = logging.getLogger(__name__)

SERVICE_TYPE = "_blazemesh._tcp.local."
RESOLVE_TIMEOUT_MS = 3_000  # an advert that cannot be resolved in this time is skipped


@dataclass(frozen=True, slots=True, kw_only=True)
class Advert:
    """What this node announces."""

    node_id: bytes
    addresses: tuple[Address, ...]
    mesh_tag: str
    version: int = PROTOCOL_VERSION
    hub_eligible: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerSeen:
    """An advert was seen (or changed): ``name`` identifies it until `PeerGone`."""

    name: str
    node_id: bytes
    addresses: tuple[Address, ...]
    mesh_tag: str
    version: int
    hub_eligible: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerGone:
    """The advert ``name`` was withdrawn (or expired)."""

    name: str


Event = PeerSeen | PeerGone


class Discovery(Protocol):
    """Advertise and browse."""

    async def run(
        self,
        advert: Advert,
        events: trio.MemorySendChannel[Event],
        *,
        task_status: trio.TaskStatus[None],
    ) -> None:
        """Advertise ``advert`` and send what is seen to ``events`` until cancelled; then
        withdraw the advert. Reports started once browsing and the advert are live."""


def instance_name(node_id: bytes) -> str:
    return f"blazemesh-{node_id_short(node_id)}.{SERVICE_TYPE}"


# -- in memory -----------------------------------------------------------------------


class MemoryDiscovery:
    """Every node of one trio run that shares this object sees every other's advert."""

    def __init__(self) -> None:
        self._adverts: dict[str, Advert] = {}
        self._watchers: list[trio.MemorySendChannel[Event]] = []

    async def run(
        self,
        advert: Advert,
        events: trio.MemorySendChannel[Event],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        name = instance_name(advert.node_id)
        for other_name, other in self._adverts.items():
            events.send_nowait(_seen(other_name, other))
        self._watchers.append(events)
        self._announce(PeerSeen(name=name, **_fields(advert)), skip=events)
        self._adverts[name] = advert
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            del self._adverts[name]
            self._watchers.remove(events)
            self._announce(PeerGone(name=name), skip=None)

    def _announce(self, event: Event, skip: trio.MemorySendChannel[Event] | None) -> None:
        for watcher in self._watchers:
            if watcher is not skip:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    watcher.send_nowait(event)


def _fields(advert: Advert) -> dict[str, Any]:
    return {
        "node_id": advert.node_id,
        "addresses": advert.addresses,
        "mesh_tag": advert.mesh_tag,
        "hub_eligible": advert.hub_eligible,
        "version": advert.version,
    }


def _seen(name: str, advert: Advert) -> PeerSeen:
    return PeerSeen(name=name, **_fields(advert))


# -- zeroconf ------------------------------------------------------------------------


class ZeroconfDiscovery:
    """mDNS on exactly ``interfaces`` (IPv4 addresses of this host, never "all")."""

    def __init__(self, interfaces: Sequence[str]) -> None:
        if not interfaces:
            raise LocalProtocolError("ZeroconfDiscovery needs the interface addresses to use")
        self.interfaces = list(interfaces)

    async def run(
        self,
        advert: Advert,
        events: trio.MemorySendChannel[Event],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        from zeroconf import ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

        token = trio.lowlevel.current_trio_token()
        changes_send, changes = trio.open_memory_channel[tuple[str, bool]](1_000)

        def handler(
            zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
        ) -> None:
            # On zeroconf's thread: hand over and never raise (STYLE.md, practice 6).
            gone = state_change is ServiceStateChange.Removed
            with contextlib.suppress(trio.RunFinishedError, trio.WouldBlock, RuntimeError):
                token.run_sync_soon(changes_send.send_nowait, (name, gone))

        zc: Zeroconf = await trio.to_thread.run_sync(lambda: Zeroconf(interfaces=self.interfaces))
        info = ServiceInfo(
            SERVICE_TYPE,
            instance_name(advert.node_id),
            addresses=[socket.inet_aton(host) for host, _ in advert.addresses],
            port=advert.addresses[0][1],
            properties=encode_txt(
                AdvertInfo(
                    node_id=advert.node_id,
                    version=advert.version,
                    mesh_tag=advert.mesh_tag,
                    hub_eligible=advert.hub_eligible,
                )
            ),
        )
        browser: ServiceBrowser | None = None
        registered = False
        try:
            # Browse before registering: the browser's first queries then go out while our
            # own name is still being probed (1-2 s), not after.
            browser = await trio.to_thread.run_sync(
                lambda: ServiceBrowser(zc, SERVICE_TYPE, handlers=[handler])
            )
            async with trio.open_nursery() as nursery:

                async def register() -> None:
                    nonlocal registered
                    registered = True  # from here on, shutdown says goodbye
                    # Probing our name takes about a second (RFC 6762 §8.1); meanwhile we
                    # browse and can already see, and dial, the others. A name taken by
                    # another host is renamed (-2, -3, ...) rather than fought over.
                    await trio.to_thread.run_sync(
                        lambda: zc.register_service(info, allow_name_change=True)
                    )
                    log.info("advertising %s on %s", info.name, ", ".join(self.interfaces))

                nursery.start_soon(register)
                task_status.started()
                async for name, gone in changes:
                    if gone:
                        await events.send(PeerGone(name=name))
                    elif name != info.name:
                        nursery.start_soon(_resolve, zc, name, events)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_shutdown, zc, browser, info if registered else None)


async def _resolve(zc: Any, name: str, events: trio.MemorySendChannel[Event]) -> None:
    info = await trio.to_thread.run_sync(
        zc.get_service_info, SERVICE_TYPE, name, RESOLVE_TIMEOUT_MS
    )
    seen = parse_info(name, info)
    if seen is not None:
        await events.send(seen)


def _shutdown(zc: Any, browser: Any, info: Any) -> None:
    """Withdraw the advert (a goodbye packet, RFC 6762 §10.1) and stop zeroconf."""
    from zeroconf import Error as ZeroconfError

    if browser is not None:
        browser.cancel()
    if info is not None:
        with contextlib.suppress(ZeroconfError):  # the network may already be gone
            zc.unregister_service(info)
    zc.close()


def parse_info(name: str, info: Any) -> PeerSeen | None:
    """The `PeerSeen` of a resolved advert, or None (logged) if it is not a blazemesh one."""
    if info is None:
        log.debug("advert %s could not be resolved", name)
        return None
    try:
        txt = parse_txt(info.properties or {})
    except InvalidRemoteDataError as exc:
        log.info("ignoring advert %s: %s", name, exc)
        return None
    addresses = tuple((host, info.port) for host in info.parsed_addresses())
    return PeerSeen(
        name=name,
        node_id=txt.node_id,
        addresses=addresses,
        mesh_tag=txt.mesh_tag,
        hub_eligible=txt.hub_eligible,
        version=txt.version,
    )

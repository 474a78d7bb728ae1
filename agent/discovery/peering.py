"""Peering: from what discovery sees to the links the node keeps.

`Peering` runs a `Discovery` (mDNS, or the simulator's), sorts every advert it reports
into members of this node's mesh and the rest (another mesh, an incompatible version,
not on the allowlist), and dials the members the topology rules pick
(`protocol.topology`). It re-plans whenever an advert comes or goes and when the
membership changes; a change of the mesh secret also changes this node's advert (its
mesh tag), which discovery then announces again, so that the members see it at once.
Adverts only say who might be there: a crashed node's advert can linger in mDNS caches
for minutes, and its dialler then simply keeps retrying with backoff; links, not
adverts, tell who is alive.

Of two members that should be linked, the topology says which one dials. If that one has
not linked within `DIAL_GRACE_S` (it may not see us, or cannot reach us), the other dials
too, and the node's duplicate-link rule keeps one link.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import assert_never

import trio

from blazemesh.agent.discovery.adverts import (
    Advert,
    Discovery,
    DiscoveryEvent,
    PeerGone,
    PeerSeen,
    Readvertise,
)
from blazemesh.agent.links.network import Address, format_address
from blazemesh.agent.links.node import Node
from blazemesh.agent.storage.store import Applied
from blazemesh.protocol.codec import PROTOCOL_VERSION
from blazemesh.protocol.discovery import mesh_tag
from blazemesh.protocol.errors import InvalidRemoteDataError
from blazemesh.protocol.ids import node_id_short
from blazemesh.protocol.topology import (
    SETTINGS_COLLECTION,
    TOPOLOGY_KEY,
    MeshPlan,
    TopologyConfig,
    star_plan,
)

log = logging.getLogger(__name__)

MAX_EVENTS_QUEUED = 1_024  # discovery events waiting for the planner; discovery waits beyond
DIAL_GRACE_S = 3.0  # how long a member may take to dial us before we dial it
REPLAN_EVERY_S = 1.0  # re-plan this often even without news (grace periods expire)
PLAN_GAP_S = 0.1  # news within this long of a plan waits for the next: bursts plan once


@dataclass(slots=True, kw_only=True)
class Sighting:
    """One advert as `blazemesh discover` shows it."""

    seen: PeerSeen
    first_seen: float
    refused: str | None  # why it is not a member to link to; None if it is one


class Peering:
    """Link ``node`` to the members of its mesh that ``discovery`` finds."""

    def __init__(
        self,
        node: Node,
        discovery: Discovery,
        *,
        advertise: tuple[Address, ...],
        topology: TopologyConfig | None = None,
        hub_eligible: bool = False,
    ) -> None:
        self.node = node
        self.discovery = discovery
        self.advertise = advertise
        self.configured = topology or TopologyConfig()  # until the mesh-wide setting says
        self.topology = self.configured
        self.hub_eligible = hub_eligible
        self.hub: bytes | None = None  # star: the hub this spoke uses
        self._started = 0.0
        self._replan = trio.Event()  # news: `_planner` plans soon
        self.planned: set[bytes] = set()  # the members the topology links this node to
        self.sightings: dict[str, Sighting] = {}
        self._dialling: dict[bytes, tuple[Address, trio.CancelScope]] = {}
        self._covering: set[bytes] = set()  # theirs to dial, dialled by us after the grace
        self._tag: tuple[bytes, str] | None = None  # (secret, its mesh tag): `_mesh_tag`
        self._advert_changed = trio.Event()  # the membership changed: `_readvertiser`

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Advertise, browse and keep the planned links until cancelled."""
        node = self.node
        advert = self._advert()
        self._started = trio.current_time()
        send, receive = trio.open_memory_channel[DiscoveryEvent](MAX_EVENTS_QUEUED)
        stop = node.mesh.on_change(self._membership_changed)
        stop_following = node.replica.on_commit(self._committed)
        self._load_setting()
        try:
            async with trio.open_nursery() as nursery:
                readvertise = await nursery.start(self.discovery.run, advert, send)
                nursery.start_soon(self._readvertiser, advert, readvertise)
                nursery.start_soon(self._planner)
                task_status.started()
                async for event in receive:
                    now = trio.current_time()
                    self._on(event, now)
                    while True:  # the rest of a burst, without a task switch each
                        try:
                            self._on(receive.receive_nowait(), now)
                        except trio.WouldBlock:
                            break
                    self._replan.set()
        finally:
            stop()
            stop_following()
            for _, scope in self._dialling.values():
                scope.cancel()

    def _advert(self) -> Advert:
        return Advert(
            node_id=self.node.node_id,
            addresses=self.advertise,
            mesh_tag=self._mesh_tag(),
            hub_eligible=self.hub_eligible,
        )

    async def _readvertiser(self, advert: Advert, readvertise: Readvertise) -> None:
        """Announce this node's advert again whenever the membership changes what it says."""
        while True:
            await self._advert_changed.wait()
            self._advert_changed = trio.Event()
            new = self._advert()
            if new != advert:
                log.info("the mesh secret changed: advertising the new mesh tag")
                await readvertise(new)
                advert = new

    async def _planner(self) -> None:
        """Plan when asked (news) and every `REPLAN_EVERY_S` (grace periods expire), at
        most once per `PLAN_GAP_S`: a burst of adverts, as when a hundred members come
        up at once, costs one plan, not one per advert."""
        while True:
            with trio.move_on_after(REPLAN_EVERY_S):
                await self._replan.wait()
            self._replan = trio.Event()
            self._plan()
            await trio.sleep(PLAN_GAP_S)

    def _on(self, event: DiscoveryEvent, now: float) -> None:
        match event:
            case PeerGone():
                gone = self.sightings.pop(event.name, None)
                if gone is not None and log.isEnabledFor(logging.INFO):
                    log.info("%s withdrew its advert", node_id_short(gone.seen.node_id))
            case PeerSeen():
                self._seen(event, now)
            case _:
                assert_never(event)

    def _seen(self, event: PeerSeen, now: float) -> None:
        if event.node_id == self.node.node_id:
            return
        old = self.sightings.get(event.name)
        first = old.first_seen if old is not None else now
        self.sightings[event.name] = Sighting(
            seen=event, first_seen=first, refused=self._refusal(event)
        )
        if not self.node.linked(event.node_id) and event.addresses:
            self.node.kick(event.addresses[0])  # it announced itself: no need to wait
        if (old is None or old.seen != event) and log.isEnabledFor(logging.INFO):
            where = ", ".join(format_address(a) for a in event.addresses)
            why = self.sightings[event.name].refused
            log.info(
                "discovered %s at %s%s",
                node_id_short(event.node_id),
                where,
                "" if why is None else f": not linking ({why})",
            )

    def _refusal(self, seen: PeerSeen) -> str | None:
        if seen.version != PROTOCOL_VERSION:
            return f"protocol version {seen.version}, this node speaks {PROTOCOL_VERSION}"
        if seen.mesh_tag != self._mesh_tag():
            return "another mesh"
        if not self.node.mesh.allows(seen.node_id):
            return "not on this node's allowlist"
        if not seen.addresses:
            return "no address in its advert"
        return None

    def _mesh_tag(self) -> str:
        """The mesh's tag, computed once per secret (the secret may be rotated)."""
        secret = self.node.mesh.secret
        if self._tag is None or self._tag[0] != secret:
            self._tag = (secret, mesh_tag(secret))
        return self._tag[1]

    def _committed(self, applied: list[Applied]) -> None:
        for item in applied:
            if any(
                op.collection == SETTINGS_COLLECTION and op.key == TOPOLOGY_KEY
                for op in item.change.ops
            ):
                self._load_setting()
                self._replan.set()
                return

    def _load_setting(self) -> None:
        """Follow the mesh-wide topology setting if there is one, else this node's own."""
        fields = self.node.replica.get_nowait(SETTINGS_COLLECTION, TOPOLOGY_KEY)
        topology = self.configured
        if fields is not None:
            try:
                topology = TopologyConfig.from_record(fields)
            except InvalidRemoteDataError as exc:
                log.warning("ignoring the mesh-wide topology setting: %s", exc)
        if topology != self.topology:
            log.info("topology: %s", topology.record())
            self.topology = topology

    def _membership_changed(self) -> None:
        for sighting in self.sightings.values():
            sighting.refused = self._refusal(sighting.seen)
        self._advert_changed.set()
        self._replan.set()

    def _members(self) -> dict[bytes, Sighting]:
        return {s.seen.node_id: s for s in self.sightings.values() if s.refused is None}

    def _plan(self) -> None:
        """Start and stop diallers so that exactly the planned members are dialled."""
        node, members = self.node, self._members()
        mesh = self.topology.mode == "mesh"
        links, wanted = self._mesh(members) if mesh else self._star(members)
        node.feed_by_ring(self.topology.follows_ring)
        self.planned = links
        now = trio.current_time()
        self._covering &= links - wanted
        for peer in sorted(links - wanted):
            # Theirs to dial: if it has not within the grace period, dial it ourselves.
            if not node.linked(peer) and now - members[peer].first_seen >= DIAL_GRACE_S:
                self._covering.add(peer)
        wanted |= self._covering
        for peer in [p for p in self._dialling if p not in wanted]:
            _, scope = self._dialling.pop(peer)
            scope.cancel()
        for peer in sorted(wanted):
            addresses = members[peer].seen.addresses
            dialling = self._dialling.get(peer)
            if dialling is not None and dialling[0] in addresses:
                continue
            if dialling is not None:  # it moved: dial where it is now
                dialling[1].cancel()
            self._dialling[peer] = (addresses[0], node.dial(addresses[0]))

    def _mesh(self, members: dict[bytes, Sighting]) -> tuple[set[bytes], set[bytes]]:
        """The mesh's links at this node, and those it dials."""
        plan = MeshPlan(self.node.node_id, members, self.topology.max_links)
        links = plan.links()
        return links, {peer for peer in links if plan.dials(peer)}

    def _star(self, members: dict[bytes, Sighting]) -> tuple[set[bytes], set[bytes]]:
        """The star's links at this node, and those it dials (`protocol.topology.star_plan`)."""
        me = self.node.node_id
        plan = star_plan(
            me,
            {peer: s.seen.hub_eligible for peer, s in members.items()},
            eligible=self.hub_eligible,
            current=self.hub,
            failed=self._failed(members),
            configured=self.topology.hub,
            # the eligible nodes may not have been discovered before
            settled=trio.current_time() - self._started >= DIAL_GRACE_S,
        )
        if plan.hub is not None and plan.hub not in (self.hub, me):
            log.info("star: %s is this node's hub", node_id_short(plan.hub))
        self.hub = plan.hub
        return set(plan.links), set(plan.dials)

    def _failed(self, members: dict[bytes, Sighting]) -> set[bytes]:
        """Members this node dials, is not linked to, and whose last attempt failed."""
        failed = set()
        for peer, (address, _) in self._dialling.items():
            dial = self.node.dial_state(address)
            if (
                peer in members
                and not self.node.linked(peer)
                and dial is not None
                and dial.retry_at is not None
                and dial.last_error is not None
            ):
                failed.add(peer)
        return failed

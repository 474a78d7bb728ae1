"""Which peers a node links to: the topology rules, as pure functions of what it knows.

Every node evaluates the same rules over its view of the mesh's members (itself plus the
peers it has discovered or been configured with). Views agree once discovery settles, so
nodes agree on the graph without exchanging it (docs/design.md, "Topologies").

Mesh, unbounded: every member links to every other; of two members, the one with the
lower node id dials (`protocol.forwarding.preferred_initiator`), the other only accepts.

Mesh with at most ``max_links`` dialled links per node: members sit on a ring in the
order of a hash of their ids (`protocol.ring`), and each dials its successor and then the
members 2, 4, 8, ... places ahead (the fingers of Chord), up to ``max_links``. The
successor links alone form a ring, so the graph is connected whenever the views agree
and stays connected after any one node fails; the fingers bring any two members within
about log2(n) hops. A node also accepts the links others dial to it: on average as many
as it dials.

Star: the members started with ``--hub-eligible`` link to each other; every other member
(a spoke) links to one of them, the hub: the configured one, else the one it already
uses while that one is alive, else the lowest eligible id that has not failed. A spoke
never switches to a hub that returns, so the star does not flap; and since the eligible
members are linked to each other, spokes that chose different hubs (one joined while
another hub was down) still reach each other in at most three hops. When no member is
eligible and no hub is configured, the member with the lowest id acts as the only
eligible one, so that the star still forms (`star_plan`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from blazemesh.protocol.errors import InvalidRemoteDataError, LocalProtocolError
from blazemesh.protocol.forwarding import preferred_initiator
from blazemesh.protocol.ids import node_id_text, parse_node_id
from blazemesh.protocol.model import Value
from blazemesh.protocol.ring import ring_order

MODES = ("mesh", "star")
SETTINGS_COLLECTION, TOPOLOGY_KEY = "_mesh", "topology"  # the mesh-wide setting's record


@dataclass(frozen=True, slots=True, kw_only=True)
class TopologyConfig:
    """How members are linked. Set per agent at start, or mesh-wide as the record
    ``_mesh/topology``, which every node follows once it has it."""

    mode: str = "mesh"
    max_links: int | None = None  # mesh: dialled links per node; None: every member
    hub: bytes | None = None  # star: the configured hub; None: elected

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise LocalProtocolError(f"topology {self.mode!r} is not one of {', '.join(MODES)}")
        if self.max_links is not None and self.max_links < 1:
            raise LocalProtocolError(f"max_links must be at least 1, got {self.max_links}")

    @property
    def follows_ring(self) -> bool:
        """Whether every member links to its ring neighbours (the mesh does; a star does
        not), so that nodes can feed by the ring (`protocol.ring`)."""
        return self.mode == "mesh"

    def record(self) -> dict[str, Value]:
        """The fields of the mesh-wide setting's record."""
        hub = None if self.hub is None else node_id_text(self.hub)
        return {"mode": self.mode, "max_links": self.max_links, "hub": hub}

    @classmethod
    def from_record(cls, fields: Mapping[str, Value]) -> TopologyConfig:
        """Read the setting's record (written by any member): `InvalidRemoteDataError` if
        it is not a valid setting."""
        mode, max_links, hub = fields.get("mode"), fields.get("max_links"), fields.get("hub")
        try:
            if not isinstance(mode, str) or not (max_links is None or type(max_links) is int):
                raise LocalProtocolError("mode must be text and max_links an integer or null")
            if not (hub is None or isinstance(hub, str)):
                raise LocalProtocolError("hub must be a node id or null")
            return cls(
                mode=mode, max_links=max_links, hub=None if hub is None else parse_node_id(hub)
            )
        except LocalProtocolError as exc:
            raise InvalidRemoteDataError(f"the topology setting is invalid: {exc}") from None


def _steps(size: int, max_links: int) -> list[int]:
    """How far ahead on a ring of ``size`` a member links: 1, 2, 4, 8... places, then
    the places in between, up to ``max_links`` of them."""
    steps = [1 << k for k in range(size.bit_length()) if 1 << k < size][:max_links]
    step = 3
    while len(steps) < max_links and step < size:
        if step & (step - 1):
            steps.append(step)
        step += 1
    return steps


class MeshPlan:
    """The mesh's links as seen from ``me``, for one view of the members."""

    def __init__(self, me: bytes, members: Iterable[bytes], max_links: int | None = None) -> None:
        if max_links is not None and max_links < 1:
            raise LocalProtocolError(f"max_links must be at least 1, got {max_links}")
        self.me = me
        ring = ring_order([*members, me])
        self._ring = ring
        self._bounded = max_links is not None and len(ring) - 1 > max_links
        self._mine: set[bytes] = set()  # the members ``me`` picks
        self._theirs: set[bytes] = set()  # the members that pick ``me``
        if self._bounded:
            assert max_links is not None
            here, size = ring.index(me), len(ring)
            steps = _steps(size, max_links)
            self._mine = {ring[(here + s) % size] for s in steps}
            self._theirs = {ring[(here - s) % size] for s in steps}

    def links(self) -> set[bytes]:
        """Every member ``me`` is linked to, whichever end dials."""
        if not self._bounded:
            return {m for m in self._ring if m != self.me}
        return self._mine | self._theirs

    def dials(self, peer: bytes) -> bool:
        """Whether ``me`` is the end that dials its link to ``peer``."""
        if not self._bounded or (peer in self._mine and peer in self._theirs):
            return preferred_initiator(self.me, peer) == self.me
        return peer in self._mine


def mesh_dials(me: bytes, members: Iterable[bytes], max_links: int | None = None) -> set[bytes]:
    """The members ``me`` dials in a mesh of ``members`` (``me`` among them or not)."""
    plan = MeshPlan(me, members, max_links)
    return {peer for peer in plan.links() if plan.dials(peer)}


def star_hub(
    members: Mapping[bytes, bool],
    *,
    current: bytes | None = None,
    failed: Iterable[bytes] = (),
    configured: bytes | None = None,
) -> bytes | None:
    """The hub a spoke links to, among ``members`` (node id -> hub-eligible).

    A configured hub always wins. Otherwise the current hub is kept while it has not
    failed (so a returning lower-id node does not make the star flap), else the lowest
    eligible member that has not failed; None if there is none.
    """
    if configured is not None:
        return configured
    down = set(failed)
    if current is not None and current in members and current not in down:
        return current
    eligible = sorted(m for m, ok in members.items() if ok and m not in down)
    return eligible[0] if eligible else None


def star_dials(
    me: bytes,
    members: Mapping[bytes, bool],
    *,
    eligible: bool,
    hub: bytes | None,
) -> set[bytes]:
    """The members ``me`` dials in a star.

    Hub-eligible members link to each other (each pair dialled by its preferred
    initiator): whichever of them a spoke chose, every spoke reaches every other. A spoke
    dials only ``hub``.
    """
    if eligible:
        return {m for m, ok in members.items() if ok and preferred_initiator(me, m) == me}
    return set() if hub is None or hub == me else {hub}


@dataclass(frozen=True, slots=True, kw_only=True)
class StarPlan:
    """The star's links at one node."""

    hub: bytes | None  # the hub this node uses (itself, if it acts as one); None: none yet
    links: frozenset[bytes]  # the members it is linked to, whichever end dials
    dials: frozenset[bytes]  # ... and those of them it dials


def star_plan(
    me: bytes,
    members: Mapping[bytes, bool],
    *,
    eligible: bool,
    current: bytes | None = None,
    failed: Iterable[bytes] = (),
    configured: bytes | None = None,
    settled: bool = True,
) -> StarPlan:
    """The star at ``me`` among ``members`` (node id -> hub-eligible; ``me`` is not among
    them, and ``eligible`` says whether it is), with `star_hub`'s ``current``, ``failed``
    and ``configured``.

    When neither ``me`` nor any member is eligible and no hub is configured, the lowest
    id among them and ``me`` acts as the only eligible one: the fallback election, which
    every node evaluates alike. It waits until ``settled`` (discovery has run long enough
    for eligible members to have been seen); until then ``me`` links to no one and keeps
    ``current``.
    """
    if configured is None and not eligible and not any(members.values()):
        if not settled:
            return StarPlan(hub=current, links=frozenset(), dials=frozenset())
        lowest = min([*members, me])
        members = {peer: peer == lowest for peer in members}
        eligible = lowest == me
    if eligible:
        links = frozenset(peer for peer, ok in members.items() if ok)
        dials = frozenset(star_dials(me, members, eligible=True, hub=me))
        return StarPlan(hub=me, links=links, dials=dials)
    hub = star_hub(members, current=current, failed=failed, configured=configured)
    links = frozenset() if hub is None or hub not in members else frozenset({hub})
    return StarPlan(hub=hub, links=links, dials=links)

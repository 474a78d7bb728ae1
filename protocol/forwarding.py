"""Which of its links a node keeps, and which of them feeds it each origin's changes
(docs/protocol.md 8.2, rules 9 and 10), sans-IO.

The rule of this module, as in h11's ``_state.py``: everything that decides the node's
forwarding tree lives here. `Forwarding` is fed what happens to the node's links (a link
comes up, goes down, brought changes that were applied) and answers with commands for the
links' `protocol.sync.SyncLink` (ask for arcs, prune, graft), which the agent carries out
in order and nothing more. Each link's own machine keeps the eager and lazy origins of its
direction and grafts a lazy one back by itself when it falls behind (`SyncLink.tick`).

Duplicate links (rule 9). Two nodes that dial each other at once end up with two links.
When the second says hello, each side keeps one by a rule both evaluate the same way
(`keeps_newer_link`): of two links opened by the same node, the newer (the older is
likely dead); otherwise the one opened by the node with the lower id
(`preferred_initiator`). The link kept takes over what the other fed.

Feeding (rule 10). Every commit is offered to every link, so in a mesh each change would
arrive many times; a node therefore takes each origin's changes from one link, which
makes one tree per origin. It chooses in one of two ways; peering says which
(`feed_by_ring`):

- By the ring (`protocol.ring`), in a mesh, whose links include every member's ring
  neighbours: each link is asked (ARCS) for the origins nearest to its peer on the ring,
  again whenever a link comes or goes. The tree exists before an origin's first change,
  and needs no state per origin.
- By pruning, in any other graph (static peers, a star), as in Plumtree (Leitao et al.,
  "Epidemic Broadcast Trees", 2007). An origin's feeder is the link that brought its
  first new change (first since the previous feeder went), and stays so while it lasts;
  a link that brings changes the node already holds is pruned for their origins unless it
  is their feeder. A link to an origin itself feeds that origin from the moment it opens,
  and every other link is pruned for it at once; in a full mesh no change then arrives
  twice, not even an origin's first. A change that a pruned link had in flight does not
  make it a feeder. Links report in the order they finish, not the order they committed:
  a duplicate can be reported before the first copy's link reports; such a link waits
  until the origin's feeder is known, and is pruned then. When a link goes, the origins
  it fed are grafted on every other link until new duplicates prune them back to one
  feeder. A feeder got its change before the node it feeds, so while links stay up
  feeders never form a cycle: following them from any node leads to the origin.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import assert_never

from blazemesh.protocol.errors import LocalProtocolError
from blazemesh.protocol.ring import WHOLE_RING, Arc, feed_arcs


def preferred_initiator(a: bytes, b: bytes) -> bytes:
    """Of two nodes, the one whose link to the other is kept when both open one: the lower
    id (bytes compared). The topology also lets it dial (`protocol.topology`)."""
    return min(a, b)


def keeps_newer_link(me: bytes, peer: bytes, *, older_dialled: bool, newer_dialled: bool) -> bool:
    """Of two links between ``me`` and ``peer``, whose hellos completed in that order
    (``*_dialled``: whether ``me`` opened it), whether ``me`` keeps the newer one and
    ends the older (docs/protocol.md 8.2 rule 9). For links opened by different nodes,
    ``peer`` evaluating the same rule keeps the same link, whichever it saw first."""
    if older_dialled == newer_dialled:
        return True  # opened by the same node: the older is likely dead
    newer_opener = me if newer_dialled else peer
    return newer_opener == preferred_initiator(me, peer)


class Arrival(enum.Enum):
    """What became of one change a link brought, once applied."""

    NEW_EAGER = "new"  # the first copy here, of an origin the link pushes (eager)
    NEW_LAZY = "new, lazy"  # the first copy here, of an origin the link was asked not to
    # push (in flight when the PRUNE went)
    DUPLICATE = "duplicate"  # this node already held it
    REFUSED = "refused"  # refused (docs/protocol.md 8.3)


@dataclass(frozen=True, slots=True, kw_only=True)
class AskFor:
    """Ask ``peer`` to push exactly the origins on ``arcs`` (`SyncLink.ask_for`)."""

    peer: bytes
    arcs: tuple[Arc, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Prune:
    """Ask ``peer`` to stop pushing changes of ``origins`` (`SyncLink.prune`)."""

    peer: bytes
    origins: tuple[bytes, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Graft:
    """Ask ``peer`` to push changes of ``origins`` again (`SyncLink.graft`)."""

    peer: bytes
    origins: tuple[bytes, ...]


Command = AskFor | Prune | Graft


class Forwarding:
    """The forwarding tree at node ``me``: call its methods as the events happen, and
    carry out the commands each returns, in order, on the links to the peers they name.
    A method called out of turn (a link down that was never up) raises
    `LocalProtocolError`."""

    def __init__(self, me: bytes) -> None:
        self._me = me
        self._linked: dict[bytes, None] = {}  # peers with a link up, in the order they came
        self._by_ring = False
        self._feeder: dict[bytes, bytes] = {}  # origin -> the peer that feeds it (pruning)
        self._early: dict[bytes, dict[bytes, None]] = {}  # origin -> peers that brought
        # duplicates of it before its feeder was known (pruning)

    @property
    def by_ring(self) -> bool:
        """Whether this node feeds by the ring (else by pruning)."""
        return self._by_ring

    def linked(self) -> list[bytes]:
        """The peers with a link up, in the order their links came up."""
        return list(self._linked)

    def feeder(self, origin: bytes) -> bytes | None:
        """The peer that feeds this node ``origin``'s changes, when feeding by pruning
        (None until one brought a new change of it, and always when feeding by the ring)."""
        return self._feeder.get(origin)

    def feed_by_ring(self, on: bool) -> list[Command]:
        """Feed by the ring from now on, or else by pruning; each link is asked afresh."""
        if on == self._by_ring:
            return []
        self._by_ring = on
        self._feeder.clear()
        self._early.clear()
        return self._ask_everyone()

    def link_up(self, peer: bytes) -> list[Command]:
        """A link to ``peer`` said hello; if one was up already, this one replaced it
        (`keeps_newer_link`) and feeds what it fed."""
        if peer == self._me:
            raise LocalProtocolError("a link to this node itself")
        self._linked[peer] = None
        if self._by_ring:
            return self._ask_everyone()
        return self._feed_directly(peer)

    def link_down(self, peer: bytes) -> list[Command]:
        """The link to ``peer`` is gone."""
        self._check_linked(peer)
        del self._linked[peer]
        if self._by_ring:
            return self._ask_everyone()
        return self._regraft(peer)

    def applied(self, peer: bytes, arrivals: Iterable[tuple[bytes, Arrival]]) -> list[Command]:
        """Changes the link to ``peer`` brought were applied: what became of each, by its
        origin, in order. ``arrivals`` is read only when feeding by pruning."""
        self._check_linked(peer)
        if self._by_ring:
            return []  # the arcs decide alone
        feeder = self._feeder
        commands: list[Command] = []
        redundant: dict[bytes, None] = {}
        for origin, arrival in arrivals:
            match arrival:
                case Arrival.DUPLICATE:
                    fed_by = feeder.get(origin)
                    if fed_by is None:
                        self._early.setdefault(origin, {})[peer] = None
                    elif fed_by != peer:
                        redundant[origin] = None
                case Arrival.NEW_EAGER:
                    if origin not in feeder:
                        feeder[origin] = peer
                        for early in self._early.pop(origin, ()):
                            if early != peer:
                                commands.append(Prune(peer=early, origins=(origin,)))
                case Arrival.NEW_LAZY | Arrival.REFUSED:
                    pass  # neither makes a feeder nor shows a redundant path
                case _:
                    assert_never(arrival)
        if redundant:
            commands.append(Prune(peer=peer, origins=tuple(redundant)))
        return commands

    def _check_linked(self, peer: bytes) -> None:
        if peer not in self._linked:
            raise LocalProtocolError("no link to this peer is up")

    def _ask_everyone(self) -> list[Command]:
        """Ask every link for its share of the ring (all of it, when pruning)."""
        arcs = feed_arcs(self._me, self._linked) if self._by_ring else {}
        return [AskFor(peer=peer, arcs=arcs.get(peer, WHOLE_RING)) for peer in self._linked]

    def _feed_directly(self, peer: bytes) -> list[Command]:
        """A link to an origin itself is the shortest way to that origin's changes: it
        feeds that origin from now on, and every other link is pruned for it at once. The
        new link is likewise pruned for the origins that links of their own feed."""
        self._feeder[peer] = peer
        commands: list[Command] = []
        direct = []
        for other in self._linked:
            if other != peer:
                commands.append(Prune(peer=other, origins=(peer,)))
                if self._feeder.get(other) == other:
                    direct.append(other)
        if direct:
            commands.append(Prune(peer=peer, origins=tuple(direct)))
        return commands

    def _regraft(self, lost: bytes) -> list[Command]:
        """The origins ``lost`` fed: every other link pushes them again until the new
        duplicates prune them back to one feeder."""
        origins = tuple(origin for origin, peer in self._feeder.items() if peer == lost)
        for origin in origins:
            del self._feeder[origin]
        for early in self._early.values():
            early.pop(lost, None)
        if not origins:
            return []
        return [Graft(peer=peer, origins=origins) for peer in self._linked]

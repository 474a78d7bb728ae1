"""The ring the mesh topology follows, and the arcs of it by which a node shares out the
pushes it receives among its links (docs/protocol.md, section 8.2, rule 10).

Every member has a place on a ring of 2**64 places: a keyed hash of its id, so that ids,
which an operator may choose, do not shape the graph. A mesh links each member to its
neighbours on that ring, and a bounded mesh adds fingers (`protocol.topology`).

Feeding by the ring. A node takes each origin's changes from one link: the linked peer
nearest to the origin on the ring (either way round), when that peer is nearer than the
node itself. Distance to the origin then shrinks at every hop, so following these choices
from any node leads to the origin without a cycle: one tree per origin, known before the
origin's first change instead of learned by flooding it. That needs no state per origin:
the places nearest to each of a node's peers form one arc of the ring (its cell), and the
node asks each peer for the origins in that peer's cell. The node's own cell holds no
other member as long as its two ring neighbours are linked (they are nearer than the node
to every place beyond them); members it has not heard of yet may still lie there, so it
asks every link for that cell too.

The choice is only as good as the ring: a node whose ring neighbour towards an origin is
missing from the graph (views of the membership that disagree, a link that is not up yet)
may pick a parent that never gets that origin's changes. The anti-entropy SUMMARY shows
the gap and the node grafts the origin from a peer that holds it (rule 10), so nothing is
lost; it only comes later.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Sequence

RING_PLACES = 1 << 64
_PERSON = b"blazemesh-ring"

Arc = tuple[int, int]  # the places from ``first`` to ``last`` clockwise, both included
WHOLE_RING: tuple[Arc, ...] = ((0, RING_PLACES - 1),)


@functools.lru_cache(maxsize=1 << 16)
def place(member: bytes) -> int:
    """The member's place on the ring."""
    digest = hashlib.blake2b(member, digest_size=8, person=_PERSON).digest()
    return int.from_bytes(digest, "big")


def ring_order(members: Iterable[bytes]) -> list[bytes]:
    """Members in ring order: by place, then by id."""
    return sorted(set(members), key=lambda member: (place(member), member))


def covers(arcs: Sequence[Arc], point: int) -> bool:
    """Whether ``point`` lies on one of ``arcs``."""
    for first, last in arcs:
        if (point - first) % RING_PLACES <= (last - first) % RING_PLACES:
            return True
    return False


def feed_arcs(me: bytes, linked: Iterable[bytes]) -> dict[bytes, tuple[Arc, ...]]:
    """For each linked peer, the arcs whose origins ``me`` asks it to push: its cell (the
    places nearer to it than to ``me`` or any other linked peer; a place halfway between
    two goes to the one before it on the ring) and the cell of ``me``."""
    ring = ring_order([me, *linked])
    if len(ring) == 1:
        return {}
    places = [place(member) for member in ring]
    cells: dict[bytes, Arc] = {}
    for i, member in enumerate(ring):
        before, here, after = places[i - 1], places[i], places[(i + 1) % len(ring)]
        first = before + (here - before) % RING_PLACES // 2 + 1
        last = here + (after - here) % RING_PLACES // 2
        cells[member] = (first % RING_PLACES, last % RING_PLACES)
    mine = cells.pop(me)
    return {peer: (cell, mine) for peer, cell in cells.items()}

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blazemesh.protocol.ring import RING_PLACES, WHOLE_RING, covers, feed_arcs, place, ring_order
from blazemesh.protocol.topology import MeshPlan

ids = st.binary(min_size=16, max_size=16)


def distance(a: int, b: int) -> int:
    gap = (a - b) % RING_PLACES
    return min(gap, RING_PLACES - gap)


def member(i: int) -> bytes:
    return i.to_bytes(16, "big")


def test_arcs_wrap_around_the_ring() -> None:
    arc = (RING_PLACES - 2, 1)
    assert covers([arc], RING_PLACES - 1)
    assert covers([arc], 0)
    assert not covers([arc], 2)
    assert not covers([arc], RING_PLACES - 3)
    assert covers(WHOLE_RING, 12345)
    assert not covers([], 0)


@given(me=ids, linked=st.sets(ids, min_size=1, max_size=12), point=st.integers(0, RING_PLACES - 1))
def test_each_place_is_asked_of_the_nearest_peer_or_of_all(
    me: bytes, linked: set[bytes], point: int
) -> None:
    linked.discard(me)
    if not linked:
        return
    arcs = feed_arcs(me, linked)
    assert arcs.keys() == linked
    asked = {peer for peer, peer_arcs in arcs.items() if covers(peer_arcs, point)}
    far = {m: distance(place(m), point) for m in [me, *linked]}
    nearest = {m for m, d in far.items() if d == min(far.values())}
    if nearest == {me}:  # the node's own cell: asked of every link (a member not heard of)
        assert asked == linked
    elif me not in nearest and len(nearest) == 1:
        assert asked == nearest
    else:  # a tie on a cell's edge goes one way or the other
        assert asked == linked or (len(asked) == 1 and asked <= nearest)


@pytest.mark.parametrize(("size", "max_links"), [(40, 3), (64, 2), (17, None)])
def test_feeding_by_the_ring_makes_one_tree_per_origin(size: int, max_links: int | None) -> None:
    """In a mesh whose links follow the ring, every node asks exactly one link for each
    origin, and following those links from any node reaches the origin."""
    members = [member(i) for i in range(size)]
    links = {m: MeshPlan(m, members, max_links).links() for m in members}
    assert all(b in links[a] for b in members for a in links[b])  # symmetric
    parents = {m: feed_arcs(m, links[m]) for m in members}
    for origin in members:
        for start in members:
            node, hops = start, 0
            while node != origin:
                feeders = [p for p, arcs in parents[node].items() if covers(arcs, place(origin))]
                assert len(feeders) == 1, "one feeder per origin"
                assert distance(place(feeders[0]), place(origin)) < distance(
                    place(node), place(origin)
                )
                node, hops = feeders[0], hops + 1
                assert hops < size
    if max_links is None:  # a full mesh: every origin feeds every node itself
        assert all(covers(parents[m][o], place(o)) for m in members for o in members if o != m)


def test_ring_order_follows_places_not_ids() -> None:
    members = [member(i) for i in range(30)]
    ring = ring_order(members)
    assert ring != sorted(members)
    assert [place(m) for m in ring] == sorted(place(m) for m in members)

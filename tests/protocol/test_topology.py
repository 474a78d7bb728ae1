"""The mesh link rules: connected, bounded, one dialler per link, short paths."""

from __future__ import annotations

import math
from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blazemesh.protocol.errors import LocalProtocolError
from blazemesh.protocol.ring import ring_order
from blazemesh.protocol.topology import (
    StarPlan,
    TopologyConfig,
    mesh_dials,
    star_dials,
    star_hub,
    star_plan,
)

members = st.sets(st.binary(min_size=16, max_size=16), min_size=2, max_size=64)


def graph(nodes: set[bytes], max_links: int | None) -> dict[bytes, set[bytes]]:
    adjacent: dict[bytes, set[bytes]] = {n: set() for n in nodes}
    for n in nodes:
        for peer in mesh_dials(n, nodes, max_links):
            assert n not in mesh_dials(peer, nodes, max_links), "both ends dial one link"
            adjacent[n].add(peer)
            adjacent[peer].add(n)
    return adjacent


def distances(adjacent: dict[bytes, set[bytes]], start: bytes) -> dict[bytes, int]:
    seen = {start: 0}
    queue = deque([start])
    while queue:
        n = queue.popleft()
        for m in adjacent[n]:
            if m not in seen:
                seen[m] = seen[n] + 1
                queue.append(m)
    return seen


@given(members)
def test_an_unbounded_mesh_links_every_pair_once(nodes: set[bytes]) -> None:
    adjacent = graph(nodes, None)
    assert all(adjacent[n] == nodes - {n} for n in nodes)


@given(members, st.integers(1, 8))
def test_a_bounded_mesh_is_connected_even_after_any_one_node_fails(
    nodes: set[bytes], max_links: int
) -> None:
    adjacent = graph(nodes, max_links)
    assert all(len(mesh_dials(n, nodes, max_links)) <= max_links for n in nodes)
    for gone in nodes:
        survivors = {n: adjacent[n] - {gone} for n in nodes if n != gone}
        start = next(iter(survivors))
        assert len(distances(survivors, start)) == len(survivors)


@given(members, st.one_of(st.none(), st.integers(1, 8)))
def test_a_mesh_follows_the_ring(nodes: set[bytes], max_links: int | None) -> None:
    """What feeding by the ring relies on (`TopologyConfig.follows_ring`): every member
    is linked to both its neighbours on the ring."""
    assert TopologyConfig(mode="mesh", max_links=max_links).follows_ring
    assert not TopologyConfig(mode="star").follows_ring
    adjacent = graph(nodes, max_links)
    ring = ring_order(nodes)
    for i, n in enumerate(ring):
        assert {ring[i - 1], ring[(i + 1) % len(ring)]} - {n} <= adjacent[n]


@given(members)
def test_enough_links_keep_every_pair_within_log2_n_hops(nodes: set[bytes]) -> None:
    bound = max(1, math.ceil(math.log2(len(nodes))))
    adjacent = graph(nodes, bound)
    for n in nodes:
        assert max(distances(adjacent, n).values()) <= bound


def test_the_ring_does_not_follow_id_order() -> None:
    ids = [bytes([i]) * 16 for i in range(32)]
    assert ring_order(ids) != sorted(ids)
    assert ring_order(reversed(ids)) == ring_order(ids)


def test_max_links_must_be_positive() -> None:
    with pytest.raises(LocalProtocolError, match="at least 1"):
        mesh_dials(b"\0" * 16, [b"\1" * 16], 0)


star_members = st.dictionaries(
    st.binary(min_size=16, max_size=16), st.booleans(), min_size=2, max_size=40
)


@given(star_members, st.data())
def test_a_star_with_any_live_eligible_member_is_connected(
    members: dict[bytes, bool], data: st.DataObject
) -> None:
    eligible = sorted(m for m, ok in members.items() if ok)
    if not eligible:
        members[min(members)] = True
        eligible = [min(members)]
    failed = set(data.draw(st.lists(st.sampled_from(eligible), max_size=len(eligible) - 1)))
    alive = set(members) - failed
    adjacent: dict[bytes, set[bytes]] = {m: set() for m in alive}
    for me in alive:
        current = data.draw(st.none() | st.sampled_from(eligible))  # the hub it used before
        hub = star_hub(members, current=current, failed=failed)
        assert hub is not None
        assert hub not in failed
        for peer in star_dials(me, members, eligible=members[me], hub=hub):
            if peer in alive:
                adjacent[me].add(peer)
                adjacent[peer].add(me)
    start = next(iter(alive))
    assert len(distances(adjacent, start)) == len(alive)
    spokes = [m for m in alive if not members[m]]
    assert all(len(adjacent[s]) == 1 for s in spokes)  # a spoke links to its hub only


def test_a_returning_lower_hub_does_not_take_the_star_back() -> None:
    low, high, spoke = b"\x01" * 16, b"\x02" * 16, b"\x03" * 16
    members = {low: True, high: True, spoke: False}
    assert star_hub(members) == low
    assert star_hub(members, current=low, failed=[low]) == high  # the hub died
    assert star_hub(members, current=high) == high  # it came back: the spoke stays
    assert star_hub(members, current=high, configured=low) == low
    assert star_hub({spoke: False}) is None


@given(star_members)
def test_every_star_plan_forms_one_connected_star(members: dict[bytes, bool]) -> None:
    """Every member plans from the same view (itself apart), eligible members or none
    (then the lowest id stands in): each link is dialled by one end, which plans it;
    every spoke links to its hub alone, and the star is connected."""
    plans = {
        me: star_plan(me, {m: ok for m, ok in members.items() if m != me}, eligible=ok)
        for me, ok in members.items()
    }
    adjacent: dict[bytes, set[bytes]] = {m: set() for m in members}
    for me, plan in plans.items():
        assert plan.dials <= plan.links
        for peer in plan.dials:
            assert me not in plans[peer].dials  # one end dials a link
            adjacent[me].add(peer)
            adjacent[peer].add(me)
    hubs = {plan.hub for plan in plans.values()}
    if not any(members.values()):
        assert hubs == {min(members)}
    for me, plan in plans.items():
        if plan.hub != me:
            assert adjacent[me] == {plan.hub}
    start = next(iter(members))
    assert len(distances(adjacent, start)) == len(members)


def test_the_fallback_election_waits_for_discovery_to_settle() -> None:
    low, mid, high = b"\x01" * 16, b"\x02" * 16, b"\x03" * 16
    spokes = {low: False, high: False}
    waiting = star_plan(mid, spokes, eligible=False, current=high, settled=False)
    assert waiting == StarPlan(hub=high, links=frozenset(), dials=frozenset())
    assert star_plan(mid, spokes, eligible=False) == StarPlan(
        hub=low, links=frozenset({low}), dials=frozenset({low})
    )
    hub = star_plan(low, {mid: False, high: False}, eligible=False)
    assert hub == StarPlan(hub=low, links=frozenset(), dials=frozenset())  # spokes dial it


def test_a_configured_hub_needs_no_election() -> None:
    low, mid, high = b"\x01" * 16, b"\x02" * 16, b"\x03" * 16
    plan = star_plan(mid, {low: False, high: False}, eligible=False, configured=high)
    assert plan == StarPlan(hub=high, links=frozenset({high}), dials=frozenset({high}))
    absent = star_plan(mid, {low: False}, eligible=False, configured=high, settled=False)
    assert absent == StarPlan(hub=high, links=frozenset(), dials=frozenset())  # not seen yet


def test_an_eligible_member_links_to_the_other_eligible_ones() -> None:
    low, mid, high = b"\x01" * 16, b"\x02" * 16, b"\x03" * 16
    plan = star_plan(mid, {low: True, high: True, b"\x04" * 16: False}, eligible=True)
    assert plan == StarPlan(hub=mid, links=frozenset({low, high}), dials=frozenset({high}))

"""The mesh link rules: connected, bounded, one dialler per link, short paths."""

from __future__ import annotations

import math
from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import LocalProtocolError
from protocol.topology import mesh_dials, ring_order

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

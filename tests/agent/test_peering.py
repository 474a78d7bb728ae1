"""Nodes that find each other through discovery alone, on the autojump clock."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from blazemesh.agent.api.operations import Operations
from blazemesh.agent.discovery.adverts import MemoryDiscovery
from blazemesh.agent.discovery.peering import DIAL_GRACE_S
from blazemesh.protocol.topology import TopologyConfig
from tests.agent.cluster import cluster


async def test_members_found_by_discovery_link_and_converge(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with cluster(tmp_path, 4, [], discovery=MemoryDiscovery()) as c:
        for i, replica in enumerate(c.replicas):
            await replica.put("c", f"k{i}", {"i": i})
        await c.until_converged()
        assert len(c.digests()) == 1
        await trio.sleep(1)
        for node in c.nodes:
            assert {p.node_id for p in node.peers()} == {n.node_id for n in c.nodes} - {
                node.node_id
            }


async def test_another_mesh_is_seen_but_never_linked(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with cluster(tmp_path, 3, [], discovery=MemoryDiscovery(), foreign=[2]) as c:
        await c.replicas[0].put("c", "k", {})
        await trio.sleep(DIAL_GRACE_S * 3)
        stranger = c.nodes[2]
        assert not c.nodes[0].linked(stranger.node_id)
        assert stranger.peers() == []
        assert await c.replicas[1].get("c", "k") == {}
        report = await Operations(c.replicas[0], node=c.nodes[0], peering=c.peerings[0]).call(
            "discover", {}
        )
        assert isinstance(report, list)
        status = {entry["node_id"]: entry["status"] for entry in report}  # type: ignore[index]
        assert status[stranger.identity.text] == "not linked: another mesh"
        assert status[c.nodes[1].identity.text] == "linked"


async def test_a_bounded_mesh_dials_at_most_max_links_and_still_converges(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    topology = TopologyConfig(max_links=1)
    async with cluster(tmp_path, 6, [], discovery=MemoryDiscovery(), topology=topology) as c:
        for i, replica in enumerate(c.replicas):
            await replica.put("c", f"k{i}", {"i": i})
        await c.until_converged()
        await trio.sleep(DIAL_GRACE_S * 3)
        assert len(c.digests()) == 1
        for node in c.nodes:
            dialled = [p for p in node.peers() if p.initiated]
            assert len(dialled) <= 1
        links = sum(len(node.peers()) for node in c.nodes) // 2
        assert 6 <= links < 15  # a ring (and what duplicates the grace rule adds), not a clique


async def test_a_star_links_spokes_to_a_hub_and_survives_losing_it(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    star = TopologyConfig(mode="star")
    async with cluster(
        tmp_path, 5, [], discovery=MemoryDiscovery(), topology=star, hub_eligible=[0, 1]
    ) as c:
        for i, replica in enumerate(c.replicas):
            await replica.put("c", f"k{i}", {"i": i})
        await c.until_converged()
        await trio.sleep(1)
        hubs = {c.nodes[0].node_id, c.nodes[1].node_id}
        for node in c.nodes[2:]:
            (link,) = node.peers()  # a spoke: one link, to a hub-eligible node
            assert link.node_id in hubs
        assert c.nodes[0].linked(c.nodes[1].node_id)  # the eligible nodes link to each other
        dead = 0
        c.crash(dead)
        await c.replicas[2].put("c", "after", {})
        survivors = [node for i, node in enumerate(c.nodes) if i != dead]
        # Within the failover bound of docs/operations.md (virtual seconds):
        await c.until_converged(timeout_s=5, nodes=survivors)
        for node in c.nodes[2:]:
            assert [p.node_id for p in node.peers()] == [c.nodes[1 - dead].node_id]


async def test_a_star_with_no_eligible_member_elects_the_lowest_id_once_discovery_settles(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    star = TopologyConfig(mode="star")
    async with cluster(tmp_path, 3, [], discovery=MemoryDiscovery(), topology=star) as c:
        await trio.sleep(DIAL_GRACE_S / 2)  # virtual
        assert all(node.peers() == [] for node in c.nodes)  # eligible nodes may yet appear
        for i, replica in enumerate(c.replicas):
            await replica.put("c", f"k{i}", {"i": i})
        await c.until_converged(timeout_s=DIAL_GRACE_S * 2)
        hub = min(node.node_id for node in c.nodes)
        assert {p.hub for p in c.peerings} == {hub}
        for node in c.nodes:
            expected = [] if node.node_id == hub else [hub]
            assert [p.node_id for p in node.peers() if p.initiated] == expected


async def test_switching_the_whole_mesh_to_a_star_at_run_time_loses_nothing(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with cluster(tmp_path, 5, [], discovery=MemoryDiscovery(), hub_eligible=[0, 1]) as c:
        for i, replica in enumerate(c.replicas):
            await replica.put("c", f"before{i}", {})
        await c.until_converged()  # possibly through the first links alone
        await trio.sleep(DIAL_GRACE_S)  # the bound within which every planned link is up
        assert all(len(node.peers()) == 4 for node in c.nodes)  # a full mesh
        ops = Operations(c.replicas[3], node=c.nodes[3], peering=c.peerings[3])
        await ops.call("topology.set", {"mode": "star"})
        for i, replica in enumerate(c.replicas):  # writes while the links change
            await replica.put("c", f"during{i}", {})
        await c.until_converged()
        await trio.sleep(DIAL_GRACE_S * 3)
        assert all(p.topology.mode == "star" for p in c.peerings)
        for node in c.nodes[2:]:
            assert len(node.peers()) == 1, node  # a spoke: its hub only
        for i, replica in enumerate(c.replicas):
            await replica.put("c", f"after{i}", {})
        await c.until_converged()
        assert len(c.digests()) == 1
        assert len(await c.replicas[4].query("c")) == 15
        graph = await ops.call("topology", {})
        assert isinstance(graph, dict)
        assert graph["mode"] == "star"
        assert graph["hub"] in {c.nodes[0].identity.text, c.nodes[1].identity.text}
        assert len(graph["links"]) == 1  # type: ignore[arg-type]

"""Real nodes syncing over memory streams, on the autojump clock."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
import trio.testing

from blazemesh.agent.links.network import MemoryNetwork
from blazemesh.protocol.admission import MAX_RUNS_HELD
from blazemesh.protocol.errors import GapLimitError
from blazemesh.protocol.hlc import pack
from blazemesh.protocol.model import Change, Put
from blazemesh.protocol.sync import SyncConfig
from tests.agent.cluster import address, cluster


async def test_two_nodes_sync_both_ways_and_stay_in_sync(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with cluster(tmp_path, 2, [(0, 1)]) as c:
        a, b = c.replicas
        for i in range(40):
            await a.put("c", f"a{i}", {"i": i})
            await b.put("c", f"b{i}", {"i": i})
        await c.until_converged()
        assert await b.get("c", "a39") == {"i": 39}
        assert await a.get("c", "b0") == {"i": 0}
        assert len(c.digests()) == 1
        await trio.sleep(1)  # let the last acknowledgements land
        for node, other in ((c.nodes[0], c.nodes[1]), (c.nodes[1], c.nodes[0])):
            assert node.in_sync(other.node_id)


@pytest.mark.parametrize("shape", ["line", "triangle"])
async def test_three_nodes_converge(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, shape: str
) -> None:
    edges = [(0, 1), (1, 2)] if shape == "line" else [(0, 1), (1, 2), (2, 0)]
    async with cluster(tmp_path, 3, edges) as c:
        for i, replica in enumerate(c.replicas):
            for k in range(20):
                await replica.put("c", f"n{i}-{k}", {"from": i})
        await c.until_converged()
        assert len(c.digests()) == 1
        assert (await c.replicas[2].query("c", prefix="n0-"))[0].fields == {"from": 0}


async def test_concurrent_writes_to_the_same_records_converge(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with cluster(tmp_path, 3, [(0, 1), (1, 2), (2, 0)]) as c:
        async with trio.open_nursery() as nursery:
            for i, replica in enumerate(c.replicas):

                async def writer(replica: object = replica, i: int = i) -> None:
                    for k in range(30):
                        key = f"shared{k % 5}"
                        await replica.put("c", key, {"by": i, "k": k, f"only{i}": True})  # type: ignore[attr-defined]
                        if k % 7 == i:
                            await replica.delete("c", f"shared{(k + 1) % 5}")  # type: ignore[attr-defined]
                        await trio.sleep(0.01)

                nursery.start_soon(writer)
        await c.until_converged()
        assert len(c.digests()) == 1
        docs = [await r.query("c") for r in c.replicas]
        assert docs[0] == docs[1] == docs[2]


async def test_addresses_that_cannot_be_reached_are_reported_with_the_reason(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with cluster(tmp_path, 2, [(0, 1)]) as c:
        node = c.nodes[0]
        await c.replicas[0].put("c", "k", {})
        await c.until_converged()
        assert node.dials_down() == []  # the link to node 1 is up
        node.dial(("nowhere", 7000))
        await trio.sleep(3)  # virtual: long enough for a few attempts with backoff
        (down,) = node.dials_down()
        assert down.address == ("nowhere", 7000)
        assert down.attempts >= 2
        assert down.last_error == "cannot connect: nothing listens on nowhere:7000"
        assert down.retry_at is not None
        assert down.peer is None
        attempts, retry_at = down.attempts, down.retry_at
        node.kick(("nowhere", 7000))  # e.g. its advert was seen again: try now
        await trio.testing.wait_all_tasks_blocked()
        assert down.attempts == attempts + 1
        assert trio.current_time() < retry_at


async def test_static_peers_prune_duplicate_pushes(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Static links make any graph (no ring to feed by): a node takes each origin's
    changes from the link that brought its first one and prunes the others. In a cycle
    of four, an origin's first change reaches the far node twice; later ones once."""
    edges = [(1, 0), (2, 1), (3, 2), (3, 0)]  # each dials a node already listening
    async with cluster(tmp_path, 4, edges, secure=False) as c:
        await trio.testing.wait_all_tasks_blocked()
        assert all(c.nodes[a].linked(c.nodes[b].node_id) for a, b in edges)
        for i, replica in enumerate(c.replicas):
            await replica.put("c", f"first-{i}", {"from": i})
        await c.until_converged()
        await trio.testing.wait_all_tasks_blocked()  # duplicates in flight land
        before = [replica.duplicate_changes for replica in c.replicas]
        for k in range(20):
            for i, replica in enumerate(c.replicas):
                await replica.put("c", f"n{i}-{k}", {"from": i})
        await c.until_converged()
        await trio.testing.wait_all_tasks_blocked()
        assert [replica.duplicate_changes for replica in c.replicas] == before
        assert all(replica.received_changes >= 60 for replica in c.replicas)


SLOW_SEND_S = 0.05  # what a send costs on a slow link: a long path


class SlowSends(trio.abc.Stream):
    """A stream each of whose sends first waits `SLOW_SEND_S` (virtual)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self._inner = inner

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.sleep(SLOW_SEND_S)
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_a_link_that_replaced_a_feeder_regrafts_its_origins_when_it_goes(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Static links, so feeding by pruning. Node x takes d's changes from b (d-b-x) and
    prunes them on e, whose link to x is slow. A second link between x and b replaces the
    first (docs/protocol.md 8.2 rule 9); when that one goes, x must graft d back on e at
    once. (It took a SUMMARY and a graft, seconds: the feeder was the replaced link.)"""
    connections = 0

    def slow_fourth(stream: trio.abc.Stream) -> trio.abc.Stream:
        nonlocal connections
        connections += 1
        return SlowSends(stream) if connections in (7, 8) else stream  # both its ends

    d, b, c, e, x = range(5)
    network = MemoryNetwork(wrap=slow_fourth)
    async with cluster(tmp_path, 5, [], network=network, secure=False) as cl:
        nodes = cl.nodes

        async def link(i: int, j: int) -> trio.CancelScope:
            scope = nodes[i].dial(address(j))
            await trio.sleep(1)  # virtual: a handshake, over the slow link too
            assert nodes[j].linked(nodes[i].node_id)
            return scope

        for i, j in ((d, b), (d, c), (c, e), (e, x)):  # the fourth connection is slow
            await link(i, j)
        low, high = sorted((b, x), key=lambda i: nodes[i].node_id)
        first = await link(high, low)
        await cl.replicas[d].put("c", "first", {})
        await trio.sleep(1)  # virtual: every copy lands, e's at x too
        assert cl.replicas[x].duplicate_changes == 1  # so x pruned d on e
        second = await link(low, high)
        dialled = [p.initiated for p in nodes[low].peers() if p.node_id == nodes[high].node_id]
        assert dialled == [True]  # the second link replaced the first
        first.cancel()  # its dialler would link again once the second link goes
        second.cancel()
        await trio.sleep(0.1)  # virtual
        assert not nodes[x].linked(nodes[b].node_id)
        await cl.replicas[d].put("c", "after", {})
        await cl.until_converged(timeout_s=0.5)  # well within a SUMMARY period


async def test_big_transactions_stream_without_the_link_dropping(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each plan names up to 32 changes of about 20 KB here, five times the window: the
    sender must take what its window holds, or its peer drops the link for ignoring flow
    control (seen with 1,000-op transactions at the default window)."""
    caplog.set_level(logging.INFO, logger="blazemesh.agent.links.node")
    sync = SyncConfig(batch_changes=32, window_bytes=64 << 10, receive_limit_bytes=128 << 10)
    async with cluster(tmp_path, 2, [(1, 0)], sync=sync) as c:
        a = c.replicas[0]
        await a.put("c", "first", {})
        await c.until_converged()
        for i in range(120):
            await a.commit(
                [Put(collection="c", key=f"{i}-{j}", fields={"pad": "x" * 200}) for j in range(100)]
            )
        await c.until_converged()
        assert len(c.digests()) == 1
        assert not [r.getMessage() for r in caplog.records if "down" in r.getMessage()]


async def test_changes_with_gaps_from_a_member_do_not_cut_the_links(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Issue 17, item 6: 4,097 changes of one origin, each apart from the next, sent once,
    made every node's HELLO and SUMMARY undecodable for its peers: every link of the mesh
    dropped, for good. Now a node takes gaps up to its bound and says it refused the rest."""
    async with cluster(tmp_path, 2, [(1, 0)]) as c:
        a, b = c.replicas
        await a.put("c", "first", {})
        await c.until_converged()
        op = Put(collection="c", key="gap", fields={})
        gapped = [
            Change(origin=b"m" * 16, seq=2 * i, hlc=pack(1_000, 0), ops=(op,))
            for i in range(1, 4_098)
        ]
        outcomes = await a.apply_remote(gapped)
        assert sum(isinstance(o, GapLimitError) for o in outcomes) == 4_097 - MAX_RUNS_HELD
        await trio.sleep(6)  # virtual: a SUMMARY of a's vector, gaps and all, reaches b
        await a.put("c", "after", {})
        await c.until_converged()
        assert await b.get("c", "after") == {}
        assert c.nodes[1].in_sync(c.nodes[0].node_id)


async def test_a_catch_up_at_the_default_batch_size_refuses_nothing(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Batches of 1,024 changes in order, queued two at a time into one commit: an honest
    catch-up must never meet the bound on gaps."""
    async with cluster(tmp_path, 2, [(1, 0)], sync=SyncConfig()) as c:
        c.crash(1)
        a = c.replicas[0]
        for i in range(5_000):
            await a.put("c", f"k{i}", {"i": i})
    async with cluster(tmp_path, 2, [(1, 0)], sync=SyncConfig()) as c:
        await c.until_converged()
    assert "refused" not in caplog.text

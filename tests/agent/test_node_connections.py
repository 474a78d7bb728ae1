"""What connections can do to a node: bounds, handshake deadlines, faults of one connection.

Memory streams on the autojump clock; the same attacks over real sockets against real
agents are in tests/system/test_connection_floods.py.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from blazemesh.agent.assemble import Services, run_node
from blazemesh.agent.links.network import MemoryNetwork, format_address
from blazemesh.agent.links.node import Node, NodeConfig
from blazemesh.agent.links.secure import HANDSHAKE_TIMEOUT_S
from blazemesh.agent.storage.replica import open_replica
from blazemesh.agent.trust.membership import Mesh, new_mesh
from tests.agent.cluster import Cluster, address, cluster

TARGET = address(1)


@contextlib.asynccontextmanager
async def nodes(
    tmp_path: Path, network: MemoryNetwork, configs: list[NodeConfig]
) -> AsyncIterator[list[Node]]:
    """Running nodes of one mesh, one per config."""
    mesh: Mesh = new_mesh("test")
    async with contextlib.AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        out = []
        for i, config in enumerate(configs):
            replica = await stack.enter_async_context(
                open_replica(tmp_path / f"n{i}", create=True, threads=False)
            )
            run = functools.partial(run_node, replica, mesh=mesh, network=network, config=config)
            services: Services = await nursery.start(run)
            out.append(services.node)
        yield out
        nursery.cancel_scope.cancel()


async def closed_at(stream: trio.abc.Stream) -> float:
    """Wait until the node hangs up on ``stream`` (which sends nothing); return when."""
    with contextlib.suppress(trio.BrokenResourceError):
        while await stream.receive_some():
            pass
    return trio.current_time()


async def test_idle_connections_do_not_keep_a_new_peer_out(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    # Issue 17, item 3: a connection waited for one of 64 handshake slots with no
    # deadline, so 300 idle ones kept a new peer out for 25 s.
    network = MemoryNetwork()
    async with cluster(tmp_path, 2, [], network=network) as c:
        await c.replicas[1].put("c", "k", {"v": 1})
        idle = [await network.connect(TARGET) for _ in range(300)]
        c.nodes[0].dial(TARGET)
        await c.until_converged(timeout_s=1)  # a handshake and a sync: no time at all
        assert c.nodes[0].linked(c.nodes[1].node_id)
        for stream in idle:
            await stream.aclose()


async def test_the_handshake_deadline_counts_from_accept(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    network = MemoryNetwork()
    async with cluster(tmp_path, 2, [], network=network):
        start = trio.current_time()
        idle = [await network.connect(TARGET) for _ in range(100)]  # once 64 slots, no deadline
        times: list[float] = []

        async def watch(stream: trio.abc.Stream) -> None:
            times.append(await closed_at(stream))

        async with trio.open_nursery() as nursery:
            for stream in idle:
                nursery.start_soon(watch, stream)
        assert len(times) == len(idle)
        assert min(times) - start == pytest.approx(HANDSHAKE_TIMEOUT_S)
        assert max(times) - start == pytest.approx(HANDSHAKE_TIMEOUT_S)


async def test_a_new_connection_takes_the_oldest_slot_when_all_are_taken(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    network = MemoryNetwork()
    config = NodeConfig(listen=[TARGET], max_handshakes=4)
    async with nodes(tmp_path, network, [config]):
        start = trio.current_time()
        first = [await network.connect(TARGET) for _ in range(4)]
        await trio.testing.wait_all_tasks_blocked()
        assert "connection flood" not in caplog.text
        newer = await network.connect(TARGET)  # the fifth: the oldest goes
        assert await closed_at(first[0]) == start  # at once, not at its deadline
        assert "4 connections are in their handshake, this node's limit" in caplog.text
        for stream in [*first[1:], newer]:
            assert await closed_at(stream) - start == pytest.approx(HANDSHAKE_TIMEOUT_S)
        await trio.testing.wait_all_tasks_blocked()
        assert "connection flood over: 1 connections were closed" in caplog.text


async def test_links_beyond_the_limit_are_refused(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    network = MemoryNetwork()
    configs = [
        NodeConfig(listen=[TARGET], max_links=1),
        NodeConfig(peers=[TARGET]),
        NodeConfig(),
    ]
    async with nodes(tmp_path, network, configs) as (hub, first, second):
        await hub.replica.put("c", "k", {"v": 1})
        await Cluster([hub, first], [], []).until_converged(timeout_s=5)
        second.dial(TARGET)
        await trio.sleep(3)  # virtual: several attempts, each refused
        assert hub.linked_peers() == [first.node_id]
        assert not second.linked(hub.node_id)
        assert "this node has 1 links, its limit" in caplog.text


class FaultyOnce(trio.abc.Stream):
    """A stream whose reads fail with an unexpected error: a bug met by one connection."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self._inner = inner

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        await trio.lowlevel.checkpoint()
        raise RuntimeError("a bug")

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_a_fault_in_one_connection_ends_that_connection_only(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrapped = 0

    def faulty_first_connection(stream: trio.abc.Stream) -> trio.abc.Stream:
        nonlocal wrapped
        wrapped += 1
        return FaultyOnce(stream) if wrapped <= 2 else stream  # both of its ends

    network = MemoryNetwork(wrap=faulty_first_connection)
    async with cluster(tmp_path, 2, [(0, 1)], network=network) as c:
        await c.replicas[1].put("c", "k", {"v": 1})
        await c.until_converged(timeout_s=10)  # the dialler tried again, and linked
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert {r.getMessage() for r in errors} == {
        "connection from memory:0 failed",
        f"link to {format_address(TARGET)} failed",
    }

"""In-process clusters of real nodes on a memory network, for the sync tests."""

from __future__ import annotations

import contextlib
import functools
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import trio

from blazemesh.agent.assemble import Discovering, Services, run_node
from blazemesh.agent.discovery.adverts import MemoryDiscovery
from blazemesh.agent.discovery.peering import Peering
from blazemesh.agent.links.network import MemoryNetwork, Network
from blazemesh.agent.links.node import Node, NodeConfig
from blazemesh.agent.storage.replica import Replica, open_replica
from blazemesh.agent.trust.membership import new_mesh
from blazemesh.protocol.sync import SyncConfig
from blazemesh.protocol.topology import TopologyConfig
from blazemesh.simulations.network import SimNetwork

# Batches small enough to commit on the trio thread: under the autojump clock, a commit in
# a worker thread would let virtual time run on while it works.
TEST_SYNC = SyncConfig(batch_changes=32)


def address(i: int) -> tuple[str, int]:
    return (f"node{i}", 7000)


class Cluster:
    """Nodes 0..n-1 with their replicas; ``edges`` say who dials whom."""

    def __init__(
        self, nodes: list[Node], peerings: list[Peering], scopes: list[trio.CancelScope]
    ) -> None:
        self.nodes = nodes
        self.peerings = peerings
        self._scopes = scopes

    def crash(self, i: int) -> None:
        """Stop node ``i`` at once: its links and adverts go; its replica stays open."""
        self._scopes[i].cancel()

    @property
    def replicas(self) -> list[Replica]:
        return [node.replica for node in self.nodes]

    def converged(self, nodes: Sequence[Node] | None = None) -> bool:
        """Whether every replica (of ``nodes``) holds the same changes: the same dots,
        and under them the same contents (their fingerprints agree)."""
        nodes = self.nodes if nodes is None else nodes
        first = nodes[0].replica.vv
        if not all(node.replica.vv == first for node in nodes[1:]):
            return False
        stores = [node.replica.store for node in nodes]
        return all(
            len({store.fingerprint(origin) for store in stores}) == 1 for origin in first.origins()
        )

    async def until_converged(
        self, timeout_s: float = 120, nodes: Sequence[Node] | None = None
    ) -> None:
        """Wait (in virtual time) until every replica (of ``nodes``) holds the same changes."""
        nodes = self.nodes if nodes is None else nodes
        done = trio.Event()

        def check(_: object) -> None:
            if self.converged(nodes):
                done.set()

        removers = [node.replica.on_commit(check) for node in nodes]
        try:
            check(None)
            with trio.fail_after(timeout_s):
                await done.wait()
        finally:
            for remove in removers:
                remove()

    def digests(self) -> set[str]:
        return {node.replica.digest() for node in self.nodes}


@contextlib.asynccontextmanager
async def cluster(
    tmp_path: Path,
    n: int,
    edges: Sequence[tuple[int, int]],
    *,
    network: Network | SimNetwork | None = None,
    secure: bool = True,
    seed: int = 0,
    sync: SyncConfig = TEST_SYNC,
    wall_ms: Callable[[], int] | Sequence[Callable[[], int]] | None = None,
    discovery: MemoryDiscovery | None = None,
    topology: TopologyConfig | None = None,
    foreign: Sequence[int] = (),
    hub_eligible: Sequence[int] = (),
) -> AsyncIterator[Cluster]:
    """``discovery``: nodes also find each other through it; ``foreign``: these nodes
    belong to another mesh; ``hub_eligible``: these may be a star's hub; ``wall_ms``:
    the nodes' wall clock, or each node's."""
    network = network or MemoryNetwork()
    mesh, other_mesh = new_mesh("test"), new_mesh("other")
    async with contextlib.AsyncExitStack() as stack:
        replicas = []
        for i in range(n):
            wall = wall_ms[i] if isinstance(wall_ms, Sequence) else wall_ms
            options = {} if wall is None else {"wall_ms": wall}
            replicas.append(
                await stack.enter_async_context(
                    open_replica(tmp_path / f"n{i}", create=True, threads=False, **options)
                )
            )
        nursery = await stack.enter_async_context(trio.open_nursery())
        nodes, peerings, scopes = [], [], []
        for i, replica in enumerate(replicas):
            run = functools.partial(
                run_node,
                replica,
                mesh=other_mesh if i in foreign else mesh,
                network=network.host(address(i)[0]) if isinstance(network, SimNetwork) else network,
                config=NodeConfig(
                    listen=[address(i)],
                    peers=[address(j) for a, j in edges if a == i],
                    secure=secure,
                    sync=sync,
                ),
                discovering=None
                if discovery is None
                else Discovering(
                    discovery=discovery, topology=topology, hub_eligible=i in hub_eligible
                ),
                rng=random.Random(f"{seed}-{i}"),
            )
            scope, services = await nursery.start(_run_node, run)
            nodes.append(services.node)
            if services.peering is not None:
                peerings.append(services.peering)
            scopes.append(scope)
        yield Cluster(nodes, peerings, scopes)
        nursery.cancel_scope.cancel()


async def _run_node(
    run: Callable[..., Awaitable[None]],
    *,
    task_status: trio.TaskStatus[tuple[trio.CancelScope, Services]],
) -> None:
    """Run a node under a scope of its own, which `Cluster.crash` cancels."""
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            services = await nursery.start(run)
            task_status.started((scope, services))

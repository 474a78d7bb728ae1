"""The simulated nodes, and the trace of what happens to them.

A `SimNode` is the agent's own node (`agent.assemble.run_node`): its replica over a
`MemoryStore` that outlives its runs (crash, restart, leave, join), the real sync code and
the real `Peering`; the network is a `SimNetwork` and discovery a `MemoryDiscovery`. Every
commit runs on the trio thread, so that virtual time stands still while it works. The
`Tracker` follows every replica's commits into the `Trace` (docs/simulation.md).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio
from nacl.signing import SigningKey

from blazemesh.agent.assemble import Discovering, Services, run_node
from blazemesh.agent.discovery.adverts import MemoryDiscovery
from blazemesh.agent.discovery.peering import Peering
from blazemesh.agent.links.node import Node, NodeConfig
from blazemesh.agent.storage.memory import MemoryData, MemoryStore
from blazemesh.agent.storage.replica import Replica, serve_replica
from blazemesh.agent.storage.store import Applied
from blazemesh.agent.trust.identity import Identity
from blazemesh.agent.trust.membership import Mesh
from blazemesh.protocol.ids import node_id_short
from blazemesh.protocol.sync import SyncConfig
from blazemesh.protocol.topology import TopologyConfig
from blazemesh.simulations.network import SimNetwork
from blazemesh.simulations.scenario import Scenario

PORT = 7420
SIM_SYNC = SyncConfig(batch_changes=64)  # batches small enough to commit on the trio thread
EPOCH_MS = 1_790_000_000_000  # the wall clock's reading at virtual time 0


def host(i: int) -> str:
    return f"n{i}"


class Trace:
    """What happened, one line per event at its virtual time since the trace began,
    hashed as it goes (and kept if asked)."""

    def __init__(self, keep: bool) -> None:
        self.lines: list[str] | None = [] if keep else None
        self._hash = hashlib.blake2b(digest_size=16)
        self._began = trio.current_time()

    def __call__(self, text: str) -> None:
        line = f"{trio.current_time() - self._began:.6f} {text}"
        self._hash.update(line.encode() + b"\n")
        if self.lines is not None:
            self.lines.append(line)

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()


class Tracker:
    """When each node first held each change, from the replicas' commit listeners."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.held: dict[tuple[bytes, int], dict[int, float]] = {}
        self.expected: set[tuple[bytes, int]] = set()
        self.live: set[int] = set()
        self.changed = trio.Event()
        self.pairs_held = 0  # (change, node) pairs, counted as they come: progress

    def listener(self, node: int, applied: list[Applied]) -> None:
        now = trio.current_time()
        for item in applied:
            dot = item.change.dot
            holders = self.held.setdefault(dot, {})
            if node not in holders:
                holders[node] = now
                self.pairs_held += 1
            self.trace(f"{host(node)} holds {node_id_short(dot[0])}:{dot[1]}")
        self.changed.set()

    @property
    def share_held(self) -> float:
        pairs = len(self.expected) * len(self.live)
        return min(1.0, self.pairs_held / pairs) if pairs else 1.0

    def complete(self) -> bool:
        """Every expected change is held by every live node."""
        if self.pairs_held < len(self.expected) * len(self.live):
            return False
        return all(self.live <= self.held.get(dot, {}).keys() for dot in self.expected)


class SimNode:
    """One node: its storage outlives its runs (crash, restart, leave, join)."""

    def __init__(self, index: int, sim: Simulation) -> None:
        self.index = index
        self.sim = sim
        self.skew_ms = sim.rng.uniform(-sim.scenario.skew_ms, sim.scenario.skew_ms)
        self.rng = random.Random(sim.rng.random())
        self.identity = Identity(SigningKey(sim.rng.randbytes(32)))
        self.data = MemoryData()  # what its store holds, from one run to the next
        self.replica: Replica | None = None
        self.peering: Peering | None = None
        self.node: Node | None = None
        self._scope: trio.CancelScope | None = None
        self._stopped = trio.Event()
        self._received = (0, 0)  # changes received and duplicates, over finished runs

    @property
    def up(self) -> bool:
        return self._scope is not None

    def received_changes(self) -> tuple[int, int]:
        """Changes received from peers over every run so far, and how many were held."""
        received, duplicates = self._received
        if self.replica is not None:
            received += self.replica.received_changes
            duplicates += self.replica.duplicate_changes
        return received, duplicates

    def wall_ms(self) -> int:
        return EPOCH_MS + int(trio.current_time() * 1000 + self.skew_ms)

    async def start(self) -> None:
        self._scope, self._stopped = trio.CancelScope(), trio.Event()
        await self.sim.nursery.start(self._run, self._scope, self._stopped)
        self.sim.tracker.live.add(self.index)

    async def stop(self) -> None:
        assert self._scope is not None
        self.sim.tracker.live.discard(self.index)
        self._scope.cancel()
        self._scope = None
        await self._stopped.wait()
        self.replica = self.peering = self.node = None

    async def _run(
        self, scope: trio.CancelScope, stopped: trio.Event, *, task_status: trio.TaskStatus[None]
    ) -> None:
        try:
            store = MemoryStore(self.data, node_id=self.identity.node_id, wall_ms=self.wall_ms)
            with scope, contextlib.closing(store):
                async with serve_replica(store, identity=self.identity, threads=False) as replica:
                    track = functools.partial(self.sim.tracker.listener, self.index)
                    stop = replica.on_commit(track)
                    async with trio.open_nursery() as nursery:
                        services: Services = await nursery.start(self._assemble(replica))
                        self.replica, self.node = replica, services.node
                        self.peering = services.peering
                        task_status.started()
                        try:
                            await trio.sleep_forever()
                        finally:
                            stop()
                            self._received = self.received_changes()
        finally:
            stopped.set()

    def _assemble(self, replica: Replica) -> Callable[..., Awaitable[None]]:
        """`run_node` with this node's parts: encryption off unless the scenario asks."""
        sim, scenario = self.sim, self.sim.scenario
        address = (host(self.index), PORT)
        return functools.partial(
            run_node,
            replica,
            mesh=Mesh(name="sim", secret=sim.secret),
            network=sim.net.host(host(self.index)),
            config=NodeConfig(listen=[address], secure=scenario.secure, sync=SIM_SYNC),
            discovering=Discovering(
                discovery=sim.discovery,
                topology=TopologyConfig(mode=scenario.topology, max_links=scenario.max_links),
                hub_eligible=self.index < scenario.hub_candidates,
            ),
            rng=self.rng,
            random_bytes=self.rng.randbytes,
        )


@dataclass(slots=True)
class Simulation:
    """What the nodes of one run share."""

    scenario: Scenario
    rng: random.Random
    net: SimNetwork
    discovery: MemoryDiscovery
    tracker: Tracker
    secret: bytes
    nursery: trio.Nursery
    hub_down: int | None = None  # the hub that a crash or leave of "hub" took down last

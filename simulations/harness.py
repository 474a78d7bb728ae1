"""Run real nodes on the simulated network, in virtual time, and check how they converge.

Every node is the agent's own `Node` with its own replica (SQLite in a temporary
directory, committed on the trio thread so that virtual time stands still while it
works) and the real sync code; only the channel's encryption is off, and the network is
a `SimNetwork`. The harness writes, applies the scenario's faults at their virtual times,
waits for the replicas to converge, and then checks them (docs/simulation.md).

This is the harness's core: scenarios as files, the command line, plots and exact replay
of a seed's trace come with the rest of the simulation issue.
"""

from __future__ import annotations

import contextlib
import random
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import trio

from agent.mesh import new_mesh
from agent.node import Node, NodeConfig
from agent.replica import Replica, open_replica
from agent.store import Applied
from protocol.sync import SyncConfig
from simulations.network import LinkProfile, SimNetwork

PORT = 7420
COLLECTION = "sim"
SIM_SYNC = SyncConfig(batch_changes=64)  # batches small enough to commit on the trio thread


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """What to simulate. Times are virtual seconds."""

    nodes: int = 10
    topology: str = "mesh"  # "mesh": every pair linked; "star": node 0 is the hub
    writes: int = 100  # spread round-robin over the nodes, one change each
    hot_keys: int | None = None  # if set, writes overwrite this many keys: conflicts
    write_every_s: float = 0.01
    profile: LinkProfile = field(default_factory=LinkProfile)
    partition_s: tuple[float, float] | None = None  # (from, to): halves cannot talk
    seed: int = 0
    converge_within_s: float = 600.0

    def __post_init__(self) -> None:
        if self.nodes < 2:
            raise ValueError("a simulation needs at least 2 nodes")
        if self.topology not in ("mesh", "star"):
            raise ValueError(f"topology {self.topology!r} is not mesh or star")


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    """How the run went: convergence, per-change spread times, traffic, failed checks."""

    converged_at_s: float | None
    spread_s: dict[str, float]  # p50/p99/max over changes of the time to reach 50/99/100 %
    bytes_per_node: dict[str, float]  # mean and max bytes sent per node
    failures: list[str]  # empty when every check passed


def host(i: int) -> str:
    return f"n{i}"


class _Tracker:
    """When each node first held each change (from commit listeners)."""

    def __init__(self, count: int) -> None:
        self.held: dict[tuple[bytes, int], list[float]] = {}
        self.count = count
        self.all_held = trio.Event()
        self.expected: set[tuple[bytes, int]] = set()
        self.writing = True  # until every write is in `expected`, nothing is complete

    def listener(self, applied: list[Applied]) -> None:
        now = trio.current_time()
        for item in applied:
            self.held.setdefault(item.change.dot, []).append(now)
        if not self.writing and all(
            len(self.held.get(dot, ())) == self.count for dot in self.expected
        ):
            self.all_held.set()


async def simulate(scenario: Scenario) -> Report:
    """Run ``scenario`` (under a `trio.testing.MockClock`, for virtual time)."""
    rng = random.Random(scenario.seed)
    net = SimNetwork(random.Random(rng.random()), scenario.profile)
    tracker = _Tracker(scenario.nodes)
    with tempfile.TemporaryDirectory(prefix="blazemesh-sim-") as top:
        async with contextlib.AsyncExitStack() as stack:
            replicas = [
                await stack.enter_async_context(
                    open_replica(
                        Path(top) / host(i),
                        create=True,
                        threads=False,
                        wall_ms=lambda: int(trio.current_time() * 1000) + 1_700_000_000_000,
                    )
                )
                for i in range(scenario.nodes)
            ]
            for replica in replicas:
                stack.callback(replica.on_commit(tracker.listener))
            nursery = await stack.enter_async_context(trio.open_nursery())
            await _start_nodes(scenario, net, replicas, rng, nursery)
            start = trio.current_time()
            acknowledged = await _write(scenario, net, replicas, tracker)
            converged_at: float | None = None
            with trio.move_on_after(scenario.converge_within_s):
                await tracker.all_held.wait()
                converged_at = trio.current_time() - start
            failures = await _check(replicas, acknowledged)
            nursery.cancel_scope.cancel()
    return Report(
        converged_at_s=converged_at,
        spread_s=_spread(tracker, scenario.nodes),
        bytes_per_node=_traffic(net, scenario.nodes),
        failures=failures if converged_at is not None else ["did not converge", *failures],
    )


async def _start_nodes(
    scenario: Scenario,
    net: SimNetwork,
    replicas: list[Replica],
    rng: random.Random,
    nursery: trio.Nursery,
) -> None:
    mesh = new_mesh("sim")
    for i, replica in enumerate(replicas):
        if scenario.topology == "star":
            peers = [(host(0), PORT)] if i else []
        else:
            peers = [(host(j), PORT) for j in range(i + 1, scenario.nodes)]
        node = Node(
            replica=replica,
            identity=replica.identity,
            mesh=mesh,
            network=net.host(host(i)),
            config=NodeConfig(listen=[(host(i), PORT)], peers=peers, secure=False, sync=SIM_SYNC),
            rng=random.Random(rng.random()),
        )
        await nursery.start(node.run)


async def _write(
    scenario: Scenario, net: SimNetwork, replicas: list[Replica], tracker: _Tracker
) -> dict[str, int]:
    """Write the scenario's changes (applying its partition on the way); return what
    each acknowledged key holds."""
    acknowledged: dict[str, int] = {}
    start = trio.current_time()
    half = [host(i) for i in range(scenario.nodes // 2)]
    rest = [host(i) for i in range(scenario.nodes // 2, scenario.nodes)]
    partitioned = False
    for i in range(scenario.writes):
        now = trio.current_time() - start
        if scenario.partition_s is not None:
            begin, end = scenario.partition_s
            if not partitioned and begin <= now < end:
                net.partition(half, rest)
                partitioned = True
            elif partitioned and now >= end:
                net.heal()
                partitioned = False
        key = f"w{i}" if scenario.hot_keys is None else f"hot{i % scenario.hot_keys}"
        change = await replicas[i % len(replicas)].put(COLLECTION, key, {"i": i})
        tracker.expected.add(change.dot)
        if scenario.hot_keys is None:  # an overwritten key holds some later write
            acknowledged[key] = i
        await trio.sleep(scenario.write_every_s)
    if partitioned:
        net.heal()
    tracker.writing = False
    tracker.listener([])  # the last write may have been everyone's last commit
    return acknowledged


async def _check(replicas: list[Replica], acknowledged: dict[str, int]) -> list[str]:
    """Every replica identical, and every acknowledged write present everywhere."""
    failures = []
    digests = [replica.digest() for replica in replicas]
    if len(set(digests)) > 1:
        first = next(i for i, d in enumerate(digests) if d != digests[0])
        failures.append(f"replicas differ: node {host(first)} is not like node {host(0)}")
    for i, replica in enumerate(replicas):
        for key, value in acknowledged.items():
            if await replica.get(COLLECTION, key) != {"i": value}:
                failures.append(f"node {host(i)} lacks acknowledged write {key}")
                break
    return failures


def _spread(tracker: _Tracker, nodes: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for share, name in ((0.5, "50%"), (0.99, "99%"), (1.0, "100%")):
        reach = []
        for dot in tracker.expected:
            times = sorted(tracker.held.get(dot, ()))
            needed = max(1, int(share * nodes + 0.999))
            if len(times) >= needed:
                reach.append(times[needed - 1] - times[0])
        if reach:
            out[f"to {name}, median"] = statistics.median(reach)
            out[f"to {name}, max"] = max(reach)
    return out


def _traffic(net: SimNetwork, nodes: int) -> dict[str, float]:
    sent = [net.stats[host(i)].bytes_sent if host(i) in net.stats else 0 for i in range(nodes)]
    return {"mean": statistics.fmean(sent), "max": float(max(sent))}

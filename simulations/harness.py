"""Run real nodes on the simulated network, in virtual time, and check how they converge.

Every node is the agent's own `Node` (`simulations.nodes`) with its own replica (over a
`MemoryStore`; every commit on the trio thread so that virtual time stands still while
it works), the real sync code, and the real `Peering` that turns discovery into links by
the topology's rules; only the channel's encryption is off unless the scenario asks for
it, the network is a `SimNetwork` and discovery a `MemoryDiscovery`. The harness writes,
applies the scenario's faults at their virtual times, waits for the live replicas to
converge, and then checks them (docs/simulation.md).

Determinism: node identities, the mesh secret, every node's RNG, the network's RNG and
trio's own scheduling order all derive from the scenario's seed, and nothing leaves the
trio thread; the trace (every write, fault and commit with its virtual time) and its
digest are then the same on every run of the same scenario, in any process.
"""

from __future__ import annotations

import contextlib
import gc
import random
from collections.abc import Callable, Iterator

import trio

from blazemesh.agent.discovery.adverts import MemoryDiscovery
from blazemesh.simulations.network import SimNetwork
from blazemesh.simulations.nodes import SimNode, Simulation, Trace, Tracker, host
from blazemesh.simulations.report import Report, Write, build_report, check
from blazemesh.simulations.scenario import Fault, Scenario

COLLECTION = "sim"
SETTLE_S = 30.0  # how long the mesh may take to form before the first write
SETTLE_POLL_S = 0.05
GC_YOUNG_OBJECTS = 1_000_000  # net allocations between the collector's young passes


async def simulate(
    scenario: Scenario,
    *,
    keep_trace: bool = False,
    progress: Callable[[float], None] | None = None,
    phase: Callable[[str], None] = lambda name: None,
) -> Report:
    """Run ``scenario`` under a `trio.testing.MockClock` (virtual time) and report.

    ``progress`` is called with the share of (change, node) pairs held so far whenever
    it grows; ``phase`` with the name of each step as it ends: "settled" (the nodes are
    up and linked), "converged" (the writes, faults and spreading), "reported" (the
    checks and the report). With ``keep_trace`` the report carries every trace line.
    """
    seed_scheduler(scenario.seed)
    rng = random.Random(scenario.seed)
    trace = Trace(keep_trace)
    tracker = Tracker(trace)
    with _quiet_collector() as freeze_long_lived:
        async with trio.open_nursery() as nursery:
            sim = Simulation(
                scenario=scenario,
                rng=rng,
                net=SimNetwork(random.Random(rng.random()), scenario.link),
                # Every node follows every other's advert, however many there are.
                discovery=MemoryDiscovery(max_peers=scenario.nodes),
                tracker=tracker,
                secret=rng.randbytes(32),
                nursery=nursery,
            )
            nodes = [SimNode(i, sim) for i in range(scenario.nodes)]
            async with trio.open_nursery() as starting:  # all at once, as when power returns
                for node in nodes:
                    if node.index not in scenario.absent:
                        starting.start_soon(node.start)
            await _settle(sim, nodes)
            phase("settled")
            freeze_long_lived()  # the nodes are up: what they hold lives as long as they do
            start = trio.current_time()
            writes = await _run_writes_and_faults(sim, nodes)
            converged_at = await _converge(sim, start, progress)
            phase("converged")
            live = [n for n in nodes if n.up]
            failures = await check(
                scenario, [(n.index, n.replica) for n in live if n.replica is not None], writes
            )
            report = build_report(
                scenario=scenario,
                net=sim.net,
                tracker=tracker,
                nodes=nodes,
                converged_at=converged_at,
                failures=failures,
                trace=trace,
            )
            phase("reported")
            nursery.cancel_scope.cancel()
    return report


@contextlib.contextmanager
def _quiet_collector() -> Iterator[Callable[[], None]]:
    """Keep the cyclic garbage collector off the simulation's long-lived objects.

    Nodes hold millions of objects that live as long as they do (replicas, links, tasks),
    and a run throws away next to no cyclic garbage: its messages and events are freed
    by reference counting. With the default thresholds, full collections walk every
    node again and again and find nothing (docs/simulation.md, "Scale"). So young passes
    come every `GC_YOUNG_OBJECTS` allocations instead of 700, and the function this
    yields freezes what exists (`gc.freeze`), to be called once the nodes are up. Both
    are undone at the end, where everything frozen or allocated since goes to the oldest
    generation; a permanent generation that someone else froze before the run is left
    alone (it cannot be unfrozen apart from ours), and then nothing is frozen.
    """
    threshold = gc.get_threshold()
    ours = gc.get_freeze_count() == 0
    gc.set_threshold(GC_YOUNG_OBJECTS, *threshold[1:])
    try:
        yield gc.freeze if ours else lambda: None
    finally:
        if ours:
            # What the run allocated joins the frozen objects, and all go back to the
            # oldest generation together: a young pass would walk it all once more and
            # free next to nothing (a second at 1,000 nodes).
            gc.freeze()
            gc.unfreeze()
        gc.set_threshold(*threshold)


def seed_scheduler(seed: int) -> None:
    """Make the order in which trio runs tasks that are ready at once follow the seed.

    trio reorders each batch of runnable tasks with a module-level RNG to shake out
    ordering assumptions. By default it only maybe-reverses the batch as it came, and
    tasks come in an order that can follow memory addresses (a cancelled scope wakes its
    tasks from a set), so two processes could replay one seed differently. In its
    deterministic mode, the one pytest-trio and Hypothesis turn on, it sorts the batch
    by task creation before shuffling it: the order then depends on the seed alone.
    (`_r` and `_ALLOW_DETERMINISTIC_SCHEDULING` in `trio._core._run` are private: the
    names pytest-trio and trio's Hypothesis plugin set; pyproject.toml bounds trio
    below 0.40.)
    """
    scheduler_rng: random.Random = trio._core._run._r
    scheduler_rng.seed(seed)
    trio._core._run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]


async def _settle(sim: Simulation, nodes: list[SimNode]) -> None:
    """Wait until every node has the links its topology plans (at most `SETTLE_S`), so
    that the run measures how changes spread, not how the mesh forms."""
    with trio.move_on_after(SETTLE_S):
        # Polled: the condition spans every node's plan and links, and a look every 50
        # virtual ms costs nothing in virtual time.
        while not all(  # noqa: ASYNC110
            n.node.linked(peer)
            for n in nodes
            if n.node is not None and n.peering is not None
            for peer in n.peering.planned
        ) or not any(n.peering is not None and n.peering.planned for n in nodes):
            await trio.sleep(SETTLE_POLL_S)
    sim.tracker.trace("settled")


async def _run_writes_and_faults(sim: Simulation, nodes: list[SimNode]) -> list[Write]:
    scenario = sim.scenario
    start = trio.current_time()
    faults = sorted(scenario.faults, key=lambda f: f.at_s)
    writes: list[Write] = []
    for i in range(scenario.writes):
        while faults and faults[0].at_s <= trio.current_time() - start:
            await _apply(sim, nodes, faults.pop(0))
        live = [n for n in nodes if n.up]
        writer = live[i % len(live)]
        writes.append(await _write(sim, writer, i))
        await trio.sleep(scenario.write_every_s)
    for fault in faults:
        await trio.sleep_until(start + fault.at_s)
        await _apply(sim, nodes, fault)
    return writes


async def _write(sim: Simulation, writer: SimNode, i: int) -> Write:
    scenario = sim.scenario
    replica = writer.replica
    assert replica is not None
    key = f"w{i}" if scenario.hot_keys is None else f"k{sim.rng.randrange(scenario.hot_keys)}"
    if scenario.deletes and sim.rng.random() < scenario.deletes:
        change, value = await replica.delete(COLLECTION, key), None
    else:
        change, value = await replica.put(COLLECTION, key, {"i": i}), i
    sim.tracker.expected.add(change.dot)
    sim.tracker.trace(f"{host(writer.index)} writes {key}={value}")
    return Write(key=key, value=value, stamp=(change.hlc, change.origin), dot=change.dot)


async def _apply(sim: Simulation, nodes: list[SimNode], fault: Fault) -> None:
    net = sim.net
    targets = [nodes[_resolve(sim, n, nodes, fault.action)] for n in fault.nodes]
    sim.tracker.trace(f"fault {fault.action} {[host(t.index) for t in targets]} {fault.groups}")
    match fault.action:
        case "partition":
            net.partition(*([host(i) for i in group] for group in fault.groups))
        case "heal":
            net.heal()
        case "cut":
            for t in targets:
                net.cut(host(t.index))
        case "restore":
            for t in targets:
                net.restore(host(t.index))
        case "crash":
            for t in targets:
                if t.up:
                    net.break_connections(host(t.index))
                    await t.stop()
        case "leave":
            for t in targets:
                if t.up:
                    await t.stop()
        case "restart" | "join":
            for t in targets:
                if not t.up:
                    await t.start()
        case "storm":
            net.break_connections()


def _resolve(sim: Simulation, target: int | str, nodes: list[SimNode], action: str) -> int:
    """A node number; for "hub", the node that most live spokes use as their hub, except
    that a restart or join brings back the hub that a fault took down last."""
    if isinstance(target, int):
        return target
    if action in ("restart", "join") and sim.hub_down is not None:
        return sim.hub_down
    hub = _current_hub(nodes)
    if action in ("crash", "leave"):
        sim.hub_down = hub
    return hub


def _current_hub(nodes: list[SimNode]) -> int:
    votes: dict[bytes, int] = {}
    for n in nodes:
        if n.peering is not None and n.peering.hub is not None:
            votes[n.peering.hub] = votes.get(n.peering.hub, 0) + 1
    if votes:
        hub = max(sorted(votes), key=lambda h: votes[h])
        for n in nodes:
            if n.node is not None and n.node.node_id == hub:
                return n.index
    return 0


async def _converge(
    sim: Simulation, start: float, progress: Callable[[float], None] | None
) -> float | None:
    """Wait until every live node holds every write; the virtual time it took, or None."""
    tracker = sim.tracker
    with trio.move_on_after(sim.scenario.converge_within_s):
        while not tracker.complete():
            if progress is not None:
                progress(tracker.share_held)
            tracker.changed = trio.Event()
            await tracker.changed.wait()
        return trio.current_time() - start
    return None

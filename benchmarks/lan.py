"""Discovery and failover on this machine (issue 5's figures).

Real ``blazemesh agent`` processes (`agent.cli.launcher`) on their own loopback addresses,
mDNS pinned to each, Noise, durable writes.

- first sync by mDNS alone: two agents start at once, knowing nothing of each other; A
  writes as soon as its control socket answers; seconds from starting the processes
  until B's watch shows the write. Baseline, same run: the same with B given A as a
  static ``--peer`` and no mDNS (what the write costs without discovery). Also reported
  from "both agents answer on their sockets", which leaves out Python's start-up.
- hub failover: a star of two hub-eligible agents and three spokes; the spokes' hub is
  killed with SIGKILL, one spoke writes at once; seconds until the other two spokes' watch
  streams show it (through the new hub).
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator

import trio

from benchmarks.common import Figure
from blazemesh.agent.cli.launcher import LocalAgent, local_agents

SUITE = "lan"
RUNS = 5
FIRST_HOST = 130  # 127.0.0.130 and up
WAIT_TIMEOUT_S = 60.0


def run() -> Iterator[Figure]:
    mdns = [trio.run(first_sync, True) for _ in range(RUNS)]
    static = [trio.run(first_sync, False) for _ in range(RUNS)]
    yield Figure(
        suite=SUITE,
        name="first sync by mDNS, from process start (median of 5)",
        value=statistics.median(t for t, _ in mdns),
        unit="s",
        baseline="the same with a static --peer",
        baseline_value=statistics.median(t for t, _ in static),
        target="<= 2 s",
    )
    yield Figure(
        suite=SUITE,
        name="first sync by mDNS, from both agents up (median of 5)",
        value=statistics.median(t for _, t in mdns),
        unit="s",
        baseline="the same with a static --peer",
        baseline_value=statistics.median(t for _, t in static),
        target="<= 2 s",
    )
    failovers = [trio.run(hub_failover) for _ in range(RUNS)]
    yield Figure(
        suite=SUITE,
        name="hub killed -> spokes synced via new hub (median of 5)",
        value=statistics.median(failovers),
        unit="s",
        target="<= 5 s",
    )
    yield Figure(
        suite=SUITE,
        name="hub killed -> spokes synced via new hub (worst of 5)",
        value=max(failovers),
        unit="s",
        target="<= 5 s",
    )


async def seen(agent: LocalAgent, key: str, collection: str = "bench") -> float:
    """trio time at which ``key`` shows up in ``agent``'s watch stream of ``collection``."""
    client = await agent.connect()
    try:
        events = client.stream("watch", {"collection": collection, "since": 0})
        async with contextlib.aclosing(events):
            async for event in events:
                if any(op["key"] == key for op in event["ops"]):
                    return trio.current_time()
    finally:
        await client.aclose()
    raise AssertionError("the watch ended")


async def first_sync(mdns: bool) -> tuple[float, float]:
    """Seconds from starting two agents (and from both answering) to B holding A's write."""

    quiet = ["--log-level", "warning"]
    args = quiet if mdns else [*quiet, "--discovery", "none"]
    async with local_agents(
        2, first_host=FIRST_HOST, args=lambda i: args, prefix="blazemesh-bench-"
    ) as (a, b):
        if not mdns:
            b.args = [*args, "--peer", f"{a.host}:{a.port}"]
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.start)
            nursery.start_soon(b.start)
        up = trio.current_time()
        assert a.client is not None
        with trio.fail_after(WAIT_TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                arrival: list[float] = []

                async def watch() -> None:
                    arrival.append(await seen(b, "first"))

                nursery.start_soon(watch)
                await a.client.call(
                    "put", {"collection": "bench", "key": "first", "fields": {"x": 1}}
                )
        return arrival[0] - start, arrival[0] - up


async def hub_failover() -> float:
    star = ["--topology", "star", "--log-level", "warning"]

    def args(i: int) -> list[str]:
        return [*star, "--hub-eligible"] if i < 2 else star

    async with local_agents(
        5, first_host=FIRST_HOST + 10, args=args, prefix="blazemesh-bench-"
    ) as nodes:
        async with trio.open_nursery() as nursery:
            for node in nodes:
                nursery.start_soon(node.start)
        spokes = nodes[2:]
        with trio.fail_after(WAIT_TIMEOUT_S):
            async with trio.open_nursery() as nursery:  # everyone linked and in sync
                for node in nodes:
                    nursery.start_soon(seen, node, "ready")
                assert spokes[0].client is not None
                await spokes[0].client.call(
                    "put", {"collection": "bench", "key": "ready", "fields": {}}
                )
        assert spokes[0].client is not None
        graph = await spokes[0].client.call("topology", {})
        ids = {(await n.client.call("info", {}))["node_id"]: n for n in nodes[:2] if n.client}
        hub = ids[graph["hub"]]
        await hub.kill()
        killed = trio.current_time()
        arrivals: list[float] = []
        with trio.fail_after(WAIT_TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                for spoke in spokes[1:]:

                    async def watch(spoke: LocalAgent = spoke) -> None:
                        arrivals.append(await seen(spoke, "after"))

                    nursery.start_soon(watch)
                await spokes[0].client.call(
                    "put", {"collection": "bench", "key": "after", "fields": {}}
                )
        return max(arrivals) - killed

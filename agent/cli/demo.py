"""``blazemesh demo``: a mesh of agents on this machine, finding each other and converging.

Each agent is a real ``blazemesh agent`` process (`agent.cli.launcher`): its own loopback
address with mDNS pinned to it, a throwaway data directory. The demo talks to the agents
through their control sockets: it waits for discovery to link them, writes on every
node, follows every node's watch stream, and stops once every replica holds the same
digest. Then it stops the agents and deletes the directories: also when it fails or is
interrupted (Ctrl-C reaches the demo alone, which stops them; `agent.cli.interrupt`).
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import trio

from blazemesh.agent.cli.launcher import LocalAgent, local_agents
from blazemesh.agent.errors import ConfigError

FIRST_HOST = 20  # agents use 127.0.0.20, .21, ...: clear of the usual 127.0.0.1
MAX_NODES = 200
WRITES_PER_NODE = 5
LINK_TIMEOUT_S = 20.0
CONVERGE_TIMEOUT_S = 60.0
PEERS_POLL_S = 0.1  # how often the demo asks the agents for their links, to show them


class Demo:
    def __init__(
        self, nodes: int, topology_args: list[str], *, hub_eligible: int = 0, out: Any = sys.stdout
    ) -> None:
        if not 2 <= nodes <= MAX_NODES:
            raise ConfigError(f"--nodes must be between 2 and {MAX_NODES}")
        self.count = nodes
        self.topology_args = topology_args
        self.hub_eligible = hub_eligible  # the first this many nodes may be a star's hub
        self.out = out
        self.started = 0.0

    def say(self, text: str) -> None:
        print(f"[{trio.current_time() - self.started:6.2f}s] {text}", file=self.out, flush=True)

    def _args(self, i: int) -> list[str]:
        return [*self.topology_args, *(["--hub-eligible"] if i < self.hub_eligible else [])]

    async def run(self) -> int:
        self.started = trio.current_time()
        async with local_agents(
            self.count, first_host=FIRST_HOST, args=self._args, prefix="blazemesh-demo-"
        ) as nodes:
            self.say(f"{self.count} agents in a new mesh, data in {nodes[0].data_dir.parent}")
            try:
                async with trio.open_nursery() as nursery:
                    for i, node in enumerate(nodes):
                        nursery.start_soon(self._start, node, i < self.hub_eligible)
                await self._wait_linked(nodes)
                return await self._write_and_converge(nodes)
            finally:
                self.say("stopping the agents and removing their data directories")

    async def _start(self, node: LocalAgent, hub_eligible: bool) -> None:
        await node.start()
        role = " (may be the hub)" if hub_eligible else ""
        self.say(f"{node.name} runs on {node.host}:{node.port}, mDNS there only{role}")

    async def _wait_linked(self, nodes: list[LocalAgent]) -> None:
        self.say("waiting for the agents to find each other by mDNS...")
        seen: set[tuple[str, str]] = set()
        names = {}
        for node in nodes:
            assert node.client is not None
            info = await node.client.call("info", {})
            names[info["node_id"]] = node.name
        with trio.fail_after(LINK_TIMEOUT_S):
            while True:
                linked: dict[str, int] = {}
                for node in nodes:
                    assert node.client is not None
                    links = await node.client.call("peers", {})
                    up = [link for link in links if "last_error" not in link]
                    linked[node.name] = len(up)
                    for link in up:
                        pair = (node.name, names.get(link["node_id"], "?"))
                        if pair not in seen and pair[::-1] not in seen:
                            seen.add(pair)
                            self.say(f"{pair[0]} <-> {pair[1]} linked")
                if all(n >= 1 for n in linked.values()) and _connected(seen, nodes):
                    return
                await trio.sleep(PEERS_POLL_S)

    async def _write_and_converge(self, nodes: list[LocalAgent]) -> int:
        total = self.count * WRITES_PER_NODE
        done = trio.Event()
        held = {node.name: 0 for node in nodes}
        async with trio.open_nursery() as nursery:
            for node in nodes:
                nursery.start_soon(self._follow, node, held, total, done)
            self.say(f"each agent writes {WRITES_PER_NODE} records")
            for i in range(WRITES_PER_NODE):
                for node in nodes:
                    assert node.client is not None
                    await node.client.call(
                        "put",
                        {"collection": "demo", "key": f"{node.name}-{i}", "fields": {"n": i}},
                    )
            with trio.fail_after(CONVERGE_TIMEOUT_S):
                await done.wait()
            nursery.cancel_scope.cancel()
        digests = set()
        for node in nodes:
            assert node.client is not None
            digests.add((await node.client.call("info", {"digest": True}))["digest"])
        if len(digests) == 1:
            self.say(f"all {self.count} replicas identical (digest {digests.pop()[:16]}...)")
            return 0
        self.say(f"replicas differ: {len(digests)} digests")
        return 1

    async def _follow(
        self, node: LocalAgent, held: dict[str, int], total: int, done: trio.Event
    ) -> None:
        client = await node.connect()  # a connection of its own: a watch holds one
        try:
            events = client.stream("watch", {"collection": "demo", "since": 0})
            async with contextlib.aclosing(events):
                async for _ in events:
                    held[node.name] += 1
                    if held[node.name] in (1, total // 2, total):
                        self.say(f"{node.name} has {held[node.name]}/{total} changes")
                    if all(n >= total for n in held.values()):
                        done.set()
        finally:
            await client.aclose()


def _connected(pairs: set[tuple[str, str]], nodes: list[LocalAgent]) -> bool:
    reached = {nodes[0].name}
    grew = True
    while grew:
        grew = False
        for a, b in pairs:
            if (a in reached) != (b in reached):
                reached |= {a, b}
                grew = True
    return len(reached) == len(nodes)

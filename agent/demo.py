"""``blazemesh demo``: a mesh of agents on this machine, finding each other and converging.

Each agent is a real ``blazemesh agent`` process with a throwaway data directory, on its
own loopback address (127.0.0.x) with mDNS pinned to that address, so the demo touches
no real network interface. The demo talks to the agents through their control sockets:
it waits for discovery to link them, writes on every node, follows every node's watch
stream, and stops once every replica holds the same digest. Then it stops the agents and
deletes the directories.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from agent.client import AgentClient
from agent.errors import ConfigError
from agent.identity import create_identity
from agent.mesh import new_mesh, save_mesh
from agent.paths import CONTROL_SOCKET

FIRST_HOST = 20  # agents use 127.0.0.20, .21, ...: clear of the usual 127.0.0.1
MAX_NODES = 200
WRITES_PER_NODE = 5
START_TIMEOUT_S = 20.0
CONVERGE_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


@dataclass
class DemoNode:
    name: str
    host: str
    port: int
    data_dir: Path
    process: trio.Process | None = None
    client: AgentClient | None = None


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

    async def run(self) -> int:
        self.started = trio.current_time()
        top = Path(tempfile.mkdtemp(prefix="blazemesh-demo-"))
        try:
            nodes = self._prepare(top)
            async with self._agents(nodes):
                await self._wait_linked(nodes)
                return await self._write_and_converge(nodes)
        finally:
            shutil.rmtree(top, ignore_errors=True)

    def _prepare(self, top: Path) -> list[DemoNode]:
        mesh = new_mesh("demo")
        nodes = []
        for i in range(self.count):
            host = f"127.0.0.{FIRST_HOST + i}"
            data_dir = top / f"node{i}"
            data_dir.mkdir(mode=0o700)
            create_identity(data_dir)
            save_mesh(data_dir, mesh)
            nodes.append(DemoNode(f"node{i}", host, _free_port(host), data_dir))
        self.say(f"{self.count} agents in mesh 'demo', data in {top}")
        return nodes

    @contextlib.asynccontextmanager
    async def _agents(self, nodes: list[DemoNode]) -> AsyncIterator[None]:
        try:
            for i, node in enumerate(nodes):
                eligible = ["--hub-eligible"] if i < self.hub_eligible else []
                log = (node.data_dir.parent / f"{node.name}.log").open("wb")
                with log:
                    node.process = await trio.lowlevel.open_process(
                        [
                            *_blazemesh(),
                            "agent",
                            "--data-dir",
                            str(node.data_dir),
                            "--listen",
                            f"{node.host}:{node.port}",
                            "--interface",
                            node.host,
                            *self.topology_args,
                            *eligible,
                        ],
                        stdout=log,
                        stderr=log,
                    )
                self.say(
                    f"{node.name} started on {node.host}:{node.port} (mDNS on {node.host} only)"
                )
            with trio.fail_after(START_TIMEOUT_S):
                for node in nodes:
                    node.client = await _connect(node)
            yield
        finally:
            for node in nodes:
                if node.client is not None:
                    await node.client.aclose()
            with trio.CancelScope(shield=True):
                await _stop(nodes)
            self.say("agents stopped, data directories removed")

    async def _wait_linked(self, nodes: list[DemoNode]) -> None:
        self.say("waiting for the agents to find each other by mDNS...")
        seen: set[tuple[str, str]] = set()
        names = {}
        for node in nodes:
            assert node.client is not None
            info = await node.client.call("info", {})
            names[info["node_id"]] = node.name
        with trio.fail_after(START_TIMEOUT_S):
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
                await trio.sleep(0.1)

    async def _write_and_converge(self, nodes: list[DemoNode]) -> int:
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
        self, node: DemoNode, held: dict[str, int], total: int, done: trio.Event
    ) -> None:
        client = await _connect(node)  # a connection of its own: a watch holds one
        try:
            async for _ in client.stream("watch", {"collection": "demo", "since": 0}):
                held[node.name] += 1
                if held[node.name] in (1, total // 2, total):
                    self.say(f"{node.name} has {held[node.name]}/{total} changes")
                if all(n >= total for n in held.values()):
                    done.set()
        finally:
            await client.aclose()


def _blazemesh() -> list[str]:
    command = Path(sys.executable).with_name("blazemesh")
    if command.exists():
        return [str(command)]
    return [sys.executable, "-c", "from agent.cli import main; main()"]


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        try:
            probe.bind((host, 0))
        except OSError as exc:
            raise ConfigError(f"cannot use loopback address {host}: {exc.strerror}") from None
        port: int = probe.getsockname()[1]
        return port


async def _connect(node: DemoNode) -> AgentClient:
    """The agent's control client, once its socket answers (it takes a moment to start)."""
    while True:
        if node.process is not None and node.process.poll() is not None:
            log = (node.data_dir.parent / f"{node.name}.log").read_text()
            raise ConfigError(f"{node.name} exited at start:\n{log}")
        if (node.data_dir / CONTROL_SOCKET).exists():
            client = await AgentClient.connect(node.data_dir, client="demo")
            if client is not None:
                return client
        await trio.sleep(0.05)


def _connected(pairs: set[tuple[str, str]], nodes: list[DemoNode]) -> bool:
    reached = {nodes[0].name}
    grew = True
    while grew:
        grew = False
        for a, b in pairs:
            if (a in reached) != (b in reached):
                reached |= {a, b}
                grew = True
    return len(reached) == len(nodes)


async def _stop(nodes: list[DemoNode]) -> None:
    running = [node.process for node in nodes if node.process is not None]
    for process in running:
        if process.returncode is None:
            process.terminate()
    for process in running:
        with trio.move_on_after(STOP_TIMEOUT_S):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()

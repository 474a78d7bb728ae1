"""Agents on this machine: real ``blazemesh agent`` processes, each on its own loopback
address (127.0.0.x) with mDNS pinned to that address, and throwaway data directories.

Used by ``blazemesh demo`` and the LAN benchmarks; it touches no real network interface.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from blazemesh.agent.api.client import AgentClient
from blazemesh.agent.errors import ConfigError
from blazemesh.agent.storage.paths import CONTROL_SOCKET
from blazemesh.agent.trust.identity import create_identity
from blazemesh.agent.trust.membership import new_mesh, save_mesh

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
START_POLL_S = 0.05  # how often to look for a starting agent's control socket


@dataclass
class LocalAgent:
    """One agent process of a `local_agents`."""

    name: str
    host: str
    port: int
    data_dir: Path
    args: list[str]
    process: trio.Process | None = None
    client: AgentClient | None = field(default=None, repr=False)

    @property
    def log(self) -> Path:
        return self.data_dir.parent / f"{self.name}.log"

    async def start(self) -> None:
        """Start the process and return once its control socket answers (`client`)."""
        with self.log.open("ab") as log:
            self.process = await trio.lowlevel.open_process(
                [
                    *_blazemesh(),
                    "agent",
                    "--data-dir",
                    str(self.data_dir),
                    "--listen",
                    f"{self.host}:{self.port}",
                    "--interface",
                    self.host,
                    *self.args,
                ],
                stdout=log,
                stderr=log,
                # A group of its own: Ctrl-C in a terminal signals the foreground group,
                # and the agents are stopped by whoever started them, in order.
                process_group=0,
            )
        with trio.fail_after(START_TIMEOUT_S):
            self.client = await self.connect()

    async def connect(self) -> AgentClient:
        """A new control connection (the agent may still be starting)."""
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise ConfigError(f"{self.name} exited at start:\n{self.log.read_text()}")
            if (self.data_dir / CONTROL_SOCKET).exists():
                client = await AgentClient.connect(self.data_dir, client="launcher")
                if client is not None:
                    return client
            # A starting process offers nothing to wait on but its socket file.
            await trio.sleep(START_POLL_S)

    async def kill(self) -> None:
        """SIGKILL: the agent dies as in a crash."""
        await self._close_client()
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not stop in time."""
        await self._close_client()
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.terminate()
        with trio.move_on_after(STOP_TIMEOUT_S):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()

    async def _close_client(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None


@contextlib.asynccontextmanager
async def local_agents(
    count: int,
    *,
    first_host: int,
    args: Callable[[int], list[str]] = lambda i: [],
    prefix: str = "blazemesh-",
) -> AsyncIterator[list[LocalAgent]]:
    """``count`` agents (not started yet) in one new mesh, on 127.0.0.<first_host + i>;
    on the way out every one still running is stopped and the directories removed."""
    if not (first_host > 0 and first_host + count <= 255):
        raise ConfigError(f"127.0.0.{first_host} + {count} agents runs past 127.0.0.254")
    top = Path(tempfile.mkdtemp(prefix=prefix))
    agents = []
    try:
        mesh = new_mesh("local")
        for i in range(count):
            host = f"127.0.0.{first_host + i}"
            data_dir = top / f"node{i}"
            data_dir.mkdir(mode=0o700)
            create_identity(data_dir)
            save_mesh(data_dir, mesh)
            agents.append(LocalAgent(f"node{i}", host, _free_port(host), data_dir, args(i)))
        yield agents
    finally:
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                for agent in agents:
                    nursery.start_soon(agent.stop)
        shutil.rmtree(top, ignore_errors=True)


def _blazemesh() -> list[str]:
    command = Path(sys.executable).with_name("blazemesh")
    if command.exists():
        return [str(command)]
    return [sys.executable, "-c", "from blazemesh.cli import main; main()"]


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        try:
            probe.bind((host, 0))
        except OSError as exc:
            raise ConfigError(f"cannot use loopback address {host}: {exc.strerror}") from None
        port: int = probe.getsockname()[1]
        return port

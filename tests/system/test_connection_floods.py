"""Connection floods against a real `blazemesh agent`, from a client without the mesh
secret (issue 17, items 1-3): connections reset at once, idle ones beyond the agent's
open-file limit, idle and slowloris ones by the hundred. The agent stays up, a peer that
holds the secret links within 3 s, and the CLI answers within 1 s.

The legitimate peer runs in this process (a `Node` over real TCP), so that the time it
takes to link is measured from its dial alone.
"""

from __future__ import annotations

import contextlib
import functools
import re
import resource
import shutil
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from blazemesh.agent.assemble import Services, run_node
from blazemesh.agent.links.network import Address, TcpNetwork
from blazemesh.agent.storage.replica import open_replica
from blazemesh.agent.trust.membership import load_mesh
from tests.system.agents import BLAZEMESH, Agent, new_mesh, ok, running

HOST = "127.0.0.1"
LINK_WITHIN_S = 3.0  # issue 17: a legitimate peer links this fast under a flood
CLI_WITHIN_S = 1.0  # and the CLI answers this fast
IDLE_CONNECTIONS = 1_000
SLOW_CONNECTIONS = 200
SLOWLORIS_FOR_S = 10  # the slow clients give up after this many bytes, one a second
RESETS = 1_000
LOW_FILE_LIMIT = 256  # an agent started with this soft and hard limit...
LOW_LIMIT_FLOOD = 400  # ... gets more idle connections than it has files
OWN_FILES_SPARE = 200  # this process's own files beyond the connections it opens

pytestmark = pytest.mark.system


@contextlib.contextmanager
def own_files(needed: int) -> Iterator[None]:
    """Let this process open ``needed`` files (its soft limit, raised up to the hard one
    for the block); skip the test if the hard limit is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed or soft == resource.RLIM_INFINITY:
        yield
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} open files; this process's hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextlib.contextmanager
def target_and_peer(tmp_path: Path, *, prefix: list[str] | None = None) -> Iterator[Agent]:
    """A running agent that holds one record, and (in ``tmp_path / "peer"``) a member of
    its mesh for this process to run."""
    target, peer = tmp_path / "target", tmp_path / "peer"
    new_mesh([target, peer])
    ok("put", "c", "k", "v=1", "--data-dir", str(target))
    agent = Agent(target, ["--discovery", "none", "--listen", f"{HOST}:0"], prefix=prefix or [])
    with running([agent]):
        yield agent


def listening(agent: Agent) -> Address:
    match = re.search(rf"listening on {re.escape(HOST)}:(\d+)", agent.log.read_text())
    assert match is not None, agent.log.read_text()
    return HOST, int(match.group(1))


async def time_to_link(peer_dir: Path, target: Address) -> float:
    """Dial ``target`` from the member in ``peer_dir``; return how long until its record
    arrived (the link is up and synced). Fails after `LINK_WITHIN_S`."""
    async with open_replica(peer_dir) as replica, trio.open_nursery() as nursery:
        run = functools.partial(run_node, replica, mesh=load_mesh(peer_dir), network=TcpNetwork())
        services: Services = await nursery.start(run)
        node = services.node
        arrived = trio.Event()
        remove = replica.on_commit(lambda applied: arrived.set())
        start = trio.current_time()
        try:
            node.dial(target)
            with trio.fail_after(LINK_WITHIN_S):
                await arrived.wait()
        finally:
            remove()
        took = trio.current_time() - start
        assert await replica.get("c", "k") == {"v": 1}
        nursery.cancel_scope.cancel()
    return took


async def time_to_answer(agent: Agent) -> float:
    start = trio.current_time()
    result = await trio.run_process(
        [BLAZEMESH, "info", "--data-dir", str(agent.data_dir)], capture_stdout=True
    )
    assert b"agent      running" in result.stdout
    return trio.current_time() - start


async def check_still_serving(agent: Agent, peer_dir: Path) -> None:
    """The agent runs, a member links within `LINK_WITHIN_S` and the CLI answers within
    `CLI_WITHIN_S`."""
    assert agent.process is not None
    assert agent.process.poll() is None, agent.log.read_text()
    assert await time_to_link(peer_dir, listening(agent)) < LINK_WITHIN_S
    assert await time_to_answer(agent) < CLI_WITHIN_S


def reset_loop(address: Address, count: int) -> int:
    """Connect ``count`` times, each reset at once (SO_LINGER 0); return how many
    connections were made before one failed (the agent is gone)."""
    for made in range(count):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            try:
                sock.connect(address)
            except OSError:
                return made
    return count


@contextlib.contextmanager
def idle(agent: Agent, count: int) -> Iterator[None]:
    """``count`` connections to ``agent`` that send nothing, open for the block."""
    with contextlib.ExitStack() as stack:
        for made in range(count):
            sock = stack.enter_context(socket.socket())
            try:
                sock.connect(listening(agent))
            except OSError as exc:
                raise AssertionError(
                    f"connection {made + 1} failed ({exc}):\n{agent.log.read_text()}"
                ) from None
        yield


@contextlib.asynccontextmanager
async def slowloris(address: Address, count: int) -> AsyncIterator[None]:
    """``count`` connections that each send a byte a second (a handshake header promising
    65,535 bytes, then more), for at most `SLOWLORIS_FOR_S`; the block runs once each
    has sent its first."""
    streams = [await trio.open_tcp_stream(*address) for _ in range(count)]
    first_sent = trio.Event()

    async def trickle() -> None:
        for _ in range(SLOWLORIS_FOR_S):
            for stream in list(streams):
                try:
                    await stream.send_all(b"\xff")
                except trio.BrokenResourceError:  # the agent hung up on this one
                    streams.remove(stream)
            first_sent.set()
            await trio.sleep(1)  # the pace of the attack, not a wait for anything

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            await first_sent.wait()
            yield
            nursery.cancel_scope.cancel()
    finally:
        for stream in streams:
            await trio.aclose_forcefully(stream)


async def test_connections_reset_at_once_do_not_stop_the_agent(tmp_path: Path) -> None:
    # Item 1: the accept loop called getpeername() on a connection already reset
    # (ENOTCONN) and the agent died after about 30 to 300 of them.
    with target_and_peer(tmp_path) as agent:
        made = await trio.to_thread.run_sync(reset_loop, listening(agent), RESETS)
        assert made == RESETS, agent.log.read_text()
        await check_still_serving(agent, tmp_path / "peer")


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
async def test_more_idle_connections_than_the_agent_has_files(tmp_path: Path) -> None:
    # Item 2: with an open-file limit of 1,024, 1,100 idle connections killed the agent
    # within 2 s ("Too many open files" from accept): nothing bounded connections.
    low = f"--nofile={LOW_FILE_LIMIT}:{LOW_FILE_LIMIT}"
    with (
        own_files(LOW_LIMIT_FLOOD + OWN_FILES_SPARE),
        target_and_peer(tmp_path, prefix=["prlimit", low]) as agent,
        idle(agent, LOW_LIMIT_FLOOD),
    ):
        await check_still_serving(agent, tmp_path / "peer")
    logged = agent.log.read_text()
    assert f"open-file limit {LOW_FILE_LIMIT}: at most 32 connections in their" in logged
    assert "Too many open files" not in logged


async def test_idle_connections_do_not_keep_a_peer_out(tmp_path: Path) -> None:
    # Item 3: 600 idle connections made a new peer wait 41 s for a handshake slot.
    with (
        own_files(IDLE_CONNECTIONS + OWN_FILES_SPARE),
        target_and_peer(tmp_path) as agent,
        idle(agent, IDLE_CONNECTIONS),
    ):
        await check_still_serving(agent, tmp_path / "peer")
    assert agent.log.read_text().count("(a connection flood?)") == 1


async def test_slowloris_connections_do_not_keep_a_peer_out(tmp_path: Path) -> None:
    # Item 3: 200 connections sending a byte a second made a new peer wait 8 s.
    with own_files(SLOW_CONNECTIONS + OWN_FILES_SPARE), target_and_peer(tmp_path) as agent:
        async with slowloris(listening(agent), SLOW_CONNECTIONS):
            await check_still_serving(agent, tmp_path / "peer")


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
async def test_the_agent_raises_its_soft_file_limit_to_the_hard_one(tmp_path: Path) -> None:
    with target_and_peer(tmp_path, prefix=["prlimit", "--nofile=300:2048"]) as agent:
        assert "open-file limit 2048 (raised from 300)" in agent.log.read_text()
        # The query also lets the agent reach its signal handler: a SIGTERM sent the
        # instant its control socket is up can kill it first (a start-up race in
        # agent.daemon, outside what this test checks).
        assert await time_to_answer(agent) < CLI_WITHIN_S

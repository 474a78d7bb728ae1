"""Two running nodes with one identity (issue 19, section 1): a data directory copied while
its node ran, devices set up from one disk image. Their peer catches them by their run
ids, refuses both for a cool-down and tells them; nothing is lost. Memory streams on the
autojump clock; with real agents in tests/system/test_clones.py."""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from blazemesh.agent.assemble import Services, run_node
from blazemesh.agent.links.link import TICK_S
from blazemesh.agent.links.network import Address, MemoryNetwork
from blazemesh.agent.links.node import Node, NodeConfig
from blazemesh.agent.storage.replica import Replica, open_replica
from blazemesh.agent.trust.membership import Mesh, new_mesh
from blazemesh.protocol.clones import CLONE_COOLDOWN_S
from blazemesh.protocol.vv import missing
from tests.agent.cluster import TEST_SYNC

B, A, A2 = ("b", 7000), ("a", 7000), ("a2", 7000)
CAUGHT = "runs as two instances"  # the peer's error line
TOLD = "refuses this node"  # each instance's


class Mesh3:
    """Nodes on one memory network, each started and stopped on its own."""

    def __init__(self, nursery: trio.Nursery, mesh: Mesh) -> None:
        self.network = MemoryNetwork()
        self.nursery = nursery
        self.mesh = mesh
        self.scopes: dict[str, trio.CancelScope] = {}

    async def start(self, name: str, replica: Replica, listen: Address, peer: Address) -> Node:
        rng = random.Random(name)
        run = functools.partial(
            run_node,
            replica,
            mesh=self.mesh,
            network=self.network,
            config=NodeConfig(listen=[listen], peers=[peer], sync=TEST_SYNC),
            rng=rng,
            random_bytes=rng.randbytes,
        )
        scope, services = await self.nursery.start(_scoped, run)
        self.scopes[name] = scope
        node: Node = services.node
        return node

    def stop(self, name: str) -> None:
        self.scopes.pop(name).cancel()


async def _scoped(
    run: Callable[..., object], *, task_status: trio.TaskStatus[tuple[trio.CancelScope, Services]]
) -> None:
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            services = await nursery.start(run)  # type: ignore[arg-type]
            task_status.started((scope, services))


@contextlib.asynccontextmanager
async def replicas(tmp_path: Path, *names: str) -> AsyncIterator[list[Replica]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                open_replica(tmp_path / name, create=True, threads=False)
            )
            for name in names
        ]


async def until(check: Callable[[], bool], timeout_s: float) -> None:
    """Wait in virtual time, a tick at a time, until ``check()`` (what it checks has no
    event to wait on: the node's view of its peers)."""
    with trio.fail_after(timeout_s):
        while not check():  # noqa: ASYNC110
            await trio.sleep(TICK_S)


def errors(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(r.levelno == logging.ERROR and text in r.getMessage() for r in caplog.records)


async def test_two_instances_of_one_node_are_refused_and_told_and_nothing_is_lost(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with replicas(tmp_path, "a") as (ra,):
        await ra.put("c", "a-before-the-copy", {"v": 1})
    shutil.copytree(tmp_path / "a", tmp_path / "a2")  # cp -a: one identity, two devices
    async with replicas(tmp_path, "b", "a", "a2") as (rb, ra, ra2), trio.open_nursery() as n:
        await rb.put("c", "b-own", {"v": 1})
        mesh = Mesh3(n, new_mesh("test"))
        b = await mesh.start("b", rb, B, A)
        a = await mesh.start("a", ra, A, B)
        await ra.put("c", "a-only", {"v": 2})
        a2 = await mesh.start("a2", ra2, A2, B)
        await ra2.put("c", "a2-only", {"v": 3})
        clone_id = a.node_id
        assert a2.node_id == clone_id

        await until(lambda: bool(b.clones()), 60)
        await until(lambda: a.told_cloned() is not None and a2.told_cloned() is not None, 30)
        (clone,) = b.clones()
        assert clone.node_id == clone_id
        held = rb.vv.copy()
        # Refused for the whole cool-down, however often they redial; said once each.
        with trio.move_on_after(CLONE_COOLDOWN_S - 60):
            await until(lambda: b.linked(clone_id), CLONE_COOLDOWN_S)
        assert not b.linked(clone_id)
        assert errors(caplog, CAUGHT) == 1
        assert errors(caplog, TOLD) == 2
        assert missing(held, rb.vv) == []  # B lost nothing it held
        assert await rb.get("c", "b-own") == {"v": 1}
        assert await rb.get("c", "a-before-the-copy") == {"v": 1}

        # The fix: one of the two stops. After the cool-down the other links again.
        mesh.stop("a2")
        await until(lambda: b.linked(clone_id) and b.in_sync(clone_id), CLONE_COOLDOWN_S + 30)
        assert await rb.get("c", "a-only") == {"v": 2}
        assert await ra.get("c", "b-own") == {"v": 1}
        assert errors(caplog, CAUGHT) == 1
        assert b.clones() == []
        n.cancel_scope.cancel()


async def test_a_node_that_restarts_is_never_taken_for_two(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with replicas(tmp_path, "b", "a") as (rb, ra), trio.open_nursery() as n:
        mesh = Mesh3(n, new_mesh("test"))
        b = await mesh.start("b", rb, B, A)
        for i in range(6):
            a = await mesh.start("a", ra, A, B)
            await ra.put("c", f"k{i}", {"v": i})
            await until(functools.partial(b.in_sync, a.node_id), 30)
            mesh.stop("a")  # at once: B's link to the old run is left to die or be replaced
            await trio.sleep(i * 0.5)  # restarts from at once to a few seconds later
        assert b.clones() == []
        assert errors(caplog, CAUGHT) == 0
        assert await rb.get("c", "k5") == {"v": 5}
        n.cancel_scope.cancel()

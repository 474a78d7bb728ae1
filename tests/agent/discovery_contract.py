"""The contract every `Discovery` implementation passes (like automerge-repo's adapter
tests): run by tests/agent/test_discovery.py on `MemoryDiscovery` and by
tests/system/test_zeroconf.py on `ZeroconfDiscovery` over loopback addresses."""

from __future__ import annotations

from collections.abc import Callable

import trio

from agent.discovery import Advert, Discovery, Event, PeerGone, PeerSeen
from protocol.discovery import mesh_tag


class Watcher:
    """One node: its advert, and what it has seen so far."""

    def __init__(self, advert: Advert) -> None:
        self.advert = advert
        self.seen: dict[str, PeerSeen] = {}
        self.changed = trio.Condition()
        self.scope = trio.CancelScope()

    def ids(self) -> set[bytes]:
        return {s.node_id for s in self.seen.values()}

    async def follow(self, events: trio.MemoryReceiveChannel[Event]) -> None:
        async for event in events:
            if isinstance(event, PeerGone):
                self.seen.pop(event.name, None)
            else:
                self.seen[event.name] = event
            async with self.changed:
                self.changed.notify_all()

    async def until(self, check: Callable[[], bool]) -> None:
        async with self.changed:
            while not check():
                await self.changed.wait()

    async def run(
        self, discovery: Discovery, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        send, receive = trio.open_memory_channel[Event](100)
        with self.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.follow, receive)
                await nursery.start(discovery.run, self.advert, send)
                task_status.started()


async def check_contract(
    make: Callable[[int], Discovery], hosts: list[str], *, timeout_s: float
) -> None:
    """Three nodes see each other (never themselves) with the advertised details; a node
    started later is seen; a node that stops is reported gone."""
    tag = mesh_tag(b"\7" * 32)
    nodes = [
        Watcher(
            Advert(
                node_id=bytes([i + 1]) * 16,
                addresses=((host, 7400 + i),),
                mesh_tag=tag,
                hub_eligible=i == 0,
            )
        )
        for i, host in enumerate(hosts)
    ]
    ids = [n.advert.node_id for n in nodes]
    with trio.fail_after(timeout_s):
        async with trio.open_nursery() as nursery:
            for i in (0, 1):
                await nursery.start(nodes[i].run, make(i))
            await nodes[0].until(lambda: ids[1] in nodes[0].ids())
            await nodes[1].until(lambda: ids[0] in nodes[1].ids())
            await nursery.start(nodes[2].run, make(2))  # a latecomer
            for n in nodes:
                await n.until(lambda n=n: n.ids() == set(ids) - {n.advert.node_id})
            seen = next(s for s in nodes[1].seen.values() if s.node_id == ids[0])
            assert seen.addresses == nodes[0].advert.addresses
            assert (seen.mesh_tag, seen.version, seen.hub_eligible) == (tag, 1, True)
            nodes[1].scope.cancel()  # node 1 leaves cleanly: a goodbye
            for n in (nodes[0], nodes[2]):
                await n.until(lambda n=n: ids[1] not in n.ids())
            nursery.cancel_scope.cancel()

"""The contract every `Discovery` passes (like automerge-repo's network adapter tests).

tests/agent/test_discovery.py runs it on `MemoryDiscovery` (virtual time) and
tests/system/test_zeroconf.py on `ZeroconfDiscovery` over loopback addresses (real
time). Each check gets a `Harness` that makes node ``i``'s discovery and host.

A real LAN (even loopback) may carry other adverts, from other meshes and other test
runs: every check uses fresh node ids and a fresh mesh secret, and looks at adverts of its
own mesh tag only. What it checks on every event, of any mesh, is the event contract:
never this node's own id, and a `PeerGone` only for a name reported by a `PeerSeen`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import pytest
import trio

from blazemesh.agent.discovery.adverts import (
    Advert,
    Discovery,
    DiscoveryEvent,
    PeerGone,
    PeerSeen,
    Readvertise,
)
from blazemesh.protocol.codec import PROTOCOL_VERSION
from blazemesh.protocol.discovery import mesh_tag
from blazemesh.protocol.errors import LocalProtocolError


@dataclass(frozen=True, slots=True, kw_only=True)
class Harness:
    """How a contract check gets node ``i``'s `Discovery` and host address."""

    make: Callable[[int], Discovery]
    host: Callable[[int], str]
    timeout_s: float


class Node:
    """One node under test: its advert, and the view of its mesh that its events give."""

    def __init__(self, advert: Advert) -> None:
        self.advert = advert
        self.seen: dict[str, PeerSeen] = {}  # every advert reported and not gone, any mesh
        self.changed = trio.Condition()
        self.scope = trio.CancelScope()
        self.stopped = trio.Event()
        self.reading = trio.Event()
        self._readvertise: Readvertise | None = None

    async def readvertise(self, advert: Advert) -> None:
        """Advertise ``advert`` instead, and follow its mesh from now on."""
        assert self._readvertise is not None, "the node is not running"
        self.advert = advert
        await self._readvertise(advert)

    @property
    def view(self) -> dict[str, PeerSeen]:
        """The adverts of this node's mesh (as it is now), by name."""
        return {n: s for n, s in self.seen.items() if s.mesh_tag == self.advert.mesh_tag}

    def ids(self) -> set[bytes]:
        return {seen.node_id for seen in self.view.values()}

    async def follow(self, events: trio.MemoryReceiveChannel[DiscoveryEvent]) -> None:
        await self.reading.wait()
        async for event in events:
            if isinstance(event, PeerGone):
                assert event.name in self.seen, f"{event} without a PeerSeen before"
                del self.seen[event.name]
            else:
                assert event.node_id != self.advert.node_id, f"a node was shown itself: {event}"
                self.seen[event.name] = event
            async with self.changed:
                self.changed.notify_all()

    async def until(self, check: Callable[[], bool]) -> None:
        async with self.changed:
            while not check():
                await self.changed.wait()

    async def run(
        self,
        discovery: Discovery,
        *,
        read: bool = True,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run ``discovery`` for this node until `scope` is cancelled. Events go through
        an unbuffered channel: a node that is not reading (``read=False`` until
        `reading` is set) holds up only itself."""
        if read:
            self.reading.set()
        send, receive = trio.open_memory_channel[DiscoveryEvent](0)
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self.follow, receive)
                    self._readvertise = await nursery.start(discovery.run, self.advert, send)
                    task_status.started()
        finally:
            self.stopped.set()


def new_nodes(harness: Harness, count: int, *, prefix: bytes = b"") -> list[Node]:
    """``count`` nodes of one fresh mesh on hosts 0.. (node 0 hub-eligible, each its
    own port); node ids start with ``prefix``."""
    tag = mesh_tag(secrets.token_bytes(32))
    return [
        Node(
            Advert(
                node_id=prefix + secrets.token_bytes(16 - len(prefix)),
                addresses=((harness.host(i), 7400 + i),),
                mesh_tag=tag,
                hub_eligible=i == 0,
            )
        )
        for i in range(count)
    ]


def sees_the_others(node: Node, others: list[Node]) -> Callable[[], bool]:
    """The check that ``node``'s view is exactly ``others``' adverts, field for field."""

    def check() -> bool:
        expected = {
            (o.advert.node_id, o.advert.addresses, o.advert.mesh_tag, o.advert.hub_eligible)
            for o in others
            if o is not node
        }
        got = {(s.node_id, s.addresses, s.mesh_tag, s.hub_eligible) for s in node.view.values()}
        return got == expected and len(node.view) == len(expected)

    return check


async def nodes_see_each_other_with_what_they_advertise(harness: Harness) -> None:
    nodes = new_nodes(harness, 3)
    with trio.fail_after(harness.timeout_s):
        async with trio.open_nursery() as nursery:
            for i, node in enumerate(nodes):
                await nursery.start(node.run, harness.make(i))
            for node in nodes:
                await node.until(sees_the_others(node, nodes))
            for node in nodes:
                assert all(s.version == PROTOCOL_VERSION for s in node.view.values())
            nursery.cancel_scope.cancel()


async def a_node_that_stops_is_reported_gone(harness: Harness) -> None:
    nodes = new_nodes(harness, 3)
    with trio.fail_after(harness.timeout_s):
        async with trio.open_nursery() as nursery:
            for i, node in enumerate(nodes):
                await nursery.start(node.run, harness.make(i))
            for node in nodes:
                await node.until(sees_the_others(node, nodes))
            leaver, rest = nodes[1], [nodes[0], nodes[2]]
            leaver.scope.cancel()  # a clean stop: the advert is withdrawn
            await leaver.stopped.wait()
            for node in rest:
                await node.until(sees_the_others(node, rest))
            nursery.cancel_scope.cancel()


async def a_node_started_later_is_seen(harness: Harness) -> None:
    nodes = new_nodes(harness, 3)
    with trio.fail_after(harness.timeout_s):
        async with trio.open_nursery() as nursery:
            for i in (0, 1):
                await nursery.start(nodes[i].run, harness.make(i))
            for node in nodes[:2]:
                await node.until(sees_the_others(node, nodes[:2]))
            await nursery.start(nodes[2].run, harness.make(2))
            for node in nodes:
                await node.until(sees_the_others(node, nodes))
            nursery.cancel_scope.cancel()


async def two_adverts_wanting_one_name_are_both_seen(harness: Harness) -> None:
    # The instance name holds 40 bits of the node id: nodes 1 and 2 differ only after them.
    nodes = new_nodes(harness, 3)
    twins = new_nodes(harness, 3, prefix=secrets.token_bytes(5))
    for i in (1, 2):
        nodes[i] = Node(replace(twins[i].advert, mesh_tag=nodes[0].advert.mesh_tag))
    with trio.fail_after(harness.timeout_s):
        async with trio.open_nursery() as nursery:
            await nursery.start(nodes[0].run, harness.make(0))
            for i in (1, 2):
                await nursery.start(nodes[i].run, harness.make(i))
                # Node 0 sees it once its name is taken: only then does the next ask.
                # (Two that probe for one name at the same moment can both take it:
                # python-zeroconf does not implement RFC 6762 §8.2 tie-breaking.)
                await nodes[0].until(sees_the_others(nodes[0], nodes[: i + 1]))
            for node in nodes:
                await node.until(sees_the_others(node, nodes))
            assert len({name for node in nodes for name in node.view}) == 3
            nursery.cancel_scope.cancel()


async def a_node_that_does_not_read_holds_up_no_one(harness: Harness) -> None:
    nodes = new_nodes(harness, 3)
    slow, quick = nodes[0], nodes[1:]
    with trio.fail_after(harness.timeout_s):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(slow.run, read=False), harness.make(0))
            for i, node in enumerate(quick, start=1):
                await nursery.start(node.run, harness.make(i))
            for node in quick:
                await node.until(sees_the_others(node, nodes))
            quick[1].scope.cancel()
            await quick[1].stopped.wait()
            await quick[0].until(sees_the_others(quick[0], [slow, quick[0]]))
            slow.reading.set()  # it catches up with how things are now
            await slow.until(sees_the_others(slow, [slow, quick[0]]))
            nursery.cancel_scope.cancel()


async def a_changed_advert_is_seen_by_the_others(harness: Harness) -> None:
    # The mesh secret is rotated and every node joins the new one, one after the other;
    # node 1 changes its advert before its name is even taken.
    nodes = new_nodes(harness, 3)
    tag = mesh_tag(secrets.token_bytes(32))
    with trio.fail_after(harness.timeout_s):
        async with trio.open_nursery() as nursery:
            for i, node in enumerate(nodes):
                await nursery.start(node.run, harness.make(i))
            await nodes[1].readvertise(replace(nodes[1].advert, hub_eligible=True))
            for node in nodes:
                await node.until(sees_the_others(node, nodes))
            for node in nodes:
                await node.readvertise(replace(node.advert, mesh_tag=tag))
            for node in nodes:
                await node.until(sees_the_others(node, nodes))
            nursery.cancel_scope.cancel()


async def a_new_advert_keeps_the_node_id(harness: Harness) -> None:
    (node, other) = new_nodes(harness, 2)
    with trio.fail_after(harness.timeout_s):
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run, harness.make(0))
            with pytest.raises(LocalProtocolError, match="node id"):
                await node.readvertise(replace(node.advert, node_id=other.advert.node_id))
            nursery.cancel_scope.cancel()


CONTRACT = [
    nodes_see_each_other_with_what_they_advertise,
    a_node_that_stops_is_reported_gone,
    a_node_started_later_is_seen,
    two_adverts_wanting_one_name_are_both_seen,
    a_node_that_does_not_read_holds_up_no_one,
    a_changed_advert_is_seen_by_the_others,
    a_new_advert_keeps_the_node_id,
]

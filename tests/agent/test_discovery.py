"""`MemoryDiscovery` passes the discovery contract, on virtual time; and its own limits."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing
from zeroconf import InterfaceChoice

from blazemesh.agent.discovery.adverts import (
    DEFAULT_MAX_PEERS,
    Advert,
    DiscoveryEvent,
    MemoryDiscovery,
    PeerGone,
    PeerSeen,
    ZeroconfDiscovery,
    _Tracker,
)
from blazemesh.protocol.discovery import mesh_tag
from blazemesh.protocol.errors import LocalProtocolError
from tests.agent.discovery_contract import CONTRACT, Harness


@pytest.mark.parametrize("check", CONTRACT, ids=lambda check: check.__name__)
async def test_memory_discovery_keeps_the_contract(
    check: Callable[[Harness], Awaitable[None]], autojump_clock: trio.testing.MockClock
) -> None:
    shared = MemoryDiscovery()
    await check(Harness(make=lambda i: shared, host=lambda i: f"node{i}", timeout_s=60))


@pytest.mark.parametrize(
    "addresses",
    [(), (("node0", 7400), ("node1", 7401))],
    ids=["no address", "two ports"],
)
async def test_an_advert_that_cannot_be_announced_is_refused_at_once(
    addresses: tuple[tuple[str, int], ...],
) -> None:
    advert = Advert(node_id=b"\1" * 16, addresses=addresses, mesh_tag=mesh_tag(bytes(32)))
    send, _ = trio.open_memory_channel[DiscoveryEvent](0)
    with pytest.raises(LocalProtocolError, match="one port"):
        await MemoryDiscovery().run(advert, send)


@pytest.mark.parametrize(
    "interfaces",
    [[], "127.0.0.81", ["0.0.0.0"], ["::"], ["224.0.0.251"], ["eth0"], InterfaceChoice.All],
)
def test_zeroconf_never_runs_on_all_or_unnamed_interfaces(interfaces: Any) -> None:
    with pytest.raises(LocalProtocolError):
        ZeroconfDiscovery(interfaces)


def seen(name: str, *, hub: bool = False, node_id: bytes = b"\1" * 16) -> PeerSeen:
    return PeerSeen(
        name=name,
        node_id=node_id,
        addresses=(("node1", 7400),),
        mesh_tag=mesh_tag(bytes(32)),
        version=1,
        hub_eligible=hub,
    )


async def test_a_consumer_hears_news_once_and_nothing_that_came_and_went() -> None:
    tracker = _Tracker(b"\0" * 16, max_peers=DEFAULT_MAX_PEERS)
    send, receive = trio.open_memory_channel[DiscoveryEvent](10)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(tracker.pump, send)
        tracker.seen(seen("a"))
        tracker.seen(seen("a"))  # the same again: no news
        tracker.seen(seen("b"))
        tracker.gone("b")  # came and went before it was told: nothing
        tracker.gone("c")  # never seen: nothing
        tracker.seen(seen("me", node_id=b"\0" * 16))  # this node's own id: never
        tracker.seen(seen("a", hub=True))
        await trio.testing.wait_all_tasks_blocked()
        tracker.gone("a")
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    send.close()
    assert [event async for event in receive] == [seen("a", hub=True), PeerGone(name="a")]


async def test_a_tracker_at_its_bound_ignores_new_adverts_and_warns_once_per_episode(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="blazemesh.agent.discovery.adverts")
    tracker = _Tracker(b"\0" * 16, max_peers=3)
    send, receive = trio.open_memory_channel[DiscoveryEvent](100)

    def warnings() -> int:
        return sum(r.levelno == logging.WARNING for r in caplog.records)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(tracker.pump, send)
        for i in range(10):
            tracker.seen(seen(f"a{i}"))
        tracker.seen(seen("a0", hub=True))  # news of an advert it follows still counts
        assert warnings() == 1  # not one per ignored advert
        await trio.testing.wait_all_tasks_blocked()
        tracker.gone("a1")
        tracker.seen(seen("b0"))  # room again: followed
        assert any("follows new adverts again" in r.getMessage() for r in caplog.records)
        for i in range(1, 10):
            tracker.seen(seen(f"b{i}"))
        assert warnings() == 2  # a second episode, said once
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    send.close()
    names = [event.name async for event in receive]
    assert names == ["a0", "a1", "a2", "a1", "b0"]  # a0 told once, with its newest state


@pytest.mark.parametrize("max_peers", [0, -1, 1.5])
def test_max_peers_must_be_a_positive_integer(max_peers: Any) -> None:
    with pytest.raises(LocalProtocolError, match="max_peers"):
        MemoryDiscovery(max_peers=max_peers)
    with pytest.raises(LocalProtocolError, match="max_peers"):
        ZeroconfDiscovery(["127.0.0.81"], max_peers=max_peers)

"""`ZeroconfDiscovery` on real mDNS, pinned to loopback addresses of its own (never this
machine's interfaces): the discovery contract, changed and hostile adverts, the browse
handler's thread boundary, and no thread left behind by any test here.

Hosts: 127.0.0.81-83 run the nodes under test, 127.0.0.84 an observer, 127.0.0.87-88
plain zeroconf instances that play other hosts. Every wait is bounded by `TIMEOUT_S`.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Awaitable, Callable, Iterator
from functools import partial

import pytest
import trio
from zeroconf import ServiceInfo, ServiceStateChange, Zeroconf
from zeroconf._dns import DNSPointer
from zeroconf._protocol.outgoing import DNSOutgoing
from zeroconf.const import _CLASS_IN, _FLAGS_AA, _FLAGS_QR_RESPONSE, _TYPE_PTR

from blazemesh.agent.discovery.adverts import (
    SERVICE_TYPE,
    Advert,
    PeerSeen,
    ZeroconfDiscovery,
    _Browse,
    _BrowseHandler,
)
from blazemesh.protocol.discovery import AdvertInfo, encode_txt, mesh_tag
from tests.agent.discovery_contract import CONTRACT, Harness, Node

pytestmark = pytest.mark.system

TIMEOUT_S = 10.0  # mDNS on loopback settles in about 1.5 s: probing, then announcing
OBSERVER = "127.0.0.84"
OTHER_HOSTS = ("127.0.0.87", "127.0.0.88")


@pytest.fixture(autouse=True)
def no_thread_is_leaked() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    # trio keeps idle worker threads for reuse ("Trio thread N"); anything else new is
    # a zeroconf loop or browser thread that was not joined.
    leaked = [
        t
        for t in threading.enumerate()
        if t not in before and t.is_alive() and not t.name.startswith("Trio thread")
    ]
    assert leaked == []


@pytest.mark.parametrize("check", CONTRACT, ids=lambda check: check.__name__)
async def test_zeroconf_discovery_keeps_the_contract(
    check: Callable[[Harness], Awaitable[None]],
) -> None:
    hosts = [f"127.0.0.{81 + i}" for i in range(3)]
    await check(
        Harness(
            make=lambda i: ZeroconfDiscovery([hosts[i]]),
            host=lambda i: hosts[i],
            timeout_s=TIMEOUT_S,
        )
    )


def service(
    host: str, info: AdvertInfo | dict[str, str], *, label: str | None = None
) -> ServiceInfo:
    """An advert of another host, as a plain zeroconf `ServiceInfo`."""
    label = label or f"other-{secrets.token_hex(4)}"
    return ServiceInfo(
        SERVICE_TYPE,
        f"{label}.{SERVICE_TYPE}",
        port=7400,
        properties=encode_txt(info) if isinstance(info, AdvertInfo) else info,
        server=f"{label}.local.",
        parsed_addresses=[host],
    )


def observer() -> Node:
    return Node(
        Advert(
            node_id=secrets.token_bytes(16),
            addresses=((OBSERVER, 7400),),
            mesh_tag=mesh_tag(secrets.token_bytes(32)),
        )
    )


async def open_zeroconf(host: str) -> Zeroconf:
    return await trio.to_thread.run_sync(partial(Zeroconf, interfaces=[host]))


async def test_a_changed_advert_is_reported_again() -> None:
    node = observer()
    info = AdvertInfo(node_id=secrets.token_bytes(16), version=1, mesh_tag=node.advert.mesh_tag)
    other = service(OTHER_HOSTS[0], info)
    zc = await open_zeroconf(OTHER_HOSTS[0])
    try:
        with trio.fail_after(TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run, ZeroconfDiscovery([OBSERVER]))
                await trio.to_thread.run_sync(zc.register_service, other)

                def shows(hub_eligible: bool) -> Callable[[], bool]:
                    return lambda: (
                        node.view.get(other.name)
                        == PeerSeen(
                            name=other.name,
                            node_id=info.node_id,
                            addresses=((OTHER_HOSTS[0], 7400),),
                            mesh_tag=info.mesh_tag,
                            version=1,
                            hub_eligible=hub_eligible,
                        )
                    )

                await node.until(shows(hub_eligible=False))
                hub = AdvertInfo(
                    node_id=info.node_id, version=1, mesh_tag=info.mesh_tag, hub_eligible=True
                )
                changed = service(OTHER_HOSTS[0], hub, label=other.name.split(".")[0])
                await trio.to_thread.run_sync(zc.update_service, changed)
                await node.until(shows(hub_eligible=True))
                nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(zc.close)


class Refusals(logging.Handler):
    """Sets an event when discovery logs that it ignores an advert of a given name."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.events: dict[str, trio.Event] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("ignoring advert") and isinstance(record.args, tuple):
            event = self.events.get(str(record.args[0]))
            if event is not None:
                event.set()  # on the trio thread: discovery logs this from there


async def test_hostile_adverts_are_ignored_and_browsing_goes_on() -> None:
    node = observer()
    junk = service(OTHER_HOSTS[1], {"v": "1", "id": "not a node id", "m": "x" * 200})
    # A pointer to a service of another type: resolving it makes zeroconf raise.
    stray = f"stray-{secrets.token_hex(4)}._other._tcp.local."
    good = service(
        OTHER_HOSTS[0],
        AdvertInfo(node_id=secrets.token_bytes(16), version=1, mesh_tag=node.advert.mesh_tag),
    )
    refusals = Refusals()
    refusals.events = {junk.name: trio.Event(), stray: trio.Event()}
    logger = logging.getLogger("blazemesh.agent.discovery.adverts")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(refusals)
    zcs = [await open_zeroconf(host) for host in OTHER_HOSTS]
    try:
        with trio.fail_after(TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run, ZeroconfDiscovery([OBSERVER]))
                await trio.to_thread.run_sync(zcs[1].register_service, junk)
                zcs[1].send(pointer(stray, ttl=int(TIMEOUT_S)))
                await trio.to_thread.run_sync(zcs[0].register_service, good)
                await node.until(lambda: good.name in node.view)
                for event in refusals.events.values():
                    await event.wait()
                assert set(node.view) == {good.name}
                assert not (node.seen.keys() & {junk.name, stray})
                assert not node.stopped.is_set()
                nursery.cancel_scope.cancel()
    finally:
        zcs[1].send(pointer(stray, ttl=0))  # goodbye, for every other cache on this host
        logger.removeHandler(refusals)
        logger.setLevel(level)
        for zc in zcs:
            await trio.to_thread.run_sync(zc.close)


def pointer(alias: str, *, ttl: int) -> DNSOutgoing:
    out = DNSOutgoing(_FLAGS_QR_RESPONSE | _FLAGS_AA)
    out.add_answer_at_time(DNSPointer(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN, ttl, alias), 0)
    return out


def test_the_browse_handler_does_not_raise_after_the_trio_run() -> None:
    delivered: list[tuple[str, bool]] = []

    async def make() -> _BrowseHandler:
        return _BrowseHandler(
            trio.lowlevel.current_trio_token(), lambda *change: delivered.append(change)
        )

    handler = trio.run(make)
    for state in ServiceStateChange:
        handler(zeroconf=None, service_type=SERVICE_TYPE, name="late", state_change=state)
    assert delivered == []


async def test_a_flood_of_browse_changes_stays_bounded(caplog: pytest.LogCaptureFixture) -> None:
    browse = _Browse(b"\1" * 16, max_peers=8)
    flood = 1_000
    done = trio.Event()
    handled = 0

    def deliver(name: str, gone: bool) -> None:
        nonlocal handled
        browse.changed(name, gone)
        handled += 1
        if handled == 2 * flood:
            done.set()

    handler = _BrowseHandler(trio.lowlevel.current_trio_token(), deliver)

    def from_zeroconfs_thread() -> None:
        for i in range(flood):
            for state in (ServiceStateChange.Added, ServiceStateChange.Updated):
                handler(zeroconf=None, service_type=SERVICE_TYPE, name=f"n{i}", state_change=state)

    with trio.fail_after(TIMEOUT_S):
        await trio.to_thread.run_sync(from_zeroconfs_thread)
        await done.wait()
    assert len(browse._want) == len(browse._queue) == 8
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1  # once for the whole flood
    assert "--max-peers" in warnings[0].getMessage()

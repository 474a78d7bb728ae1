"""`ZeroconfDiscovery` passes the discovery contract: real mDNS, pinned to loopback
addresses of its own (never the machine's interfaces), and leaks no thread."""

from __future__ import annotations

import threading

import pytest
import trio

from agent.discovery import Advert, ZeroconfDiscovery
from protocol.discovery import mesh_tag
from tests.agent.discovery_contract import Watcher, check_contract

pytestmark = pytest.mark.system

HOSTS = ["127.0.0.81", "127.0.0.82", "127.0.0.83"]


async def test_zeroconf_discovery_passes_the_contract() -> None:
    before = set(threading.enumerate())
    await check_contract(lambda i: ZeroconfDiscovery([HOSTS[i]]), HOSTS, timeout_s=20)
    # trio keeps idle worker threads for reuse; any other new thread is a leak.
    leaked = [
        t
        for t in threading.enumerate()
        if t not in before and t.is_alive() and not t.name.startswith("Trio thread")
    ]
    assert leaked == []


async def test_a_name_taken_by_another_host_is_renamed_not_fought_over() -> None:
    tag = mesh_tag(b"\7" * 32)
    same = bytes([9]) * 16  # both adverts want blazemesh-<same short id>
    hosts = ["127.0.0.84", "127.0.0.85", "127.0.0.86"]
    twins = [Watcher(Advert(node_id=same, addresses=((h, 7400),), mesh_tag=tag)) for h in hosts[:2]]
    observer = Watcher(Advert(node_id=b"\1" * 16, addresses=((hosts[2], 7400),), mesh_tag=tag))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(observer.run, ZeroconfDiscovery([hosts[2]]))
            for twin, host in zip(twins, hosts, strict=False):
                await nursery.start(twin.run, ZeroconfDiscovery([host]))
            await observer.until(lambda: len(observer.seen) == 2)
            first, second = sorted(observer.seen)
            assert first != second  # the second to probe took a new name (..-2)
            nursery.cancel_scope.cancel()

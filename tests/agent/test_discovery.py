"""`MemoryDiscovery` passes the discovery contract."""

from __future__ import annotations

import trio
import trio.testing

from agent.discovery import MemoryDiscovery
from tests.agent.discovery_contract import check_contract


async def test_memory_discovery_passes_the_contract(autojump_clock: trio.testing.MockClock) -> None:
    shared = MemoryDiscovery()
    await check_contract(lambda i: shared, ["node0", "node1", "node2"], timeout_s=5)

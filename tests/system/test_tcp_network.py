"""`TcpNetwork` keeps the network contract (tests/agent/network_contract.py) over
loopback sockets."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from blazemesh.agent.links.network import TcpNetwork
from tests.agent.network_contract import CONTRACT, Harness

pytestmark = pytest.mark.system

CONTRACT_TIMEOUT_S = 20.0  # each check takes milliseconds: this fires only if one hangs


@pytest.mark.parametrize("check", CONTRACT, ids=lambda check: check.__name__)
async def test_tcp_network_keeps_the_contract(check: Callable[[Harness], Awaitable[None]]) -> None:
    network = TcpNetwork()
    await check(
        Harness(make=lambda i: network, host=lambda i: "127.0.0.1", timeout_s=CONTRACT_TIMEOUT_S)
    )

"""`MemoryNetwork` keeps the network contract (tests/agent/network_contract.py), and
`TcpNetwork`'s accept loop against a scripted listener: what one connection or a
shortage of files does to it. (Real sockets: tests/system/test_tcp_network.py and
tests/system/test_connection_floods.py.)"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from blazemesh.agent.links.network import (
    ACCEPT_RETRY_S,
    Address,
    MemoryNetwork,
    accept_forever,
)
from tests.agent.network_contract import CONTRACT, Harness


@pytest.mark.parametrize("check", CONTRACT, ids=lambda check: check.__name__)
async def test_memory_network_keeps_the_contract(
    check: Callable[[Harness], Awaitable[None]], autojump_clock: trio.testing.MockClock
) -> None:
    shared = MemoryNetwork()
    await check(Harness(make=lambda i: shared, host=lambda i: f"node{i}", timeout_s=60))


class Socket:
    def __init__(self, peer: Address | None) -> None:
        self._peer = peer

    def getpeername(self) -> Address:
        if self._peer is None:
            raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN))
        return self._peer


class Accepted:
    """What accept() returns: a stream whose peer is known, or was reset (None)."""

    def __init__(self, peer: Address | None) -> None:
        self.socket = Socket(peer)
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True
        await trio.lowlevel.checkpoint()


class ScriptedListener(trio.abc.Listener[Accepted]):
    """Accepts (or fails with) each item of ``script`` in turn, then waits forever."""

    def __init__(self, script: list[Accepted | OSError]) -> None:
        self._script = script
        self.done = trio.Event()

    async def accept(self) -> Accepted:
        await trio.lowlevel.checkpoint()
        if not self._script:
            self.done.set()
            await trio.sleep_forever()
        item = self._script.pop(0)
        if isinstance(item, OSError):
            raise item
        return item

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def serve(script: list[Accepted | OSError]) -> list[tuple[Accepted, Address, float]]:
    """Run the accept loop over ``script`` until it is used up; what the handler got."""
    handled: list[tuple[Accepted, Address, float]] = []

    async def handler(stream: Accepted, remote: Address) -> None:
        handled.append((stream, remote, trio.current_time()))
        await trio.lowlevel.checkpoint()

    listener = ScriptedListener(script)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_forever, listener, handler, nursery)
        await listener.done.wait()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    return handled


async def test_a_connection_reset_before_it_is_accepted_is_dropped() -> None:
    # Issue 17, item 1: getpeername() on such a connection raised ENOTCONN and ended the
    # accept loop, and the agent with it.
    reset, good = Accepted(None), Accepted(("10.0.0.2", 4000))
    handled = await serve([reset, good])
    assert [(stream, remote) for stream, remote, _ in handled] == [(good, ("10.0.0.2", 4000))]
    assert reset.closed


async def test_running_out_of_files_pauses_accepting_and_warns_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    emfile = [OSError(errno.EMFILE, "Too many open files") for _ in range(3)]
    start = trio.current_time()
    handled = await serve([*emfile, Accepted(("10.0.0.2", 4000))])
    ((_, _, when),) = handled
    assert when - start == pytest.approx(3 * ACCEPT_RETRY_S)
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "peers: cannot accept connections: Too many open files; retrying every 0.1 s",
        "peers: accepting connections again",
    ]


async def test_other_accept_errors_still_end_the_loop() -> None:
    with pytest.RaisesGroup(pytest.RaisesExc(OSError, match="Bad file descriptor")):
        await serve([OSError(errno.EBADF, "Bad file descriptor")])

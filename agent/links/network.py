"""The `Network` edge: how a node listens and dials, as a small interface.

`TcpNetwork` is the real one. `MemoryNetwork` connects nodes of one trio run through
in-memory streams: tests use it, and the simulator's network builds on the same
interface. All three keep one contract (tests/agent/network_contract.py, run by
tests/agent/test_network.py, tests/simulations/test_network.py and
tests/system/test_tcp_network.py), and their streams pass trio's generic stream checks.

An address is a ``(host, port)`` pair; a memory network treats it as a name.
"""

from __future__ import annotations

import errno
import logging
import operator
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

log = logging.getLogger(__name__)

Address = tuple[str, int]
DEFAULT_PORT = 7420  # blazemesh's port: unassigned by IANA
Handler = Callable[[trio.abc.Stream, Address], Awaitable[None]]

# accept() errors that say the process or host is out of a resource, not that the
# listener broke: wait and retry, as trio.serve_listeners does.
ACCEPT_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_RETRY_S = 0.1  # how long accepting pauses for a resource to free up
# What one read of a connection (a peer's, or a control-socket client's) asks for: a
# socket buffer's worth, so a busy connection takes few reads and an idle one holds little.
RECEIVE_BYTES = 1 << 16


class Network(Protocol):
    """Listen for and open reliable byte streams between nodes."""

    async def serve(
        self, address: Address, handler: Handler, *, task_status: trio.TaskStatus[Address]
    ) -> None:
        """Accept connections on ``address`` and run ``handler(stream, remote)`` for each,
        each in its own task, until cancelled; the handlers end with it. Reports the bound
        address when ready (port 0 asks for a free port); raises `OSError` if the address
        is served already."""

    async def connect(self, address: Address) -> trio.abc.Stream:
        """Open a stream to ``address``; raises `OSError` if nothing listens there."""


def check_max_bytes(max_bytes: int | None) -> int | None:
    """``receive_some``'s argument as trio's streams take it: None, or an int of at least
    1 (`ValueError`; a non-integer raises `TypeError`)."""
    if max_bytes is None:
        return None
    max_bytes = operator.index(max_bytes)
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
    return max_bytes


def format_address(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(text: str, default_port: int) -> Address:
    """``HOST:PORT``, ``HOST`` (default port), or ``[V6]:PORT``; raises `ValueError`."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError(f"no host in address {text!r}")
    port = int(port_text) if port_text else default_port
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    return host, port


class TcpNetwork:
    """TCP over the operating system's sockets."""

    async def serve(
        self, address: Address, handler: Handler, *, task_status: trio.TaskStatus[Address]
    ) -> None:
        host, port = address
        listeners = await trio.open_tcp_listeners(port, host=host or None)
        bound = listeners[0].socket.getsockname()
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(accept_forever, listener, handler, nursery)
            task_status.started((bound[0], bound[1]))

    async def connect(self, address: Address) -> trio.abc.Stream:
        host, port = address
        return await trio.open_tcp_stream(host, port)


class Acceptor:
    """Accepts from ``listener``, waiting out a shortage of files or buffers (retrying
    every `ACCEPT_RETRY_S`, with one warning per episode) instead of failing: a process
    out of descriptors recovers as soon as a connection closes. ``what`` names the
    listener in the log."""

    def __init__(self, listener: trio.SocketListener, what: str) -> None:
        self._listener = listener
        self._what = what
        self._starved = False

    async def accept(self) -> trio.SocketStream:
        while True:
            try:
                stream = await self._listener.accept()
            except OSError as exc:
                if exc.errno not in ACCEPT_RESOURCE_ERRNOS:
                    raise
                if not self._starved:
                    log.warning(
                        "%s: cannot accept connections: %s; retrying every %.1f s",
                        self._what,
                        exc.strerror,
                        ACCEPT_RETRY_S,
                    )
                    self._starved = True
                await trio.sleep(ACCEPT_RETRY_S)
                continue
            if self._starved:
                log.info("%s: accepting connections again", self._what)
                self._starved = False
            return stream


async def accept_forever(
    listener: trio.SocketListener, handler: Handler, nursery: trio.Nursery
) -> None:
    """Accept connections on ``listener`` and start ``handler`` for each in ``nursery``,
    until cancelled. Nothing one connection does stops it: a connection reset before it
    is accepted is dropped, and a shortage of files or buffers is waited out (`Acceptor`)."""
    acceptor = Acceptor(listener, "peers")
    async with listener:
        while True:
            stream = await acceptor.accept()
            try:
                remote = stream.socket.getpeername()
            except OSError as exc:
                # The peer reset the connection while it waited to be accepted (ENOTCONN).
                log.debug("a connection ended before it was accepted: %s", exc)
                await trio.aclose_forcefully(stream)
                continue
            nursery.start_soon(handler, stream, (remote[0], remote[1]))


class MemoryNetwork:
    """Nodes of one trio run, connected by in-memory streams (for tests and simulation).

    ``wrap`` lets a test put something between the two ends, such as a stream that
    injects faults.
    """

    def __init__(self, wrap: Callable[[trio.abc.Stream], trio.abc.Stream] | None = None) -> None:
        self._listeners: dict[Address, tuple[Handler, trio.Nursery]] = {}
        self._wrap = wrap or (lambda stream: stream)
        self._ports = 40_000

    async def serve(
        self, address: Address, handler: Handler, *, task_status: trio.TaskStatus[Address]
    ) -> None:
        host, port = address
        if not port:
            self._ports += 1
            port = self._ports
        address = (host, port)
        if address in self._listeners:
            raise OSError(f"address {format_address(address)} is already in use")
        async with trio.open_nursery() as nursery:
            self._listeners[address] = (handler, nursery)
            try:
                task_status.started(address)
                await trio.sleep_forever()
            finally:
                del self._listeners[address]

    async def connect(self, address: Address) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        entry = self._listeners.get(address)
        if entry is None:
            raise ConnectionRefusedError(f"nothing listens on {format_address(address)}")
        handler, nursery = entry
        # Imported here: trio.testing imports pytest when it is installed, which would add
        # a seventh of a second to every agent's start-up.
        from trio.testing import memory_stream_pair

        ours, theirs = memory_stream_pair()
        nursery.start_soon(handler, self._wrap(theirs), ("memory", 0))
        return self._wrap(ours)

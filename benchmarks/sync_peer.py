"""One node of `benchmarks.sync` in a process of its own, driven by the benchmark.

    python -m benchmarks.sync_peer DATA_DIR SIGNAL_FD

The data directory holds the node's identity and mesh (the benchmark writes them). The
benchmark sends one JSON command per line on stdin; every command is answered by one JSON
line on stdout, once it is done. Nodes run the full stack: a replica with the default
durability, a `Node` with the Noise channel, real TCP, counted at the socket.

``SIGNAL_FD`` is one end of a pipe to the other peer, for the put-to-visible loop: the
observing side writes a byte for each write it sees, and the writing side waits for that
byte before its next put. Coordination happens only through these pipes, never by sleeping.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from benchmarks.replica import key, typical_fields
from blazemesh.agent.assemble import Services, run_node
from blazemesh.agent.links.network import Address, Handler, TcpNetwork
from blazemesh.agent.links.node import Node, NodeConfig
from blazemesh.agent.storage.observe import Overflow
from blazemesh.agent.storage.replica import Replica, open_replica
from blazemesh.agent.trust.membership import load_mesh

COLLECTION = "bugs"
COMMAND_TIMEOUT_S = 300.0  # no command of the benchmark takes this long on a sane machine
FRAME_HEADER = 2  # plain TCP ceiling: a message's length, big endian, as the Noise framing


class Counts:
    """Bytes through the sockets of one process, both directions."""

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0
        self.connections = 0  # opened, either way


class CountingStream(trio.abc.Stream):
    """A stream that counts the bytes it carries: what TCP carries, everything included."""

    def __init__(self, inner: trio.abc.Stream, counts: Counts) -> None:
        self._inner = inner
        self._counts = counts

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)
        self._counts.sent += len(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self._inner.receive_some(max_bytes)
        self._counts.received += len(data)
        return data

    async def aclose(self) -> None:
        await self._inner.aclose()


class CountingNetwork:
    """`TcpNetwork` with every stream counted."""

    def __init__(self, counts: Counts) -> None:
        self._tcp = TcpNetwork()
        self._counts = counts

    async def serve(
        self, address: Address, handler: Handler, *, task_status: trio.TaskStatus[Address]
    ) -> None:
        async def counted(stream: trio.abc.Stream, remote: Address) -> None:
            self._counts.connections += 1
            await handler(CountingStream(stream, self._counts), remote)

        await self._tcp.serve(address, counted, task_status=task_status)

    async def connect(self, address: Address) -> trio.abc.Stream:
        stream = CountingStream(await self._tcp.connect(address), self._counts)
        self._counts.connections += 1
        return stream


class Peer:
    """The commands of one benchmark process; each returns the reply as a dict."""

    def __init__(
        self,
        replica: Replica,
        data_dir: Path,
        signal: trio.lowlevel.FdStream,
        nursery: trio.Nursery,
    ) -> None:
        self.replica = replica
        self.data_dir = data_dir
        self.signal = signal
        self.nursery = nursery
        self.counts = Counts()
        self.node: Node | None = None
        self._node_scope: trio.CancelScope | None = None
        self._node_done = trio.Event()
        self._samples: list[int] = []
        self._observed = trio.Event()

    # -- the node ----------------------------------------------------------------------

    async def start(self, listen: str | None, dial: list[Any] | None) -> dict[str, Any]:
        """Run a node listening on ``listen`` (a host, any free port) and dialling ``dial``."""
        run = functools.partial(
            run_node,
            self.replica,
            mesh=load_mesh(self.data_dir),
            network=CountingNetwork(self.counts),
            config=NodeConfig(
                listen=[] if listen is None else [(listen, 0)],
                peers=[] if dial is None else [(dial[0], dial[1])],
            ),
        )
        self._node_scope, self._node_done = trio.CancelScope(), trio.Event()
        services = await self.nursery.start(self._run_node, run, self._node_scope, self._node_done)
        self.node = node = services.node
        return {"node_id": node.node_id.hex(), "bound": node.bound}

    @staticmethod
    async def _run_node(
        run: Callable[..., Awaitable[None]],
        scope: trio.CancelScope,
        done: trio.Event,
        *,
        task_status: trio.TaskStatus[Services],
    ) -> None:
        try:
            with scope:
                await run(task_status=task_status)
        finally:
            done.set()

    async def stop(self) -> dict[str, Any]:
        """Stop the node: its links close, the replica stays open."""
        assert self._node_scope is not None
        self._node_scope.cancel()
        await self._node_done.wait()
        self.node = None
        return {}

    def traffic(self) -> dict[str, Any]:
        """Bytes through the sockets, and the sync layer's own bytes before encryption."""
        links = [] if self.node is None else self.node.peers()
        return {
            "tcp_sent": self.counts.sent,
            "tcp_received": self.counts.received,
            "connections": self.counts.connections,
            "sync_bytes": sum(p.sync.bytes_sent + p.sync.bytes_received for p in links),
        }

    def state(self) -> dict[str, Any]:
        vv = self.replica.vv
        return {
            "vv": [[o.hex(), vv.base(o), vv.runs(o)] for o in sorted(vv.origins())],
            "digest": self.replica.digest(),
        }

    # -- writing -----------------------------------------------------------------------

    async def puts(self, first: int, count: int) -> dict[str, Any]:
        """``count`` single puts, one after the other, each its own change."""
        start = time.monotonic_ns()
        seq = 0
        for i in range(first, first + count):
            seq = (await self.replica.put(COLLECTION, key(i), typical_fields(i))).seq
        return {"start_ns": start, "end_ns": time.monotonic_ns(), "seq": seq}

    async def transactions(self, first: int, count: int, size: int) -> dict[str, Any]:
        """``count`` transactions of ``size`` puts each."""
        start = time.monotonic_ns()
        seq = 0
        for t in range(count):
            async with self.replica.transaction() as tx:
                for i in range(first + t * size, first + (t + 1) * size):
                    tx.put(COLLECTION, key(i), typical_fields(i))
            assert tx.change is not None
            seq = tx.change.seq
        return {"start_ns": start, "end_ns": time.monotonic_ns(), "seq": seq}

    async def latency_puts(self, first: int, count: int) -> dict[str, Any]:
        """Put one record at a time stamped with ``ts``; wait until the observer saw it."""
        seq = 0
        for i in range(first, first + count):
            fields = {**typical_fields(i), "ts": time.monotonic_ns()}
            seq = (await self.replica.put(COLLECTION, key(i), fields)).seq
            if not await self.signal.receive_some(1):
                raise RuntimeError("the observing peer closed its signal pipe")
        return {"seq": seq}

    # -- observing ---------------------------------------------------------------------

    async def observe(self, count: int) -> dict[str, Any]:
        """Start observing: for each of the next ``count`` stamped writes, record the
        latency from its ``ts`` and signal the writer. Returns once the observer is live."""
        self._samples, self._observed = [], trio.Event()
        await self.nursery.start(self._observe, count)
        return {}

    async def _observe(self, count: int, *, task_status: trio.TaskStatus[None]) -> None:
        with self.replica.observe(COLLECTION) as observer:
            task_status.started()
            async for event in observer:
                if isinstance(event, Overflow):
                    raise RuntimeError(f"the latency observer overflowed: {event}")
                now = time.monotonic_ns()
                for update in event.updates:
                    ts = None if update.document is None else update.document.get("ts")
                    if isinstance(ts, int):
                        self._samples.append(now - ts)
                        await self.signal.send_all(b".")
                if len(self._samples) >= count:
                    break
        self._observed.set()

    async def latencies(self) -> dict[str, Any]:
        """The latencies the last `observe` recorded, in nanoseconds, once all arrived."""
        await self._observed.wait()
        return {"samples_ns": self._samples}

    async def reach(self, origin: str, seq: int) -> dict[str, Any]:
        """Wait until this replica holds ``origin``'s changes up to ``seq``; return when
        (CLOCK_MONOTONIC, which every process shares) the commit that completed them ended."""
        node_id = bytes.fromhex(origin)
        vv = self.replica.vv
        done = trio.Event()
        at = [0]

        def check(_: object) -> None:
            if not done.is_set() and vv.base(node_id) >= seq:
                at[0] = time.monotonic_ns()
                done.set()

        remove = self.replica.on_commit(check)
        try:
            check(None)
            await done.wait()
        finally:
            remove()
        return {"at_ns": at[0]}

    async def catch_up(self, dial: list[Any], origin: str, seq: int) -> dict[str, Any]:
        """Start the node dialling ``dial`` and wait until it holds ``origin`` up to ``seq``."""
        start = time.monotonic_ns()
        await self.start(None, dial)
        reached = await self.reach(origin, seq)
        return {"start_ns": start, "at_ns": reached["at_ns"]}

    # -- the plain TCP ceiling ---------------------------------------------------------

    async def echo(self, host: str) -> dict[str, Any]:
        """Accept one plain TCP connection and echo each framed message back."""
        return {"port": await self.nursery.start(self._serve_one, host, _echo)}

    async def sink(self, host: str, expect: int) -> dict[str, Any]:
        """Accept one plain TCP connection, read ``expect`` bytes, answer with one byte."""

        async def drain(stream: trio.SocketStream) -> None:
            got = 0
            while got < expect:
                data = await stream.receive_some(65_536)
                if not data:
                    raise RuntimeError("the sender closed before sending everything")
                got += len(data)
            await stream.send_all(b"k")

        return {"port": await self.nursery.start(self._serve_one, host, drain)}

    @staticmethod
    async def _serve_one(
        host: str,
        body: Callable[[trio.SocketStream], Awaitable[None]],
        *,
        task_status: trio.TaskStatus[int],
    ) -> None:
        (listener,) = await trio.open_tcp_listeners(0, host=host)
        async with listener:
            task_status.started(listener.socket.getsockname()[1])
            stream = await listener.accept()
        async with stream:
            await body(stream)

    async def ping(self, host: str, port: int, size: int, count: int) -> dict[str, Any]:
        """Round trips of a ``size``-byte message to an `echo` peer, in nanoseconds."""
        message = (size - FRAME_HEADER).to_bytes(FRAME_HEADER, "big") + b"x" * (size - FRAME_HEADER)
        samples = []
        async with await trio.open_tcp_stream(host, port) as stream:
            for _ in range(count):
                start = time.monotonic_ns()
                await stream.send_all(message)
                got = 0
                while got < size:
                    data = await stream.receive_some(65_536)
                    if not data:
                        raise RuntimeError("the echo peer closed")
                    got += len(data)
                samples.append(time.monotonic_ns() - start)
        return {"samples_ns": samples}

    async def stream(self, host: str, port: int, size: int, count: int) -> dict[str, Any]:
        """Send ``count`` messages of ``size`` bytes to a `sink`, one ``send_all`` each."""
        message = (size - FRAME_HEADER).to_bytes(FRAME_HEADER, "big") + b"x" * (size - FRAME_HEADER)
        async with await trio.open_tcp_stream(host, port) as stream:
            start = time.monotonic_ns()
            for _ in range(count):
                await stream.send_all(message)
            if await stream.receive_some(1) != b"k":
                raise RuntimeError("the sink did not confirm")
            return {"seconds": (time.monotonic_ns() - start) / 1e9}


async def _echo(stream: trio.SocketStream) -> None:
    buffer = bytearray()
    while data := await stream.receive_some(65_536):
        buffer += data
        while len(buffer) >= FRAME_HEADER:
            end = FRAME_HEADER + int.from_bytes(buffer[:FRAME_HEADER], "big")
            if len(buffer) < end:
                break
            await stream.send_all(bytes(buffer[:end]))
            del buffer[:end]


async def main(data_dir: Path, signal_fd: int) -> None:
    commands = trio.lowlevel.FdStream(sys.stdin.fileno())
    replies = trio.lowlevel.FdStream(sys.stdout.fileno())
    signal = trio.lowlevel.FdStream(signal_fd)
    async with open_replica(data_dir) as replica, trio.open_nursery() as nursery:
        peer = Peer(replica, data_dir, signal, nursery)
        await replies.send_all(b'{"ready": true}\n')
        buffer = b""
        while True:
            while b"\n" not in buffer:
                data = await commands.receive_some(65_536)
                if not data:
                    nursery.cancel_scope.cancel()
                    return
                buffer += data
            line, buffer = buffer.split(b"\n", 1)
            command = json.loads(line)
            name = command.pop("op")
            if name == "quit":
                nursery.cancel_scope.cancel()
                return
            handler = getattr(peer, name)
            with trio.fail_after(COMMAND_TIMEOUT_S):
                reply = handler(**command)
                if not isinstance(reply, dict):
                    reply = await reply
            await replies.send_all(json.dumps(reply).encode() + b"\n")


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]), int(sys.argv[2]))

"""The contract every `Network` keeps (like automerge-repo's network adapter tests).

tests/agent/test_network.py runs it on `MemoryNetwork`, tests/simulations/test_network.py
on the simulator's hosts (both on virtual time), and tests/system/test_tcp_network.py on
`TcpNetwork` over loopback (real time). Each check gets a `Harness` that gives host
``i``'s network and the host part of its addresses.

What the node relies on: `serve` reports an address that `connect` reaches (port 0 asks
for a free one), refuses one already served, and runs each connection's handler in a task
of its own that ends with it; `connect` raises `OSError` where nothing listens; the
streams carry bytes in order both ways, end cleanly when one end closes, and pass trio's
generic stream checks (`trio.testing.check_two_way_stream`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio
import trio.testing

from blazemesh.agent.links.network import Address, Handler, Network

BIG_BYTES = 300_000  # more than one read of any implementation: it arrives in pieces


@dataclass(frozen=True, slots=True, kw_only=True)
class Harness:
    """How a contract check gets host ``i``'s `Network` and the host of its addresses."""

    make: Callable[[int], Network]
    host: Callable[[int], str]
    timeout_s: float


async def read_exactly(stream: trio.abc.Stream, size: int) -> bytes:
    """``size`` bytes from ``stream``, however they are split; fails at end of stream."""
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some()
        assert chunk, f"end of stream after {len(data)} of {size} bytes"
        data += chunk
    return bytes(data)


async def echo(stream: trio.abc.Stream, remote: Address) -> None:
    """Send back what arrives, until the other end closes; then close."""
    async with stream:
        while data := await stream.receive_some():
            await stream.send_all(data)


@asynccontextmanager
async def serving(network: Network, address: Address, handler: Handler) -> AsyncIterator[Address]:
    """Serve ``handler`` on ``address`` for the block; the address it was bound to."""
    async with trio.open_nursery() as nursery:
        bound: Address = await nursery.start(network.serve, address, handler)
        yield bound
        nursery.cancel_scope.cancel()


async def a_connection_carries_bytes_both_ways_in_order(harness: Harness) -> None:
    sent = [b"hello", bytes(range(256)) * (BIG_BYTES // 256), b"", b"bye"]
    total = sum(map(len, sent))
    with trio.fail_after(harness.timeout_s):
        async with serving(harness.make(0), (harness.host(0), 0), echo) as address:
            stream = await harness.make(1).connect(address)
            async with stream, trio.open_nursery() as nursery:

                async def send() -> None:
                    for chunk in sent:
                        await stream.send_all(chunk)

                nursery.start_soon(send)  # both ways at once: neither side waits on the other
                assert await read_exactly(stream, total) == b"".join(sent)


async def serving_port_zero_picks_a_free_port(harness: Harness) -> None:
    def answer(word: bytes) -> Handler:
        async def handler(stream: trio.abc.Stream, remote: Address) -> None:
            async with stream:
                await stream.send_all(word)

        return handler

    network, host = harness.make(0), harness.host(0)
    with trio.fail_after(harness.timeout_s):
        async with (
            serving(network, (host, 0), answer(b"first")) as first,
            serving(network, (host, 0), answer(b"second")) as second,
        ):
            assert first != second
            assert first[1] != 0
            assert second[1] != 0
            for address, word in ((first, b"first"), (second, b"second")):
                async with await harness.make(1).connect(address) as stream:
                    assert await read_exactly(stream, len(word)) == word


async def an_address_in_use_is_refused(harness: Harness) -> None:
    network = harness.make(0)
    with trio.fail_after(harness.timeout_s):
        async with (
            serving(network, (harness.host(0), 0), echo) as address,
            trio.open_nursery() as nursery,
        ):
            try:
                await nursery.start(network.serve, address, echo)
            except OSError:
                return
            raise AssertionError(f"{address} was served twice")


async def nothing_listening_is_refused(harness: Harness) -> None:
    with trio.fail_after(harness.timeout_s):
        async with serving(harness.make(0), (harness.host(0), 0), echo) as address:
            pass
        try:
            stream = await harness.make(1).connect(address)
        except OSError:
            return
        await stream.aclose()
        raise AssertionError(f"connected to {address} after it stopped serving")


async def each_connection_runs_in_a_task_of_its_own(harness: Harness) -> None:
    remotes: list[Address] = []
    stuck = trio.Event()

    async def handler(stream: trio.abc.Stream, remote: Address) -> None:
        remotes.append(remote)
        if len(remotes) == 1:
            async with stream:
                stuck.set()
                await trio.sleep_forever()  # the first connection's handler never returns
        await echo(stream, remote)

    with trio.fail_after(harness.timeout_s):
        async with serving(harness.make(0), (harness.host(0), 0), handler) as address:
            first = await harness.make(1).connect(address)
            await stuck.wait()
            async with first, await harness.make(2).connect(address) as second:
                await second.send_all(b"ping")
                assert await read_exactly(second, 4) == b"ping"
    for host, port in remotes:  # where each came from, as a (host, port) address
        assert isinstance(host, str)
        assert isinstance(port, int)


async def closing_one_end_is_the_end_of_the_others_stream(harness: Harness) -> None:
    got = bytearray()
    done = trio.Event()

    async def handler(stream: trio.abc.Stream, remote: Address) -> None:
        async with stream:
            while data := await stream.receive_some():
                got.extend(data)
        done.set()

    with trio.fail_after(harness.timeout_s):
        async with serving(harness.make(0), (harness.host(0), 0), handler) as address:
            stream = await harness.make(1).connect(address)
            await stream.send_all(b"last words")
            await stream.aclose()
            await done.wait()
    assert got == b"last words"


async def stopping_serve_ends_its_handlers(harness: Harness) -> None:
    running, ended = trio.Event(), trio.Event()

    async def handler(stream: trio.abc.Stream, remote: Address) -> None:
        running.set()
        try:
            async with stream:
                await stream.receive_some()  # the dialler sends nothing
        finally:
            ended.set()

    with trio.fail_after(harness.timeout_s):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(harness.make(0).serve, (harness.host(0), 0), handler)
            async with await harness.make(1).connect(address):
                await running.wait()
                nursery.cancel_scope.cancel()
        assert ended.is_set()  # serve returned only once its handler had ended


async def streams_pass_trios_generic_checks(harness: Harness) -> None:
    accepted_send, accepted = trio.open_memory_channel[trio.abc.Stream](1)

    async def handler(stream: trio.abc.Stream, remote: Address) -> None:
        await accepted_send.send(stream)
        await trio.sleep_forever()  # the checks close the stream themselves

    with trio.fail_after(harness.timeout_s):
        async with serving(harness.make(0), (harness.host(0), 0), handler) as address:

            async def connected_pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
                dialled = await harness.make(1).connect(address)
                return dialled, await accepted.receive()

            await trio.testing.check_two_way_stream(connected_pair, None)


CONTRACT = [
    a_connection_carries_bytes_both_ways_in_order,
    serving_port_zero_picks_a_free_port,
    an_address_in_use_is_refused,
    nothing_listening_is_refused,
    each_connection_runs_in_a_task_of_its_own,
    closing_one_end_is_the_end_of_the_others_stream,
    stopping_serve_ends_its_handlers,
    streams_pass_trios_generic_checks,
]

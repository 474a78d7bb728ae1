"""Malformed input on a node's port: the node drops that peer, logs why, and keeps syncing.

Real TCP on loopback. Two good nodes sync the whole time; hostile clients connect to one
of them with garbage, with a valid handshake followed by garbage, and with oversized
messages.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import msgpack
import pytest
import trio

from blazemesh.agent.assemble import run_node
from blazemesh.agent.links.network import TcpNetwork
from blazemesh.agent.links.node import Node, NodeConfig
from blazemesh.agent.storage.replica import Replica, open_replica
from blazemesh.agent.trust.identity import Identity
from blazemesh.agent.trust.membership import Mesh, new_mesh
from blazemesh.protocol.codec import PROTOCOL_VERSION
from blazemesh.protocol.session import SecureSession

pytestmark = pytest.mark.system


@contextlib.asynccontextmanager
async def good_pair(tmp_path: Path, mesh: Mesh) -> AsyncIterator[tuple[Node, Node]]:
    async with (
        open_replica(tmp_path / "a", create=True) as ra,
        open_replica(tmp_path / "b", create=True) as rb,
        trio.open_nursery() as nursery,
    ):
        b_config = NodeConfig(listen=[("127.0.0.1", 0)], handshake_timeout_s=1.0)
        run_b = functools.partial(run_node, rb, mesh=mesh, network=TcpNetwork(), config=b_config)
        b: Node = (await nursery.start(run_b)).node
        a_config = NodeConfig(listen=[("127.0.0.1", 0)], peers=b.bound)
        run_a = functools.partial(run_node, ra, mesh=mesh, network=TcpNetwork(), config=a_config)
        a: Node = (await nursery.start(run_a)).node
        yield a, b
        nursery.cancel_scope.cancel()


async def synced(a: Replica, b: Replica, key: str) -> None:
    """Write on a and wait until b has it."""
    arrived = trio.Event()
    remove = b.on_commit(lambda applied: arrived.set())
    try:
        await a.put("c", key, {"k": key})
        with trio.fail_after(10):
            while await b.get("c", key) is None:
                await arrived.wait()
                arrived = trio.Event()
    finally:
        remove()


async def hostile_session(
    address: tuple[str, int], mesh: Mesh, me: Identity
) -> tuple[trio.SocketStream, SecureSession]:
    """A client that completes a real handshake (it holds the secret), to misbehave after."""
    stream = await trio.open_tcp_stream(*address)
    session = SecureSession(
        initiator=True,
        public_key=me.public_key,
        sign=me.sign,
        keypair=me.noise_keypair,
        psk=mesh.secret,
        random_bytes=os.urandom,
    )
    with trio.fail_after(5):
        while not session.established:
            out = session.data_to_send()
            if out:
                await stream.send_all(out)
            session.receive_data(await stream.receive_some(65536))
            while session.next_event() is not None:
                pass
    return stream, session


async def expect_closed(stream: trio.SocketStream) -> None:
    """The node hangs up on us (EOF or reset) within the handshake timeout."""
    with trio.fail_after(10):
        try:
            while await stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass
    await stream.aclose()


async def test_hostile_clients_are_dropped_and_sync_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    mesh = new_mesh("hostile")
    rng = random.Random(7)
    async with good_pair(tmp_path, mesh) as (a, b):
        target = b.bound[0]
        await synced(a.replica, b.replica, "before")

        # 1. Random bytes instead of a handshake.
        stream = await trio.open_tcp_stream(*target)
        await stream.send_all(rng.randbytes(4096))
        await expect_closed(stream)
        await synced(a.replica, b.replica, "after-garbage")

        # 2. A valid handshake, then garbage where sync messages belong.
        stream, session = await hostile_session(target, mesh, Identity.generate())
        session.send(b"\xc1" + rng.randbytes(200))  # 0xc1 is never valid msgpack
        await stream.send_all(session.data_to_send())
        await expect_closed(stream)
        await synced(a.replica, b.replica, "after-bad-sync")

        # 3. A valid handshake and hello, then a message of 100 MB: refused once the node
        #    has buffered its limit (5 MiB), however the bytes arrive.
        mallory = Identity.generate()
        stream, session = await hostile_session(target, mesh, mallory)
        hello = msgpack.packb([0, PROTOCOL_VERSION, mallory.node_id, [], {}, 0])
        session.send(hello + b"\xc6" + (100 << 20).to_bytes(4, "big"))
        await stream.send_all(session.data_to_send())
        with contextlib.suppress(trio.BrokenResourceError):
            for _ in range(200):  # 200 x 64 KiB: the node hangs up long before the end
                session.send(b"x" * 65_536)
                await stream.send_all(session.data_to_send())
        await expect_closed(stream)
        await synced(a.replica, b.replica, "after-oversized")

        # 4. A Noise frame header promising 65535 bytes, then silence.
        stream = await trio.open_tcp_stream(*target)
        await stream.send_all(b"\xff\xff" + b"\x00" * 10)
        await expect_closed(stream)
        await synced(a.replica, b.replica, "after-stall")

    logged = caplog.text
    assert "no link with" in logged  # garbage and stalls are refused at the handshake
    assert "protocol error" in logged  # bad sync traffic ends the link, with the reason
    assert "larger than the limit" in logged
    assert "timed out" in logged

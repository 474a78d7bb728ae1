"""The secure channel over real loopback TCP sockets."""

from __future__ import annotations

import functools
import os

import pytest
import trio

from blazemesh.agent.links.secure import ChannelError, SecureStream, handshake
from blazemesh.agent.trust.identity import Identity
from blazemesh.agent.trust.membership import Mesh, new_mesh

pytestmark = pytest.mark.system


async def serve_one(
    listener: trio.SocketListener, me: Identity, mesh: Mesh, results: dict[str, object]
) -> None:
    stream = await listener.accept()
    try:
        secure = await handshake(stream, initiator=False, identity=me, mesh=mesh)
    except ChannelError as exc:
        results["server"] = exc
        return
    results["server"] = secure
    data = bytearray()
    while chunk := await secure.receive_some():
        data += chunk
    results["received"] = bytes(data)
    await secure.aclose()


@pytest.mark.parametrize("same_secret", [True, False])
async def test_handshake_and_data_over_loopback_tcp(same_secret: bool) -> None:
    alice, bob, mesh = Identity.generate(), Identity.generate(), new_mesh("lab")
    bob_mesh = Mesh(name="lab", secret=mesh.secret if same_secret else os.urandom(32))
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    results: dict[str, object] = {}
    payload = os.urandom(300_000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(serve_one, listener, bob, bob_mesh, results))
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            secure = await handshake(stream, initiator=True, identity=alice, mesh=mesh)
        except ChannelError as exc:
            results["client"] = exc
        else:
            assert isinstance(secure, SecureStream)
            assert secure.peer_id == bob.node_id
            await secure.send_all(payload)
            await secure.aclose()
    await listener.aclose()
    if same_secret:
        assert results["received"] == payload
    else:
        assert isinstance(results["client"], ChannelError)
        assert isinstance(results["server"], ChannelError)
        assert results["server"].reason == "secret"

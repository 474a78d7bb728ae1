from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import trio
import trio.testing

from blazemesh.agent.links.secure import (
    HANDSHAKE_TIMEOUT_S,
    ChannelError,
    LinkScopes,
    SecureStream,
    handshake,
)
from blazemesh.agent.trust.identity import Identity
from blazemesh.agent.trust.membership import Mesh, new_mesh
from blazemesh.protocol.session import SecureSession


def mesh_copy(mesh: Mesh) -> Mesh:
    return Mesh(name=mesh.name, secret=mesh.secret)


async def connect(
    a: Identity,
    b: Identity,
    mesh_a: Mesh,
    mesh_b: Mesh,
    *,
    wrap_a: Callable[[trio.abc.Stream], trio.abc.Stream] = lambda stream: stream,
) -> tuple[SecureStream | BaseException, SecureStream | BaseException]:
    """Handshake a (the initiator) with b over memory streams, a's end wrapped in
    ``wrap_a``."""
    left, right = trio.testing.memory_stream_pair()
    left = wrap_a(left)
    results: dict[str, SecureStream | BaseException] = {}

    async def side(name: str, stream: trio.abc.Stream, me: Identity, mesh: Mesh) -> None:
        try:
            results[name] = await handshake(stream, initiator=name == "a", identity=me, mesh=mesh)
        except ChannelError as exc:
            results[name] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, "a", left, a, mesh_a)
        nursery.start_soon(side, "b", right, b, mesh_b)
    return results["a"], results["b"]


async def test_handshake_and_stream_both_ways() -> None:
    alice, bob, mesh = Identity.generate(), Identity.generate(), new_mesh("lab")
    a, b = await connect(alice, bob, mesh, mesh_copy(mesh))
    assert isinstance(a, SecureStream)
    assert isinstance(b, SecureStream)
    assert a.peer_id == bob.node_id
    assert b.peer_id == alice.node_id
    assert a.peer.handshake_hash == b.peer.handshake_hash
    payload = bytes(range(256)) * 1000  # several records
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.send_all, payload)
        got = bytearray()
        while len(got) < len(payload):
            got += await b.receive_some()
    assert got == payload
    await b.send_all(b"reply")
    assert await a.receive_some() == b"reply"
    await a.aclose()
    assert await b.receive_some() == b""  # a clean close is a clean end of stream


async def test_wrong_secret_fails_on_both_sides() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    a, b = await connect(alice, bob, new_mesh("lab"), new_mesh("lab"))
    assert isinstance(a, ChannelError)
    assert isinstance(b, ChannelError)
    assert b.reason == "secret"  # the responder checks the proof
    assert a.reason == "refused"  # the initiator only sees the hang-up


async def test_allowlist_refusal_is_named() -> None:
    alice, bob, mesh = Identity.generate(), Identity.generate(), new_mesh("lab")
    strict = mesh_copy(mesh)
    strict.trust([Identity.generate().node_id])  # someone else
    a, b = await connect(alice, bob, mesh, strict)
    assert isinstance(b, ChannelError)
    assert b.reason == "not-allowed"
    assert isinstance(a, ChannelError)  # the initiator sees the refusal, not a dead link
    assert a.reason == "refused"


def valid_first_message(mesh: Mesh) -> bytes:
    me = Identity.generate()
    return SecureSession(
        initiator=True,
        public_key=me.public_key,
        sign=me.sign,
        keypair=me.noise_keypair,
        psk=mesh.secret,
        random_bytes=os.urandom,
    ).data_to_send()


@pytest.mark.parametrize("behaviour", ["silent", "slow", "garbage", "hangs-up"])
async def test_bad_peers_are_cut_off_and_others_are_served(
    autojump_clock: trio.testing.MockClock, behaviour: str
) -> None:
    bob, alice, mesh = Identity.generate(), Identity.generate(), new_mesh("lab")
    outcomes: dict[str, object] = {}

    async def responder(name: str, stream: trio.abc.Stream) -> None:
        start = trio.current_time()
        try:
            outcomes[name] = await handshake(stream, initiator=False, identity=bob, mesh=mesh)
        except ChannelError as exc:
            outcomes[name] = exc
        outcomes[name + "-took"] = trio.current_time() - start

    async def bad_peer(stream: trio.abc.Stream) -> None:
        try:
            if behaviour == "silent":
                await trio.sleep(60)
            elif behaviour == "slow":
                first = valid_first_message(mesh)
                for i in range(len(first)):  # 50 bytes at one a second: a slowloris
                    await stream.send_all(first[i : i + 1])
                    await trio.sleep(1)
            elif behaviour == "garbage":
                await stream.send_all(b"\x00\x30" + b"\xff" * 48)
                await trio.sleep(60)
            else:
                await stream.aclose()
                return
        except trio.BrokenResourceError:
            outcomes["bad-peer-cut"] = True
            return
        with pytest.raises(trio.BrokenResourceError):
            await stream.send_all(b"x")  # the responder closed its end
        outcomes["bad-peer-cut"] = True

    bad_left, bad_right = trio.testing.memory_stream_pair()
    good_left, good_right = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(responder, "bad", bad_right)
        nursery.start_soon(bad_peer, bad_left)
        nursery.start_soon(responder, "good", good_right)
        good = await handshake(good_left, initiator=True, identity=alice, mesh=mesh_copy(mesh))
        assert good.peer_id == bob.node_id
    assert isinstance(outcomes["good"], SecureStream)
    assert outcomes["good-took"] < 1
    assert isinstance(outcomes["bad"], ChannelError)
    assert outcomes["bad-took"] <= HANDSHAKE_TIMEOUT_S
    expected = {"silent": "timeout", "slow": "timeout", "garbage": "protocol", "hangs-up": "closed"}
    assert outcomes["bad"].reason == expected[behaviour]
    assert outcomes.get("bad-peer-cut") or behaviour == "hangs-up"


async def test_revoking_a_node_ends_its_live_links_at_once() -> None:
    alice, bob, mesh = Identity.generate(), Identity.generate(), new_mesh("lab")
    bob_mesh = mesh_copy(mesh)
    bob_mesh.trust([alice.node_id])
    a, b = await connect(alice, bob, mesh, bob_mesh)
    assert isinstance(a, SecureStream)
    assert isinstance(b, SecureStream)
    links = LinkScopes(bob_mesh)
    link_ended = trio.Event()

    async def bobs_link() -> None:
        try:
            with links.link(b.peer_id):
                while await b.receive_some():
                    pass
        finally:
            await b.aclose()
            link_ended.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(bobs_link)
        await trio.testing.wait_all_tasks_blocked()
        assert bob_mesh.revoke(alice.node_id)
        await link_ended.wait()
        assert await a.receive_some() == b""  # Bob said goodbye and closed
    assert not bob_mesh.allows(alice.node_id)
    _, b2 = await connect(alice, bob, mesh, bob_mesh)
    assert isinstance(b2, ChannelError)
    assert b2.reason == "not-allowed"
    links.close()


async def test_receive_after_peer_vanishes_without_close_is_a_channel_error() -> None:
    alice, bob, mesh = Identity.generate(), Identity.generate(), new_mesh("lab")
    a, b = await connect(alice, bob, mesh, mesh_copy(mesh))
    assert isinstance(a, SecureStream)
    assert isinstance(b, SecureStream)
    await a._transport.aclose()  # the connection dies: no CLOSE record
    with pytest.raises(ChannelError) as info:
        await b.receive_some()
    assert info.value.reason == "closed"
    assert isinstance(info.value, trio.BrokenResourceError)  # usable as any trio stream


async def test_sending_after_the_peer_closed_is_a_channel_error() -> None:
    alice, bob, mesh = Identity.generate(), Identity.generate(), new_mesh("lab")
    a, b = await connect(alice, bob, mesh, mesh_copy(mesh))
    assert isinstance(a, SecureStream)
    assert isinstance(b, SecureStream)
    await a.aclose()
    assert await b.receive_some() == b""
    with pytest.raises(ChannelError) as info:
        await b.send_all(b"too late")
    assert info.value.reason == "closed"


@pytest.mark.parametrize("edit", ["rotate", "allowlist-on", "allowlist-off"])
async def test_a_membership_update_ends_exactly_the_links_it_no_longer_admits(edit: str) -> None:
    alice, bob, carol = Identity.generate(), Identity.generate(), Identity.generate()
    mesh = new_mesh("lab")
    bob_mesh = mesh_copy(mesh)
    links = LinkScopes(bob_mesh)
    ended: dict[str, trio.Event] = {"alice": trio.Event(), "carol": trio.Event()}

    async def bobs_link(name: str, peer: Identity) -> None:
        a, b = await connect(peer, bob, mesh, bob_mesh)
        assert isinstance(b, SecureStream)
        assert isinstance(a, SecureStream)
        with links.link(b.peer_id):
            await trio.sleep_forever()
        ended[name].set()  # only reached when the link's own scope was cancelled

    edited = mesh_copy(mesh)
    if edit == "rotate":
        edited = new_mesh("lab")
    elif edit == "allowlist-on":
        edited.trust([carol.node_id])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(bobs_link, "alice", alice)
        nursery.start_soon(bobs_link, "carol", carol)
        await trio.testing.wait_all_tasks_blocked()
        bob_mesh.update(edited)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    dropped = {name for name, event in ended.items() if event.is_set()}
    expected = {"rotate": {"alice", "carol"}, "allowlist-on": {"alice"}, "allowlist-off": set()}
    assert dropped == expected[edit]
    links.close()


class StuckSend(trio.abc.Stream):
    """Carries everything until ``stuck``; then every send writes all but its last byte
    and blocks, as a socket does when its send buffer fills."""

    def __init__(self) -> None:
        self._inner: trio.abc.Stream | None = None
        self.stuck = False

    def around(self, inner: trio.abc.Stream) -> StuckSend:
        self._inner = inner
        return self

    @property
    def inner(self) -> trio.abc.Stream:
        assert self._inner is not None
        return self._inner

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if not self.stuck:
            await self.inner.send_all(data)
            return
        await self.inner.send_all(data[:-1])
        await trio.sleep_forever()

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_send_cancelled_midway_breaks_the_stream_and_the_peer_sees_a_hang_up() -> None:
    # Issue 17, item 11: a link ended while it sent (a duplicate closed at start-up) went
    # on to send its CLOSE record after the half-sent one, and the peer logged "message
    # failed authentication", which reads as an attack.
    alice, bob, mesh = Identity.generate(), Identity.generate(), new_mesh("lab")
    transport = StuckSend()
    a, b = await connect(alice, bob, mesh, mesh_copy(mesh), wrap_a=transport.around)
    assert isinstance(a, SecureStream)
    assert isinstance(b, SecureStream)
    transport.stuck = True
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.send_all, b"x" * 1000)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()  # the link ends while the record is half on the wire
    transport.stuck = False  # the send buffer drains: the record stays cut all the same
    with pytest.raises(ChannelError) as sending:
        await a.send_all(b"more")
    assert sending.value.reason == "broken"
    await a.aclose()
    with pytest.raises(ChannelError) as receiving:
        await b.receive_some()
    assert receiving.value.reason == "closed"
    assert "ended without a close" in str(receiving.value)


async def test_a_send_cancelled_before_it_starts_leaves_the_stream_whole() -> None:
    alice, bob, mesh = Identity.generate(), Identity.generate(), new_mesh("lab")
    a, b = await connect(alice, bob, mesh, mesh_copy(mesh))
    assert isinstance(a, SecureStream)
    assert isinstance(b, SecureStream)
    with trio.CancelScope() as scope:
        scope.cancel()
        await a.send_all(b"never sent")
    await a.send_all(b"sent")
    assert await b.receive_some() == b"sent"
    await a.aclose()
    assert await b.receive_some() == b""  # a clean close


async def secure_pair(
    transport_pair: Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]],
) -> tuple[SecureStream, SecureStream]:
    """Two ends of a secure channel over ``transport_pair()``, handshaken."""
    mesh = new_mesh("lab")
    left, right = transport_pair()
    ends: dict[bool, SecureStream] = {}

    async def side(initiator: bool, stream: trio.abc.Stream, mesh: Mesh) -> None:
        identity = Identity.generate()
        ends[initiator] = await handshake(stream, initiator=initiator, identity=identity, mesh=mesh)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, True, left, mesh)
        nursery.start_soon(side, False, right, mesh_copy(mesh))
    return ends[True], ends[False]


async def test_secure_streams_pass_trios_generic_checks() -> None:
    # A lockstep transport holds nothing: a send waits for the peer's receive ("clogged").
    await trio.testing.check_two_way_stream(
        lambda: secure_pair(trio.testing.memory_stream_pair),
        lambda: secure_pair(trio.testing.lockstep_stream_pair),
    )

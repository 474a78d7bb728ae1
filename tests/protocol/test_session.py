from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from blazemesh.protocol.errors import HandshakeError, LocalProtocolError, RemoteProtocolError
from blazemesh.protocol.ids import node_id_from_public_key
from blazemesh.protocol.noise import DecryptError
from blazemesh.protocol.session import (
    MAX_RECORD_DATA,
    Closed,
    Data,
    Established,
    IncompatibleVersionError,
    NotAllowedError,
    PeerClosedError,
    RefusedError,
    SecureSession,
    SessionEvent,
    WrongSecretError,
    static_keypair,
)

PSK = b"\x42" * 32


class Node:
    def __init__(self, seed: bytes | None = None) -> None:
        self.key = SigningKey(seed or os.urandom(32))
        self.public = bytes(self.key.verify_key)
        self.node_id = node_id_from_public_key(self.public)
        self.keypair = static_keypair(bytes(self.key))

    def session(
        self,
        initiator: bool,
        *,
        psk: bytes = PSK,
        allows: Callable[[bytes], bool] = lambda n: True,
        version: int = 1,
        rekey_every: int = 1 << 16,
        sign: Callable[[bytes], bytes] | None = None,
        public: bytes | None = None,
    ) -> SecureSession:
        return SecureSession(
            initiator=initiator,
            public_key=public or self.public,
            sign=sign or (lambda m: self.key.sign(m).signature),
            keypair=self.keypair,
            psk=psk,
            random_bytes=os.urandom,
            allows=allows,
            version=version,
            rekey_every=rekey_every,
        )


def pump(src: SecureSession, dst: SecureSession) -> list[SessionEvent]:
    """Move src's output into dst and collect dst's events."""
    data = src.data_to_send()
    if data:
        dst.receive_data(data)
    events = []
    while (event := dst.next_event()) is not None:
        events.append(event)
    return events


def connect(a: SecureSession, b: SecureSession) -> tuple[list[SessionEvent], list[SessionEvent]]:
    """Run the handshake to the end; return each side's events."""
    events_a: list[SessionEvent] = []
    events_b: list[SessionEvent] = []
    for _ in range(4):
        events_b += pump(a, b)
        events_a += pump(b, a)
    return events_a, events_b


def test_handshake_proves_both_identities_and_carries_data() -> None:
    alice, bob = Node(), Node()
    a, b = alice.session(True), bob.session(False)
    events_a, events_b = connect(a, b)
    assert isinstance(events_a[0], Established)
    assert isinstance(events_b[0], Established)
    assert events_a[0].node_id == bob.node_id
    assert events_b[0].node_id == alice.node_id
    assert events_a[0].handshake_hash == events_b[0].handshake_hash
    assert a.established
    assert b.established
    a.send(b"hello")
    big = os.urandom(3 * MAX_RECORD_DATA + 17)
    b.send(big)
    assert pump(a, b) == [Data(data=b"hello")]
    received = b"".join(e.data for e in pump(b, a) if isinstance(e, Data))
    assert received == big
    a.close()
    assert pump(a, b) == [Closed(clean=True)]


def test_sessions_between_the_same_nodes_have_fresh_keys() -> None:
    alice, bob = Node(), Node()
    hashes = set()
    for _ in range(3):
        a, b = alice.session(True), bob.session(False)
        events_a, _ = connect(a, b)
        assert isinstance(events_a[0], Established)
        hashes.add(events_a[0].handshake_hash)
    assert len(hashes) == 3


def test_wrong_mesh_secret_fails_on_both_sides() -> None:
    alice, bob = Node(), Node()
    a, b = alice.session(True), bob.session(False, psk=b"\x00" * 32)
    pump(a, b)
    pump(b, a)
    with pytest.raises(WrongSecretError, match="wrong mesh secret"):
        pump(a, b)
    a.receive_data(b"")  # the responder hangs up
    with pytest.raises(RefusedError, match="another mesh secret"):
        a.next_event()
    assert not a.established


def test_responder_allowlist_refuses_the_initiator() -> None:
    alice, bob = Node(), Node()
    a, b = alice.session(True), bob.session(False, allows=lambda n: n != alice.node_id)
    pump(a, b)
    pump(b, a)
    with pytest.raises(NotAllowedError, match="allowlist"):
        pump(a, b)


def test_initiator_allowlist_refuses_the_responder() -> None:
    alice, bob = Node(), Node()
    a, b = alice.session(True, allows=lambda n: False), bob.session(False)
    pump(a, b)
    with pytest.raises(NotAllowedError):
        pump(b, a)


def test_incompatible_versions_are_named() -> None:
    alice, bob = Node(), Node()
    a, b = alice.session(True), bob.session(False, version=2)
    pump(a, b)
    with pytest.raises(IncompatibleVersionError, match="version 2"):
        pump(b, a)


def test_a_relay_that_substitutes_its_keys_is_detected() -> None:
    """Mallory knows the mesh secret and sits between Alice and Bob. She runs a session with
    Bob to collect his identity and a signature he really made, then presents them to Alice
    over her own keys: Alice sees that the Noise key is not Bob's and that the signature is
    for another session's hash."""
    alice, bob, mallory = Node(), Node(), Node()
    bob_signed: list[bytes] = []

    def bob_signs(message: bytes) -> bytes:
        bob_signed.append(bob.key.sign(message).signature)
        return bob_signed[-1]

    to_bob = mallory.session(True)
    pump(to_bob, bob.session(False, sign=bob_signs))
    assert bob_signed
    a = alice.session(True)
    fake_bob = mallory.session(False, sign=lambda m: bob_signed[0], public=bob.public)
    pump(a, fake_bob)
    with pytest.raises(HandshakeError, match=r"not the one of its stated identity|does not verify"):
        pump(fake_bob, a)
    assert not a.established


def test_signature_over_another_hash_is_refused() -> None:
    alice, bob = Node(), Node()
    a = alice.session(True)
    b = bob.session(False, sign=lambda m: bob.key.sign(m[:-1] + bytes([m[-1] ^ 1])).signature)
    pump(a, b)
    with pytest.raises(HandshakeError, match="does not verify"):
        pump(b, a)


def test_rekey_schedule_is_followed_by_both_sides() -> None:
    alice, bob = Node(), Node()
    a, b = alice.session(True, rekey_every=3), bob.session(False, rekey_every=3)
    connect(a, b)
    for i in range(10):
        a.send(b"%d" % i)
    assert [e.data for e in pump(a, b) if isinstance(e, Data)] == [b"%d" % i for i in range(10)]
    # A receiver on another schedule fails at the first message under a new key.
    a, b = alice.session(True, rekey_every=3), bob.session(False, rekey_every=4)
    connect(a, b)
    for _ in range(4):
        a.send(b"x")
    with pytest.raises(DecryptError):
        pump(a, b)


def test_connection_lost_without_close_is_not_clean() -> None:
    alice, bob = Node(), Node()
    a, b = alice.session(True), bob.session(False)
    connect(a, b)
    b.receive_data(b"")
    assert b.next_event() == Closed(clean=False)


def test_truncated_frame_at_end_of_connection_is_an_error() -> None:
    alice, bob = Node(), Node()
    a, b = alice.session(True), bob.session(False)
    first = a.data_to_send()
    b.receive_data(first[:-5])
    assert b.next_event() is None  # waiting for the rest
    b.receive_data(b"")
    with pytest.raises(PeerClosedError, match="middle of a handshake message"):
        b.next_event()


def test_misuse_is_a_local_error() -> None:
    alice = Node()
    a = alice.session(True)
    with pytest.raises(LocalProtocolError, match="handshake"):
        a.send(b"too early")
    a.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        a.receive_data(b"more")


@settings(max_examples=150, deadline=None)
@given(
    step=st.integers(min_value=0, max_value=3),
    mutation=st.one_of(
        st.tuples(st.just("flip"), st.integers(min_value=0), st.integers(min_value=0, max_value=7)),
        st.tuples(st.just("cut"), st.integers(min_value=0), st.just(0)),
        st.tuples(st.just("junk"), st.binary(max_size=300), st.just(0)),
    ),
)
def test_mutated_handshake_traffic_raises_only_protocol_errors(
    step: int, mutation: tuple[str, object, int]
) -> None:
    alice, bob = Node(b"a" * 32), Node(b"b" * 32)
    a, b = alice.session(True), bob.session(False)
    sides = [(a, b), (b, a), (a, b), (b, a)]
    try:
        for i, (src, dst) in enumerate(sides):
            data = src.data_to_send()
            if i == step:
                kind, arg, bit = mutation
                if kind == "flip" and data:
                    pos = int(arg) % len(data)  # type: ignore[call-overload]
                    data = data[:pos] + bytes([data[pos] ^ (1 << bit)]) + data[pos + 1 :]
                elif kind == "cut":
                    data = data[: int(arg) % (len(data) + 1)]  # type: ignore[call-overload]
                    if data:
                        dst.receive_data(data)
                    dst.receive_data(b"")
                    while dst.next_event() is not None:
                        pass
                    return
                else:
                    data = arg  # type: ignore[assignment]
            if data:
                dst.receive_data(data)  # type: ignore[arg-type]
            while dst.next_event() is not None:
                pass
    except RemoteProtocolError:
        return

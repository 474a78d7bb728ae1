"""Unit tests of protocol/noise.py: failures a peer can cause, local misuse, limits, rekey."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Callable

import pytest
from nacl.bindings import crypto_scalarmult
from nacl.exceptions import CryptoError

from blazemesh.protocol.errors import HandshakeError, LocalProtocolError, RemoteProtocolError
from blazemesh.protocol.noise import (
    MAX_MESSAGE_BYTES,
    MAX_NONCE,
    MAX_PLAINTEXT_BYTES,
    DecryptError,
    KeyPair,
    NoiseHandshake,
    NoiseTransport,
    ProtocolName,
    _x25519,
    is_supported,
)

XXPSK3 = "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b"
XX = "Noise_XX_25519_ChaChaPoly_BLAKE2b"
IK = "Noise_IK_25519_ChaChaPoly_BLAKE2b"
PSK = bytes(range(32))
INITIATOR_STATIC = KeyPair.from_private(bytes([1]) * 32)
RESPONDER_STATIC = KeyPair.from_private(bytes([2]) * 32)

# The u-coordinates of Curve25519's points of small order (https://cr.yp.to/ecdh.html#validate):
# 0, 1, the two of order 8, p-1, and the non-canonical p and p+1; each also with bit 255 set,
# which X25519 ignores (RFC 7748 §5).
_SMALL_ORDER = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]
LOW_ORDER_POINTS = [bytes.fromhex(u) for u in _SMALL_ORDER] + [
    bytes.fromhex(u)[:31] + bytes([bytes.fromhex(u)[31] | 0x80]) for u in _SMALL_ORDER
]


def point_id(point: bytes) -> str:
    return f"{point.hex()[:8]}..{point.hex()[-2:]}"


def seeded(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def make_pair(
    name: str = XXPSK3,
    *,
    seed: int = 0,
    psks: tuple[bytes, bytes] = (PSK, PSK),
    prologues: tuple[bytes, bytes] = (b"blazemesh", b"blazemesh"),
    responder_static: KeyPair = RESPONDER_STATIC,
) -> tuple[NoiseHandshake, NoiseHandshake]:
    """An initiator and a responder; the same seed gives the same messages."""
    rng = seeded(seed)
    with_psk = "psk" in name
    initiator = NoiseHandshake(
        protocol_name=name,
        initiator=True,
        prologue=prologues[0],
        static_keypair=INITIATOR_STATIC,
        psks=[psks[0]] if with_psk else [],
        random_bytes=rng,
    )
    responder = NoiseHandshake(
        protocol_name=name,
        initiator=False,
        prologue=prologues[1],
        static_keypair=responder_static,
        psks=[psks[1]] if with_psk else [],
        random_bytes=rng,
    )
    return initiator, responder


def run_handshake(
    initiator: NoiseHandshake,
    responder: NoiseHandshake,
    mutate: Callable[[int, bytes], bytes] = lambda index, message: message,
) -> tuple[NoiseTransport, NoiseTransport]:
    """Drive an XX-shaped handshake, passing each message through ``mutate``."""
    sides = [(initiator, responder), (responder, initiator), (initiator, responder)]
    for index, (sender, receiver) in enumerate(sides):
        payload = f"payload {index}".encode()
        assert sender.our_turn
        assert not receiver.our_turn
        message = sender.write_message(payload)
        delivered = mutate(index, message)
        received = receiver.read_message(delivered)
        if delivered == message:
            assert received == payload
            assert sender.handshake_hash == receiver.handshake_hash
    assert initiator.complete
    assert responder.complete
    return initiator.split(), responder.split()


def reference_messages(name: str = XXPSK3) -> list[bytes]:
    seen: list[bytes] = []

    def record(index: int, message: bytes) -> bytes:
        seen.append(message)
        return message

    run_handshake(*make_pair(name), mutate=record)
    return seen


def test_a_handshake_agrees_on_hash_and_keys_and_exposes_the_peers_static_key() -> None:
    initiator, responder = make_pair()
    unknown_yet = initiator.remote_static_public  # XX sends it in message 2
    assert unknown_yet is None
    to_responder, to_initiator = run_handshake(initiator, responder)
    assert initiator.handshake_hash == responder.handshake_hash
    assert len(initiator.handshake_hash) == 64
    assert initiator.remote_static_public == RESPONDER_STATIC.public
    assert responder.remote_static_public == INITIATOR_STATIC.public
    assert to_responder.remote_static_public == RESPONDER_STATIC.public
    assert to_initiator.handshake_hash == initiator.handshake_hash
    assert to_initiator.decrypt(to_responder.encrypt(b"hello")) == b"hello"
    assert to_responder.decrypt(to_initiator.encrypt(b"and back")) == b"and back"


def test_two_handshakes_with_different_ephemerals_have_different_keys_and_hashes() -> None:
    first = run_handshake(*make_pair(seed=1))
    second = run_handshake(*make_pair(seed=2))
    assert first[0].handshake_hash != second[0].handshake_hash
    message = first[0].encrypt(b"same plaintext")
    assert second[0].encrypt(b"same plaintext") != message
    with pytest.raises(DecryptError):
        second[1].decrypt(message)  # a message of one session means nothing in the other
    assert first[1].decrypt(message) == b"same plaintext"


def test_the_same_ephemerals_give_the_same_session() -> None:
    assert reference_messages() == reference_messages()  # the helpers are deterministic


def test_wrong_psk_fails_the_third_message() -> None:
    initiator, responder = make_pair(psks=(PSK, bytes(32)))
    responder.read_message(initiator.write_message(b""))
    initiator.read_message(responder.write_message(b""))
    with pytest.raises(HandshakeError, match="failed authentication"):
        responder.read_message(initiator.write_message(b""))


@pytest.mark.parametrize(("name", "failing_message"), [(XXPSK3, 0), (XX, 1)])
def test_wrong_prologue_fails(name: str, failing_message: int) -> None:
    # In psk mode message 1's payload is already encrypted (Noise §9.2) under a hash that
    # covers the prologue; plain XX sends it in clear, and message 2 is the first to fail.
    initiator, responder = make_pair(name, prologues=(b"one", b"other"))
    sides = [(initiator, responder), (responder, initiator)]
    for index, (sender, receiver) in enumerate(sides):
        message = sender.write_message(b"")
        if index == failing_message:
            with pytest.raises(HandshakeError):
                receiver.read_message(message)
            return
        receiver.read_message(message)


@pytest.mark.parametrize("name", [XXPSK3, XX])
@pytest.mark.parametrize("index", [0, 1, 2])
def test_every_flipped_byte_of_every_handshake_message_is_caught(name: str, index: int) -> None:
    # Plain XX's message 1 is not authenticated when it arrives: a change to it shows as
    # a failure of the next message the other way. In psk mode every message is checked.
    reference = reference_messages(name)
    for position in range(len(reference[index])):

        def flip(i: int, message: bytes, position: int = position) -> bytes:
            if i != index:
                return message
            tampered = bytearray(message)
            tampered[position] ^= 0x01
            return bytes(tampered)

        with pytest.raises(HandshakeError):
            run_handshake(*make_pair(name), mutate=flip)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_truncated_and_extended_handshake_messages_are_refused(index: int) -> None:
    reference = reference_messages()
    for cut in range(len(reference[index])):

        def truncate(i: int, message: bytes, cut: int = cut) -> bytes:
            return message[:cut] if i == index else message

        with pytest.raises(HandshakeError):
            run_handshake(*make_pair(), mutate=truncate)
    with pytest.raises(HandshakeError):
        run_handshake(*make_pair(), mutate=lambda i, m: m + b"\0" if i == index else m)


def test_a_failed_handshake_refuses_further_use() -> None:
    initiator, responder = make_pair()
    with pytest.raises(HandshakeError):
        responder.read_message(b"garbage")
    assert not responder.our_turn
    with pytest.raises(LocalProtocolError, match="failed earlier"):
        responder.write_message(b"")
    with pytest.raises(LocalProtocolError, match="failed earlier"):
        responder.read_message(initiator.write_message(b""))


def test_libsodium_refuses_every_low_order_point_and_so_does_our_dh() -> None:
    private = bytes(range(32))
    for point in LOW_ORDER_POINTS:
        with pytest.raises(CryptoError):
            crypto_scalarmult(private, point)
        with pytest.raises(HandshakeError, match="low-order"):
            _x25519(private, point)


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=point_id)
@pytest.mark.parametrize("index", [0, 1])
def test_low_order_ephemeral_keys_are_refused_on_receipt(index: int, point: bytes) -> None:
    # Message 1 (and, without a key, message 2) could carry any 32 bytes as "e".
    with pytest.raises(HandshakeError, match="low-order"):
        run_handshake(*make_pair(), mutate=lambda i, m: point + m[32:] if i == index else m)


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=point_id)
def test_low_order_static_keys_are_refused_on_receipt(point: bytes) -> None:
    # A peer that claims a low-order static key (it cannot hold its private key).
    malicious = KeyPair(private=bytes(range(32)), public=point)
    initiator, responder = make_pair(responder_static=malicious)
    responder.read_message(initiator.write_message(b""))
    with pytest.raises(HandshakeError, match="low-order"):
        initiator.read_message(responder.write_message(b""))


@pytest.mark.parametrize("point", LOW_ORDER_POINTS[:2], ids=point_id)
def test_a_low_order_pre_shared_static_key_is_a_local_error(point: bytes) -> None:
    with pytest.raises(LocalProtocolError, match="not a usable X25519 public key"):
        NoiseHandshake(
            protocol_name=IK,
            initiator=True,
            static_keypair=INITIATOR_STATIC,
            remote_static_public=point,
            random_bytes=os.urandom,
        )


def test_ik_with_the_wrong_pre_shared_key_fails_at_the_first_message() -> None:
    initiator = NoiseHandshake(
        protocol_name=IK,
        initiator=True,
        static_keypair=INITIATOR_STATIC,
        remote_static_public=KeyPair.from_private(bytes([3]) * 32).public,
        random_bytes=os.urandom,
    )
    responder = NoiseHandshake(
        protocol_name=IK, initiator=False, static_keypair=RESPONDER_STATIC, random_bytes=os.urandom
    )
    with pytest.raises(HandshakeError):
        responder.read_message(initiator.write_message(b"hello"))


def test_messages_out_of_turn_are_local_errors() -> None:
    initiator, responder = make_pair()
    with pytest.raises(LocalProtocolError, match="out of turn"):
        responder.write_message(b"")
    with pytest.raises(LocalProtocolError, match="out of turn"):
        initiator.read_message(b"x" * 100)
    with pytest.raises(LocalProtocolError, match="before the handshake is complete"):
        initiator.split()
    message = initiator.write_message(b"")
    with pytest.raises(LocalProtocolError, match="out of turn"):
        initiator.write_message(b"")
    responder.read_message(message)  # the misuse changed nothing
    initiator.read_message(responder.write_message(b""))
    responder.read_message(initiator.write_message(b""))
    for side in (initiator, responder):
        assert not side.our_turn
        with pytest.raises(LocalProtocolError, match="complete"):
            side.write_message(b"")
        with pytest.raises(LocalProtocolError, match="complete"):
            side.read_message(b"x" * 100)
        side.split()
        with pytest.raises(LocalProtocolError, match="already called"):
            side.split()  # a second transport would reuse nonces


def test_handshake_messages_up_to_the_limit_pass_and_larger_ones_are_refused() -> None:
    initiator, responder = make_pair()
    overhead = 32 + 16  # message 1 of XXpsk3: e, then the payload's tag
    with pytest.raises(LocalProtocolError, match="65535"):
        initiator.write_message(bytes(MAX_MESSAGE_BYTES - overhead + 1))
    largest = initiator.write_message(bytes(MAX_MESSAGE_BYTES - overhead))  # state unchanged
    assert len(largest) == MAX_MESSAGE_BYTES
    assert responder.read_message(largest) == bytes(MAX_MESSAGE_BYTES - overhead)

    _, responder = make_pair()
    with pytest.raises(HandshakeError, match="exceeds 65535"):
        responder.read_message(largest + b"\0")


def test_transport_messages_up_to_the_limit_pass_and_larger_ones_are_refused() -> None:
    sender, receiver = run_handshake(*make_pair())
    largest = sender.encrypt(bytes(MAX_PLAINTEXT_BYTES))
    assert len(largest) == MAX_MESSAGE_BYTES
    assert receiver.decrypt(largest) == bytes(MAX_PLAINTEXT_BYTES)
    with pytest.raises(LocalProtocolError, match="exceeds"):
        sender.encrypt(bytes(MAX_PLAINTEXT_BYTES + 1))
    with pytest.raises(DecryptError, match="exceeds 65535"):
        receiver.decrypt(bytes(MAX_MESSAGE_BYTES + 1))
    assert receiver.decrypt(sender.encrypt(b"still in step")) == b"still in step"


def test_transport_refuses_tampered_truncated_reordered_and_replayed_messages() -> None:
    sender, receiver = run_handshake(*make_pair())
    first, second = sender.encrypt(b"first"), sender.encrypt(b"second")
    for position in range(len(first)):
        tampered = bytearray(first)
        tampered[position] ^= 0x80
        with pytest.raises(DecryptError):
            receiver.decrypt(bytes(tampered))
    for cut in range(len(first)):
        with pytest.raises(DecryptError):
            receiver.decrypt(first[:cut])
    with pytest.raises(DecryptError):
        receiver.decrypt(second)  # reordered
    assert receiver.decrypt(first) == b"first"  # failures did not advance the nonce
    with pytest.raises(DecryptError):
        receiver.decrypt(first)  # replayed: the nonce has moved on
    assert receiver.decrypt(second) == b"second"


def test_rekey_on_both_sides_keeps_working_and_an_unrekeyed_side_fails() -> None:
    to_responder, to_initiator = run_handshake(*make_pair())
    to_responder.rekey_send()
    message = to_responder.encrypt(b"after rekey")
    with pytest.raises(DecryptError):
        to_initiator.decrypt(message)  # the receiver still has the old key
    to_initiator.rekey_receive()
    assert to_initiator.decrypt(message) == b"after rekey"
    # The other direction was not rekeyed and still works; rekey it in step as well.
    assert to_responder.decrypt(to_initiator.encrypt(b"old key")) == b"old key"
    to_initiator.rekey_send()
    to_responder.rekey_receive()
    assert to_responder.decrypt(to_initiator.encrypt(b"new key")) == b"new key"


def test_nonce_exhaustion_is_refused_on_both_sides() -> None:
    sender, receiver = run_handshake(*make_pair())
    assert sender.send_cipher is not None
    assert receiver.receive_cipher is not None
    sender.send_cipher.set_nonce(MAX_NONCE - 1)
    receiver.receive_cipher.set_nonce(MAX_NONCE - 1)
    assert receiver.decrypt(sender.encrypt(b"the last one")) == b"the last one"
    assert sender.send_cipher.nonce == MAX_NONCE
    with pytest.raises(LocalProtocolError, match="nonces exhausted"):
        sender.encrypt(b"one too many")
    with pytest.raises(DecryptError, match="nonces exhausted"):
        receiver.decrypt(bytes(32))
    with pytest.raises(LocalProtocolError):
        sender.send_cipher.set_nonce(MAX_NONCE + 1)


def test_bytearrays_are_accepted_where_bytes_are() -> None:
    # trio's receive_some() returns bytearrays.
    initiator, responder = make_pair()
    responder.read_message(bytearray(initiator.write_message(bytearray(b"a"))))
    initiator.read_message(bytearray(responder.write_message(b"")))
    responder.read_message(bytearray(initiator.write_message(b"")))
    sender, receiver = initiator.split(), responder.split()
    assert receiver.decrypt(bytearray(sender.encrypt(bytearray(b"x")))) == b"x"


def test_one_way_patterns_send_one_way_only() -> None:
    name = "Noise_X_25519_ChaChaPoly_BLAKE2b"
    initiator = NoiseHandshake(
        protocol_name=name,
        initiator=True,
        static_keypair=INITIATOR_STATIC,
        remote_static_public=RESPONDER_STATIC.public,
        random_bytes=os.urandom,
    )
    responder = NoiseHandshake(protocol_name=name, initiator=False, static_keypair=RESPONDER_STATIC)
    assert not responder.our_turn
    assert responder.read_message(initiator.write_message(b"sealed")) == b"sealed"
    sender, receiver = initiator.split(), responder.split()
    assert receiver.decrypt(sender.encrypt(b"more")) == b"more"
    with pytest.raises(LocalProtocolError, match="cannot send"):
        receiver.encrypt(b"back")
    with pytest.raises(LocalProtocolError, match="cannot receive"):
        sender.decrypt(b"x" * 16)


def test_protocol_names_round_trip_and_unsupported_ones_are_refused() -> None:
    name = ProtocolName.parse("Noise_XXpsk0+psk3_25519_ChaChaPoly_SHA256")
    assert name == ProtocolName(pattern="XX", modifiers=("psk0", "psk3"), hash="SHA256")
    assert str(name) == "Noise_XXpsk0+psk3_25519_ChaChaPoly_SHA256"
    assert str(ProtocolName(pattern="XX", modifiers=("psk3",))) == XXPSK3
    assert is_supported(XXPSK3)
    assert is_supported("Noise_X1K1_25519_ChaChaPoly_SHA256")
    for unsupported in (
        "Noise_XX_448_ChaChaPoly_BLAKE2b",
        "Noise_XX_25519_AESGCM_BLAKE2b",
        "Noise_XX_25519_ChaChaPoly_SHA512",
        "Noise_ZZ_25519_ChaChaPoly_BLAKE2b",
        "Noise_XXfallback_25519_ChaChaPoly_BLAKE2b",
        "Noise_XXpsk4_25519_ChaChaPoly_BLAKE2b",
        "Noise_XXpsk3+psk3_25519_ChaChaPoly_BLAKE2b",
        "Noise_XX_25519_ChaChaPoly_BLAKE2bé",
        "Noise_XX_25519",
        "",
    ):
        assert not is_supported(unsupported), unsupported
        with pytest.raises(LocalProtocolError):
            NoiseHandshake(protocol_name=unsupported, initiator=True, random_bytes=os.urandom)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"psks": []}, "takes 1 psks"),
        ({"psks": [PSK, PSK]}, "takes 1 psks"),
        ({"psks": [b"short"]}, "32 bytes"),
        ({"static_keypair": None}, "needs static_keypair"),
        ({"remote_static_public": RESPONDER_STATIC.public}, "drop remote_static_public"),
        ({"random_bytes": None}, "random_bytes is required"),
        ({"ephemeral_private": bytes(32)}, "not both"),
        ({"random_bytes": lambda n: bytes(n - 1)}, "must return 32 bytes"),
    ],
)
def test_arguments_that_do_not_fit_the_pattern_are_local_errors(
    changes: dict[str, object], message: str
) -> None:
    arguments: dict[str, object] = {
        "protocol_name": XXPSK3,
        "initiator": True,
        "static_keypair": INITIATOR_STATIC,
        "psks": [PSK],
        "random_bytes": os.urandom,
        **changes,
    }
    with pytest.raises(LocalProtocolError, match=message):
        NoiseHandshake(**arguments)  # type: ignore[arg-type]


def test_keypairs_check_their_sizes_and_hide_the_private_key() -> None:
    with pytest.raises(LocalProtocolError):
        KeyPair.from_private(bytes(31))
    with pytest.raises(LocalProtocolError):
        KeyPair(private=bytes(32), public=bytes(33))
    assert INITIATOR_STATIC.private.hex() not in repr(INITIATOR_STATIC)
    assert KeyPair.generate(seeded(5)) == KeyPair.generate(seeded(5))


def test_errors_from_a_peer_are_remote_protocol_errors() -> None:
    assert issubclass(DecryptError, RemoteProtocolError)
    assert issubclass(HandshakeError, RemoteProtocolError)


FORBIDDEN_MODULES = ("trio", "socket", "sqlite3", "zeroconf", "threading", "time")
IMPORT_PROBE = """
import json, sys
before = set(sys.modules)
import blazemesh.protocol.noise
print(json.dumps({"before": sorted(before), "after": sorted(sys.modules)}))
"""


def test_importing_noise_loads_no_io_clock_or_threads() -> None:
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = json.loads(result.stdout)
    new = set(loaded["after"]) - set(loaded["before"])
    assert "blazemesh.protocol.noise" in new
    assert "nacl.bindings" in new  # the probe sees real imports
    # CPython may import "time" itself while starting up; what matters is that importing
    # protocol.noise adds none of these.
    assert sorted(new & set(FORBIDDEN_MODULES)) == []
    for name in ("trio", "socket", "sqlite3", "zeroconf", "threading"):
        assert name not in loaded["after"]

"""Live handshakes against an independent implementation: ``noiseprotocol`` 0.3.1 (import
name ``noise``, pure Python over ``cryptography``), in both roles.

What noiseprotocol cannot be tested on: it has no deferred patterns (XX1, ...), exposes no
way to set a transport nonce, and checks the 65535-byte limit on the transport *plaintext*
rather than on the message (Noise §3), so it will emit a 65551-byte message that we refuse;
the tests below stay within what it does correctly.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from noise.connection import Keypair, NoiseConnection

from blazemesh.protocol.noise import (
    MAX_MESSAGE_BYTES,
    MAX_PLAINTEXT_BYTES,
    TAG_BYTES,
    DecryptError,
    KeyPair,
    NoiseHandshake,
    NoiseTransport,
)

NAMES = ["Noise_XX_25519_ChaChaPoly_BLAKE2b", "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b"]
PROLOGUE = b"blazemesh interop"


def theirs(name: str, *, initiator: bool, static_private: bytes, psk: bytes) -> Any:
    connection = NoiseConnection.from_name(name.encode("ascii"))
    if initiator:
        connection.set_as_initiator()
    else:
        connection.set_as_responder()
    connection.set_keypair_from_private_bytes(Keypair.STATIC, static_private)
    if "psk" in name:
        connection.set_psks(psk=psk)
    connection.set_prologue(PROLOGUE)
    connection.start_handshake()
    return connection


def ours(name: str, *, initiator: bool, static: KeyPair, psk: bytes) -> NoiseHandshake:
    return NoiseHandshake(
        protocol_name=name,
        initiator=initiator,
        prologue=PROLOGUE,
        static_keypair=static,
        psks=[psk] if "psk" in name else [],
        random_bytes=os.urandom,
    )


def exchange_transport_messages(mine: NoiseTransport, other: Any) -> None:
    for n in range(3):
        assert other.decrypt(mine.encrypt(b"ours %d" % n)) == b"ours %d" % n
        assert mine.decrypt(bytes(other.encrypt(b"theirs %d" % n))) == b"theirs %d" % n
    # The largest message Noise allows, both ways.
    big = os.urandom(MAX_PLAINTEXT_BYTES)
    assert other.decrypt(mine.encrypt(big)) == big
    assert mine.decrypt(bytes(other.encrypt(big))) == big
    # Rekey (Noise §11.3) in step on both sides, both directions.
    mine.rekey_send()
    other.rekey_inbound_cipher()
    other.rekey_outbound_cipher()
    mine.rekey_receive()
    assert other.decrypt(mine.encrypt(b"after rekey")) == b"after rekey"
    assert mine.decrypt(bytes(other.encrypt(b"after rekey too"))) == b"after rekey too"


@pytest.mark.parametrize("name", NAMES)
def test_we_initiate_and_noiseprotocol_responds(name: str) -> None:
    psk, static, their_static = os.urandom(32), KeyPair.generate(os.urandom), os.urandom(32)
    initiator = ours(name, initiator=True, static=static, psk=psk)
    responder = theirs(name, initiator=False, static_private=their_static, psk=psk)

    assert responder.read_message(initiator.write_message(b"one")) == b"one"
    assert initiator.read_message(bytes(responder.write_message(b"two"))) == b"two"
    assert responder.read_message(initiator.write_message(b"three")) == b"three"

    assert initiator.complete
    assert responder.handshake_finished
    assert initiator.handshake_hash == responder.get_handshake_hash()
    assert initiator.remote_static_public == KeyPair.from_private(their_static).public
    exchange_transport_messages(initiator.split(), responder)


@pytest.mark.parametrize("name", NAMES)
def test_noiseprotocol_initiates_and_we_respond(name: str) -> None:
    psk, static, their_static = os.urandom(32), KeyPair.generate(os.urandom), os.urandom(32)
    initiator = theirs(name, initiator=True, static_private=their_static, psk=psk)
    responder = ours(name, initiator=False, static=static, psk=psk)

    assert responder.read_message(bytes(initiator.write_message(b"one"))) == b"one"
    assert initiator.read_message(responder.write_message(b"two")) == b"two"
    assert responder.read_message(bytes(initiator.write_message(b"three"))) == b"three"

    assert responder.complete
    assert initiator.handshake_finished
    assert responder.handshake_hash == initiator.get_handshake_hash()
    assert responder.remote_static_public == KeyPair.from_private(their_static).public
    exchange_transport_messages(responder.split(), initiator)


def test_an_oversized_message_from_noiseprotocol_is_refused() -> None:
    # noiseprotocol limits the plaintext, not the message, to 65535 bytes: its largest
    # message is 65551 bytes, which Noise §3 forbids and we refuse.
    name, psk = NAMES[1], os.urandom(32)
    initiator = ours(name, initiator=True, static=KeyPair.generate(os.urandom), psk=psk)
    responder = theirs(name, initiator=False, static_private=os.urandom(32), psk=psk)
    responder.read_message(initiator.write_message(b""))
    initiator.read_message(bytes(responder.write_message(b"")))
    responder.read_message(initiator.write_message(b""))
    transport = initiator.split()
    oversized = bytes(responder.encrypt(bytes(MAX_PLAINTEXT_BYTES + TAG_BYTES)))
    assert len(oversized) == MAX_MESSAGE_BYTES + TAG_BYTES
    with pytest.raises(DecryptError, match="exceeds 65535"):
        transport.decrypt(oversized)

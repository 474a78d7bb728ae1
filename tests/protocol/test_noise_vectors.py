"""The cacophony test vectors, reproduced byte for byte (../shared/vectors/noise/README.md).

The vectors live beside the project, never in it. They are read from
``$BLAZEMESH_NOISE_VECTORS`` or ``../shared/vectors/noise/cacophony.json`` (relative to the
repository root); where neither exists the tests skip and say so. The live interop test
(test_noise_interop.py) runs everywhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from blazemesh.protocol.noise import (
    KeyPair,
    NoiseHandshake,
    NoiseTransport,
    ProtocolName,
    is_supported,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
VECTORS_PATH = Path(
    os.environ.get("BLAZEMESH_NOISE_VECTORS")
    or REPO_ROOT.parent / "shared" / "vectors" / "noise" / "cacophony.json"
)
REQUIRED = [
    f"Noise_{pattern}_25519_ChaChaPoly_{hash_name}"
    for pattern in ("XX", "XXpsk3")
    for hash_name in ("BLAKE2b", "SHA256")
]
MISSING = f"Noise vectors not found at {VECTORS_PATH} (set BLAZEMESH_NOISE_VECTORS to the file)"

Vector = dict[str, Any]


def load_vectors() -> list[Vector]:
    if not VECTORS_PATH.is_file():
        return []
    vectors: list[Vector] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))["vectors"]
    return vectors


ALL_VECTORS = load_vectors()
SUPPORTED = [v for v in ALL_VECTORS if is_supported(v["protocol_name"])]


def hex_field(vector: Vector, name: str) -> bytes | None:
    value = vector.get(name)
    return None if value is None else bytes.fromhex(value)


def build(vector: Vector, role: str) -> NoiseHandshake:
    static = hex_field(vector, f"{role}_static")
    return NoiseHandshake(
        protocol_name=vector["protocol_name"],
        initiator=role == "init",
        prologue=hex_field(vector, f"{role}_prologue") or b"",
        static_keypair=None if static is None else KeyPair.from_private(static),
        remote_static_public=hex_field(vector, f"{role}_remote_static"),
        psks=[bytes.fromhex(psk) for psk in vector.get(f"{role}_psks", [])],
        ephemeral_private=hex_field(vector, f"{role}_ephemeral"),
    )


@pytest.mark.skipif(not ALL_VECTORS, reason=MISSING)
def test_every_vector_in_the_file_is_supported_and_the_required_ones_are_there() -> None:
    names = {v["protocol_name"] for v in SUPPORTED}
    assert set(REQUIRED) <= names
    # All 118 are 25519/ChaChaPoly patterns of Noise §7 with psk modifiers: none is skipped.
    assert [v["protocol_name"] for v in ALL_VECTORS if v not in SUPPORTED] == []


@pytest.mark.parametrize(
    "vector",
    SUPPORTED or [pytest.param(None, marks=pytest.mark.skip(reason=MISSING))],
    ids=[v["protocol_name"] for v in SUPPORTED] or ["no-vectors"],
)
def test_vector(vector: Vector) -> None:
    initiator, responder = build(vector, "init"), build(vector, "resp")
    one_way = len(ProtocolName.parse(vector["protocol_name"]).pattern) == 1
    transports: tuple[NoiseTransport, NoiseTransport] | None = None
    for index, message in enumerate(vector["messages"]):
        payload = bytes.fromhex(message["payload"])
        expected = bytes.fromhex(message["ciphertext"])
        # Messages alternate initiator, responder, ... (one-way: the initiator sends all).
        initiator_sends = one_way or index % 2 == 0
        if transports is None:
            sender, receiver = (initiator, responder) if initiator_sends else (responder, initiator)
            assert sender.write_message(payload) == expected, f"handshake message {index}"
            assert receiver.read_message(expected) == payload
            if sender.complete:
                assert receiver.complete
                assert initiator.handshake_hash.hex() == vector["handshake_hash"]
                assert responder.handshake_hash.hex() == vector["handshake_hash"]
                transports = initiator.split(), responder.split()
        else:
            out, into = transports if initiator_sends else transports[::-1]
            assert out.encrypt(payload) == expected, f"transport message {index}"
            assert into.decrypt(expected) == payload
    assert transports is not None, "the vector ended before the handshake did"
    assert transports[0].handshake_hash == transports[1].handshake_hash

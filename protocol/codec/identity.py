"""The identity payload of a handshake (docs/protocol.md, section 7.2)."""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from blazemesh.protocol.codec.bounds import unpack
from blazemesh.protocol.errors import DecodeError
from blazemesh.protocol.ids import PUBLIC_KEY_BYTES

PROTOCOL_VERSION = 4  # the wire protocol's version, stated in the handshake and the hello
MAX_IDENTITY_BYTES = 128  # an identity payload is about 104 bytes
SIGNATURE_BYTES = 64  # Ed25519


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentityPayload:
    """What each side of a handshake states: protocol version, Ed25519 key, signature."""

    version: int
    public_key: bytes
    signature: bytes


def encode_identity(payload: IdentityPayload) -> bytes:
    """``[version, public_key (bin 32), signature (bin 64)]`` (docs/protocol.md, section 7)."""
    data: bytes = msgpack.packb(
        [payload.version, payload.public_key, payload.signature], use_bin_type=True
    )
    return data


def decode_identity(data: bytes) -> IdentityPayload:
    """Decode a handshake identity payload; anything malformed raises `DecodeError`."""
    item = unpack(data, MAX_IDENTITY_BYTES)
    if (
        not isinstance(item, list)
        or len(item) != 3
        or type(item[0]) is not int
        or type(item[1]) is not bytes
        or len(item[1]) != PUBLIC_KEY_BYTES
        or type(item[2]) is not bytes
        or len(item[2]) != SIGNATURE_BYTES
    ):
        raise DecodeError("an identity payload is [version, 32-byte key, 64-byte signature]")
    return IdentityPayload(version=item[0], public_key=item[1], signature=item[2])

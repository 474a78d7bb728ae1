"""Bounded msgpack decoding shared by every encoding of the codec."""

from __future__ import annotations

import msgpack

from blazemesh.protocol.errors import DecodeError
from blazemesh.protocol.model import MAX_VALUE_BYTES

MAX_CONTAINER_ITEMS = 1 << 20  # no legitimate array or map of ours is longer
UNPACK_LIMITS = {
    "max_str_len": MAX_VALUE_BYTES,
    "max_bin_len": MAX_VALUE_BYTES,
    "max_ext_len": 0,  # no msgpack extension types are part of the protocol
    "max_array_len": MAX_CONTAINER_ITEMS,
    "max_map_len": MAX_CONTAINER_ITEMS,
}
# Everything msgpack raises for bad bytes (ExtraData, FormatError and StackError are
# ValueError subclasses; UnicodeDecodeError too).
UNPACK_ERRORS = (ValueError, TypeError, OverflowError, msgpack.UnpackException)


def unpack(data: bytes, max_bytes: int) -> object:
    """Decode one msgpack object from exactly ``data``, within the codec's bounds."""
    if len(data) > max_bytes:
        raise DecodeError(f"message of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=True, ext_hook=refuse_ext, **UNPACK_LIMITS
        )
    except UNPACK_ERRORS as exc:
        raise DecodeError(f"malformed msgpack: {exc}") from None


def refuse_ext(code: int, data: bytes) -> object:
    """msgpack's ext hook: extension types are not part of the protocol."""
    raise DecodeError(f"msgpack extension type {code} is not part of the protocol")

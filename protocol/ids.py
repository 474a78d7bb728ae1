"""Node identifiers.

A node id is the first 16 bytes of BLAKE2b over the node's 32-byte Ed25519 public key,
with a personalisation that keeps it apart from every other hash in the protocol. 128
bits make accidental collisions negligible for any mesh, and the id is short enough to
appear in every change. The text form is unpadded lowercase RFC 4648 base32 (26
characters); the short form, for people, is its first 8 characters, as ``abcd-efgh``.
"""

from __future__ import annotations

import base64
import functools
import hashlib

from blazemesh.protocol.errors import LocalProtocolError

NODE_ID_BYTES = 16
PUBLIC_KEY_BYTES = 32
NODE_ID_TEXT_CHARS = 26  # ceil(128 / 5)
_PERSON = b"blazemesh-nodeid"  # BLAKE2b personalisation, 16 bytes


def node_id_from_public_key(public_key: bytes) -> bytes:
    """Derive the 16-byte node id of an Ed25519 public key."""
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise LocalProtocolError(
            f"an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes, got {len(public_key)}"
        )
    return hashlib.blake2b(public_key, digest_size=NODE_ID_BYTES, person=_PERSON).digest()


def node_id_text(node_id: bytes) -> str:
    """The 26-character base32 text form of a node id."""
    _check_length(node_id)
    return base64.b32encode(node_id).decode("ascii").rstrip("=").lower()


@functools.lru_cache(maxsize=4_096)  # names every log line and trace line about a node
def node_id_short(node_id: bytes) -> str:
    """The 8-character form for people, as ``abcd-efgh``; unique enough to tell nodes apart."""
    text = node_id_text(node_id)
    return f"{text[:4]}-{text[4:8]}"


def parse_node_id(text: str) -> bytes:
    """Parse the base32 text form of a node id (case-insensitive, dashes ignored)."""
    cleaned = text.strip().replace("-", "")
    if not cleaned.isascii():  # str.upper() maps U+0131 and U+017F to I and S
        raise LocalProtocolError(f"not a base32 node id: {text!r}")
    cleaned = cleaned.upper()
    if len(cleaned) != NODE_ID_TEXT_CHARS:
        raise LocalProtocolError(
            f"a node id is {NODE_ID_TEXT_CHARS} base32 characters, got {len(cleaned)}: {text!r}"
        )
    try:
        raw = base64.b32decode(cleaned + "=" * 6)
    except ValueError as exc:
        raise LocalProtocolError(f"not a base32 node id: {text!r}") from exc
    if node_id_text(raw) != cleaned.lower():
        raise LocalProtocolError(f"not a canonical node id: {text!r}")
    return raw


def _check_length(node_id: bytes) -> None:
    if len(node_id) != NODE_ID_BYTES:
        raise LocalProtocolError(f"a node id is {NODE_ID_BYTES} bytes, got {len(node_id)}")

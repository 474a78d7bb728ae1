"""What a node's mDNS advert says, and how to read another's (docs/protocol.md, section 9).

The TXT record of ``_blazemesh._tcp.local.`` holds ``v`` (protocol version), ``id`` (node
id, base32), ``m`` (the mesh tag) and, on nodes that may be a star's hub, ``h=1``. The
mesh tag lets members of one mesh recognise each other before connecting, without telling
anyone else the mesh's name or secret: it is a keyed BLAKE2b of a fixed label under the
mesh secret. Anything else in
the record is ignored, so later versions can add keys.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from protocol.errors import InvalidRemoteDataError, LocalProtocolError
from protocol.ids import node_id_text, parse_node_id

MESH_TAG_BYTES = 10  # 80 bits: two meshes on one LAN collide with odds of 1 in 10^24
MESH_TAG_CHARS = 16  # base32 of MESH_TAG_BYTES, no padding
MAX_TXT_VALUE_BYTES = 64  # every value we write is shorter; longer ones are not ours
MAX_VERSION = 65_535
_TAG_LABEL = b"blazemesh mesh tag v1"


@dataclass(frozen=True, slots=True, kw_only=True)
class AdvertInfo:
    """What a TXT record says about its node."""

    node_id: bytes
    version: int
    mesh_tag: str
    hub_eligible: bool = False


def mesh_tag(secret: bytes) -> str:
    """The mesh's public tag: base32 of BLAKE2b-80(key=secret, data=label), lower case."""
    digest = hashlib.blake2b(_TAG_LABEL, key=secret, digest_size=MESH_TAG_BYTES).digest()
    return base64.b32encode(digest).decode("ascii").lower()


def encode_txt(info: AdvertInfo) -> dict[str, str]:
    """The TXT record's keys and values."""
    txt = {"v": str(info.version), "id": node_id_text(info.node_id), "m": info.mesh_tag}
    if info.hub_eligible:
        txt["h"] = "1"
    return txt


def parse_txt(props: Mapping[bytes, bytes | None]) -> AdvertInfo:
    """Read a TXT record; raise `InvalidRemoteDataError` if it is not a blazemesh one."""
    values: dict[str, str] = {}
    for key in (b"v", b"id", b"m"):
        raw = props.get(key)
        if raw is None:
            raise InvalidRemoteDataError(f"the TXT record has no {key.decode()!r}")
        if len(raw) > MAX_TXT_VALUE_BYTES or not raw.isascii():
            raise InvalidRemoteDataError(f"the TXT record's {key.decode()!r} is not ours")
        values[key.decode()] = raw.decode("ascii")
    version = values["v"]
    if not version.isdigit() or not 0 < int(version) <= MAX_VERSION:
        raise InvalidRemoteDataError(f"protocol version {version[:16]!r} is not a version")
    try:
        node_id = parse_node_id(values["id"])
    except LocalProtocolError as exc:
        raise InvalidRemoteDataError(f"the advert's node id: {exc}") from None
    tag = values["m"]
    if len(tag) != MESH_TAG_CHARS or not all(c in _BASE32 for c in tag):
        raise InvalidRemoteDataError(
            f"mesh tag {tag[:20]!r} is not {MESH_TAG_CHARS} base32 letters"
        )
    return AdvertInfo(
        node_id=node_id, version=int(version), mesh_tag=tag, hub_eligible=props.get(b"h") == b"1"
    )


_BASE32 = frozenset("abcdefghijklmnopqrstuvwxyz234567")

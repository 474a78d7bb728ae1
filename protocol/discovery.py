"""What a node's mDNS advert says, and how to read another's (docs/protocol.md, section 9).

A node advertises the DNS-SD service ``_blazemesh._tcp.local.`` (RFC 6763) under the
instance name ``blazemesh-abcd-efgh`` (its short node id). The TXT record holds ``v``
(protocol version), ``id`` (node id, base32), ``m`` (the mesh tag) and, on nodes that may
be a star's hub, ``h=1``. Keys this version does not know are ignored, so later versions
can add some.

The mesh tag lets members of one mesh recognise each other before connecting, without
telling anyone else the mesh's name or secret: it is BLAKE2b-80 keyed with the mesh
secret over a fixed label. It is stable, so it also lets a LAN observer group the devices
of one mesh (docs/security.md, "What still leaks").

Everything here is pure: `parse_txt` and `parse_endpoints` turn whatever a stranger on the
LAN put in an advert into values or an `InvalidRemoteDataError`, never anything else.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from blazemesh.protocol.errors import InvalidRemoteDataError, LocalProtocolError
from blazemesh.protocol.ids import node_id_short, node_id_text, parse_node_id
from blazemesh.protocol.noise import PSK_BYTES

SERVICE_TYPE = "_blazemesh._tcp.local."  # RFC 6763 §7: _service._proto.domain.
INSTANCE_PREFIX = "blazemesh-"
MESH_TAG_BYTES = 10  # 80 bits: two meshes on one LAN collide with odds of 1 in 10^24
MESH_TAG_CHARS = 16  # base32 of MESH_TAG_BYTES, no padding (80 bits = 16 x 5)
MAX_TXT_VALUE_BYTES = 64  # every value we write is shorter; a longer one is not ours
MAX_VERSION = 65_535  # versions are small integers; anything larger is garbage
MAX_ADVERT_ADDRESSES = 16  # a host with more addresses than this on one LAN is not ours
MESH_TAG_LABEL = b"blazemesh mesh tag v1"  # the BLAKE2b input; keyed with the mesh secret

_BASE32 = frozenset("abcdefghijklmnopqrstuvwxyz234567")


@dataclass(frozen=True, slots=True, kw_only=True)
class AdvertInfo:
    """What a TXT record says about its node."""

    node_id: bytes
    version: int
    mesh_tag: str
    hub_eligible: bool = False


@functools.lru_cache(maxsize=64)  # asked for every advert heard; a node knows a mesh or two
def mesh_tag(secret: bytes) -> str:
    """The mesh's public tag: lower-case unpadded base32 of BLAKE2b(key=secret, size 10).

    The input is `MESH_TAG_LABEL`; no salt or personalisation. Raises
    `LocalProtocolError` unless ``secret`` is a 32-byte mesh secret.
    """
    if len(secret) != PSK_BYTES:
        raise LocalProtocolError(f"a mesh secret is {PSK_BYTES} bytes, got {len(secret)}")
    digest = hashlib.blake2b(MESH_TAG_LABEL, key=secret, digest_size=MESH_TAG_BYTES).digest()
    return base64.b32encode(digest).decode("ascii").lower()


def instance_label(node_id: bytes) -> str:
    """The DNS-SD instance name a node asks for: ``blazemesh-`` and its short node id.

    Only the first 40 bits of the id: two nodes may want the same label, and the second
    to come then takes ``-2``, ``-3``... (RFC 6762 §9). Peers rely on the TXT ``id``.
    """
    return INSTANCE_PREFIX + node_id_short(node_id)


def host_label(node_id: bytes) -> str:
    """The host name that carries a node's address records: unique, since it is the
    whole node id (RFC 6762 §9 conflicts then only arise between copies of one node)."""
    return INSTANCE_PREFIX + node_id_text(node_id)


def encode_txt(info: AdvertInfo) -> dict[str, str]:
    """The TXT record's keys and values; `LocalProtocolError` for values no peer would
    accept (this node's own bug)."""
    if not 0 < info.version <= MAX_VERSION:
        raise LocalProtocolError(f"protocol version {info.version} is not in 1..{MAX_VERSION}")
    if not _is_tag(info.mesh_tag):
        raise LocalProtocolError(f"{info.mesh_tag!r} is not a mesh tag: use mesh_tag(secret)")
    txt = {"v": str(info.version), "id": node_id_text(info.node_id), "m": info.mesh_tag}
    if info.hub_eligible:
        txt["h"] = "1"
    return txt


def parse_txt(props: Mapping[bytes, bytes | None]) -> AdvertInfo:
    """Read a TXT record; raise `InvalidRemoteDataError` if it is not a blazemesh one.

    ``props`` is the record as python-zeroconf decodes it: key to value, None for a key
    without ``=``. Unknown keys are ignored; ``h`` counts only as exactly ``1``.
    """
    values: dict[str, str] = {}
    for key in ("v", "id", "m"):
        raw = props.get(key.encode("ascii"))
        if raw is None:
            raise InvalidRemoteDataError(f"the TXT record has no {key!r} value")
        if not isinstance(raw, bytes) or len(raw) > MAX_TXT_VALUE_BYTES or not raw.isascii():
            raise InvalidRemoteDataError(
                f"the TXT record's {key!r} is not ours: not ASCII of at most "
                f"{MAX_TXT_VALUE_BYTES} bytes"
            )
        values[key] = raw.decode("ascii")
    version = values["v"]
    if not (version.isdigit() and version == str(int(version)) and 0 < int(version) <= MAX_VERSION):
        raise InvalidRemoteDataError(
            f"protocol version {version[:16]!r} is not a version: not a decimal in 1..{MAX_VERSION}"
        )
    try:
        node_id = parse_node_id(values["id"])
    except LocalProtocolError as exc:
        raise InvalidRemoteDataError(f"the advert's node id: {exc}") from None
    tag = values["m"]
    if not _is_tag(tag):
        raise InvalidRemoteDataError(
            f"mesh tag {tag[:20]!r} is not {MESH_TAG_CHARS} lower-case base32 letters"
        )
    return AdvertInfo(
        node_id=node_id, version=int(version), mesh_tag=tag, hub_eligible=props.get(b"h") == b"1"
    )


def parse_endpoints(hosts: Sequence[str], port: int | None) -> tuple[tuple[str, int], ...]:
    """The ``(host, port)`` pairs of a resolved advert (its address records and SRV port).

    Raises `InvalidRemoteDataError` for no address, more than `MAX_ADVERT_ADDRESSES`, a
    host that is not an IP address, or a port outside 1..65535.
    """
    if port is None or not 0 < port <= 65_535:
        raise InvalidRemoteDataError(f"port {port!r} is not in 1..65535")
    if not hosts:
        raise InvalidRemoteDataError("the advert has no address")
    if len(hosts) > MAX_ADVERT_ADDRESSES:
        raise InvalidRemoteDataError(
            f"the advert has {len(hosts)} addresses, more than {MAX_ADVERT_ADDRESSES}"
        )
    for host in hosts:
        try:
            ipaddress.ip_address(host.split("%", 1)[0])  # an IPv6 zone follows '%'
        except ValueError:
            raise InvalidRemoteDataError(f"{host[:48]!r} is not an IP address") from None
    return tuple(dict.fromkeys((host, port) for host in hosts))


def _is_tag(tag: str) -> bool:
    return len(tag) == MESH_TAG_CHARS and all(c in _BASE32 for c in tag)

"""Mesh membership: the mesh's name and secret, join codes, and the optional allowlist.

A mesh is a name plus a 32-byte secret; the secret is the Noise PSK, so only holders of
it can complete a handshake (docs/security.md). It lives in ``DATA_DIR/mesh.json`` with
mode 0600, beside the node key.

A join code carries what another device needs to join: mesh name, secret and the
inviter's node id, with a checksum so that a mistyped code is caught before it is used::

    bm1-<base32 of: version | name length | name | secret | inviter | blake2b-4 checksum>

The code holds the secret: treat it like a password.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from blazemesh.agent.errors import ConfigError
from blazemesh.agent.storage.paths import open_secret_file
from blazemesh.protocol.errors import LocalProtocolError
from blazemesh.protocol.ids import NODE_ID_BYTES, node_id_text, parse_node_id

MESH_FILE = "mesh.json"
SECRET_BYTES = 32
MAX_MESH_NAME_BYTES = 64  # keeps join codes short enough to paste
CODE_PREFIX = "bm1-"
CODE_VERSION = 1
CHECKSUM_BYTES = 4  # a typo passes unnoticed with odds of 1 in 4 billion
_CODE_PERSON = b"blazemesh-invite"


@dataclass(frozen=True, slots=True)
class Invite:
    """What a join code carries."""

    mesh: str
    secret: bytes
    inviter: bytes


@dataclass
class Mesh:
    """A node's membership: mesh name, secret, and the allowlist (None: everyone with the secret).

    Revoking a node or updating the membership calls every listener registered with
    `on_change`, so that live links the mesh no longer admits can be dropped at once.
    """

    name: str
    secret: bytes
    allowlist: set[bytes] | None = None
    _listeners: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def allows(self, node_id: bytes) -> bool:
        """Whether ``node_id`` may complete a handshake with this node."""
        return self.allowlist is None or node_id in self.allowlist

    def trust(self, node_ids: Iterable[bytes]) -> None:
        """Add nodes to the allowlist, switching allowlist mode on if it was off."""
        if self.allowlist is None:
            self.allowlist = set()
        self.allowlist.update(node_ids)

    def revoke(self, node_id: bytes) -> bool:
        """Remove a node from the allowlist; return whether it was there."""
        if self.allowlist is None or node_id not in self.allowlist:
            return False
        self.allowlist.discard(node_id)
        self._changed()
        return True

    def update(self, other: Mesh) -> None:
        """Take ``other``'s name, secret and allowlist (a membership file edited on disk)."""
        self.name, self.secret = other.name, other.secret
        self.allowlist = None if other.allowlist is None else set(other.allowlist)
        self._changed()

    def on_change(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` after every revocation or update; return a function that stops it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _changed(self) -> None:
        for listener in list(self._listeners):
            listener()

    def invite(self, inviter: bytes) -> str:
        return encode_invite(Invite(mesh=self.name, secret=self.secret, inviter=inviter))


def new_mesh(name: str) -> Mesh:
    """A mesh with a fresh random secret."""
    check_mesh_name(name)
    return Mesh(name=name, secret=secrets.token_bytes(SECRET_BYTES))


def check_mesh_name(name: str) -> None:
    size = len(name.encode("utf-8", "surrogatepass"))
    if not name or size > MAX_MESH_NAME_BYTES or not name.isprintable():
        raise ConfigError(
            f"a mesh name is 1 to {MAX_MESH_NAME_BYTES} bytes of printable text, got {name!r}"
        )


def encode_invite(invite: Invite) -> str:
    """The join code for ``invite``."""
    name = invite.mesh.encode("utf-8")
    body = bytes([CODE_VERSION, len(name)]) + name + invite.secret + invite.inviter
    check = hashlib.blake2b(body, digest_size=CHECKSUM_BYTES, person=_CODE_PERSON).digest()
    text = base64.b32encode(body + check).decode("ascii").rstrip("=").lower()
    return CODE_PREFIX + "-".join(text[i : i + 8] for i in range(0, len(text), 8))


def decode_invite(code: str) -> Invite:
    """Parse a join code; a mistyped or truncated one raises `ConfigError`."""
    text = code.strip().lower()
    if not text.startswith(CODE_PREFIX):
        raise ConfigError(f"a join code starts with {CODE_PREFIX!r}")
    letters = text[len(CODE_PREFIX) :].replace("-", "").replace(" ", "").upper()
    try:
        raw = base64.b32decode(letters + "=" * (-len(letters) % 8))
    except (binascii.Error, ValueError):
        raise ConfigError("the join code has characters that cannot be in one: mistyped?") from None
    if base64.b32encode(raw).decode("ascii").rstrip("=") != letters:
        # The last letter carries unused bits: a typo there must not pass as the same code.
        raise ConfigError("the join code is not one blazemesh wrote: mistyped?")
    body, check = raw[:-CHECKSUM_BYTES], raw[-CHECKSUM_BYTES:]
    expected = hashlib.blake2b(body, digest_size=CHECKSUM_BYTES, person=_CODE_PERSON).digest()
    if len(raw) < 2 + CHECKSUM_BYTES or not secrets.compare_digest(check, expected):
        raise ConfigError("the join code's checksum does not match: it is mistyped or cut short")
    if body[0] != CODE_VERSION:
        raise ConfigError(f"join code version {body[0]} is not supported by this blazemesh")
    name_len = body[1]
    if len(body) != 2 + name_len + SECRET_BYTES + NODE_ID_BYTES:
        raise ConfigError("the join code is malformed")
    name = body[2 : 2 + name_len].decode("utf-8", "replace")
    secret = body[2 + name_len : 2 + name_len + SECRET_BYTES]
    inviter = body[2 + name_len + SECRET_BYTES :]
    check_mesh_name(name)
    return Invite(mesh=name, secret=secret, inviter=inviter)


def save_mesh(data_dir: Path, mesh: Mesh) -> None:
    """Write the membership file atomically, readable by its owner alone."""
    doc = {
        "mesh": mesh.name,
        "secret": base64.b64encode(mesh.secret).decode("ascii"),
        "allowlist": None
        if mesh.allowlist is None
        else sorted(node_id_text(n) for n in mesh.allowlist),
    }
    path = data_dir / MESH_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a temporary file left by a crash keeps the mode it was made with
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_mesh(data_dir: Path) -> Mesh:
    """Read the membership file; refuse one that others can read or that is malformed,
    or a data directory that others can read."""
    path = data_dir / MESH_FILE
    missing = (
        f"{data_dir} belongs to no mesh: run `blazemesh init --mesh NAME` to start one "
        "or `blazemesh join CODE` to join one"
    )
    with open_secret_file(data_dir, MESH_FILE, holds="the mesh secret", missing=missing) as f:
        try:
            doc = json.load(f)
            secret = base64.b64decode(doc["secret"], validate=True)
            allowlist = doc.get("allowlist")
            mesh = Mesh(
                name=str(doc["mesh"]),
                secret=secret,
                allowlist=None if allowlist is None else {parse_node_id(n) for n in allowlist},
            )
        except (ValueError, KeyError, TypeError, LocalProtocolError) as exc:
            raise ConfigError(f"{path} is malformed: {exc}") from None
    if len(mesh.secret) != SECRET_BYTES:
        raise ConfigError(f"{path} holds a secret of {len(mesh.secret)} bytes, not 32")
    return mesh

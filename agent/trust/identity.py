"""A node's identity: its Ed25519 key pair, kept in the data directory.

The key file holds the 32-byte seed, base64 on the line after a header, and must be
readable by its owner alone (mode 0600): a key that others could read is refused.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass, field
from pathlib import Path

from nacl.signing import SigningKey

from blazemesh.agent.errors import ConfigError
from blazemesh.agent.storage.paths import KEY_FILE, check_data_dir, open_secret_file
from blazemesh.protocol.ids import node_id_from_public_key, node_id_short, node_id_text
from blazemesh.protocol.noise import KeyPair
from blazemesh.protocol.session import static_keypair

_HEADER = "blazemesh-ed25519-seed-v1"
MAX_KEY_FILE_CHARS = 4_096  # a key file is 72 characters: anything much longer is not one


@dataclass(frozen=True, slots=True)
class Identity:
    """An Ed25519 key pair, the node id derived from its public key, and its Noise key pair.

    The Noise static key is the X25519 form of the Ed25519 key (docs/security.md), derived
    once here rather than on every handshake.
    """

    signing_key: SigningKey
    noise_keypair: KeyPair = field(init=False, repr=False)
    node_id: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_keypair", static_keypair(bytes(self.signing_key)))
        object.__setattr__(self, "node_id", node_id_from_public_key(self.public_key))

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def text(self) -> str:
        return node_id_text(self.node_id)

    @property
    def short(self) -> str:
        return node_id_short(self.node_id)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``."""
        return self.signing_key.sign(message).signature

    @classmethod
    def generate(cls) -> Identity:
        return cls(SigningKey.generate())


def create_identity(data_dir: Path) -> Identity:
    """Generate a key pair and write it to ``data_dir`` (mode 0600); refuse to overwrite,
    or to write into a data directory that others can read (`check_data_dir`)."""
    check_data_dir(data_dir)
    identity = Identity.generate()
    path = data_dir / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} already exists: this data directory has an identity") from None
    with os.fdopen(fd, "w") as f:
        f.write(identity_file_text(bytes(identity.signing_key)))
        f.flush()
        os.fsync(f.fileno())
    return identity


def identity_file_text(seed: bytes) -> str:
    """The key file's contents for the 32-byte Ed25519 ``seed``."""
    return f"{_HEADER}\n{base64.b64encode(seed).decode('ascii')}\n"


def load_identity(data_dir: Path) -> Identity:
    """Read the key pair of ``data_dir``, refusing a key file or a data directory that
    others can read."""
    missing = f"no identity in {data_dir}: run `blazemesh init --data-dir {data_dir}` first"
    path = data_dir / KEY_FILE
    with open_secret_file(data_dir, KEY_FILE, holds="the node's private key", missing=missing) as f:
        try:
            lines = f.read(MAX_KEY_FILE_CHARS).split()
        except UnicodeDecodeError:  # binary junk: no key file
            lines = []
    if len(lines) != 2 or lines[0] != _HEADER:
        raise ConfigError(f"{path} is not a blazemesh key file")
    try:
        seed = base64.b64decode(lines[1], validate=True)
    except binascii.Error:
        raise ConfigError(f"{path} holds a malformed key") from None
    if len(seed) != 32:
        raise ConfigError(f"{path} holds a malformed key")
    return Identity(SigningKey(seed))

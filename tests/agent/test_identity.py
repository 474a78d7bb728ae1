from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from blazemesh.agent.errors import ConfigError
from blazemesh.agent.storage.paths import KEY_FILE, default_data_dir
from blazemesh.agent.trust.identity import Identity, create_identity, load_identity
from blazemesh.protocol.ids import node_id_from_public_key


def test_identity_is_created_private_and_reloads(tmp_path: Path) -> None:
    created = create_identity(tmp_path)
    assert stat.S_IMODE(os.stat(tmp_path / KEY_FILE).st_mode) == 0o600
    loaded = load_identity(tmp_path)
    assert loaded.public_key == created.public_key
    assert loaded.node_id == node_id_from_public_key(created.public_key)
    assert created.signing_key.verify_key.verify(b"m", created.sign(b"m")) == b"m"


def test_existing_identity_is_never_overwritten(tmp_path: Path) -> None:
    create_identity(tmp_path)
    before = (tmp_path / KEY_FILE).read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        create_identity(tmp_path)
    assert (tmp_path / KEY_FILE).read_bytes() == before


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_key_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    create_identity(tmp_path)
    os.chmod(tmp_path / KEY_FILE, mode)
    with pytest.raises(ConfigError, match="readable by others"):
        load_identity(tmp_path)


def test_missing_identity_says_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="blazemesh init"):
        load_identity(tmp_path)


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage", b"blazemesh-ed25519-seed-v1\n!!!\n", b"blazemesh-ed25519-seed-v1\nAAAA\n"],
)
def test_malformed_key_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / KEY_FILE
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match="key"):
        load_identity(tmp_path)


def test_default_data_dir_honours_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLAZEMESH_HOME", "/srv/bm")
    assert default_data_dir() == Path("/srv/bm")
    monkeypatch.delenv("BLAZEMESH_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", "/xdg")
    assert default_data_dir() == Path("/xdg/blazemesh")


def test_noise_key_is_the_x25519_form_of_the_identity_key() -> None:
    from nacl.bindings import crypto_scalarmult_base, crypto_sign_ed25519_pk_to_curve25519

    identity = Identity.generate()
    keypair = identity.noise_keypair
    assert keypair.public == crypto_sign_ed25519_pk_to_curve25519(identity.public_key)
    assert crypto_scalarmult_base(keypair.private) == keypair.public

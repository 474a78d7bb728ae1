from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blazemesh.agent.errors import ConfigError
from blazemesh.agent.trust.membership import (
    CODE_PREFIX,
    MESH_FILE,
    Invite,
    decode_invite,
    encode_invite,
    load_mesh,
    new_mesh,
    save_mesh,
)

INVITER = bytes(range(16))

mesh_names = st.text(
    st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp", "Cf", "Co", "Cn")),
    min_size=1,
    max_size=20,
).filter(lambda s: s.isprintable())


@given(name=mesh_names, secret=st.binary(min_size=32, max_size=32))
def test_join_code_round_trips(name: str, secret: bytes) -> None:
    invite = Invite(mesh=name, secret=secret, inviter=INVITER)
    code = encode_invite(invite)
    assert code.startswith(CODE_PREFIX)
    assert decode_invite(code) == invite
    assert decode_invite("  " + code.upper() + "\n") == invite
    assert decode_invite(CODE_PREFIX + code[len(CODE_PREFIX) :].replace("-", "")) == invite


@given(data=st.data())
def test_any_single_typo_is_caught(data: st.DataObject) -> None:
    code = encode_invite(Invite(mesh="shop", secret=b"\x01" * 32, inviter=INVITER))
    body = code[len(CODE_PREFIX) :]
    positions = [i for i, c in enumerate(body) if c != "-"]
    i = data.draw(st.sampled_from(positions))
    replacement = data.draw(
        st.sampled_from("abcdefghijklmnopqrstuvwxyz234567").filter(lambda c: c != body[i])
    )
    typo = CODE_PREFIX + body[:i] + replacement + body[i + 1 :]
    with pytest.raises(ConfigError):
        decode_invite(typo)


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("hello", "starts with"),
        (CODE_PREFIX + "!!!!", "cannot be in one"),
        (CODE_PREFIX + "aaaa", "checksum"),
    ],
)
def test_malformed_codes_are_refused_clearly(code: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        decode_invite(code)


def test_truncated_code_is_refused() -> None:
    code = encode_invite(Invite(mesh="shop", secret=b"\x01" * 32, inviter=INVITER))
    for cut in range(len(CODE_PREFIX) + 1, len(code) - 1, 7):
        with pytest.raises(ConfigError):
            decode_invite(code[:cut])


def test_mesh_file_is_private_and_round_trips(tmp_path: Path) -> None:
    mesh = new_mesh("lab")
    mesh.trust([INVITER])
    save_mesh(tmp_path, mesh)
    assert stat.S_IMODE(os.stat(tmp_path / MESH_FILE).st_mode) == 0o600
    loaded = load_mesh(tmp_path)
    assert (loaded.name, loaded.secret, loaded.allowlist) == ("lab", mesh.secret, {INVITER})


def test_exposed_mesh_file_is_refused(tmp_path: Path) -> None:
    save_mesh(tmp_path, new_mesh("lab"))
    os.chmod(tmp_path / MESH_FILE, 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        load_mesh(tmp_path)


def test_missing_mesh_says_how_to_join(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="blazemesh join"):
        load_mesh(tmp_path)


@pytest.mark.parametrize(
    "content",
    [
        "{",
        "[]",
        '{"mesh": "x"}',
        '{"mesh": "x", "secret": "AAAA"}',
        '{"mesh": "x", "secret": "%%"}',
    ],
)
def test_malformed_mesh_file_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / MESH_FILE
    path.write_text(content)
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match=r"mesh\.json"):
        load_mesh(tmp_path)


def test_fresh_meshes_have_distinct_secrets() -> None:
    assert new_mesh("a").secret != new_mesh("a").secret


@pytest.mark.parametrize("name", ["", "x" * 65, "tab\there"])
def test_bad_mesh_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="mesh name"):
        new_mesh(name)


def test_allowlist_mode_and_change_listeners() -> None:
    mesh = new_mesh("lab")
    a, b = b"\x0a" * 16, b"\x0b" * 16
    assert mesh.allows(a)  # no allowlist: the secret is enough
    mesh.trust([a])
    assert mesh.allows(a)
    assert not mesh.allows(b)
    changes: list[set[bytes] | None] = []
    stop = mesh.on_change(
        lambda: changes.append(None if mesh.allowlist is None else set(mesh.allowlist))
    )
    assert mesh.revoke(a)
    assert not mesh.revoke(a)
    assert changes == [set()]
    assert not mesh.allows(a)
    edited = new_mesh("lab2")
    mesh.update(edited)
    assert (mesh.name, mesh.secret, mesh.allowlist) == ("lab2", edited.secret, None)
    assert changes == [set(), None]
    stop()
    mesh.trust([b])
    mesh.revoke(b)
    assert changes == [set(), None]

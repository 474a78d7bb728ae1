from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blazemesh.protocol.errors import LocalProtocolError
from blazemesh.protocol.ids import (
    NODE_ID_BYTES,
    NODE_ID_TEXT_CHARS,
    node_id_from_public_key,
    node_id_short,
    node_id_text,
    parse_node_id,
)

from .strategies import node_ids

public_keys = st.binary(min_size=32, max_size=32)
TEXT_RE = re.compile(r"[a-z2-7]{26}")
B32 = "abcdefghijklmnopqrstuvwxyz234567"


def test_derivation_golden_value() -> None:
    # Pinned: node ids are part of the protocol; any change to the derivation breaks meshes.
    assert node_id_text(node_id_from_public_key(bytes(32))) == "qyy2jrgq5ewzttkhqi3qpg5try"


@given(public_keys)
def test_derivation_is_deterministic_and_16_bytes(key: bytes) -> None:
    node_id = node_id_from_public_key(key)
    assert isinstance(node_id, bytes)
    assert len(node_id) == NODE_ID_BYTES == 16
    assert node_id_from_public_key(bytes(key)) == node_id


@given(public_keys, public_keys)
def test_different_keys_give_different_ids(a: bytes, b: bytes) -> None:
    assert (node_id_from_public_key(a) == node_id_from_public_key(b)) == (a == b)


def test_derivation_is_not_a_plain_prefix_or_unpersonalised_hash() -> None:
    import hashlib

    key = bytes(range(32))
    node_id = node_id_from_public_key(key)
    assert node_id != key[:16]
    assert node_id != hashlib.blake2b(key, digest_size=16).digest()


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_derivation_refuses_wrong_key_length(size: int) -> None:
    with pytest.raises(LocalProtocolError, match=f"got {size}"):
        node_id_from_public_key(bytes(size))


@given(node_ids())
def test_text_form_and_round_trip(node_id: bytes) -> None:
    text = node_id_text(node_id)
    assert len(text) == NODE_ID_TEXT_CHARS == 26
    assert TEXT_RE.fullmatch(text)
    assert parse_node_id(text) == node_id


@given(node_ids(), st.data())
def test_parse_is_case_insensitive_and_ignores_dashes(node_id: bytes, data: st.DataObject) -> None:
    text = node_id_text(node_id)
    mixed = "".join(c.upper() if data.draw(st.booleans()) else c for c in text)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=5)))
    dashed = mixed
    for cut in reversed(cuts):
        dashed = dashed[:cut] + "-" + dashed[cut:]
    assert parse_node_id(dashed) == node_id
    assert parse_node_id(text.upper()) == node_id
    assert parse_node_id(f"  {text}\n") == node_id


@given(node_ids())
def test_short_form(node_id: bytes) -> None:
    short = node_id_short(node_id)
    text = node_id_text(node_id)
    assert re.fullmatch(r"[a-z2-7]{4}-[a-z2-7]{4}", short)
    assert short == f"{text[:4]}-{text[4:8]}"


def test_text_refuses_wrong_length() -> None:
    for size in (0, 15, 17, 32):
        with pytest.raises(LocalProtocolError, match=f"got {size}"):
            node_id_text(bytes(size))
        with pytest.raises(LocalProtocolError):
            node_id_short(bytes(size))


VALID = node_id_text(bytes(range(16)))


@pytest.mark.parametrize(
    "text",
    [
        "",
        VALID[:-1],  # 25 characters
        VALID + "a",  # 27 characters
        VALID[:-1] + "0",  # not in the base32 alphabet
        VALID[:-1] + "1",
        VALID[:-1] + "8",
        "!" + VALID[1:],
        VALID[:-2] + "==",
        VALID[:10] + " " + VALID[11:],
        VALID[:-1] + "b",  # a non-zero trailing bit: not canonical
        VALID[:-1] + "d",
        VALID[:-1] + "7",
    ],
)
def test_parse_refuses_bad_text(text: str) -> None:
    with pytest.raises(LocalProtocolError):
        parse_node_id(text)


@given(node_ids(), st.sampled_from(B32))
def test_only_canonical_last_characters_parse(node_id: bytes, last: str) -> None:
    # 26 characters carry 130 bits: the last character's two low bits must be zero.
    text = node_id_text(node_id)[:-1] + last
    if B32.index(last) & 0b11:
        with pytest.raises(LocalProtocolError, match="canonical"):
            parse_node_id(text)
    else:
        assert node_id_text(parse_node_id(text)) == text


@pytest.mark.parametrize(("lookalike", "ascii_upper"), [("\u0131", "I"), ("\u017f", "S")])
def test_parse_refuses_non_ascii_lookalikes(lookalike: str, ascii_upper: str) -> None:
    # str.upper() maps these to ASCII letters; a node id is ASCII base32 only.
    assert lookalike.upper() == ascii_upper
    text = node_id_text(bytes(16)).replace("a", lookalike)  # bytes(16) is all "a"s
    assert lookalike in text
    with pytest.raises(LocalProtocolError, match="base32"):
        parse_node_id(text)

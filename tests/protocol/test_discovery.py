"""Adverts: the TXT record round-trips, and anything else is refused with one error type."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.discovery import (
    MAX_TXT_VALUE_BYTES,
    MESH_TAG_CHARS,
    AdvertInfo,
    encode_txt,
    mesh_tag,
    parse_txt,
)
from protocol.errors import InvalidRemoteDataError

secrets = st.binary(min_size=32, max_size=32)
infos = st.builds(
    AdvertInfo,
    node_id=st.binary(min_size=16, max_size=16),
    version=st.integers(1, 65_535),
    mesh_tag=secrets.map(mesh_tag),
    hub_eligible=st.booleans(),
)


def as_props(txt: dict[str, str]) -> dict[bytes, bytes | None]:
    return {k.encode(): v.encode() for k, v in txt.items()}


@given(infos)
def test_the_txt_record_round_trips(info: AdvertInfo) -> None:
    assert parse_txt(as_props(encode_txt(info))) == info


@given(secrets, secrets)
def test_the_mesh_tag_is_stable_per_secret_and_differs_between_secrets(a: bytes, b: bytes) -> None:
    assert mesh_tag(a) == mesh_tag(a)
    assert len(mesh_tag(a)) == MESH_TAG_CHARS
    assert (mesh_tag(a) == mesh_tag(b)) == (a == b)


def test_the_mesh_tag_matches_the_spec_vector() -> None:
    # docs/protocol.md section 9: base32(BLAKE2b(data="blazemesh mesh tag v1",
    # key=secret, digest_size=10)), lower case; this vector is for other implementations.
    assert mesh_tag(bytes(range(32))) == "hsof6fsbnm3c3x4w"


@given(
    st.dictionaries(
        st.sampled_from([b"v", b"id", b"m", b"h", b"x"]),
        st.none() | st.binary(max_size=2 * MAX_TXT_VALUE_BYTES),
        max_size=5,
    )
)
def test_any_props_parse_or_raise_invalid_remote_data(props: dict[bytes, bytes | None]) -> None:
    try:
        info = parse_txt(props)
    except InvalidRemoteDataError:
        return
    assert parse_txt(as_props(encode_txt(info))) == info


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({b"v": None}, "no 'v'"),
        ({b"v": b"0"}, "not a version"),
        ({b"v": b"99999999"}, "not a version"),
        ({b"v": b"-1"}, "not a version"),
        ({b"id": b"nope"}, "node id"),
        ({b"m": b"short"}, "mesh tag"),
        ({b"m": b"A" * MESH_TAG_CHARS}, "mesh tag"),
        ({b"id": b"x" * 65}, "not ours"),
        ({b"m": "é".encode() * 8}, "not ours"),
    ],
)
def test_malformed_records_say_why(change: dict[bytes, bytes | None], why: str) -> None:
    good = as_props(
        encode_txt(AdvertInfo(node_id=b"\1" * 16, version=1, mesh_tag=mesh_tag(bytes(32))))
    )
    with pytest.raises(InvalidRemoteDataError, match=why):
        parse_txt({**good, **change})

"""Adverts: the TXT record round-trips, and anything else is refused with one error type."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blazemesh.protocol.discovery import (
    MAX_ADVERT_ADDRESSES,
    MAX_TXT_VALUE_BYTES,
    MESH_TAG_CHARS,
    AdvertInfo,
    encode_txt,
    host_label,
    instance_label,
    mesh_tag,
    parse_endpoints,
    parse_txt,
)
from blazemesh.protocol.errors import InvalidRemoteDataError, LocalProtocolError

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


def test_versions_have_one_spelling() -> None:
    good = as_props(
        encode_txt(AdvertInfo(node_id=b"\1" * 16, version=1, mesh_tag=mesh_tag(bytes(32))))
    )
    for spelling in (b"01", b"+1", b" 1", b"1.0", "\u0661".encode()):  # an Arabic-Indic 1
        with pytest.raises(InvalidRemoteDataError):
            parse_txt({**good, b"v": spelling})


@given(
    st.dictionaries(
        st.binary(max_size=8) | st.sampled_from([b"v", b"id", b"m", b"h"]),
        st.none() | st.binary(max_size=4 * MAX_TXT_VALUE_BYTES) | infos.map(repr).map(str.encode),
        max_size=12,
    )
)
def test_arbitrary_keys_and_values_only_raise_invalid_remote_data(
    props: dict[bytes, bytes | None],
) -> None:
    with contextlib.suppress(InvalidRemoteDataError):
        parse_txt(props)


@given(st.binary(max_size=96).filter(lambda b: len(b) != 32))
def test_a_mesh_tag_needs_a_32_byte_secret(secret: bytes) -> None:
    with pytest.raises(LocalProtocolError, match="32 bytes"):
        mesh_tag(secret)


@pytest.mark.parametrize(
    "info",
    [
        AdvertInfo(node_id=b"\1" * 16, version=0, mesh_tag=mesh_tag(bytes(32))),
        AdvertInfo(node_id=b"\1" * 16, version=65_536, mesh_tag=mesh_tag(bytes(32))),
        AdvertInfo(node_id=b"\1" * 16, version=1, mesh_tag="not a tag"),
        AdvertInfo(node_id=b"\1" * 15, version=1, mesh_tag=mesh_tag(bytes(32))),
    ],
)
def test_this_node_cannot_advertise_what_no_peer_would_accept(info: AdvertInfo) -> None:
    with pytest.raises(LocalProtocolError):
        encode_txt(info)


@given(st.binary(min_size=16, max_size=16))
def test_names_fit_a_dns_label(node_id: bytes) -> None:
    # RFC 6763 §4.1.1: an instance name is at most 63 bytes; so is a host label (RFC 1035).
    instance, host = instance_label(node_id), host_label(node_id)
    assert instance.startswith("blazemesh-")
    assert len(instance) <= 63 - len("-99")  # room for a rename
    assert host.startswith("blazemesh-")
    assert len(host) <= 63
    assert host.removeprefix("blazemesh-").startswith(
        instance.removeprefix("blazemesh-").replace("-", "")
    )


hosts = st.ip_addresses().map(str)


@given(st.lists(hosts, min_size=1, max_size=MAX_ADVERT_ADDRESSES), st.integers(1, 65_535))
def test_endpoints_pair_each_address_with_the_port(addresses: list[str], port: int) -> None:
    endpoints = parse_endpoints(addresses, port)
    assert endpoints == tuple(dict.fromkeys((a, port) for a in addresses))


@given(
    st.lists(hosts | st.text(max_size=80), max_size=2 * MAX_ADVERT_ADDRESSES),
    st.none() | st.integers(-(2**20), 2**20),
)
def test_any_endpoints_parse_or_raise_invalid_remote_data(
    addresses: list[str], port: int | None
) -> None:
    with contextlib.suppress(InvalidRemoteDataError):
        endpoints = parse_endpoints(addresses, port)
        assert 0 < len(endpoints) <= MAX_ADVERT_ADDRESSES


@pytest.mark.parametrize(
    ("addresses", "port", "why"),
    [
        ([], 7420, "no address"),
        (["127.0.0.1"] * (MAX_ADVERT_ADDRESSES + 1), 7420, "more than"),
        (["host.example"], 7420, "not an IP address"),
        (["127.0.0.1"], 0, "port"),
        (["127.0.0.1"], None, "port"),
        (["fe80::1%eth0"], 7420, None),
    ],
)
def test_endpoint_limits(addresses: list[str], port: int | None, why: str | None) -> None:
    if why is None:
        assert parse_endpoints(addresses, port) == ((addresses[0], port),)
    else:
        with pytest.raises(InvalidRemoteDataError, match=why):
            parse_endpoints(addresses, port)


def test_the_mesh_tag_of_a_zero_secret_matches_the_spec_vector() -> None:
    assert mesh_tag(bytes(32)) == "bzsaxy4ip7kjz46b"  # docs/protocol.md section 9.2

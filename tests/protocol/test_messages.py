"""Sync messages other than CHANGES: round trips, and hostile PRUNE, GRAFT and HAVE."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.codec.messages import (
    Ack,
    Graft,
    Have,
    Hello,
    Kind,
    MessageDecoder,
    MessageEncoder,
    Ping,
    Pong,
    Prune,
    Summary,
)
from protocol.errors import DecodeError, InvalidRemoteDataError
from protocol.vv import VersionVector

from .strategies import node_ids


def decode_one(data: bytes) -> object:
    decoder = MessageDecoder()
    decoder.feed(data)
    (message,) = list(decoder)
    return message


@pytest.mark.parametrize(
    "message",
    [
        Ack(batch=7),
        Ping(token=3),
        Pong(token=3),
        Prune(),
        Graft(),
        Summary(vv=VersionVector.from_parts({b"\x01" * 16: 4}, {b"\x01" * 16: [9]})),
        Have(vv=VersionVector.from_parts({b"\x02" * 16: 1}, {})),
        Hello(version=1, node_id=b"\x02" * 16, vv=VersionVector(), meta={"k": 1}),
    ],
)
def test_messages_round_trip(message: object) -> None:
    assert decode_one(MessageEncoder().encode(message)) == message  # type: ignore[arg-type]


@given(st.dictionaries(node_ids(), st.integers(0, 2**40), max_size=8))
def test_have_round_trips_any_part_of_a_vector(bases: dict[bytes, int]) -> None:
    have = Have(vv=VersionVector.from_parts(bases, {}))
    assert decode_one(MessageEncoder().encode(have)) == have


@pytest.mark.parametrize(
    "body",
    [
        [Kind.PRUNE.value, []],  # PRUNE and GRAFT carry nothing
        [Kind.GRAFT.value, None],
        [Kind.HAVE.value],
        [Kind.HAVE.value, [b"\x01" * 15, 1, None]],  # a short origin
        [Kind.HAVE.value, [b"\x01" * 16, -1, None]],
        [Kind.HAVE.value, [b"\x01" * 16, 1]],
    ],
)
def test_malformed_prune_graft_and_have_are_refused(body: list[object]) -> None:
    with pytest.raises((DecodeError, InvalidRemoteDataError)):
        decode_one(msgpack.packb(body))


@given(st.lists(st.one_of(st.binary(max_size=20), st.integers(-(2**63), 2**64 - 1), st.none())))
def test_random_have_bodies_decode_or_fail_cleanly(items: list[object]) -> None:
    try:
        message = decode_one(msgpack.packb([Kind.HAVE.value, items]))
    except DecodeError:
        return
    assert isinstance(message, Have)
    assert all(len(origin) == 16 for origin in message.vv.origins())

"""The control protocol's frames: round trips in any chunking, and nothing but
`RemoteProtocolError` for bad bytes, however they are cut."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blazemesh.protocol.codec.control import (
    MAX_CONTROL_FRAME_BYTES,
    Failure,
    Frame,
    ReplyDecoder,
    Request,
    RequestDecoder,
    Result,
    StreamEvent,
    change_event,
    encode_frame,
    op_map,
    parse_op,
)
from blazemesh.protocol.errors import DecodeError, RemoteProtocolError
from blazemesh.protocol.ids import node_id_text
from blazemesh.protocol.model import Change, Delete, Put

from .strategies import changes

scalars = st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 63) - 1) | st.text(max_size=20)
values = st.recursive(
    scalars | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
ids = st.integers(0, (1 << 63) - 1)
requests = st.builds(
    Request,
    id=ids,
    op=st.text(min_size=1, max_size=64),
    args=st.dictionaries(st.text(max_size=8), values, max_size=4),
)
replies = (
    st.builds(Result, id=ids, value=values)
    | st.builds(StreamEvent, id=ids, value=values)
    | st.builds(Failure, id=ids, code=st.text(max_size=16), message=st.text(max_size=40))
)


def feed_in_pieces(
    decoder: RequestDecoder | ReplyDecoder, data: bytes, cuts: list[int]
) -> list[Frame]:
    out: list[Frame] = []
    start = 0
    for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
        decoder.feed(data[start:cut])
        start = max(start, cut)
        out.extend(decoder)
    return out


@given(st.lists(requests, max_size=5), st.lists(st.integers(0, 1 << 16), max_size=8))
def test_requests_round_trip_in_any_chunking(frames: list[Request], cuts: list[int]) -> None:
    data = b"".join(encode_frame(f) for f in frames)
    assert feed_in_pieces(RequestDecoder(), data, cuts) == frames


@given(st.lists(replies, max_size=5), st.lists(st.integers(0, 1 << 16), max_size=8))
def test_replies_round_trip_in_any_chunking(frames: list[Frame], cuts: list[int]) -> None:
    data = b"".join(encode_frame(f) for f in frames)
    assert feed_in_pieces(ReplyDecoder(), data, cuts) == frames


def framed(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


hostile_bodies = st.one_of(
    st.binary(max_size=64),
    st.builds(msgpack.packb, values),
    st.builds(
        msgpack.packb,
        st.dictionaries(
            st.sampled_from(["id", "op", "args", "ok", "event", "error", "x"]), values, max_size=4
        ),
    ),
)


@settings(max_examples=300)
@given(st.lists(hostile_bodies, min_size=1, max_size=4), st.booleans())
def test_garbage_raises_only_remote_protocol_errors(bodies: list[bytes], requests: bool) -> None:
    decoder = RequestDecoder() if requests else ReplyDecoder()
    try:
        decoder.feed(b"".join(framed(b) for b in bodies))
        for frame in decoder:
            assert isinstance(frame, Request if requests else Result | StreamEvent | Failure)
    except RemoteProtocolError:
        pass


def test_an_oversized_frame_is_refused_from_its_header_alone() -> None:
    decoder = RequestDecoder()
    with pytest.raises(DecodeError, match="exceeds the limit"):
        decoder.feed(struct.pack(">I", MAX_CONTROL_FRAME_BYTES + 1))


def test_an_oversized_frame_after_a_good_one_is_refused_at_once() -> None:
    decoder = RequestDecoder()
    good = encode_frame(Request(id=1, op="info", args={}))
    decoder.feed(good + struct.pack(">I", 1 << 31))
    with pytest.raises(DecodeError):
        list(decoder)


def test_encoding_refuses_a_frame_over_the_limit() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        encode_frame(Result(id=1, value=b"x" * MAX_CONTROL_FRAME_BYTES))


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ([1, "info", {}], "a msgpack map"),
        ({"op": "info"}, "id must be"),
        ({"id": -1, "op": "info"}, "id must be"),
        ({"id": 1, "op": ""}, "op must be"),
        ({"id": 1, "op": "x" * 65}, "op must be"),
        ({"id": 1, "op": "info", "args": [1]}, "args must be a map"),
        ({"id": 1, "op": "info", "extra": 1}, "unknown keys"),
    ],
)
def test_malformed_requests_say_what_is_wrong(body: object, why: str) -> None:
    decoder = RequestDecoder()
    decoder.feed(framed(msgpack.packb(body)))
    with pytest.raises(DecodeError, match=why):
        list(decoder)


@given(changes())
def test_ops_survive_the_control_encoding(change: Change) -> None:
    event = change_event(7, change)
    assert event["origin"] == node_id_text(change.origin)
    assert isinstance(event["ops"], list)
    assert tuple(parse_op(op) for op in event["ops"]) == change.ops


def test_a_watch_event_keeps_only_the_collection_asked_for() -> None:
    put = Put(collection="a", key="k", fields={"x": 1})
    gone = Delete(collection="b", key="k")
    change = Change(origin=b"\x01" * 16, seq=3, hlc=5, ops=(put, gone))
    assert change_event(9, change, "b")["ops"] == [op_map(gone)]


@pytest.mark.parametrize(
    "value",
    [
        None,
        [],
        {"op": "put", "collection": "a", "key": "k"},
        {"op": "put", "collection": "a", "key": "k", "fields": []},
        {"op": "delete", "collection": "a", "key": "k", "fields": {}},
        {"op": "upsert", "collection": "a", "key": "k"},
        {"op": "delete", "collection": 1, "key": "k"},
    ],
)
def test_parse_op_refuses_any_other_shape(value: object) -> None:
    with pytest.raises(DecodeError, match="an op is"):
        parse_op(value)  # type: ignore[arg-type]

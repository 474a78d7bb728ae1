"""Whatever bytes a peer sends, the codec raises `RemoteProtocolError` (or a subclass) or
returns changes that pass the data-model rules: nothing else gets out (rule 5 of the house).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blazemesh.protocol.codec import (
    MAX_BATCH_BYTES,
    ChangeDecoder,
    ChangeEncoder,
    decode_batch,
    decode_change,
    encode_batch,
    encode_change,
)
from blazemesh.protocol.codec.bounds import MAX_CONTAINER_ITEMS
from blazemesh.protocol.errors import DecodeError, InvalidRemoteDataError, RemoteProtocolError
from blazemesh.protocol.hlc import MAX_MS
from blazemesh.protocol.model import (
    MAX_FIELDS_PER_PUT,
    MAX_KEY_BYTES,
    MAX_OPS_PER_CHANGE,
    MAX_SEQ,
    MAX_VALUE_DEPTH,
    Change,
    Delete,
    Put,
)

from .strategies import assert_valid_change, changes

FUZZ = settings(max_examples=150)
ORIGIN = bytes(range(16))


def _prebuilt() -> list[bytes]:
    """Hand-made valid encodings covering every feature; cheap to draw from."""
    o1, o2 = ORIGIN, b"\xee" * 16
    now = 1_760_000_000_000 << 16
    put = Put(collection="bugs", key="k1", fields={"title": "t", "n": -5, "ok": True})
    rich = Put(
        collection="_sys",
        key="é" * 20,
        fields={"v": [1.5, None, b"\0", {"m": ["x", {"": -(1 << 63)}]}], "_f": (1 << 63) - 1},
    )
    gone = Delete(collection="bugs", key="k2")
    one = [
        Change(origin=o1, seq=1000, hlc=now + 3, ops=(put,)),
        Change(origin=o2, seq=1, hlc=1, ops=(gone,)),
        Change(origin=o1, seq=1001, hlc=now + (40 << 16), ops=(put, gone, rich)),
        Change(origin=o2, seq=(1 << 63) - 1, hlc=(1 << 63) - 3, ops=(rich, put, gone)),
    ]
    out = [encode_change(c) for c in one]
    out += [encode_batch(one), encode_batch(one[:1] + one[2:3]), encode_batch(one[::-1])]
    return out


PREBUILT = _prebuilt()
valid_changes = changes(max_ops=2, rich=False)
valid_encodings = st.one_of(
    st.sampled_from(PREBUILT),
    valid_changes.map(encode_change),
    st.lists(valid_changes, min_size=1, max_size=3).map(encode_batch),
)


def test_prebuilt_encodings_are_valid() -> None:
    # The mutation tests start from these: they must decode cleanly before being broken.
    for data in PREBUILT:
        decoded = must_be_clean(data)
        assert decoded
        for change in decoded:
            assert encode_change(change) in PREBUILT


def must_be_clean(data: bytes, decoder: ChangeDecoder | None = None) -> list[Change] | None:
    """Decode ``data`` both ways; a `RemoteProtocolError` is fine, any other exception
    propagates and fails the test, and whatever decodes must be a valid change."""
    out: list[Change] | None = None
    try:
        single = decode_change(data)
    except RemoteProtocolError:
        pass
    else:
        assert_valid_change(single)
        out = [single]
    try:
        batch = decode_batch(data, decoder)
    except RemoteProtocolError:
        return out
    for change in batch:
        assert_valid_change(change)
    return batch


def pk(obj: object) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


# --- random bytes -------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    must_be_clean(data)


@FUZZ
@given(st.lists(st.binary(max_size=120), max_size=8))
def test_random_bytes_with_a_persistent_decoder(messages: list[bytes]) -> None:
    decoder = ChangeDecoder()
    for data in messages:
        must_be_clean(data, decoder)


# Random msgpack objects get much further into the decoder than random bytes.
hostile_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 63), (1 << 64) - 1),
    st.integers(-3, 70_000),
    st.floats(),
    st.text(max_size=6),
    st.sampled_from(["bugs", "title", "_x", ""]),
    st.binary(max_size=18),
    st.just(ORIGIN),
)
msgpack_objects = st.recursive(
    hostile_scalars,
    lambda inner: (
        st.lists(inner, max_size=8)
        | st.dictionaries(st.one_of(st.text(max_size=4), st.binary(max_size=2)), inner, max_size=3)
    ),
    max_leaves=10,
)
# Shaped like a change: a head of four slots, then (collection, key, fields) triples.
change_like = st.builds(
    lambda head, ops: [*head, *(x for op in ops for x in op)],
    st.lists(hostile_scalars, min_size=4, max_size=4),
    st.lists(st.tuples(hostile_scalars, hostile_scalars, msgpack_objects), max_size=3),
)


@settings(max_examples=150)
@given(st.one_of(msgpack_objects, change_like, st.lists(change_like, max_size=4)))
def test_random_msgpack_objects(obj: object) -> None:
    must_be_clean(pk(obj))


@settings(max_examples=100)
@given(st.lists(st.lists(change_like, max_size=3), max_size=3))
def test_random_change_shaped_batches_with_a_persistent_decoder(batches: list[object]) -> None:
    decoder = ChangeDecoder()
    for batch in batches:
        must_be_clean(pk(batch), decoder)


# --- mutations of valid encodings ---------------------------------------------------------


@FUZZ
@given(valid_encodings, st.data())
def test_bit_flips(data: bytes, pick: st.DataObject) -> None:
    mutated = bytearray(data)
    for _ in range(pick.draw(st.integers(1, 3))):
        i = pick.draw(st.integers(0, len(data) - 1))
        mutated[i] ^= 1 << pick.draw(st.integers(0, 7))
    must_be_clean(bytes(mutated))


@settings(max_examples=60)
@given(valid_encodings)
def test_truncation_at_every_position(data: bytes) -> None:
    for end in range(len(data)):
        with pytest.raises(DecodeError):
            decode_change(data[:end])
        with pytest.raises(DecodeError):
            decode_batch(data[:end])


@FUZZ
@given(valid_encodings, st.data())
def test_insertions_deletions_and_overwrites(data: bytes, pick: st.DataObject) -> None:
    i = pick.draw(st.integers(0, len(data)))
    special = st.sampled_from(
        [b"\xdd", b"\xc1", b"\xd4\x05", b"\xd6\xff", b"\xdc\xff\xff", b"\x91"]
    )
    piece = pick.draw(st.one_of(st.binary(min_size=1, max_size=8), special))
    must_be_clean(data[:i] + piece + data[i:])  # insertion
    j = pick.draw(st.integers(i, len(data)))
    must_be_clean(data[:i] + data[j:])  # deletion
    must_be_clean(data[:i] + piece + data[i + len(piece) :])  # overwrite


@settings(max_examples=100)
@given(valid_encodings, valid_encodings, st.data())
def test_splicing_two_encodings(a: bytes, b: bytes, pick: st.DataObject) -> None:
    i = pick.draw(st.integers(0, len(a)))
    j = pick.draw(st.integers(0, len(b)))
    must_be_clean(a[:i] + b[j:])
    must_be_clean(a + b)
    with pytest.raises(DecodeError, match="malformed"):  # trailing data
        decode_batch(a + b)


HUGE_INTS = [(1 << 64) - 1, 1 << 63, (1 << 63) - 1, -(1 << 63), -1, 0, MAX_SEQ + 1, MAX_MS + 1]
WRONG_TYPES: list[object] = [
    *HUGE_INTS,
    None,
    True,
    False,
    1.5,
    float("nan"),
    "",
    "x",
    "_x",
    "k" * 1025,
    b"",
    ORIGIN,
    b"\0" * 15,
    [],
    [None],
    {},
    {"a": 1},
    {b"a": 1},
    msgpack.ExtType(5, b"x"),
    msgpack.ExtType(5, b""),
    msgpack.Timestamp(0, 0),
    msgpack.Timestamp(1 << 40, 999_999_999),
]
for _depth in (MAX_VALUE_DEPTH, MAX_VALUE_DEPTH + 1, 40):
    _bomb: object = 0
    for _ in range(_depth):
        _bomb = [_bomb]
    WRONG_TYPES.append(_bomb)


def paths(obj: object, prefix: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    """Every position inside nested lists (maps are leaves here)."""
    out = [prefix]
    if isinstance(obj, list):
        for i, item in enumerate(obj):
            out += paths(item, (*prefix, i))
    return out


def replaced(obj: object, path: tuple[int, ...], new: object) -> object:
    if not path:
        return new
    assert isinstance(obj, list)
    copy = list(obj)
    copy[path[0]] = replaced(copy[path[0]], path[1:], new)
    return copy


@FUZZ
@given(valid_encodings, st.data())
def test_any_position_replaced_by_a_hostile_value(data: bytes, pick: st.DataObject) -> None:
    obj = msgpack.unpackb(data, raw=False)
    path = pick.draw(st.sampled_from(paths(obj)))
    new = pick.draw(st.sampled_from(WRONG_TYPES))
    must_be_clean(pk(replaced(obj, path, new)))


TYPICAL = Change(
    origin=ORIGIN,
    seq=7,
    hlc=(1_760_000_000_000 << 16) | 3,
    ops=(
        Put(collection="bugs", key="k1", fields={"title": "t", "tags": ["a", {"b": 1}]}),
        Delete(collection="bugs", key="k2"),
        Put(collection="notes", key="k3", fields={"title": None}),
    ),
)


def typical_item() -> list[object]:
    item = msgpack.unpackb(encode_change(TYPICAL), raw=False)
    assert isinstance(item, list)
    return item


def test_every_position_with_every_wrong_type() -> None:
    item = typical_item()
    for path in paths(item):
        for new in WRONG_TYPES:
            must_be_clean(pk(replaced(item, path, new)))
            must_be_clean(pk([item, replaced(item, path, new)]))


# --- bombs and declared lengths -----------------------------------------------------------


def _nest(depth: int, inner: bytes = b"\xc0") -> bytes:
    return b"\x91" * depth + inner


# A change header up to the fields slot, to put a hostile fields/value encoding after it.
PREFIX = b"\x97" + pk(ORIGIN) + pk(1) + pk(1) + pk(0) + pk("c") + pk("k")

BOMBS = [
    b"",
    b"\xc1",  # never used
    _nest(100),
    _nest(2_000),
    _nest(200_000),
    b"\xdd\xff\xff\xff\xff",  # array32 claiming 2**32 - 1 items
    b"\xdd\x00\x10\x00\x01" + b"\xc0" * 16,  # one over MAX_CONTAINER_ITEMS
    b"\xdf\xff\xff\xff\xff",  # map32
    b"\xdb\xff\xff\xff\xff",  # str32
    b"\xc6\xff\xff\xff\xff",  # bin32
    b"\xc9\xff\xff\xff\xff\x05",  # ext32
    b"\xdc\xff\xff",  # array16 with no items
    b"\xd4\x05\x00",  # fixext 1
    b"\xc7\x03\x05abc",  # ext 8
    b"\xc7\x00\x05",  # ext 8, empty: passes max_ext_len=0
    b"\xc7\x00\xff",  # empty timestamp
    b"\xd6\xff\x00\x00\x00\x01",  # timestamp 32
    b"\xd7\xff" + b"\x00" * 8,  # timestamp 64
    b"\xc7\x0c\xff" + b"\x00" * 12,  # timestamp 96
    b"\xd9\x02\xed\xa0",  # str8 holding a UTF-8-encoded surrogate (invalid UTF-8)
    b"\xa2\xff\xfe",  # invalid UTF-8
    b"\x81\x01\x02",  # int map key
    b"\x81\x90\x02",  # array map key
]


@pytest.mark.parametrize("bomb", BOMBS, ids=range(len(BOMBS)))
def test_bombs_alone_inside_a_change_and_inside_a_batch(bomb: bytes) -> None:
    must_be_clean(bomb)
    must_be_clean(PREFIX + bomb)  # as the fields of a put
    must_be_clean(PREFIX + b"\x92\xa1f" + bomb)  # as a field value
    must_be_clean(b"\x91" + bomb)  # as the only change of a batch
    must_be_clean(b"\x92" + encode_change(TYPICAL) + bomb)  # after a valid change


def test_nesting_bomb_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        decode_batch(_nest(200_000))


def test_huge_declared_length_is_refused_without_allocating() -> None:
    with pytest.raises(DecodeError):
        decode_batch(b"\xdd\xff\xff\xff\xff")
    with pytest.raises(DecodeError):
        decode_batch(b"\xdd" + (MAX_CONTAINER_ITEMS + 1).to_bytes(4, "big"))


def test_oversized_input_is_refused_before_parsing() -> None:
    with pytest.raises(DecodeError, match="exceeds the limit"):
        decode_batch(b"\xc0" * (MAX_BATCH_BYTES + 1))


def test_a_million_nils_is_refused() -> None:
    data = b"\xdd" + MAX_CONTAINER_ITEMS.to_bytes(4, "big") + b"\xc0" * MAX_CONTAINER_ITEMS
    with pytest.raises(DecodeError, match="a change is an array"):
        decode_batch(data)


# --- hostile but well-formed --------------------------------------------------------------


def item(
    *ops: object, origin: object = ORIGIN, seq: object = 1, ms: object = 1, ctr: object = 0
) -> list[object]:
    return [origin, seq, ms, ctr, *ops]


def raises(exc: type[RemoteProtocolError], match: str, batch: Sequence[object]) -> None:
    """Decoding ``batch`` (and its only change, standalone) raises exactly ``exc``."""
    with pytest.raises(exc, match=match) as info:
        decode_batch(pk(batch))
    assert type(info.value) is exc
    if len(batch) == 1:
        with pytest.raises(exc, match=match) as info:
            decode_change(pk(batch[0]))
        assert type(info.value) is exc


def nested_value(depth: int) -> object:
    value: object = 0
    for _ in range(depth):
        value = [value]
    return value


def test_accepted_edge_cases() -> None:
    ok = [
        item("c", "k" * MAX_KEY_BYTES, None),
        item("c", "k", ["f", nested_value(MAX_VALUE_DEPTH)]),
        item("_sys", "_k", ["_f", 1]),  # reserved names are fine from peers (system)
        item("c", "k", [], seq=MAX_SEQ, ms=MAX_MS, ctr=0xFFFF),
    ]
    for change_item in ok:
        (change,) = decode_batch(pk([change_item]))
        assert_valid_change(change)


def test_origin_reference_to_an_empty_table() -> None:
    raises(DecodeError, "origin reference 0 is not in the table", [item("c", "k", None, origin=0)])
    raises(DecodeError, "origin reference -1", [item("c", "k", None, origin=-1)])


def test_negative_delta_producing_seq_zero() -> None:
    batch = [item("c", "k", None, seq=5, ms=10), item("c", "k", None, origin=0, seq=-5, ms=0)]
    raises(InvalidRemoteDataError, "seq out of range: 0", batch)


def test_deltas_out_of_range() -> None:
    batch = [item("c", "k", None, seq=MAX_SEQ), item("c", "k", None, origin=0, seq=1)]
    raises(InvalidRemoteDataError, "seq out of range", batch)
    batch = [item("c", "k", None, ms=MAX_MS), item("c", "k", None, origin=0, ms=1)]
    raises(InvalidRemoteDataError, "milliseconds out of range", batch)
    batch = [item("c", "k", None, ms=5), item("c", "k", None, origin=0, ms=-6)]
    raises(InvalidRemoteDataError, "milliseconds out of range", batch)


def test_counter_of_65536() -> None:
    raises(DecodeError, "counter out of range: 65536", [item("c", "k", None, ctr=65536)])
    raises(DecodeError, "counter out of range: -1", [item("c", "k", None, ctr=-1)])
    raises(DecodeError, "counter out of range: True", [item("c", "k", None, ctr=True)])


def test_stamp_out_of_range() -> None:
    raises(InvalidRemoteDataError, "HLC stamp 0 out of range", [item("c", "k", None, ms=0, ctr=0)])
    two_ops = [item("c", "k", None, "c", "k", None, ms=MAX_MS, ctr=0xFFFF)]
    raises(InvalidRemoteDataError, "out of range for 2 ops", two_ops)
    raises(
        InvalidRemoteDataError, "milliseconds out of range", [item("c", "k", None, ms=MAX_MS + 1)]
    )
    raises(InvalidRemoteDataError, "seq out of range", [item("c", "k", None, seq=0)])


def test_duplicate_field_names() -> None:
    raises(DecodeError, "repeats a field name", [item("c", "k", ["f", 1, "f", 2])])
    # The second time by reference to the interned name ("c" is 0, "f" is 1).
    raises(DecodeError, "repeats a field name", [item("c", "k", ["f", 1, 1, 2])])


def test_key_of_1025_bytes() -> None:
    raises(InvalidRemoteDataError, "key .* is 1025 bytes", [item("c", "k" * 1025, None)])
    raises(InvalidRemoteDataError, "key .* is 1026 bytes", [item("c", "é" * 513, None)])


def test_value_nested_40_deep() -> None:
    batch = [item("c", "k", ["f", nested_value(40)])]
    raises(InvalidRemoteDataError, "nested deeper than 32 levels", batch)
    batch = [item("c", "k", ["f", nested_value(MAX_VALUE_DEPTH + 1)])]
    raises(InvalidRemoteDataError, "nested deeper", batch)


def test_interned_name_cannot_dodge_a_smaller_limit() -> None:
    # A 200-byte field name is valid and interned; referring to it as a collection (limit
    # 128 bytes) must not bypass the collection limit.
    long_field = "f" * 200
    batch = [item("c", "k", [long_field, 1], 1, "k2", None)]
    raises(InvalidRemoteDataError, "collection reference 1 is 200 bytes", batch)
    # The other way round is fine: a collection name is short enough to be a field name.
    (change,) = decode_batch(pk([item("title", "k", [0, 1])]))
    assert_valid_change(change)


def test_bad_values() -> None:
    raises(InvalidRemoteDataError, "NaN", [item("c", "k", ["f", float("nan")])])
    raises(InvalidRemoteDataError, "64 signed bits", [item("c", "k", ["f", (1 << 64) - 1])])
    raises(InvalidRemoteDataError, "map keys must be strings", [item("c", "k", ["f", {b"x": 1}])])
    raises(DecodeError, "malformed msgpack", [item("c", "k", ["f", msgpack.ExtType(1, b"x")])])
    # An empty ext passes max_ext_len=0; the ext hook refuses it, wherever it stands.
    empty_ext = msgpack.ExtType(1, b"")
    refused = "extension type 1 is not part of the protocol"
    raises(DecodeError, refused, [item("c", "k", ["f", empty_ext])])
    raises(DecodeError, refused, [item(empty_ext, "k", None)])
    raises(DecodeError, refused, [item("c", "k", None, seq=empty_ext)])
    raises(DecodeError, "malformed msgpack", [item("c", "k", ["f", msgpack.Timestamp(1, 0)])])


def test_bad_shapes() -> None:
    raises(DecodeError, "a change is an array", [item()])  # no ops
    raises(DecodeError, "a change is an array", [item("c", "k")])
    raises(DecodeError, "a change is an array", [{"origin": ORIGIN}])
    raises(DecodeError, "a change is an array", [None])
    raises(DecodeError, "must be a 16-byte id", [item("c", "k", None, origin=ORIGIN[:15])])
    raises(DecodeError, "must be a 16-byte id", [item("c", "k", None, origin="o" * 16)])
    raises(DecodeError, "must be integers", [item("c", "k", None, seq=True)])
    raises(DecodeError, "must be integers", [item("c", "k", None, ms=1.0)])
    raises(DecodeError, "name/value array", [item("c", "k", ["f"])])
    raises(DecodeError, "name/value array", [item("c", "k", {"f": 1})])
    raises(DecodeError, "collection reference 5", [item(5, "k", None)])
    raises(InvalidRemoteDataError, "collection must be a string", [item(None, "k", None)])
    raises(InvalidRemoteDataError, "key must be a string", [item("c", 0, None)])
    raises(InvalidRemoteDataError, "field must be a string", [item("c", "k", [True, 1])])
    raises(InvalidRemoteDataError, "collection must not be empty", [item("", "k", None)])
    with pytest.raises(DecodeError, match="a batch is an array"):
        decode_batch(pk({"changes": []}))


def test_too_many_ops_and_fields() -> None:
    ops = ["c", "k", None] * (MAX_OPS_PER_CHANGE + 1)
    raises(InvalidRemoteDataError, "65536 ops", [item(*ops)])
    fields: list[object] = []
    for i in range(MAX_FIELDS_PER_PUT + 1):
        fields += [f"f{i}", i]
    raises(InvalidRemoteDataError, f"more than {MAX_FIELDS_PER_PUT}", [item("c", "k", fields)])


def test_decoder_survives_errors_and_keeps_decoding() -> None:
    decoder = ChangeDecoder()
    encoder = ChangeEncoder()
    good = [TYPICAL]
    assert decode_batch(encode_batch(good, encoder), decoder)
    for bomb in BOMBS:
        must_be_clean(bomb, decoder)
    # An error ends the link's context in practice; a fresh pair works as before.
    assert decode_batch(encode_batch(good, ChangeEncoder()), ChangeDecoder())

from __future__ import annotations

import contextlib
from unittest import mock

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blazemesh.protocol import codec
from blazemesh.protocol.codec import (
    ChangeDecoder,
    ChangeEncoder,
    decode_batch,
    decode_change,
    decode_document,
    decode_meta,
    encode_batch,
    encode_change,
    encode_document,
    encode_meta,
)
from blazemesh.protocol.codec import changes as codec_changes
from blazemesh.protocol.crdt import RecordKey, RecordState, apply_change
from blazemesh.protocol.errors import DecodeError
from blazemesh.protocol.hlc import MAX_STAMP, pack
from blazemesh.protocol.model import MAX_CHANGE_BYTES, MAX_SEQ, Change, Delete, Put

from .strategies import (
    assert_valid_change,
    canon_change,
    canon_state,
    canon_value,
    changes,
    crdt_histories,
    node_ids,
    values,
)

ORIGIN_POOL = (b"\x01" * 16, b"\xaa" * 16, bytes(range(16)))
mixed_origins = st.one_of(st.sampled_from(ORIGIN_POOL), node_ids())
# Batches draw cheaper values (scalars and fixed nestings) to keep many changes fast; the
# single-change round trip draws arbitrary nested values.
mixed_changes = changes(origins=mixed_origins, max_ops=3, rich=False)
batches = st.lists(mixed_changes, max_size=6)
NOW_MS = 1_760_000_000_000


def assert_same(decoded: list[Change], original: list[Change]) -> None:
    assert [canon_change(c) for c in decoded] == [canon_change(c) for c in original]
    for change in decoded:
        assert_valid_change(change)


# --- round trips --------------------------------------------------------------------------


@given(changes())
def test_single_change_round_trip(change: Change) -> None:
    data = encode_change(change)
    assert isinstance(data, bytes)
    assert_same([decode_change(data)], [change])
    assert encode_change(change) == data  # a fresh context every time: deterministic


@given(batches)
def test_batch_round_trip(batch: list[Change]) -> None:
    assert_same(decode_batch(encode_batch(batch)), batch)


@settings(max_examples=60)
@given(st.lists(batches, max_size=4))
def test_link_context_stays_in_sync_across_batches(stream: list[list[Change]]) -> None:
    encoder, decoder = ChangeEncoder(), ChangeDecoder()
    for batch in stream:
        assert_same(decode_batch(encode_batch(batch, encoder), decoder), batch)


@settings(max_examples=50)
@given(st.lists(mixed_changes, min_size=1, max_size=6))
def test_items_inside_a_larger_message(batch: list[Change]) -> None:
    # The link packs items into its own messages; decoding item by item must match.
    encoder, decoder = ChangeEncoder(), ChangeDecoder()
    message = encoder.pack({"t": "changes", "items": [encoder.item(c) for c in batch]})
    unpacked = codec.unpack(message, 1 << 20)
    assert isinstance(unpacked, dict)
    assert_same([decoder.change(item) for item in unpacked["items"]], batch)


def put(collection: str, key: str, **fields: object) -> Put:
    return Put(collection=collection, key=key, fields=fields)  # type: ignore[arg-type]


def test_batch_in_context_interns_names_and_origins() -> None:
    origin = ORIGIN_POOL[0]
    batch = [
        Change(
            origin=origin, seq=s, hlc=pack(NOW_MS + s, 0), ops=(put("bugs", f"k{s}", title="x"),)
        )
        for s in range(1, 4)
    ]
    encoder, decoder = ChangeEncoder(), ChangeDecoder()
    first = encode_batch(batch, encoder)
    items = msgpack.unpackb(first)
    assert items[0][:4] == [origin, 1, NOW_MS + 1, 0]
    assert items[1][:4] == [0, 1, 1, 0]  # origin reference, seq and ms deltas
    assert items[1][4] == 0  # "bugs" by reference
    assert items[1][6] == [1, "x"]  # "title" by reference
    assert_same(decode_batch(first, decoder), batch)
    later = [
        Change(
            origin=origin, seq=9, hlc=pack(NOW_MS - 5, 7), ops=(Delete(collection="bugs", key="k"),)
        )
    ]
    data = encode_batch(later, encoder)
    assert msgpack.unpackb(data)[0][:5] == [0, 6, -8, 7, 0]  # negative ms delta is fine
    assert_same(decode_batch(data, decoder), later)
    # Without the context, the references mean nothing: refused, not misread.
    with pytest.raises(DecodeError, match="not in the table"):
        decode_batch(data)


def test_empty_batch() -> None:
    assert decode_batch(encode_batch([])) == []


# --- interning tables overflow ------------------------------------------------------------


def small_tables() -> contextlib.AbstractContextManager[object]:
    """Tables of 3 names and 2 origins, patched where the encoder and decoder read them
    (`protocol.codec.changes`; the package's re-exports are copies)."""
    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch.object(codec_changes, "MAX_TABLE_NAMES", 3))
    stack.enter_context(mock.patch.object(codec_changes, "MAX_TABLE_ORIGINS", 2))
    return stack


@settings(max_examples=40)
@given(st.lists(batches, min_size=1, max_size=3))
def test_overflowing_tables_still_round_trip(stream: list[list[Change]]) -> None:
    with small_tables():
        encoder, decoder = ChangeEncoder(), ChangeDecoder()
        for batch in stream:
            assert_same(decode_batch(encode_batch(batch, encoder), decoder), batch)
            assert_same(decode_batch(encode_batch(batch)), batch)


def test_past_full_tables_names_and_origins_travel_inline_and_references_are_refused() -> None:
    # One name of a collection and one of a field per change: c0 f0 c1 fill the table.
    batch = [
        Change(
            origin=ORIGIN_POOL[i],
            seq=1,
            hlc=pack(NOW_MS, 0),
            ops=(put(f"c{i}", "k", **{f"f{i}": i}),),
        )
        for i in range(3)
    ]
    with small_tables():
        encoder, decoder = ChangeEncoder(), ChangeDecoder()
        assert_same(decode_batch(encode_batch(batch, encoder), decoder), batch)
        items = msgpack.unpackb(encode_batch(batch, encoder))
        assert [item[0] for item in items] == [0, 1, ORIGIN_POOL[2]]  # 2 origins interned
        names = [(item[4], item[6][0]) for item in items]
        assert names == [(0, 1), (2, "f1"), ("c2", "f2")]  # 3 names interned
        # A peer that refers past the bound is refused: the decoder interned no more.
        with pytest.raises(DecodeError, match="reference 3 is not in the table"):
            decode_batch(msgpack.packb([[0, 1, 0, 0, 3, "k", None]]), decoder)
        with pytest.raises(DecodeError, match="origin reference 2 is not in the table"):
            decode_batch(msgpack.packb([[2, 1, 0, 0, 0, "k", None]]), decoder)


def test_overflow_with_the_real_limits() -> None:
    n_names = codec.MAX_TABLE_NAMES + 50
    n_origins = codec.MAX_TABLE_ORIGINS + 50
    origins = [i.to_bytes(16, "big") for i in range(n_origins)]
    stream = []
    for round_ in range(3):  # every name and origin comes back after the tables are full
        batch = []
        for i in range(n_origins):
            name = f"f{(i * 7 + round_) % n_names}"
            batch.append(
                Change(
                    origin=origins[i],
                    seq=round_ + 1,
                    hlc=pack(NOW_MS + round_, i % 100),
                    ops=(Put(collection=f"c{i % n_names}", key="k", fields={name: i}),),
                )
            )
        stream.append(batch)
    encoder, decoder = ChangeEncoder(), ChangeDecoder()
    for batch in stream:
        assert_same(decode_batch(encode_batch(batch, encoder), decoder), batch)
    last = msgpack.unpackb(encode_batch(stream[0], encoder))
    assert last[0][0] == 0  # interned origin
    assert last[-1][0] == origins[-1]  # beyond the table: travels inline every time
    assert last[-1][1] == 1  # and its seq is absolute, not a delta


# --- sizes --------------------------------------------------------------------------------


def typical(seq: int, i: int = 0, origin: bytes = ORIGIN_POOL[2]) -> Change:
    return Change(
        origin=origin,
        seq=seq,
        hlc=pack(NOW_MS + 40 * i, i % 3),
        ops=(
            Put(
                collection="bugs",
                key=f"bug-{seq:012d}",  # 16 characters
                fields={
                    "title": f"Crash on save #{seq:05d}",
                    "priority": i % 5,
                    "open": i % 2 == 0,
                },
            ),
        ),
    )


def test_typical_change_is_at_most_100_bytes() -> None:
    change = typical(1000)
    assert len(change.ops[0].key) == 16
    assert len(change.ops[0].fields["title"]) == 20  # type: ignore[union-attr, arg-type]
    size = len(encode_change(change))
    assert size <= 100, size


def test_typical_batch_is_at_most_60_bytes_per_op() -> None:
    batch = [typical(1000 + i, i) for i in range(100)]
    data = encode_batch(batch)
    assert len(data) / 100 <= 60, len(data) / 100
    assert_same(decode_batch(data), batch)


def test_oversized_change_is_refused() -> None:
    chunk = b"\0" * (1 << 20)
    change = Change(
        origin=ORIGIN_POOL[0],
        seq=1,
        hlc=1,
        ops=(Put(collection="c", key="k", fields={f"f{i}": chunk for i in range(4)}),),
    )
    data = encode_change(change)
    assert len(data) > MAX_CHANGE_BYTES
    with pytest.raises(DecodeError, match="exceeds the limit"):
        decode_change(data)


def test_extremes_round_trip() -> None:
    big = Change(
        origin=b"\xff" * 16,
        seq=MAX_SEQ,
        hlc=MAX_STAMP - 1,
        ops=(Delete(collection="_c", key="k"), Put(collection="c", key="k", fields={})),
    )
    small = Change(origin=bytes(16), seq=1, hlc=1, ops=(Delete(collection="c", key="k"),))
    for batch in ([big], [small], [big, small, big], [small, big, small]):
        assert_same(decode_batch(encode_batch(batch)), batch)
        for change in batch:
            assert_same([decode_change(encode_change(change))], [change])


# --- record storage -----------------------------------------------------------------------


def stored_round_trip(state: RecordState) -> RecordState:
    document = state.document()
    doc_bytes = None if document is None else encode_document(document)
    return decode_meta(
        encode_meta(state), None if doc_bytes is None else decode_document(doc_bytes)
    )


@given(crdt_histories())
def test_record_storage_round_trip(history: list[Change]) -> None:
    states: dict[RecordKey, RecordState] = {}
    for change in history:
        apply_change(change, states)
        for state in states.values():
            back = stored_round_trip(state)
            assert canon_state(back) == canon_state(state)
            assert back.visible == state.visible


@given(st.dictionaries(st.text(min_size=1, max_size=8), values(), max_size=6))
def test_document_round_trip(document: dict[str, object]) -> None:
    back = decode_document(encode_document(document))  # type: ignore[arg-type]
    assert canon_value(back) == canon_value(document)


def test_meta_of_a_fresh_and_a_tombstoned_state() -> None:
    assert canon_state(stored_round_trip(RecordState())) == canon_state(RecordState())
    state = RecordState()
    state.put({"a": [1, 2.5]}, (5, ORIGIN_POOL[0]))
    state.delete((7, ORIGIN_POOL[1]))
    back = stored_round_trip(state)
    assert back.document() is None
    assert canon_state(back) == canon_state(state)

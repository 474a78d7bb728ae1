"""Sync messages other than CHANGES: round trips, and hostile PRUNE, GRAFT and ARCS."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from blazemesh.protocol.codec.messages import (
    MAX_ARCS,
    MAX_REFUSED_RANGES,
    MAX_VV_ORIGINS,
    MAX_VV_RUNS,
    REFUSAL_REASONS,
    Ack,
    Arcs,
    Fingerprints,
    Graft,
    Hello,
    Kind,
    MessageDecoder,
    MessageEncoder,
    Ping,
    Pong,
    Prune,
    Refused,
    Summary,
)
from blazemesh.protocol.errors import DecodeError, InvalidRemoteDataError
from blazemesh.protocol.model import Change, change_objects
from blazemesh.protocol.ring import RING_PLACES
from blazemesh.protocol.vv import VersionVector

from .strategies import changes, node_ids


def decode_one(data: bytes) -> object:
    decoder = MessageDecoder()
    decoder.feed(data)
    (message,) = list(decoder)
    return message


@given(st.lists(node_ids(), unique=True, max_size=20), st.booleans())
def test_prune_and_graft_round_trip(origins: list[bytes], prune: bool) -> None:
    message = Prune(origins=origins) if prune else Graft(origins=origins)
    assert decode_one(MessageEncoder().encode(message)) == message


@pytest.mark.parametrize(
    "message",
    [
        Ack(batch=7),
        Ping(token=3),
        Pong(token=3, clock_ms=1_700_000_000_000),
        Summary(
            vv=VersionVector.from_parts({b"\x01" * 16: 4}, {b"\x01" * 16: [(9, 9)]}),
            fingerprints={b"\x01" * 16: 2**64 - 1},
        ),
        Fingerprints(answer=True, entries=[(b"\x01" * 16, 1, 2**63 - 1, 7)]),
        Fingerprints(answer=False, entries=[]),
        Hello(version=1, node_id=b"\x02" * 16, vv=VersionVector(), clock_ms=5, meta={"k": 1}),
    ],
)
def test_other_messages_round_trip(message: object) -> None:
    assert decode_one(MessageEncoder().encode(message)) == message  # type: ignore[arg-type]


HOSTILE_ORIGINS = [
    None,
    b"\x01" * 16,  # not an array
    [b"\x01" * 15],  # too short
    [b"\x01" * 17],
    ["a" * 16],  # a string, not bytes
    [1],
    [[b"\x01" * 16]],
    [b"\x01" * 16, b"\x01" * 16],  # twice
]


@pytest.mark.parametrize("kind", [Kind.PRUNE, Kind.GRAFT])
@pytest.mark.parametrize("origins", HOSTILE_ORIGINS)
def test_hostile_prune_and_graft_are_refused(kind: Kind, origins: object) -> None:
    with pytest.raises((DecodeError, InvalidRemoteDataError)):
        decode_one(msgpack.packb([kind.value, origins]))


def test_more_origins_than_the_limit_are_refused() -> None:
    origins = [i.to_bytes(16, "big") for i in range(MAX_VV_ORIGINS + 1)]
    with pytest.raises(DecodeError, match="at most"):
        decode_one(msgpack.packb([Kind.PRUNE.value, origins]))


@given(st.lists(st.one_of(st.binary(max_size=20), st.integers(-(2**63), 2**64 - 1), st.none())))
def test_random_prune_bodies_decode_or_fail_cleanly(origins: list[object]) -> None:
    try:
        message = decode_one(msgpack.packb([Kind.GRAFT.value, origins]))
    except DecodeError:
        return
    assert isinstance(message, Graft)
    assert all(type(o) is bytes and len(o) == 16 for o in message.origins)


places = st.integers(0, RING_PLACES - 1)


@given(st.lists(st.tuples(places, places), max_size=8))
def test_arcs_round_trip(arcs: list[tuple[int, int]]) -> None:
    message = Arcs(arcs=arcs)
    assert decode_one(MessageEncoder().encode(message)) == message


@pytest.mark.parametrize(
    "ends",
    [
        None,
        [0],  # half an arc
        [-1, 5],
        [0, "5"],
        [0, 1.5],
        [[0, 1]],  # nested, not flat
        [0, 1] * (MAX_ARCS + 1),
    ],
)
def test_hostile_arcs_are_refused(ends: object) -> None:
    with pytest.raises(DecodeError, match="arcs"):
        decode_one(msgpack.packb([Kind.ARCS.value, ends]))


@given(st.lists(st.one_of(st.integers(-(2**63), 2**64 - 1), st.binary(max_size=9), st.none())))
def test_random_arcs_bodies_decode_or_fail_cleanly(ends: list[object]) -> None:
    try:
        message = decode_one(msgpack.packb([Kind.ARCS.value, ends]))
    except DecodeError:
        return
    assert isinstance(message, Arcs)
    assert all(0 <= end < RING_PLACES for arc in message.arcs for end in arc)


ORIGIN = b"\x01" * 16


@given(st.sets(st.integers(1, 200), max_size=60), st.integers(0, 5))
def test_version_vectors_travel_as_runs(seqs: set[int], base: int) -> None:
    vv = VersionVector.from_parts({ORIGIN: base}, {ORIGIN: [(s, s) for s in seqs]})
    decoded = decode_one(MessageEncoder().encode(Summary(vv=vv, fingerprints={ORIGIN: 0})))
    assert isinstance(decoded, Summary)
    assert decoded.vv == vv


def test_many_early_seqs_in_a_few_runs_encode_within_the_decoders_bounds() -> None:
    """Issue 17, item 6: 4,097 early seqs were sent one by one and no decoder accepted
    the vector that held them, which cut every link for good. In runs they are one."""
    vv = VersionVector.from_parts({ORIGIN: 1}, {ORIGIN: [(3, 3 + MAX_VV_RUNS)]})
    message = Summary(vv=vv, fingerprints={ORIGIN: 5})
    assert decode_one(MessageEncoder().encode(message)) == message


@pytest.mark.parametrize(
    "runs",
    [
        [5],  # half a run
        [6, 5],  # backwards
        [3, 4],  # starts at base + 1: the prefix would hold it
        [2, 2],  # inside the prefix
        [5, 6, 7, 8],  # touching: one run written as two
        [5, 8, 7, 9],  # overlapping
        [8, 9, 5, 6],  # unsorted
        [5, "6"],
        [5, 2**63],  # past MAX_SEQ
        [],  # an empty list is nil
        [10, 10, 12, 12] * MAX_VV_RUNS,  # too many (and unsorted)
    ],
)
def test_hostile_version_vector_runs_are_refused(runs: object) -> None:
    with pytest.raises(DecodeError, match="runs"):
        decode_one(msgpack.packb([Kind.SUMMARY.value, [ORIGIN, 2, runs], [0]]))


def test_more_runs_than_the_limit_are_refused() -> None:
    flat = [s for k in range(MAX_VV_RUNS + 1) for s in (10 + 3 * k, 10 + 3 * k)]
    with pytest.raises(DecodeError, match="runs"):
        decode_one(msgpack.packb([Kind.SUMMARY.value, [ORIGIN, 2, flat], [0]]))


@given(
    st.sampled_from(REFUSAL_REASONS),
    st.lists(st.tuples(node_ids(), st.integers(1, 2**63 - 1), st.integers(0, 5)), max_size=30),
)
def test_refused_round_trips(reason: str, spans: list[tuple[bytes, int, int]]) -> None:
    ranges = [(o, (first, min(first + width, 2**63 - 1))) for o, first, width in spans]
    message = Refused(reason=reason, ranges=ranges, clock_ms=1_700_000_000_000)
    assert decode_one(MessageEncoder().encode(message)) == message


@pytest.mark.parametrize(
    "body",
    [
        ["", [], 0],  # no reason
        ["x" * 33, [], 0],  # a reason too long to be a name
        ["cl\nock", [], 0],
        [7, [], 0],
        ["clock", [ORIGIN, 5], 0],  # a third of a range
        ["clock", [ORIGIN, 5, 4], 0],  # backwards
        ["clock", [ORIGIN, 0, 4], 0],
        ["clock", [b"\x01" * 15, 1, 4], 0],
        ["clock", [ORIGIN, 1, 1] * (MAX_REFUSED_RANGES + 1), 0],
        ["clock", [], -1],  # a clock before 1970
        ["clock", [], 2**48],  # past the stamps' milliseconds
        ["clock", []],  # no clock
    ],
)
def test_hostile_refused_messages_are_refused(body: list[object]) -> None:
    with pytest.raises(DecodeError):
        decode_one(msgpack.packb([Kind.REFUSED.value, *body]))


@pytest.mark.parametrize(
    "message",
    [
        [Kind.HELLO.value, 3, b"\x02" * 16, [], {}],  # version 2's hello, without a clock
        [Kind.HELLO.value, 3, b"\x02" * 16, [], {}, -5],
        [Kind.PONG.value, 1],  # version 2's pong
        [Kind.PONG.value, 1, "now"],
    ],
)
def test_clocks_are_required_and_checked(message: list[object]) -> None:
    with pytest.raises(DecodeError):
        decode_one(msgpack.packb(message))


@given(st.lists(changes(), min_size=1, max_size=8))
def test_a_decoded_change_message_counts_what_its_changes_are_made_of(
    batch: list[Change],
) -> None:
    """The receiver bounds what changes waiting to be applied hold without walking them
    again: the decoder counts their objects as `change_objects` would."""
    ((_, data),) = MessageEncoder().encode_changes(1, batch)
    decoder = MessageDecoder()
    decoder.feed(data)
    (message,) = list(decoder)
    assert decoder.last_objects == sum(change_objects(c) for c in message.changes)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "item",
    [
        [99, 1],  # no such type
        [-1],
        [Kind.ACK.value],  # a known type with too few items
        [Kind.ACK.value, 1, 2],  # ... or too many
        [Kind.HELLO.value, 3, b"\x01" * 16, [], {}],
    ],
)
def test_a_message_of_no_known_type_and_length_is_refused(item: list[object]) -> None:
    with pytest.raises(DecodeError, match="is not part of the protocol"):
        decode_one(msgpack.packb(item))


@pytest.mark.parametrize(
    ("item", "error"),
    [
        ([Kind.PING.value, "token"], "token is an integer"),
        ([Kind.PONG.value, 1.5, 5], "token is an integer"),
        ([Kind.CHANGES.value, 1, {}], "are an array"),
    ],
)
def test_a_known_type_with_the_wrong_body_is_refused(item: list[object], error: str) -> None:
    with pytest.raises(DecodeError, match=error):
        decode_one(msgpack.packb(item))


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ([Kind.SUMMARY.value, [ORIGIN, 2, None], []], "one fingerprint"),  # one short
        ([Kind.SUMMARY.value, [ORIGIN, 2, None], [1, 2]], "one fingerprint"),  # one over
        ([Kind.SUMMARY.value, [ORIGIN, 2, None], [-1]], "one fingerprint"),
        ([Kind.SUMMARY.value, [ORIGIN, 2, None], [1.5]], "one fingerprint"),
        ([Kind.SUMMARY.value, [ORIGIN, 2, None], None], "one fingerprint"),
        ([Kind.FINGERPRINTS.value, 1, []], "true or false"),
        ([Kind.FINGERPRINTS.value, True, [ORIGIN, 1, 2]], "fingerprint"),  # three of four
        ([Kind.FINGERPRINTS.value, True, [ORIGIN, 0, 2, 5]], "fingerprint entry"),
        ([Kind.FINGERPRINTS.value, True, [ORIGIN, 3, 2, 5]], "fingerprint entry"),  # backwards
        ([Kind.FINGERPRINTS.value, True, [ORIGIN[:15], 1, 2, 5]], "fingerprint entry"),
        ([Kind.FINGERPRINTS.value, True, [ORIGIN, 1, 2, "5"]], "fingerprint entry"),
        ([Kind.FINGERPRINTS.value, True, [ORIGIN, 1, 2, 5] * 1_025], "at most"),
        ([Kind.FINGERPRINTS.value, True, [ORIGIN, 1, 9, 5, ORIGIN, 9, 12, 5]], "apart"),
        ([Kind.FINGERPRINTS.value, True, [ORIGIN, 5, 9, 5, ORIGIN, 1, 2, 5]], "sorted"),
        ([Kind.FINGERPRINTS.value, True, [b"\x02" * 16, 1, 2, 5, ORIGIN, 1, 2, 5]], "sorted"),
    ],
)
def test_hostile_fingerprints_are_refused(item: list[object], match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        decode_one(msgpack.packb(item))

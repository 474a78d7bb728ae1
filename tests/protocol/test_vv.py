from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blazemesh.protocol.errors import LocalProtocolError
from blazemesh.protocol.vv import VersionVector, missing

O1, O2, O3 = b"\x01" * 16, b"\x02" * 16, b"\x03" * 16
ORIGINS = (O1, O2, O3)

seq_sets = st.sets(st.integers(1, 40), max_size=30)
# Knowledge as plain sets: origin -> seqs held.
knowledge = st.fixed_dictionaries(dict.fromkeys(ORIGINS, seq_sets))


def build(
    model: dict[bytes, set[int]], order: list[tuple[bytes, int]] | None = None
) -> VersionVector:
    vv = VersionVector()
    dots = order if order is not None else sorted((o, s) for o, seqs in model.items() for s in seqs)
    for origin, seq in dots:
        vv.add(origin, seq)
    return vv


def dots_of(model: dict[bytes, set[int]]) -> set[tuple[bytes, int]]:
    return {(o, s) for o, seqs in model.items() for s in seqs}


def extras(vv: VersionVector, origin: bytes) -> frozenset[int]:
    """The seqs held above the prefix, one by one."""
    return frozenset(s for first, last in vv.runs(origin) for s in range(first, last + 1))


def singles(seqs: list[int]) -> list[tuple[int, int]]:
    return [(s, s) for s in seqs]


def prefix(seqs: set[int]) -> int:
    base = 0
    while base + 1 in seqs:
        base += 1
    return base


def test_add_reports_new_and_held() -> None:
    vv = VersionVector()
    assert vv.add(O1, 1) is True
    assert vv.add(O1, 1) is False
    assert vv.add(O1, 3) is True  # early: a gap at 2
    assert vv.add(O1, 3) is False
    assert vv.base(O1) == 1
    assert extras(vv, O1) == {3}
    assert (O1, 2) not in vv
    assert vv.add(O1, 2) is True  # closes the gap; the prefix absorbs 3
    assert vv.base(O1) == 3
    assert extras(vv, O1) == frozenset()
    assert vv.run_items() == {}
    assert vv.add(O1, 2) is False
    assert vv.add(O2, 5) is True
    assert vv.count() == 4
    for seq in (4, 3, 2):  # a chain of early arrivals, absorbed in one go
        assert vv.add(O2, seq) is True
    assert extras(vv, O2) == {2, 3, 4, 5}
    assert vv.add(O2, 1) is True
    assert (vv.base(O2), extras(vv, O2), vv.count()) == (5, frozenset(), 8)
    assert vv.origins() == {O1, O2}
    assert vv.max_seq(O1) == 3
    assert vv.max_seq(O2) == 5
    assert vv.max_seq(O3) == 0


@pytest.mark.parametrize("seq", [0, -1])
def test_add_refuses_non_positive_seq(seq: int) -> None:
    vv = VersionVector()
    with pytest.raises(LocalProtocolError, match="seq must be >= 1"):
        vv.add(O1, seq)
    assert vv == VersionVector()


def test_zero_and_negative_seqs_are_never_held() -> None:
    vv = VersionVector()
    vv.add(O1, 1)
    assert (O1, 1) in vv
    assert (O1, 0) not in vv
    assert (O1, -3) not in vv
    assert (O2, 0) not in vv


@given(st.sets(st.integers(1, 60), max_size=40), st.data())
def test_any_insertion_order_gives_the_sorted_vector(seqs: set[int], data: st.DataObject) -> None:
    order = data.draw(st.permutations(sorted(seqs)))
    dup = data.draw(st.lists(st.sampled_from(sorted(seqs)), max_size=5)) if seqs else []
    vv = VersionVector()
    held: set[int] = set()
    for seq in [*order, *dup]:
        assert vv.add(O1, seq) == (seq not in held)
        held.add(seq)
        assert (O1, seq) in vv
    assert vv == build({O1: seqs})
    # Drawn permutations stay close to sorted; the reverse order makes every gap close
    # through a long chain of early arrivals.
    assert build({}, [(O1, s) for s in sorted(seqs, reverse=True)]) == vv
    assert vv.count() == len(seqs)
    base = prefix(seqs)
    assert vv.base(O1) == base
    assert extras(vv, O1) == frozenset(s for s in seqs if s > base)
    assert vv.max_seq(O1) == max(seqs, default=0)
    for probe in range(-1, 63):
        assert ((O1, probe) in vv) == (probe in seqs)
        assert (O2, probe) not in vv


@given(knowledge, st.data())
def test_several_origins_agree_with_a_set_model(
    model: dict[bytes, set[int]], data: st.DataObject
) -> None:
    order = data.draw(st.permutations(sorted(dots_of(model))))
    vv = build(model, list(order))
    assert vv == build(model)
    assert build(model, sorted(dots_of(model), reverse=True)) == vv
    assert vv.count() == len(dots_of(model))
    assert vv.origins() == {o for o, seqs in model.items() if seqs}
    for origin in ORIGINS:
        for probe in range(42):
            assert ((origin, probe) in vv) == (probe in model[origin])


@given(knowledge)
def test_copy_is_independent(model: dict[bytes, set[int]]) -> None:
    vv = build(model)
    copy = vv.copy()
    assert copy == vv
    copy.add(O1, 41)
    copy.add(O2, 1)
    assert (O1, 41) not in vv
    assert vv == build(model)


def expand(ranges: list[tuple[bytes, tuple[int, int]]]) -> set[tuple[bytes, int]]:
    return {(o, s) for o, (first, last) in ranges for s in range(first, last + 1)}


@given(knowledge, knowledge)
def test_missing_is_the_set_difference_in_maximal_sorted_ranges(
    have: dict[bytes, set[int]], peer: dict[bytes, set[int]]
) -> None:
    ranges = missing(build(have), build(peer))
    assert expand(ranges) == dots_of(have) - dots_of(peer)
    for _, (first, last) in ranges:
        assert 1 <= first <= last
    # Sorted by origin then seq; same-origin ranges neither overlap nor touch (maximal).
    keys = [(o, first) for o, (first, _) in ranges]
    assert keys == sorted(keys)
    for (o1, (_, last1)), (o2, (first2, _)) in itertools.pairwise(ranges):
        if o1 == o2:
            assert first2 > last1 + 1
    # The count of dots equals the sum of range lengths: nothing repeated.
    assert sum(last - first + 1 for _, (first, last) in ranges) == len(expand(ranges))


@given(knowledge)
def test_missing_against_self_and_empty(model: dict[bytes, set[int]]) -> None:
    vv = build(model)
    assert missing(vv, vv) == []
    assert missing(VersionVector(), vv) == []
    assert expand(missing(vv, VersionVector())) == dots_of(model)


def test_missing_examples() -> None:
    have = build({O1: {1, 2, 3, 4, 5, 8, 9}, O2: {1}})
    peer = build({O1: {1, 3, 9}})
    assert missing(have, peer) == [(O1, (2, 2)), (O1, (4, 5)), (O1, (8, 8)), (O2, (1, 1))]
    # Origins come in byte order whatever the insertion order.
    have = VersionVector()
    have.add(O3, 1)
    have.add(O1, 1)
    assert missing(have, VersionVector()) == [(O1, (1, 1)), (O3, (1, 1))]


def test_missing_with_a_large_prefix_is_one_range() -> None:
    have = VersionVector.from_parts({O1: 10**12}, {})
    peer = VersionVector.from_parts({O1: 10}, {O1: [(10**6, 10**6)]})
    assert missing(have, peer) == [(O1, (11, 10**6 - 1)), (O1, (10**6 + 1, 10**12))]


def test_from_parts_normalises() -> None:
    vv = VersionVector.from_parts(
        {O1: 3, O2: 0}, {O1: [(2, 2), (4, 5), (7, 7)], O3: [(2, 2)], O2: []}
    )
    assert vv.base(O1) == 5
    assert extras(vv, O1) == {7}
    assert vv.base(O2) == 0
    assert vv.origins() == {O1, O3}
    assert vv.bases() == {O1: 5}
    assert vv.run_items() == {O1: ((7, 7),), O3: ((2, 2),)}
    assert vv == build({O1: {1, 2, 3, 4, 5, 7}, O3: {2}})


def test_from_parts_refuses_bad_input() -> None:
    with pytest.raises(LocalProtocolError, match="negative base"):
        VersionVector.from_parts({O1: -1}, {})
    with pytest.raises(LocalProtocolError, match="bad seq range"):
        VersionVector.from_parts({}, {O1: [(0, 0)]})


@given(
    st.fixed_dictionaries({o: st.integers(0, 30) for o in ORIGINS}),
    st.fixed_dictionaries({o: st.lists(st.integers(1, 40), max_size=10) for o in ORIGINS}),
)
def test_from_parts_equals_adding_every_dot(
    bases: dict[bytes, int], early: dict[bytes, list[int]]
) -> None:
    vv = VersionVector.from_parts(bases, {o: singles(seqs) for o, seqs in early.items()})
    model = {o: set(range(1, bases[o] + 1)) | set(early[o]) for o in ORIGINS}
    assert vv == build(model)
    assert VersionVector.from_parts(vv.bases(), vv.run_items()) == vv  # persisted round trip
    for origin in ORIGINS:
        assert all(s > vv.base(origin) + 1 for s in extras(vv, origin))


def test_equality() -> None:
    assert VersionVector() == VersionVector()
    assert build({O1: {1}}) != build({O1: {2}})
    assert VersionVector().__eq__(object()) is NotImplemented
    assert "VersionVector" in repr(build({O1: {1, 3}}))


mutations = st.lists(
    st.tuples(
        st.sampled_from(["add", "add_range", "merge"]),
        st.sampled_from(ORIGINS),
        st.integers(1, 30),
        st.integers(0, 5),
    ),
    max_size=40,
)


@given(knowledge, mutations, st.integers(0, 40))
def test_grown_since_names_exactly_the_origins_that_grew(
    model: dict[bytes, set[int]], steps: list[tuple[str, bytes, int, int]], look_at: int
) -> None:
    vv = build(model)
    seen, before = vv.stamp, vv.copy()
    for i, (how, origin, seq, width) in enumerate(steps):
        if i == look_at:
            seen, before = vv.stamp, vv.copy()
        if how == "add":
            vv.add(origin, seq)
        elif how == "add_range":
            vv.add_range(origin, seq, seq + width)
        else:
            vv.merge(VersionVector.from_parts({origin: seq}, {origin: singles([seq + width + 2])}))
    grew = {
        o for o in ORIGINS if vv.base(o) != before.base(o) or extras(vv, o) != extras(before, o)
    }
    assert sorted(vv.grown_since(seen)) == sorted(grew)
    assert vv.grown_since(vv.stamp) == []
    assert (vv.stamp == seen) == (not grew)


def test_missing_for_some_origins_only() -> None:
    have = build({O1: {1, 2}, O2: {1}, O3: {4}})
    assert missing(have, VersionVector(), [O3, O1]) == [(O1, (1, 2)), (O3, (4, 4))]


@given(knowledge, mutations)
def test_run_count_and_opens_run_follow_the_runs(
    model: dict[bytes, set[int]], steps: list[tuple[str, bytes, int, int]]
) -> None:
    vv = build(model)
    for how, origin, seq, width in steps:
        before = vv.run_count
        opens = vv.opens_run(origin, seq)
        if how == "add":
            vv.add(origin, seq)
            assert (vv.run_count == before + 1) == opens
        elif how == "add_range":
            vv.add_range(origin, seq, seq + width)
        else:
            vv.merge(VersionVector.from_parts({origin: seq}, {origin: singles([seq + width + 2])}))
        assert vv.run_count == sum(len(vv.runs(o)) for o in ORIGINS)
        for o in ORIGINS:
            runs = vv.runs(o)
            assert all(first > vv.base(o) + 1 for first, _ in runs)
            assert all(b[0] > a[1] + 1 for a, b in itertools.pairwise(runs))
    assert vv == build({o: {s for s in range(1, 80) if (o, s) in vv} for o in ORIGINS})

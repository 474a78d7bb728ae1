"""Fingerprints prove "in sync": equal version vectors over different contents are found
and repaired (docs/protocol.md 8.5; issue 19, section 1)."""

from __future__ import annotations

from functools import reduce
from operator import xor

from hypothesis import given, settings
from hypothesis import strategies as st

from blazemesh.protocol.codec import encode_change
from blazemesh.protocol.codec.messages import Fingerprints, MessageDecoder, MessageEncoder
from blazemesh.protocol.fingerprints import (
    FANOUT,
    LEAF_SEQS,
    MAX_FINGERPRINT_ENTRIES,
    MAX_NARROWINGS_PER_PERIOD,
    Entry,
    apart,
    change_digest,
    narrow,
    split,
)
from blazemesh.protocol.hlc import pack
from blazemesh.protocol.model import Change, Put
from blazemesh.protocol.sync import Compared, SyncConfig
from tests.protocol.holdings import FingerprintIndex

from .test_sync import FakeNode, deliver, push

ORIGIN = b"o".ljust(16, b"\0")


def version(seq: int, value: int, origin: bytes = ORIGIN) -> Change:
    op = Put(collection="c", key=f"k{seq % 7}", fields={"v": value})
    return Change(origin=origin, seq=seq, hlc=pack(1_000 + value, 0), ops=(op,))


@given(st.integers(1, 2**63 - 1), st.integers(0, 2**63 - 1))
def test_split_covers_a_range_in_at_most_fanout_consecutive_parts(first: int, size: int) -> None:
    last = min(first + size, 2**63 - 1)
    parts = split(first, last)
    assert 1 <= len(parts) <= FANOUT
    assert parts[0][0] == first
    assert parts[-1][1] == last
    assert all(a <= b for a, b in parts)
    assert all(parts[i][1] + 1 == parts[i + 1][0] for i in range(len(parts) - 1))
    sizes = [b - a + 1 for a, b in parts]
    assert max(sizes) - min(sizes) <= 1


@given(st.lists(st.tuples(st.integers(1, 200), st.integers(0, 3)), max_size=60))
def test_an_index_fingerprints_every_version_once(held: list[tuple[int, int]]) -> None:
    index = FingerprintIndex()
    digests: dict[tuple[int, int], int] = {}
    for seq, value in held:
        digest = change_digest(encode_change(version(seq, value)))
        assert index.add(ORIGIN, seq, digest) == ((seq, value) not in digests)
        digests[seq, value] = digest
    assert index.fingerprint(ORIGIN) == reduce(xor, digests.values(), 0)
    for first, last in [(1, 200), (1, 1), (50, 120), (201, 300)]:
        inside = [d for (seq, _), d in digests.items() if first <= seq <= last]
        assert index.range_fingerprint(ORIGIN, first, last) == reduce(xor, inside, 0)


def test_narrowing_splits_large_ranges_and_settles_small_ones() -> None:
    mine, theirs = FingerprintIndex(), FingerprintIndex()
    for seq in range(1, 1_001):
        digest = change_digest(encode_change(version(seq, 0)))
        mine.add(ORIGIN, seq, digest)
        theirs.add(ORIGIN, seq, digest)
    theirs.add(ORIGIN, 700, change_digest(encode_change(version(700, 1))))
    entry = (ORIGIN, 1, 1_000, theirs.fingerprint(ORIGIN))
    asked = narrow([entry], answer=True, holdings=mine)
    assert asked.tell == []
    assert asked.resend == []
    assert len(asked.ask) == FANOUT
    # Only the part holding seq 700 differs: the sides take turns until it is a leaf.
    entries, sides = asked.ask, [theirs, mine]
    for turn in range(4):
        reply = narrow(entries, answer=True, holdings=sides[turn % 2])
        if reply.resend:
            break
        assert len(reply.ask) == FANOUT
        entries = reply.ask
    ((origin, (first, last)),) = reply.resend
    assert origin == ORIGIN
    assert first <= 700 <= last
    assert last - first + 1 <= LEAF_SEQS
    assert [e[:3] for e in reply.tell] == [(ORIGIN, first, last)]
    # Told (not asked), the other side sends its versions of the leaf and says nothing.
    told = narrow(reply.tell, answer=False, holdings=sides[(turn + 1) % 2])
    assert told.resend == reply.resend
    assert told.ask == told.tell == []


def test_a_peer_cannot_make_narrowing_reply_past_the_bound() -> None:
    mine = FingerprintIndex()
    hostile = [(bytes([i % 256]) * 16, 1, 2**40, 1) for i in range(MAX_FINGERPRINT_ENTRIES)]
    narrowed = narrow(hostile, answer=True, holdings=mine)
    assert len(narrowed.ask) <= MAX_FINGERPRINT_ENTRIES
    assert len(narrowed.tell) <= MAX_FINGERPRINT_ENTRIES


SUMMARY_S = 5.0
CONFIG = {"summary_every_s": SUMMARY_S, "dead_after_s": 1e9, "stall_after_s": 1e9}


def exchange(a: FakeNode, b: FakeNode, rounds: int) -> list[object]:
    """Link ``a`` and ``b`` and run ``rounds`` summary periods; return the events."""
    la, lb = a.link(b, **CONFIG), b.link(a, **CONFIG)
    events: list[object] = []
    now = 0.0
    for _ in range(rounds):
        for _ in range(12):  # each period: enough round trips for any narrowing to settle
            push(la, a)
            push(lb, b)
            events += deliver(la, lb, b, now)
            events += deliver(lb, la, a, now)
        now += SUMMARY_S
        assert la.tick(now) is None
        assert lb.tick(now) is None
    return events


histories = st.lists(st.tuples(st.integers(1, 3_000), st.integers(0, 2)), max_size=40)


@settings(max_examples=40, deadline=None)
@given(shared=st.integers(1, 3_000), only_a=histories, only_b=histories)
def test_equal_vectors_over_different_contents_are_found_and_repaired(
    shared: int, only_a: list[tuple[int, int]], only_b: list[tuple[int, int]]
) -> None:
    """Issue 19, section 1: both sides hold seqs 1..shared of one origin; each holds
    other versions of some of them (a seq issued twice: a restore, a clone). Version
    vectors are equal; the fingerprints find every difference, and the link leaves both
    holding every version."""
    a, b = FakeNode("a"), FakeNode("b")
    common = [version(seq, 0) for seq in range(1, shared + 1)]
    a.apply(common)
    b.apply(common)
    a.apply([version(min(seq, shared), value + 1) for seq, value in only_a])
    b.apply([version(min(seq, shared), value + 1) for seq, value in only_b])
    assert a.vv == b.vv
    differed = a.holdings.fingerprint(ORIGIN) != b.holdings.fingerprint(ORIGIN)
    events = exchange(a, b, rounds=4)
    assert a.changes == b.changes or sorted_versions(a) == sorted_versions(b)
    assert a.holdings.fingerprint(ORIGIN) == b.holdings.fingerprint(ORIGIN)
    found = [e for e in events if isinstance(e, Compared) and e.differ]
    assert bool(found) == differed
    if differed:
        assert any(isinstance(e, Compared) and e.agree == (ORIGIN,) for e in events)


def sorted_versions(node: FakeNode) -> dict[tuple[bytes, int], list[bytes]]:
    return {dot: sorted(map(encode_change, held)) for dot, held in node.changes.items()}


def test_a_link_is_in_sync_only_once_its_fingerprints_agree() -> None:
    a, b = FakeNode("a"), FakeNode("b")
    a.apply([version(1, 0)])
    b.apply([version(1, 1)])
    la, lb = a.link(b, **CONFIG), b.link(a, **CONFIG)
    deliver(la, lb, b)
    deliver(lb, la, a)
    assert la.status().in_sync  # equal vectors: nothing yet says otherwise
    assert not la.status().verified
    la.tick(SUMMARY_S)
    lb.tick(SUMMARY_S)
    events = deliver(lb, la, a, SUMMARY_S)
    assert Compared(differ=(ORIGIN,), agree=()) in events
    status = la.status()
    assert not status.in_sync
    assert status.differ == 1
    assert not status.verified
    for _ in range(6):
        push(la, a)
        push(lb, b)
        deliver(la, lb, b, SUMMARY_S)
        deliver(lb, la, a, SUMMARY_S)
    la.tick(2 * SUMMARY_S)
    lb.tick(2 * SUMMARY_S)
    deliver(la, lb, b, 2 * SUMMARY_S)
    events = deliver(lb, la, a, 2 * SUMMARY_S)
    assert Compared(differ=(), agree=(ORIGIN,)) in events
    assert la.status().in_sync
    assert la.status().verified
    assert sorted_versions(a) == sorted_versions(b)


def test_the_default_config_compares_every_summary() -> None:
    assert SyncConfig().summary_every_s == SUMMARY_S


entries = st.lists(
    st.tuples(
        st.sampled_from([ORIGIN, b"p".ljust(16, b"\0")]),
        st.integers(1, 50),
        st.integers(0, 10),
        st.integers(0, 2**64 - 1),
    ).map(lambda e: (e[0], e[1], e[1] + e[2], e[3])),
    max_size=30,
)


@given(entries)
def test_what_a_side_sends_is_sorted_and_apart_as_decoders_require(raw: list[Entry]) -> None:
    sent = apart(raw)
    assert set(sent) <= set(raw)
    for entry in raw:  # each entry dropped overlaps one kept
        assert entry in sent or any(
            e[0] == entry[0] and e[1] <= entry[2] and entry[1] <= e[2] for e in sent
        )
    decoder = MessageDecoder()
    decoder.feed(MessageEncoder().encode(Fingerprints(answer=True, entries=sent)))
    assert next(decoder) == Fingerprints(answer=True, entries=sent)


def test_a_link_answers_a_bounded_number_of_fingerprints_per_period() -> None:
    """A peer that sends FINGERPRINTS without end makes this side read its digests a
    bounded number of times per SUMMARY period (docs/security.md)."""
    a, b = FakeNode("a"), FakeNode("b")
    b.apply([version(seq, 0) for seq in range(1, 100)])
    reads = 0
    index = b.holdings

    class Counting:
        def fingerprint(self, origin: bytes) -> int:
            return index.fingerprint(origin)

        def range_fingerprint(self, origin: bytes, first: int, last: int) -> int:
            nonlocal reads
            reads += 1
            return index.range_fingerprint(origin, first, last)

    b.holdings = Counting()  # type: ignore[assignment]
    lb = b.link(a, **CONFIG)
    lb.receive_data(a.link(**CONFIG).data_to_send(), 0.0)
    lb.next_event()
    asking = MessageEncoder().encode(Fingerprints(answer=True, entries=[(ORIGIN, 1, 99, 7)]))
    per_message = 1 + FANOUT  # the range, then its parts

    def answer(messages: int) -> int:
        nonlocal reads
        reads = 0
        lb.receive_data(asking * messages, 0.0)
        assert lb.next_event() is None
        return reads

    assert answer(MAX_NARROWINGS_PER_PERIOD + 5) == MAX_NARROWINGS_PER_PERIOD * per_message
    assert answer(1) == 0  # the budget is spent until the next period
    lb.tick(SUMMARY_S)
    assert answer(1) == per_message

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blazemesh.protocol.errors import ClockSkewError, LocalProtocolError, RemoteProtocolError
from blazemesh.protocol.hlc import (
    COUNTER_BITS,
    DEFAULT_MAX_SKEW_MS,
    MAX_MS,
    MAX_STAMP,
    HybridClock,
    PeersRefuse,
    check_skew,
    counter,
    millis,
    pack,
    refused_by_peers,
)

NOW = 1_700_000_000_000

# One step of a clock's life: a local tick, or a stamp received from a peer.
# (Far enough from the end of the stamp space that 30 wide ticks cannot exhaust it.)
ticks = st.tuples(st.just("tick"), st.integers(0, MAX_MS - 40), st.integers(1, 70_000))
small_ticks = st.tuples(st.just("tick"), st.integers(NOW - 5, NOW + 5), st.integers(1, 3))
receives = st.tuples(
    st.just("recv"),
    st.integers(NOW - 100_000, NOW + 100_000).map(lambda ms: pack(ms, 7)),
    st.integers(NOW - 5, NOW + 5),
)


# --- pack / millis / counter --------------------------------------------------------------


@given(st.integers(0, MAX_MS), st.integers(0, (1 << COUNTER_BITS) - 1))
def test_pack_round_trip(ms: int, ctr: int) -> None:
    stamp = pack(ms, ctr)
    assert (millis(stamp), counter(stamp)) == (ms, ctr)
    assert 0 <= stamp <= MAX_STAMP


@given(
    st.tuples(st.integers(0, MAX_MS), st.integers(0, 0xFFFF)),
    st.tuples(st.integers(0, MAX_MS), st.integers(0, 0xFFFF)),
)
def test_pack_orders_like_pairs(a: tuple[int, int], b: tuple[int, int]) -> None:
    assert (pack(*a) < pack(*b)) == (a < b)
    assert (pack(*a) == pack(*b)) == (a == b)


def test_pack_extremes() -> None:
    assert pack(0, 0) == 0
    assert pack(MAX_MS, 0xFFFF) == MAX_STAMP
    assert MAX_STAMP == (1 << 63) - 1  # fits msgpack's and SQLite's signed 64-bit integers


@pytest.mark.parametrize(
    ("ms", "ctr"), [(-1, 0), (MAX_MS + 1, 0), (0, -1), (0, 1 << 16), (1 << 48, 0)]
)
def test_pack_refuses_out_of_range(ms: int, ctr: int) -> None:
    with pytest.raises(LocalProtocolError, match="out of range"):
        pack(ms, ctr)


# --- tick ---------------------------------------------------------------------------------


@given(st.lists(st.integers(0, MAX_MS + 1000), min_size=1, max_size=50))
def test_tick_is_strictly_increasing_whatever_the_wall_clock_does(nows: list[int]) -> None:
    clock = HybridClock()
    stamps = [clock.tick(now) for now in nows]
    assert stamps == sorted(set(stamps))  # strictly increasing, hence unique
    for now, stamp in zip(nows, stamps, strict=True):
        assert millis(stamp) >= min(now, MAX_MS)  # never behind the wall clock
    assert clock.last == stamps[-1]


def test_tick_follows_the_wall_clock() -> None:
    clock = HybridClock()
    assert clock.tick(NOW) == pack(NOW, 0)
    assert clock.tick(NOW) == pack(NOW, 1)
    assert clock.tick(NOW + 3) == pack(NOW + 3, 0)
    # The wall clock going back does not take the HLC back.
    assert clock.tick(NOW - 1000) == pack(NOW + 3, 1)


def test_tick_clamps_a_wall_clock_beyond_the_stamp_space() -> None:
    clock = HybridClock()
    assert clock.tick(MAX_MS + 12345) == pack(MAX_MS, 0)


def test_tick_refuses_negative_wall_clock() -> None:
    with pytest.raises(LocalProtocolError):
        HybridClock().tick(-1)


def test_tick_with_width_reserves_consecutive_stamps() -> None:
    clock = HybridClock()
    first = clock.tick(NOW, width=5)
    assert first == pack(NOW, 0)
    assert clock.last == first + 4
    assert clock.tick(NOW) == first + 5


@given(st.lists(ticks, min_size=1, max_size=30))
def test_reservations_never_overlap(steps: list[tuple[str, int, int]]) -> None:
    clock = HybridClock()
    reserved: list[range] = []
    for _, now, width in steps:
        first = clock.tick(now, width=width)
        assert clock.last == first + width - 1
        if reserved:
            assert first > reserved[-1][-1]
        reserved.append(range(first, first + width))
    assert all(r.stop <= MAX_STAMP + 1 for r in reserved)


@pytest.mark.parametrize("width", [0, -1])
def test_tick_refuses_bad_width(width: int) -> None:
    clock = HybridClock(last=5)
    with pytest.raises(LocalProtocolError, match="width"):
        clock.tick(NOW, width=width)
    assert clock.last == 5


def test_counter_overflow_carries_into_milliseconds() -> None:
    clock = HybridClock()
    stamps = [clock.tick(NOW) for _ in range(1 << COUNTER_BITS)]
    assert stamps[0] == pack(NOW, 0)
    assert stamps[-1] == pack(NOW, 0xFFFF)
    # The 65537th tick in the same millisecond borrows the next one ...
    carried = clock.tick(NOW)
    assert carried == pack(NOW + 1, 0)
    # ... and the clock stays monotonic until the wall clock catches up, then follows it.
    assert clock.tick(NOW) == pack(NOW + 1, 1)
    assert clock.tick(NOW + 1) == pack(NOW + 1, 2)
    assert clock.tick(NOW + 2) == pack(NOW + 2, 0)
    assert stamps == sorted(set(stamps))


def test_wide_tick_carries_into_milliseconds() -> None:
    clock = HybridClock(last=pack(NOW, 0xFFF0))
    first = clock.tick(NOW, width=0x20)
    assert first == pack(NOW, 0xFFF1)
    assert clock.last == pack(NOW + 1, 0x10)
    assert clock.tick(NOW) == pack(NOW + 1, 0x11)


def test_exhaustion_near_max_stamp() -> None:
    clock = HybridClock(last=MAX_STAMP - 2)
    assert clock.tick(NOW) == MAX_STAMP - 1
    with pytest.raises(LocalProtocolError, match="exhausted"):
        clock.tick(NOW, width=2)
    assert clock.last == MAX_STAMP - 1  # a refused tick reserves nothing
    assert clock.tick(NOW) == MAX_STAMP
    with pytest.raises(LocalProtocolError, match="exhausted"):
        clock.tick(MAX_MS)
    assert clock.last == MAX_STAMP


def test_exhaustion_by_wall_clock_at_the_end_of_time() -> None:
    clock = HybridClock()
    assert clock.tick(MAX_MS, width=1 << 16) == pack(MAX_MS, 0)
    with pytest.raises(LocalProtocolError, match="exhausted"):
        clock.tick(MAX_MS)


@pytest.mark.parametrize("last", [-1, MAX_STAMP + 1])
def test_constructor_refuses_bad_last(last: int) -> None:
    with pytest.raises(LocalProtocolError, match="out of range"):
        HybridClock(last=last)


def test_constructor_refuses_negative_skew() -> None:
    with pytest.raises(LocalProtocolError, match="max_skew_ms"):
        HybridClock(max_skew_ms=-1)


def test_constructor_resumes_from_last() -> None:
    clock = HybridClock(last=pack(NOW + 50, 9))
    assert clock.last == pack(NOW + 50, 9)
    assert clock.tick(NOW) == pack(NOW + 50, 10)


# --- receive ------------------------------------------------------------------------------


def test_receive_folds_remote_stamp() -> None:
    clock = HybridClock()
    clock.tick(NOW)
    remote = pack(NOW + 30_000, 500)
    clock.receive(remote, NOW)
    assert clock.last == remote
    assert clock.tick(NOW) == remote + 1


def test_receive_of_an_older_stamp_changes_nothing() -> None:
    clock = HybridClock()
    mine = clock.tick(NOW)
    clock.receive(pack(NOW - 10, 3), NOW)
    assert clock.last == mine
    assert clock.tick(NOW) == mine + 1


@given(st.lists(st.one_of(small_ticks, receives), min_size=1, max_size=40))
def test_every_tick_is_above_everything_seen(steps: list[tuple[str, int, int]]) -> None:
    clock = HybridClock()
    seen = 0
    for kind, a, b in steps:
        before = clock.last
        if kind == "tick":
            first = clock.tick(a, width=b)
            assert first > seen
            seen = first + b - 1
            assert clock.last == seen
            continue
        if millis(a) - b > clock.max_skew_ms:
            with pytest.raises(ClockSkewError):
                clock.receive(a, b)
            assert clock.last == before  # a refused stamp is not adopted
        else:
            clock.receive(a, b)
            seen = max(seen, a)
            assert clock.last == seen


def test_skew_limit_is_inclusive() -> None:
    clock = HybridClock(max_skew_ms=1_000)
    at_limit = pack(NOW + 1_000, 0xFFFF)
    clock.receive(at_limit, NOW)
    assert clock.last == at_limit
    beyond = pack(NOW + 1_001, 0)
    with pytest.raises(ClockSkewError, match="1001 ms ahead") as info:
        clock.receive(beyond, NOW)
    assert isinstance(info.value, RemoteProtocolError)
    assert clock.last == at_limit


def test_default_skew() -> None:
    clock = HybridClock()
    assert clock.max_skew_ms == DEFAULT_MAX_SKEW_MS
    clock.receive(pack(NOW + DEFAULT_MAX_SKEW_MS, 0), NOW)
    with pytest.raises(ClockSkewError):
        clock.receive(pack(NOW + DEFAULT_MAX_SKEW_MS + 1, 0), NOW)


def test_zero_skew_accepts_the_present_only() -> None:
    clock = HybridClock(max_skew_ms=0)
    clock.receive(pack(NOW, 0xFFFF), NOW)
    with pytest.raises(ClockSkewError):
        clock.receive(pack(NOW + 1, 0), NOW)


def test_check_skew() -> None:
    check_skew(pack(NOW + 10, 5), NOW, 10)
    check_skew(pack(0, 0), NOW, 0)
    with pytest.raises(ClockSkewError, match="limit 10 ms"):
        check_skew(pack(NOW + 11, 0), NOW, 10)


def test_next_ms_and_ahead_ms() -> None:
    clock = HybridClock()
    assert clock.next_ms(NOW) == NOW
    assert clock.ahead_ms(NOW) == 0
    clock.tick(NOW + 86_400_000)  # the wall clock jumped a day ahead
    assert clock.next_ms(NOW) == NOW + 86_400_000  # set back: stamps stay where it was
    assert clock.ahead_ms(NOW) == 86_400_000
    assert clock.ahead_ms(NOW + 90_000_000) == 0


SKEW = 60_000


@pytest.mark.parametrize(
    ("offsets", "refused"),
    [
        ([], None),  # no peer's clock known: nothing to go by
        ([-86_400_000], PeersRefuse(ahead_ms=86_400_000, refusing=1, known=1)),
        ([-86_400_000, -86_400_000], PeersRefuse(ahead_ms=86_400_000, refusing=2, known=2)),
        ([-86_400_000, 0], None),  # one of two: not most
        ([-86_400_000, -70_000, 0], PeersRefuse(ahead_ms=70_000, refusing=2, known=3)),
        ([-SKEW], None),  # at the limit is still taken
        ([-SKEW - 1], PeersRefuse(ahead_ms=SKEW + 1, refusing=1, known=1)),
        ([86_400_000], None),  # the peer is ahead: our stamps are in its past
    ],
)
def test_refused_by_peers_is_a_majority_of_known_clocks(
    offsets: list[int], refused: PeersRefuse | None
) -> None:
    assert refused_by_peers(NOW, NOW, offsets, SKEW) == refused


@given(st.lists(st.integers(-(10**9), 10**9), max_size=9), st.integers(0, 10**9))
def test_refused_by_peers_agrees_with_check_skew(offsets: list[int], ahead: int) -> None:
    """Most of the peers' own `check_skew` would refuse the stamp exactly when the
    verdict says so."""
    stamp_ms = NOW + ahead
    refusing = 0
    for offset in offsets:
        try:
            check_skew(pack(stamp_ms, 0), NOW + offset, SKEW)
        except ClockSkewError:
            refusing += 1
    verdict = refused_by_peers(stamp_ms, NOW, offsets, SKEW)
    assert (verdict is not None) == (2 * refusing > len(offsets))
    if verdict is not None:
        assert verdict.refusing == refusing

"""Version vectors over dots, with out-of-order arrivals.

A replica's knowledge is the set of dots ``(origin, seq)`` it holds. Per origin it is
stored as a contiguous prefix ``1..base`` plus the runs of seqs above it that arrived
early (changes can overtake each other across different paths): sorted, disjoint,
non-adjacent ``(first, last)`` pairs, each starting above ``base + 1``. Gaps close as the
missing changes arrive and the prefix absorbs the runs it reaches. Runs, not single
seqs, so that a busy origin's changes arriving ahead of a long catch-up cost one run,
not one entry each, in memory and on the wire.

A vector only grows. It counts its growth in `stamp` and remembers the order in which
origins last grew, so that a reader can ask which origins grew since a stamp it saw
(`grown_since`) at a cost that follows the answer, not the number of origins.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping

from blazemesh.protocol.errors import LocalProtocolError

Dot = tuple[bytes, int]
SeqRange = tuple[int, int]  # inclusive: (first, last)


def _first(run: SeqRange) -> int:
    return run[0]


def _last(run: SeqRange) -> int:
    return run[1]


class VersionVector:
    """A mutable set of dots, compact when arrivals are in order."""

    __slots__ = ("_base", "_grown", "_runs", "run_count", "stamp")

    def __init__(self) -> None:
        self._base: dict[bytes, int] = {}
        self._runs: dict[bytes, list[SeqRange]] = {}  # never an empty list
        self._grown: dict[bytes, int] = {}  # origin -> stamp of its last growth, in that order
        self.stamp = 0  # how many times the vector grew
        self.run_count = 0  # runs above the prefixes, over every origin

    @classmethod
    def from_parts(
        cls, bases: Mapping[bytes, int], runs: Mapping[bytes, Iterable[SeqRange]]
    ) -> VersionVector:
        """Build a vector from per-origin prefixes and runs above them (normalised on the
        way in: runs may overlap, touch, or reach into the prefix)."""
        vv = cls()
        for origin, base in bases.items():
            if base < 0:
                raise LocalProtocolError(f"negative base {base} in version vector")
            if base:
                vv._base[origin] = base
                vv._grow(origin)
        for origin, pairs in runs.items():
            for first, last in pairs:
                vv.add_range(origin, first, last)
        return vv

    def copy(self) -> VersionVector:
        other = VersionVector()
        other._base = dict(self._base)
        other._runs = {o: list(r) for o, r in self._runs.items()}
        other._grown = dict(self._grown)
        other.stamp = self.stamp
        other.run_count = self.run_count
        return other

    def __contains__(self, dot: Dot) -> bool:
        origin, seq = dot
        if 0 < seq <= self._base.get(origin, 0):
            return True
        runs = self._runs.get(origin)
        if runs is None:
            return False
        i = bisect_right(runs, seq, key=_first)
        return i > 0 and runs[i - 1][1] >= seq

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VersionVector):
            return NotImplemented
        return self._base == other._base and self._runs == other._runs

    def __repr__(self) -> str:
        return f"VersionVector(base={self._base!r}, runs={self._runs!r})"

    def add(self, origin: bytes, seq: int) -> bool:
        """Record the dot; return False if it was already held."""
        if seq < 1:
            raise LocalProtocolError(f"seq must be >= 1, got {seq}")
        base = self._base.get(origin, 0)
        if seq <= base:
            return False
        if seq == base + 1:  # in order: the common case
            self._base[origin] = seq
            runs = self._runs.get(origin)
            if runs and runs[0][0] == seq + 1:
                self._absorb(origin)
            self._grow(origin)
            return True
        if (origin, seq) in self:
            return False
        self._union(origin, seq, seq)
        self._grow(origin)
        return True

    def add_range(self, origin: bytes, first: int, last: int) -> None:
        """Record every dot ``(origin, first..last)``."""
        if first < 1 or last < first:
            raise LocalProtocolError(f"bad seq range {first}..{last}")
        base = self._base.get(origin, 0)
        if last <= base:
            return
        if first <= base + 1:
            self._base[origin] = last
            self._absorb(origin)
        else:
            before = self._runs.get(origin)
            if before is not None and _covered(before, first, last):
                return
            self._union(origin, first, last)
        self._grow(origin)

    def merge(self, other: VersionVector) -> None:
        """Add every dot of ``other`` (set union)."""
        for origin, base in other._base.items():
            if base > self._base.get(origin, 0):
                self._base[origin] = base
                self._absorb(origin)
                self._grow(origin)
        for origin, runs in other._runs.items():
            for first, last in runs:
                self.add_range(origin, first, last)

    def _union(self, origin: bytes, first: int, last: int) -> None:
        """Add ``first..last`` (above ``base + 1``) to the origin's runs, merging the runs
        it overlaps or touches."""
        runs = self._runs.setdefault(origin, [])
        lo = bisect_left(runs, first - 1, key=_last)  # the first run ending at first-1 or later
        hi = bisect_right(runs, last + 1, key=_first)  # past the last run starting by last+1
        if lo < hi:
            first, last = min(first, runs[lo][0]), max(last, runs[hi - 1][1])
        runs[lo:hi] = [(first, last)]
        self.run_count += 1 - (hi - lo)

    def _absorb(self, origin: bytes) -> None:
        """Fold the runs that the prefix now reaches into it."""
        runs = self._runs.get(origin)
        if not runs:
            return
        base = self._base[origin]
        reached = bisect_right(runs, base + 1, key=_first)
        if reached:
            self._base[origin] = max(base, runs[reached - 1][1])
            del runs[:reached]
            self.run_count -= reached
            if not runs:
                del self._runs[origin]

    def _grow(self, origin: bytes) -> None:
        self.stamp += 1
        grown = self._grown
        grown.pop(origin, None)
        grown[origin] = self.stamp

    def grown_since(self, stamp: int) -> list[bytes]:
        """The origins whose dots grew after the vector's `stamp` was ``stamp``."""
        out = []
        grown = self._grown
        for origin in reversed(grown):
            if grown[origin] <= stamp:
                break
            out.append(origin)
        return out

    def origins(self) -> set[bytes]:
        return set(self._base) | set(self._runs)

    def knows(self, origin: bytes) -> bool:
        """Whether the vector holds any dot of ``origin``."""
        return origin in self._base or origin in self._runs

    def origin_count(self) -> int:
        """How many origins the vector holds dots of."""
        return len(self._grown)  # every origin held has grown once, and none is ever lost

    def base(self, origin: bytes) -> int:
        """The length of the contiguous prefix held for ``origin``."""
        return self._base.get(origin, 0)

    def runs(self, origin: bytes) -> tuple[SeqRange, ...]:
        """The runs of seqs held above the prefix of ``origin``, in order."""
        return tuple(self._runs.get(origin, ()))

    def opens_run(self, origin: bytes, seq: int) -> bool:
        """Whether adding ``(origin, seq)`` would add a run: it is not held, not next to
        the prefix, and touches no run."""
        if seq <= self._base.get(origin, 0) + 1:
            return False
        runs = self._runs.get(origin)
        if runs is None:
            return True
        i = bisect_left(runs, seq - 1, key=_last)
        return i == len(runs) or runs[i][0] > seq + 1

    def next_gap(self, origin: bytes, seq: int) -> int:
        """The least seq from ``seq`` on that the vector does not hold for ``origin``."""
        seq = max(seq, self._base.get(origin, 0) + 1)
        runs = self._runs.get(origin)
        if runs:
            i = bisect_right(runs, seq, key=_first)
            if i and runs[i - 1][1] >= seq:
                seq = runs[i - 1][1] + 1
        return seq

    def max_seq(self, origin: bytes) -> int:
        """The greatest seq held for ``origin`` (0 if none)."""
        runs = self._runs.get(origin)
        return runs[-1][1] if runs else self._base.get(origin, 0)

    def count(self) -> int:
        """How many dots the vector holds."""
        return sum(self._base.values()) + sum(
            last - first + 1 for runs in self._runs.values() for first, last in runs
        )

    def bases(self) -> dict[bytes, int]:
        return dict(self._base)

    def run_items(self) -> dict[bytes, tuple[SeqRange, ...]]:
        return {o: tuple(r) for o, r in self._runs.items()}


def _covered(runs: list[SeqRange], first: int, last: int) -> bool:
    """Whether one of ``runs`` holds all of ``first..last``."""
    i = bisect_right(runs, first, key=_first)
    return i > 0 and runs[i - 1][1] >= last


def missing(
    have: VersionVector, peer: VersionVector, origins: Iterable[bytes] | None = None
) -> list[tuple[bytes, SeqRange]]:
    """The dots ``have`` holds that ``peer`` lacks, as inclusive per-origin seq ranges;
    only those of ``origins``, if given.

    Ranges come sorted by origin, then seq, each maximal. The cost grows with the number
    of origins and of runs on either side, not with the number of missing dots.
    """
    out: list[tuple[bytes, SeqRange]] = []
    have_base, have_runs = have._base, have._runs
    peer_base, peer_runs = peer._base, peer._runs
    for origin in sorted(have.origins() if origins is None else origins):
        floor = peer_base.get(origin, 0)
        ours = have_runs.get(origin)
        theirs = peer_runs.get(origin)
        base = have_base.get(origin, 0)
        if ours is None and theirs is None:
            # Both hold a prefix only, as when changes arrive in order: the common case.
            if base > floor:
                out.append((origin, (floor + 1, base)))
            continue
        held = [(floor + 1, base)] if base > floor else []
        held += [(max(a, floor + 1), b) for a, b in ours or () if b > floor]
        out += [(origin, r) for r in _subtract(held, theirs or [])]
    return out


def _subtract(held: list[SeqRange], holes: list[SeqRange]) -> list[SeqRange]:
    """The seqs of ``held`` outside ``holes`` (both sorted and disjoint), as maximal
    ranges (``held``'s ranges never touch, so none need joining)."""
    out: list[SeqRange] = []
    j = 0
    for first, last in held:
        while j < len(holes) and holes[j][1] < first:
            j += 1
        k = j
        while k < len(holes) and holes[k][0] <= last:
            hole_first, hole_last = holes[k]
            if hole_first > first:
                out.append((first, hole_first - 1))
            first = hole_last + 1
            if first > last:
                break
            k += 1
        if first <= last:
            out.append((first, last))
    return out

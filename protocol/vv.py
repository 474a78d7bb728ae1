"""Version vectors over dots, with out-of-order arrivals.

A replica's knowledge is the set of dots ``(origin, seq)`` it holds. Per origin it is
stored as a contiguous prefix ``1..base`` plus the few seqs above it that arrived early
(changes can overtake each other across different paths). Gaps close as the missing
changes arrive and the prefix absorbs them.

A vector only grows. It counts its growth in `stamp` and remembers the order in which
origins last grew, so that a reader can ask which origins grew since a stamp it saw
(`grown_since`) at a cost that follows the answer, not the number of origins.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from protocol.errors import LocalProtocolError

Dot = tuple[bytes, int]
SeqRange = tuple[int, int]  # inclusive: (first, last)


class VersionVector:
    """A mutable set of dots, compact when arrivals are in order."""

    __slots__ = ("_base", "_extra", "_grown", "stamp")

    def __init__(self) -> None:
        self._base: dict[bytes, int] = {}
        self._extra: dict[bytes, set[int]] = {}
        self._grown: dict[bytes, int] = {}  # origin -> stamp of its last growth, in that order
        self.stamp = 0  # how many times the vector grew

    @classmethod
    def from_parts(
        cls, bases: Mapping[bytes, int], extras: Mapping[bytes, Iterable[int]]
    ) -> VersionVector:
        """Build a vector from per-origin prefixes and early seqs (normalised on the way in)."""
        vv = cls()
        for origin, base in bases.items():
            if base < 0:
                raise LocalProtocolError(f"negative base {base} in version vector")
            if base:
                vv._base[origin] = base
                vv._grow(origin)
        for origin, seqs in extras.items():
            for seq in seqs:
                vv.add(origin, seq)
        return vv

    def copy(self) -> VersionVector:
        other = VersionVector()
        other._base = dict(self._base)
        other._extra = {o: set(s) for o, s in self._extra.items()}
        other._grown = dict(self._grown)
        other.stamp = self.stamp
        return other

    def __contains__(self, dot: Dot) -> bool:
        origin, seq = dot
        return 0 < seq <= self._base.get(origin, 0) or seq in self._extra.get(origin, ())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VersionVector):
            return NotImplemented
        return self._base == other._base and self._extra == other._extra

    def __repr__(self) -> str:
        return f"VersionVector(base={self._base!r}, extra={self._extra!r})"

    def add(self, origin: bytes, seq: int) -> bool:
        """Record the dot; return False if it was already held."""
        if seq < 1:
            raise LocalProtocolError(f"seq must be >= 1, got {seq}")
        base = self._base.get(origin, 0)
        if seq <= base:
            return False
        extra = self._extra.get(origin)
        if seq != base + 1:
            if extra is None:
                self._extra[origin] = {seq}
            elif seq in extra:
                return False
            else:
                extra.add(seq)
            self._grow(origin)
            return True
        base = seq
        if extra:
            while base + 1 in extra:
                base += 1
                extra.discard(base)
            if not extra:
                del self._extra[origin]
        self._base[origin] = base
        self._grow(origin)
        return True

    def add_range(self, origin: bytes, first: int, last: int) -> None:
        """Record every dot ``(origin, first..last)``."""
        if first < 1 or last < first:
            raise LocalProtocolError(f"bad seq range {first}..{last}")
        base = self._base.get(origin, 0)
        if first > base + 1:
            for seq in range(first, last + 1):
                self.add(origin, seq)
            return
        if last <= base:
            return
        self._base[origin] = last
        self._absorb(origin)
        self._grow(origin)

    def merge(self, other: VersionVector) -> None:
        """Add every dot of ``other`` (set union)."""
        for origin, base in other._base.items():
            if base > self._base.get(origin, 0):
                self._base[origin] = base
                self._absorb(origin)
                self._grow(origin)
        for origin, seqs in other._extra.items():
            for seq in seqs:
                self.add(origin, seq)

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

    def _absorb(self, origin: bytes) -> None:
        """Fold early seqs that the prefix now reaches into it."""
        extra = self._extra.get(origin)
        if not extra:
            return
        base = self._base[origin]
        extra.difference_update([s for s in extra if s <= base])
        while base + 1 in extra:
            base += 1
            extra.discard(base)
        self._base[origin] = base
        if not extra:
            del self._extra[origin]

    def origins(self) -> set[bytes]:
        return set(self._base) | set(self._extra)

    def base(self, origin: bytes) -> int:
        """The length of the contiguous prefix held for ``origin``."""
        return self._base.get(origin, 0)

    def extras(self, origin: bytes) -> frozenset[int]:
        """The seqs above the prefix held for ``origin``."""
        return frozenset(self._extra.get(origin, ()))

    def max_seq(self, origin: bytes) -> int:
        """The greatest seq held for ``origin`` (0 if none)."""
        extra = self._extra.get(origin)
        return max(extra) if extra else self._base.get(origin, 0)

    def count(self) -> int:
        """How many dots the vector holds."""
        return sum(self._base.values()) + sum(len(s) for s in self._extra.values())

    def bases(self) -> dict[bytes, int]:
        return dict(self._base)

    def extra_items(self) -> dict[bytes, frozenset[int]]:
        return {o: frozenset(s) for o, s in self._extra.items()}


def missing(
    have: VersionVector, peer: VersionVector, origins: Iterable[bytes] | None = None
) -> list[tuple[bytes, SeqRange]]:
    """The dots ``have`` holds that ``peer`` lacks, as inclusive per-origin seq ranges;
    only those of ``origins``, if given.

    Ranges come sorted by origin, then seq, each maximal. The cost grows with the number
    of origins and of early seqs on either side, not with the number of missing dots.
    """
    out: list[tuple[bytes, SeqRange]] = []
    have_base, have_extra = have._base, have._extra
    peer_base, peer_extra = peer._base, peer._extra
    for origin in sorted(have.origins() if origins is None else origins):
        floor = peer_base.get(origin, 0)
        if origin not in have_extra and origin not in peer_extra:
            # Both hold a prefix only, as when changes arrive in order: the common case.
            base = have_base.get(origin, 0)
            if base > floor:
                out.append((origin, (floor + 1, base)))
            continue
        holes = sorted(s for s in peer_extra.get(origin, ()) if s > floor)
        for first, last in _ranges_above(have, origin, floor):
            for hole in holes:
                if hole > last:
                    break
                if hole >= first:
                    if hole > first:
                        out.append((origin, (first, hole - 1)))
                    first = hole + 1
            if first <= last:
                out.append((origin, (first, last)))
    return out


def _ranges_above(vv: VersionVector, origin: bytes, floor: int) -> list[SeqRange]:
    """The seqs ``vv`` holds for ``origin`` above ``floor``, as sorted maximal ranges."""
    ranges: list[SeqRange] = []
    base = vv.base(origin)
    if base > floor:
        ranges.append((floor + 1, base))
    for seq in sorted(s for s in vv.extras(origin) if s > floor):
        if ranges and ranges[-1][1] == seq - 1:
            ranges[-1] = (ranges[-1][0], seq)
        else:
            ranges.append((seq, seq))
    return ranges

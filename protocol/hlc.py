"""Hybrid logical clocks (Kulkarni et al., 2014) packed into one 64-bit integer.

A stamp is ``(milliseconds << 16) | counter``: 48 bits of wall-clock milliseconds since the
Unix epoch and a 16-bit logical counter. Packed stamps order exactly as the pairs do, so a
stamp is an ``int`` and comparisons are integer comparisons. The wall clock is an argument
(``now_ms``): the caller owns time (docs/design.md, "Clocks").

When the counter would pass 0xFFFF within one millisecond, the stamp carries into the
millisecond field: logical time runs a little ahead of the wall clock until the wall clock
catches up. Stamps stay unique and increasing, which is all the merge needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from blazemesh.protocol.errors import ClockSkewError, LocalProtocolError

COUNTER_BITS = 16
# The field is 48 bits wide, but stamps stay below 2**63 so that they fit SQLite's and
# msgpack's signed 64-bit integers: milliseconds end in the year 6429.
MAX_MS = (1 << 47) - 1
MAX_STAMP = (1 << 63) - 1
DEFAULT_MAX_SKEW_MS = 60_000  # a peer's clock this far ahead is refused, not adopted


def pack(ms: int, counter: int) -> int:
    """Return the stamp for ``(ms, counter)``."""
    if not 0 <= ms <= MAX_MS or not 0 <= counter < (1 << COUNTER_BITS):
        raise LocalProtocolError(f"HLC fields out of range: ms={ms}, counter={counter}")
    return (ms << COUNTER_BITS) | counter


def millis(stamp: int) -> int:
    """The wall-clock milliseconds part of a stamp."""
    return stamp >> COUNTER_BITS


def counter(stamp: int) -> int:
    """The logical counter part of a stamp."""
    return stamp & ((1 << COUNTER_BITS) - 1)


class HybridClock:
    """One node's hybrid logical clock.

    ``tick`` stamps a local event; ``receive`` folds in a stamp seen from a peer so that
    every later local stamp is greater than it. Both take the current wall-clock time
    in milliseconds.
    """

    __slots__ = ("_last", "max_skew_ms")

    def __init__(self, *, last: int = 0, max_skew_ms: int = DEFAULT_MAX_SKEW_MS) -> None:
        if not 0 <= last <= MAX_STAMP:
            raise LocalProtocolError(f"initial HLC stamp out of range: {last}")
        if max_skew_ms < 0:
            raise LocalProtocolError(f"max_skew_ms must be >= 0, got {max_skew_ms}")
        self._last = last
        self.max_skew_ms = max_skew_ms

    @property
    def last(self) -> int:
        """The greatest stamp issued or received so far."""
        return self._last

    def tick(self, now_ms: int, *, width: int = 1) -> int:
        """Reserve ``width`` consecutive stamps for a local event and return the first.

        A change of ``n`` ops takes ``width=n``: op ``i`` is stamped ``first + i``
        (docs/protocol.md, "Changes"). The clock then stands at ``first + width - 1``.
        """
        if width < 1:
            raise LocalProtocolError(f"width must be >= 1, got {width}")
        first = max(self._last + 1, pack(min(now_ms, MAX_MS), 0))
        last = first + width - 1
        if last > MAX_STAMP:
            raise LocalProtocolError("HLC exhausted: the 63-bit stamp space is used up")
        self._last = last
        return first

    def next_ms(self, now_ms: int) -> int:
        """The milliseconds of the stamp `tick` would give at ``now_ms``."""
        return max(self._last + 1, pack(min(now_ms, MAX_MS), 0)) >> COUNTER_BITS

    def ahead_ms(self, now_ms: int) -> int:
        """How far the clock stands ahead of ``now_ms`` (0 if it does not): it ran ahead
        when the wall clock did, and stays there once the wall clock is set back."""
        return max(0, millis(self._last) - now_ms)

    def receive(self, stamp: int, now_ms: int) -> None:
        """Fold a remote stamp into this clock.

        Raises `ClockSkewError` if the stamp is more than ``max_skew_ms`` ahead of
        ``now_ms``: adopting it would drag this node's clock (and every later write's
        stamp) into the future.
        """
        check_skew(stamp, now_ms, self.max_skew_ms)
        if stamp > self._last:
            self._last = stamp


def check_skew(stamp: int, now_ms: int, max_skew_ms: int) -> None:
    """Raise `ClockSkewError` if ``stamp`` is more than ``max_skew_ms`` ahead of ``now_ms``."""
    ahead_ms = millis(stamp) - now_ms
    if ahead_ms > max_skew_ms:
        raise ClockSkewError(
            f"remote HLC stamp is {ahead_ms} ms ahead of local time "
            f"(limit {max_skew_ms} ms): refusing to adopt it"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PeersRefuse:
    """Most peers would refuse a stamp: ``refusing`` of the ``known`` peers' clocks are
    more than the skew limit behind it, the nearest of them by ``ahead_ms``."""

    ahead_ms: int
    refusing: int
    known: int


def refused_by_peers(
    stamp_ms: int, now_ms: int, peer_offsets_ms: Sequence[int], max_skew_ms: int
) -> PeersRefuse | None:
    """Whether more than half of the peers would refuse ``stamp_ms`` (by `check_skew` with
    ``max_skew_ms``); None if most would take it, or no peer's clock is known.
    ``peer_offsets_ms``: each peer's clock minus ``now_ms``.

    Only stamps ahead are refused: of two nodes whose clocks disagree, the one ahead stops
    stamping (neither can tell whose clock is wrong) until they agree again.
    """
    aheads = sorted(stamp_ms - (now_ms + offset) for offset in peer_offsets_ms)
    refusing = [ahead for ahead in aheads if ahead > max_skew_ms]
    if 2 * len(refusing) <= len(aheads):
        return None
    return PeersRefuse(ahead_ms=refusing[0], refusing=len(refusing), known=len(aheads))

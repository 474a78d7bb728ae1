"""An in-memory `Holdings` for the protocol tests: what a replica holds, fingerprinted
(`protocol.fingerprints`), without a store."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field


@dataclass(slots=True)
class FingerprintIndex:
    """`Holdings` kept in memory: per origin, its seqs in order, each with the digests of
    the versions held."""

    _seqs: dict[bytes, list[int]] = field(default_factory=dict)
    _digests: dict[tuple[bytes, int], set[int]] = field(default_factory=dict)
    _whole: dict[bytes, int] = field(default_factory=dict)

    def add(self, origin: bytes, seq: int, digest: int) -> bool:
        """Hold a version of ``(origin, seq)``; False if it was held already."""
        versions = self._digests.get((origin, seq))
        if versions is None:
            versions = self._digests[origin, seq] = set()
            seqs = self._seqs.setdefault(origin, [])
            if seqs and seqs[-1] > seq:
                bisect.insort(seqs, seq)
            else:
                seqs.append(seq)
        elif digest in versions:
            return False
        versions.add(digest)
        self._whole[origin] = self._whole.get(origin, 0) ^ digest
        return True

    def versions(self, origin: bytes, seq: int) -> frozenset[int]:
        """The digests of the versions of ``(origin, seq)`` held."""
        return frozenset(self._digests.get((origin, seq), ()))

    def fingerprint(self, origin: bytes) -> int:
        return self._whole.get(origin, 0)

    def range_fingerprint(self, origin: bytes, first: int, last: int) -> int:
        seqs = self._seqs.get(origin, [])
        fp = 0
        for seq in seqs[bisect.bisect_left(seqs, first) : bisect.bisect_right(seqs, last)]:
            for digest in self._digests[origin, seq]:
                fp ^= digest
        return fp

"""Fingerprints of what a replica holds, and how two replicas find where they differ
(docs/protocol.md 8.6).

Version vectors say which dots a replica holds, not what it holds under them. A node that
issued one seq twice (restored from a backup, or cloned onto a second device) leaves
replicas with equal vectors and different changes, which version vectors alone call "in
sync" forever. So each replica also keeps, per origin, the XOR of the digests of every
version of every change it holds of that origin (`change_digest`): equal vectors with
different fingerprints are proof of a difference, and equal fingerprints make "in sync"
a fact rather than an inference (a chance collision: 2^-64).

Finding the difference is a search by halving, as in range-based set reconciliation
(Meyer, "Range-Based Set Reconciliation", 2023): a side sends its fingerprints of seq
ranges (FINGERPRINTS); the other compares each with its own of the same range, splits a
differing range into `FANOUT` parts and answers with their fingerprints, and so on until a
differing range holds at most `LEAF_SEQS` seqs: then each side sends the other every
version it holds in that range, and each keeps the versions it lacked (`narrow`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from blazemesh.protocol.vv import SeqRange

__all__ = [
    "FANOUT",
    "LEAF_SEQS",
    "MAX_FINGERPRINT_ENTRIES",
    "MAX_NARROWINGS_PER_PERIOD",
    "Entry",
    "Holdings",
    "Narrowed",
    "apart",
    "change_digest",
    "narrow",
    "split",
]

DIGEST_BYTES = 8  # a chance collision between two versions: 2^-64
DIGEST_PERSON = b"blazemesh-change"
FANOUT = 16  # parts a differing range splits into: a few rounds for any history
LEAF_SEQS = 16  # a differing range this small is settled by sending its changes
MAX_FINGERPRINT_ENTRIES = 1_024  # entries in one FINGERPRINTS message: bounded work per message
MAX_NARROWINGS_PER_PERIOD = 16  # FINGERPRINTS a link answers per SUMMARY period: enough
# rounds for any seq range (16 ** 15 parts), and a bound on the reads a peer can cause

# (origin, first seq, last seq, fingerprint of every version held in [first, last])
Entry = tuple[bytes, int, int, int]


_UNKEYED = hashlib.blake2b(digest_size=DIGEST_BYTES, person=DIGEST_PERSON)  # copied per
# digest: half the cost of building the hash from its parameters each time


def change_digest(blob: bytes) -> int:
    """The digest of a change, from its standalone encoding (docs/protocol.md 6)."""
    hasher = _UNKEYED.copy()
    hasher.update(blob)
    return int.from_bytes(hasher.digest(), "big")


class Holdings(Protocol):
    """What a replica holds, fingerprinted: the XOR of the digests of every version of
    every change it holds of an origin, in all or in a range of seqs (0 when none)."""

    def fingerprint(self, origin: bytes) -> int: ...

    def range_fingerprint(self, origin: bytes, first: int, last: int) -> int: ...


def split(first: int, last: int) -> list[SeqRange]:
    """``[first, last]`` in at most `FANOUT` consecutive parts of near-equal size."""
    size = last - first + 1
    parts = min(FANOUT, size)
    step, extra = divmod(size, parts)
    out = []
    start = first
    for i in range(parts):
        end = start + step - 1 + (i < extra)
        out.append((start, end))
        start = end + 1
    return out


def apart(entries: Iterable[Entry]) -> list[Entry]:
    """``entries`` sorted by origin and seq, less any that overlaps one before it: what
    one FINGERPRINTS message may carry (docs/protocol.md 8.6)."""
    out: list[Entry] = []
    for entry in sorted(entries):
        if not out or entry[:2] > (out[-1][0], out[-1][2]):
            out.append(entry)
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Narrowed:
    """What to do about a peer's FINGERPRINTS: send ``ask`` (entries to be answered),
    ``tell`` (entries not to be answered), and every version held in ``resend``."""

    ask: list[Entry]
    tell: list[Entry]
    resend: list[tuple[bytes, SeqRange]]


def narrow(entries: Iterable[Entry], *, answer: bool, holdings: Holdings) -> Narrowed:
    """Compare the peer's ``entries`` with ``holdings``. A range that differs and holds
    more than `LEAF_SEQS` seqs is split, its parts' fingerprints asked for; a smaller one
    is settled: this side sends its versions in it, and tells the peer its fingerprint of
    it if the peer asked (``answer``), so that the peer sends its own. The parts asked
    for stay within `MAX_FINGERPRINT_ENTRIES`; ranges past that come up again at the next
    comparison of whole origins."""
    ask: list[Entry] = []
    tell: list[Entry] = []
    resend: list[tuple[bytes, SeqRange]] = []
    for origin, first, last, theirs in entries:
        mine = holdings.range_fingerprint(origin, first, last)
        if mine == theirs:
            continue
        if last - first + 1 <= LEAF_SEQS:
            resend.append((origin, (first, last)))
            if answer:
                tell.append((origin, first, last, mine))
            continue
        if len(ask) + FANOUT > MAX_FINGERPRINT_ENTRIES:
            break
        parts = split(first, last)
        ask += [(origin, a, b, holdings.range_fingerprint(origin, a, b)) for a, b in parts]
    return Narrowed(ask=ask, tell=tell, resend=resend)

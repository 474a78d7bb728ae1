"""Sync messages: what two nodes say over a link (docs/protocol.md, section 8).

Each message is one msgpack array whose first item is its type; messages follow each
other on the link's byte stream with no other framing (msgpack delimits itself). CHANGES
messages encode their changes in one context for the whole life of the link and
direction, so names and origins are interned once per link.

`MessageEncoder` and `MessageDecoder` hold those contexts. The decoder accepts bytes in
any chunking and yields whole messages; anything malformed, oversized or out of bounds
raises `DecodeError` or `InvalidRemoteDataError`, after which the link is over.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import assert_never

import msgpack

from blazemesh.protocol.codec.bounds import UNPACK_ERRORS, UNPACK_LIMITS, refuse_ext
from blazemesh.protocol.codec.changes import MAX_BATCH_BYTES, ChangeDecoder, ChangeEncoder
from blazemesh.protocol.errors import DecodeError, InvalidRemoteDataError
from blazemesh.protocol.fingerprints import MAX_FINGERPRINT_ENTRIES, Entry
from blazemesh.protocol.hlc import MAX_MS
from blazemesh.protocol.ids import NODE_ID_BYTES
from blazemesh.protocol.model import MAX_SEQ, Change, Value
from blazemesh.protocol.ring import RING_PLACES, Arc
from blazemesh.protocol.vv import VersionVector

MAX_MESSAGE_BYTES = MAX_BATCH_BYTES  # the largest message a node will buffer
MAX_BATCH_CHANGES = 4_096  # changes in one CHANGES message
MAX_VV_ORIGINS = 65_536  # origins in one version vector: far more nodes than any mesh
MAX_VV_RUNS = 4_096  # runs of early seqs per origin in a version vector
MAX_VV_TOTAL_RUNS = 65_536  # ... and over all its origins: a decoded vector stays within a
# few MiB (a node holds a quarter of each bound, `protocol.admission`)
MAX_META_BYTES = 4_096  # the hello's metadata map, encoded
MAX_ARCS = 1_024  # arcs in one ARCS message (this implementation sends two)
MAX_REFUSED_RANGES = 1_024  # ranges in one REFUSED message: enough to say what and how many
MAX_REASON_BYTES = 32  # a refusal's reason is a short name
REFUSAL_REASONS = (  # this version's
    *("clock", "own-origin", "gaps", "origins", "invalid", "versions", "clone"),
)


class Kind(enum.IntEnum):
    HELLO = 0
    CHANGES = 1
    ACK = 2
    SUMMARY = 3
    PING = 4
    PONG = 5
    PRUNE = 6
    GRAFT = 7
    ARCS = 8
    REFUSED = 9
    FINGERPRINTS = 10


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    """The first message on a link: who is speaking and what it holds."""

    version: int
    node_id: bytes
    vv: VersionVector
    clock_ms: int  # the sender's wall clock as it sends (docs/protocol.md 8.2 rule 11)
    meta: Mapping[str, Value] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Changes:
    """Changes the receiver lacks; acknowledged by ``batch`` once applied and committed."""

    batch: int
    changes: Sequence[Change]


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    """Every CHANGES message up to and including ``batch`` is applied and committed."""

    batch: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Summary:
    """The sender's whole version vector, for anti-entropy, and the fingerprint of what
    it holds of each origin in it (`protocol.fingerprints`)."""

    vv: VersionVector
    fingerprints: Mapping[bytes, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    token: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Pong:
    token: int
    clock_ms: int  # the sender's wall clock as it answers


@dataclass(frozen=True, slots=True, kw_only=True)
class Refused:
    """The sender refused these changes of the receiver's (docs/protocol.md 8.3), for
    ``reason``: one of `REFUSAL_REASONS`, or another a later version adds. The ranges
    may be cut short: they inform, the sender's SUMMARY is the truth."""

    reason: str
    ranges: Sequence[tuple[bytes, tuple[int, int]]]
    clock_ms: int  # the sender's wall clock as it refused


@dataclass(frozen=True, slots=True, kw_only=True)
class Prune:
    """Stop pushing changes of these origins to the sender: it gets them another way."""

    origins: Sequence[bytes]


@dataclass(frozen=True, slots=True, kw_only=True)
class Graft:
    """Push changes of these origins to the sender again."""

    origins: Sequence[bytes]


@dataclass(frozen=True, slots=True, kw_only=True)
class Arcs:
    """Push to the sender the changes of the origins whose ring places lie on these arcs
    (`protocol.ring`), and no others; this cancels every earlier PRUNE and GRAFT."""

    arcs: Sequence[Arc]


@dataclass(frozen=True, slots=True, kw_only=True)
class Fingerprints:
    """The sender's fingerprints of these ranges of seqs; ``answer``: compare them and
    answer (`protocol.fingerprints.narrow`)."""

    answer: bool
    entries: Sequence[Entry]


def _items(kind: Kind) -> int:
    """How many items a message of ``kind`` has, its type included."""
    match kind:
        case Kind.HELLO:
            return 6
        case Kind.CHANGES | Kind.PONG:
            return 3
        case Kind.ACK | Kind.PING | Kind.PRUNE | Kind.GRAFT | Kind.ARCS:
            return 2
        case Kind.SUMMARY:
            return 3
        case Kind.REFUSED:
            return 4
        case Kind.FINGERPRINTS:
            return 3
        case _:
            assert_never(kind)


_KINDS = {(kind.value, _items(kind)): kind for kind in Kind}  # (type, items) -> kind

Control = Hello | Ack | Summary | Ping | Pong | Prune | Graft | Arcs | Refused | Fingerprints
Message = Control | Changes


class MessageEncoder:
    """Encodes one direction of a link."""

    def __init__(self) -> None:
        self._changes = ChangeEncoder()
        self._packer = msgpack.Packer(use_bin_type=True)

    def encode_changes(
        self,
        first_batch: int,
        changes: Iterable[Change],
        max_bytes: int = MAX_MESSAGE_BYTES,
        budget_bytes: int | None = None,
    ) -> list[tuple[Changes, bytes]]:
        """CHANGES messages numbered from ``first_batch``, each within ``max_bytes``.

        Every change is encoded exactly once, in order: encoding updates this link's
        tables, so a change that would overflow one message opens the next. With
        ``budget_bytes``, no more changes are taken from ``changes`` once the messages
        reach that many bytes (a sender's window, docs/protocol.md 8.2 rule 5): they pass
        it by the last change taken at most. The rest of ``changes`` is not read.
        """
        pack = self._packer.pack
        messages: list[tuple[Changes, bytes]] = []
        items: list[bytes] = []
        members: list[Change] = []
        size = made = 0
        limit = min(max_bytes, MAX_MESSAGE_BYTES) - 32  # headers of the message itself
        for change in changes:
            packed = pack(self._changes.item(change))
            if items and (size + len(packed) > limit or len(items) == MAX_BATCH_CHANGES):
                messages.append(self._changes_message(first_batch + len(messages), members, items))
                made += len(messages[-1][1])
                items, members, size = [], [], 0
            items.append(packed)
            members.append(change)
            size += len(packed)
            if budget_bytes is not None and made + size >= budget_bytes:
                break
        if items:
            messages.append(self._changes_message(first_batch + len(messages), members, items))
        return messages

    def _changes_message(
        self, batch: int, members: list[Change], items: list[bytes]
    ) -> tuple[Changes, bytes]:
        head = [
            self._packer.pack_array_header(3),
            self._packer.pack(Kind.CHANGES.value),
            self._packer.pack(batch),
            self._packer.pack_array_header(len(items)),
        ]
        return Changes(batch=batch, changes=members), b"".join(head + items)

    def encode(self, message: Control) -> bytes:
        """Any message but CHANGES (see `encode_changes`)."""
        body: list[object]
        match message:
            case Hello():
                body = [
                    Kind.HELLO.value,
                    message.version,
                    message.node_id,
                    _vv_items(message.vv),
                    dict(message.meta),
                    message.clock_ms,
                ]
            case Ack():
                body = [Kind.ACK.value, message.batch]
            case Summary():
                fps = message.fingerprints
                origins = sorted(message.vv.origins())
                body = [Kind.SUMMARY.value, _vv_items(message.vv), [fps[o] for o in origins]]
            case Ping():
                body = [Kind.PING.value, message.token]
            case Pong():
                body = [Kind.PONG.value, message.token, message.clock_ms]
            case Prune():
                body = [Kind.PRUNE.value, list(message.origins)]
            case Graft():
                body = [Kind.GRAFT.value, list(message.origins)]
            case Arcs():
                body = [Kind.ARCS.value, [end for arc in message.arcs for end in arc]]
            case Refused():
                flat = [
                    x for origin, (first, last) in message.ranges for x in (origin, first, last)
                ]
                body = [Kind.REFUSED.value, message.reason, flat, message.clock_ms]
            case Fingerprints():
                flat = [x for entry in message.entries for x in entry]
                body = [Kind.FINGERPRINTS.value, message.answer, flat]
            case _:
                assert_never(message)
        data: bytes = self._packer.pack(body)
        return data


def _vv_items(vv: VersionVector) -> list[object]:
    """``[origin, base, runs, origin, base, runs, ...]``; runs a flat ``[first, last,
    ...]``, nil when none."""
    out: list[object] = []
    for origin in sorted(vv.origins()):
        runs = vv.runs(origin)
        out += (origin, vv.base(origin), [seq for run in runs for seq in run] if runs else None)
    return out


class MessageDecoder:
    """Decodes one direction of a link from bytes in any chunking."""

    def __init__(self) -> None:
        self._changes = ChangeDecoder()
        self._position = 0
        self._fed = 0  # bytes fed so far (`_position`: bytes decoded so far)
        self.last_size = 0  # bytes of the message `__next__` returned last
        self.last_objects = 0  # ... and, for CHANGES, what its changes are made of
        self._unpacker = msgpack.Unpacker(
            raw=False,
            strict_map_key=True,
            ext_hook=refuse_ext,
            max_buffer_size=MAX_MESSAGE_BYTES,
            **UNPACK_LIMITS,
        )

    def feed(self, data: bytes | bytearray) -> None:
        try:
            self._unpacker.feed(data)
            self._fed += len(data)
        except msgpack.BufferFull:
            raise DecodeError(
                f"a message is larger than the limit of {MAX_MESSAGE_BYTES} bytes"
            ) from None

    def __iter__(self) -> Iterator[Message]:
        return self

    def __next__(self) -> Message:
        if self._position == self._fed:  # all consumed: no need to ask the unpacker
            raise StopIteration
        try:
            item = self._unpacker.unpack()
        except msgpack.OutOfData:
            raise StopIteration from None
        except UNPACK_ERRORS as exc:
            raise DecodeError(f"malformed message: {exc}") from None
        position = self._unpacker.tell()
        self.last_size, self._position = position - self._position, position
        return self._message(item)

    def _message(self, item: object) -> Message:
        if not isinstance(item, list) or not item or type(item[0]) is not int:
            raise DecodeError("a message is an array whose first item is its type")
        kind = _KINDS.get((item[0], len(item)))
        match kind:
            case Kind.CHANGES:
                return self._changes_message(item[1], item[2])
            case Kind.ACK:
                return Ack(batch=_batch(item[1]))
            case Kind.PING:
                return Ping(token=_token(item[1]))
            case Kind.PONG:
                return Pong(token=_token(item[1]), clock_ms=_clock(item[2]))
            case Kind.SUMMARY:
                return _summary(item[1], item[2])
            case Kind.PRUNE:
                return Prune(origins=_origins(item[1]))
            case Kind.GRAFT:
                return Graft(origins=_origins(item[1]))
            case Kind.ARCS:
                return Arcs(arcs=_arcs(item[1]))
            case Kind.REFUSED:
                return _refused(item)
            case Kind.FINGERPRINTS:
                return _fingerprints(item[1], item[2])
            case Kind.HELLO:
                return _hello(item)
            case None:
                raise DecodeError(
                    f"message type {item[0]} with {len(item)} items is not part of the protocol"
                )
            case _:
                assert_never(kind)

    def _changes_message(self, batch: object, items: object) -> Changes:
        if not isinstance(items, list):
            raise DecodeError("the changes of a CHANGES message are an array")
        if len(items) > MAX_BATCH_CHANGES:
            raise InvalidRemoteDataError(
                f"{len(items)} changes in one message; the limit is {MAX_BATCH_CHANGES}"
            )
        decode, before = self._changes.change, self._changes.objects
        changes = [decode(c) for c in items]
        self.last_objects = self._changes.objects - before
        return Changes(batch=_batch(batch), changes=changes)


def _batch(value: object) -> int:
    if type(value) is not int or not 1 <= value <= MAX_SEQ:
        raise DecodeError(f"a batch number is a positive integer, got {value!r}")
    return value


def _token(value: object) -> int:
    if type(value) is not int:
        raise DecodeError(f"a ping's token is an integer, got {value!r}")
    return value


def _clock(value: object) -> int:
    if type(value) is not int or not 0 <= value <= MAX_MS:
        raise DecodeError(f"a clock is milliseconds since 1970 in [0, {MAX_MS}], got {value!r}")
    return value


def _refused(item: list[object]) -> Refused:
    _, reason, flat, clock = item
    if (
        type(reason) is not str
        or not 0 < len(reason) <= MAX_REASON_BYTES
        or not reason.isascii()
        or not reason.isprintable()
    ):
        raise DecodeError(f"a refusal's reason is a name of 1 to {MAX_REASON_BYTES} characters")
    if not isinstance(flat, list) or len(flat) % 3 or len(flat) > 3 * MAX_REFUSED_RANGES:
        raise DecodeError(
            f"refused ranges are [origin, first, last] * n, at most {MAX_REFUSED_RANGES}"
        )
    ranges = []
    for i in range(0, len(flat), 3):
        origin, first, last = flat[i], flat[i + 1], flat[i + 2]
        if not _is_range(origin, first, last):
            raise DecodeError("a refused range is a 16-byte origin and 1 <= first <= last")
        ranges.append((origin, (first, last)))
    return Refused(reason=reason, ranges=ranges, clock_ms=_clock(clock))


def _is_range(origin: object, first: object, last: object) -> bool:
    """Whether these are an origin and a range of its seqs."""
    return (
        type(origin) is bytes
        and len(origin) == NODE_ID_BYTES
        and type(first) is int
        and type(last) is int
        and 1 <= first <= last <= MAX_SEQ
    )


def _summary(items: object, fps: object) -> Summary:
    vv = _vv(items)
    if (
        not isinstance(fps, list)
        or len(fps) != vv.origin_count()
        or any(type(fp) is not int or fp < 0 for fp in fps)  # msgpack ints end at 2**64
    ):
        raise DecodeError("a summary has one fingerprint, an int in [0, 2**64), per origin")
    assert isinstance(items, list)
    return Summary(vv=vv, fingerprints=dict(zip(items[::3], fps, strict=True)))


def _fingerprints(answer: object, flat: object) -> Fingerprints:
    if type(answer) is not bool:
        raise DecodeError("a fingerprints message says whether to answer: true or false")
    if not isinstance(flat, list) or len(flat) % 4 or len(flat) > 4 * MAX_FINGERPRINT_ENTRIES:
        raise DecodeError(
            "fingerprints are [origin, first, last, fingerprint] * n, "
            f"at most {MAX_FINGERPRINT_ENTRIES}"
        )
    entries: list[Entry] = []
    for i in range(0, len(flat), 4):
        origin, first, last, fp = flat[i : i + 4]
        if not _is_range(origin, first, last) or type(fp) is not int or fp < 0:
            raise DecodeError(
                "a fingerprint entry is a 16-byte origin, 1 <= first <= last, and an int "
                "in [0, 2**64)"
            )
        if entries and (origin, first) <= (entries[-1][0], entries[-1][2]):
            # Sorted and apart, as narrowing makes them: comparing them then reads each
            # change's digest once at most, whatever a peer sends (docs/security.md).
            raise DecodeError("fingerprint entries are sorted by origin and seq, and apart")
        entries.append((origin, first, last, fp))
    return Fingerprints(answer=answer, entries=entries)


def _hello(item: list[object]) -> Hello:
    _, version, node_id, vv, meta, clock = item
    if type(version) is not int:
        raise DecodeError("the hello's version must be an integer")
    if type(node_id) is not bytes or len(node_id) != NODE_ID_BYTES:
        raise DecodeError(f"the hello's node id must be {NODE_ID_BYTES} bytes")
    if not isinstance(meta, dict) or len(msgpack.packb(meta)) > MAX_META_BYTES:
        raise DecodeError(f"the hello's metadata must be a map of at most {MAX_META_BYTES} bytes")
    return Hello(version=version, node_id=node_id, vv=_vv(vv), clock_ms=_clock(clock), meta=meta)


def _origins(items: object) -> list[bytes]:
    if (
        not isinstance(items, list)
        or len(items) > MAX_VV_ORIGINS
        or any(type(o) is not bytes or len(o) != NODE_ID_BYTES for o in items)
        or len(set(items)) != len(items)
    ):
        raise DecodeError(
            f"origins are distinct {NODE_ID_BYTES}-byte node ids, at most {MAX_VV_ORIGINS}"
        )
    return items


def _arcs(ends: object) -> list[Arc]:
    if (
        not isinstance(ends, list)
        or len(ends) % 2
        or len(ends) > 2 * MAX_ARCS
        or any(type(end) is not int or not 0 <= end < RING_PLACES for end in ends)
    ):
        raise DecodeError(
            f"arcs are [first, last] * n, at most {MAX_ARCS}, each end a ring place below 2**64"
        )
    return list(zip(ends[::2], ends[1::2], strict=True))


def _vv(items: object) -> VersionVector:
    if not isinstance(items, list) or len(items) % 3 or len(items) // 3 > MAX_VV_ORIGINS:
        raise DecodeError("a version vector is [origin, base, runs] * n, within limits")
    bases: dict[bytes, int] = {}
    runs: dict[bytes, list[tuple[int, int]]] = {}
    total = 0
    for i in range(0, len(items), 3):
        origin, base, flat = items[i], items[i + 1], items[i + 2]
        if type(origin) is not bytes or len(origin) != NODE_ID_BYTES or origin in bases:
            raise DecodeError("a version vector names each 16-byte origin once")
        if type(base) is not int or not 0 <= base <= MAX_SEQ:
            raise DecodeError(f"version vector base out of range: {base!r}")
        bases[origin] = base
        if flat is not None:
            runs[origin] = _runs(flat, base)
            total += len(runs[origin])
            if total > MAX_VV_TOTAL_RUNS:
                raise DecodeError(f"a version vector holds at most {MAX_VV_TOTAL_RUNS} runs")
    return VersionVector.from_parts(bases, runs)


def _runs(flat: object, base: int) -> list[tuple[int, int]]:
    """``[first, last, ...]``: sorted runs above ``base + 1``, apart from each other."""
    if not isinstance(flat, list) or not flat or len(flat) % 2 or len(flat) > 2 * MAX_VV_RUNS:
        raise DecodeError(f"version vector runs are [first, last] * n, 1 <= n <= {MAX_VV_RUNS}")
    pairs = list(zip(flat[::2], flat[1::2], strict=True))
    floor = base + 1  # a run starts past this: past the prefix's next seq, apart from the last run
    for first, last in pairs:
        if type(first) is not int or type(last) is not int or not floor < first <= last <= MAX_SEQ:
            raise DecodeError("version vector runs must be sorted, apart and above base + 1")
        floor = last + 1
    return pairs

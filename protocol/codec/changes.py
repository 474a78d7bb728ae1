"""Changes: the positional encoding with interned names and origins (docs/protocol.md, section 6).

Changes are encoded positionally (docs/protocol.md, "Change encoding")::

    change = [origin, seq, ms, counter, (collection, key, fields | nil) * n_ops]
    fields = [name, value, name, value, ...]            nil marks a delete

Inside one *context* (a batch, or a whole sync link) collection names, field names and
origins are interned: a name slot holds either the string itself (and both sides append
it to their table) or the integer index of an earlier one. For an origin already in the
table, ``seq`` and ``ms`` are deltas from that origin's previous change in the context.
The encoder and the decoder apply the same rules, so their tables never disagree.

Everything decoded here is bounded and checked; malformed input raises `DecodeError`,
input that decodes but breaks a data-model rule raises `InvalidRemoteDataError`, and
nothing else escapes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import assert_never

import msgpack

from blazemesh.protocol.codec.bounds import unpack
from blazemesh.protocol.errors import DecodeError, InvalidRemoteDataError, ValidationError
from blazemesh.protocol.hlc import COUNTER_BITS, MAX_MS, MAX_STAMP
from blazemesh.protocol.ids import NODE_ID_BYTES
from blazemesh.protocol.model import (
    CHANGE_OBJECTS,
    INT_MAX,
    INT_MIN,
    MAX_CHANGE_BYTES,
    MAX_COLLECTION_BYTES,
    MAX_FIELD_BYTES,
    MAX_FIELDS_PER_PUT,
    MAX_KEY_BYTES,
    MAX_OPS_PER_CHANGE,
    MAX_SEQ,
    Change,
    Delete,
    Op,
    Put,
    Value,
    validate_field,
    validate_name,
)

MAX_TABLE_NAMES = 4_096  # interned names per context; later names travel inline
MAX_TABLE_ORIGINS = 4_096  # interned origins per context; later ones travel inline
MAX_BATCH_BYTES = MAX_CHANGE_BYTES + (1 << 20)  # one maximal change plus framing room
_COUNTER_MASK = (1 << COUNTER_BITS) - 1
# A string decoded by msgpack is valid UTF-8, and one this short is within any value limit.
_FAST_STR_CHARS = 4_096


class ChangeEncoder:
    """Encodes changes within one context; keep one per batch or per link direction."""

    __slots__ = ("_last", "_names", "_origins", "_packer")

    def __init__(self) -> None:
        self._names: dict[str, int] = {}
        self._origins: dict[bytes, int] = {}
        self._last: dict[bytes, tuple[int, int]] = {}
        self._packer = msgpack.Packer(use_bin_type=True)

    def item(self, change: Change) -> list[object]:
        """The positional form of ``change``, to be packed inside a larger message."""
        origin, seq, hlc = change.origin, change.seq, change.hlc
        ms = hlc >> COUNTER_BITS
        ref = self._origins.get(origin)
        out: list[object]
        if ref is None:
            out = [origin, seq, ms, hlc & _COUNTER_MASK]
            if len(self._origins) < MAX_TABLE_ORIGINS:
                self._origins[origin] = len(self._origins)
                self._last[origin] = (seq, ms)
        else:
            last_seq, last_ms = self._last[origin]
            out = [ref, seq - last_seq, ms - last_ms, hlc & _COUNTER_MASK]
            self._last[origin] = (seq, ms)
        name = self._name
        for op in change.ops:
            out.append(name(op.collection))
            out.append(op.key)
            match op:
                case Delete():
                    out.append(None)
                case Put():
                    fields: list[object] = []
                    for field, value in op.fields.items():
                        fields.append(name(field))
                        fields.append(value)
                    out.append(fields)
                case _:
                    assert_never(op)
        return out

    def _name(self, name: str) -> str | int:
        ref = self._names.get(name)
        if ref is not None:
            return ref
        if len(self._names) < MAX_TABLE_NAMES:
            self._names[name] = len(self._names)
        return name

    def pack(self, obj: object) -> bytes:
        """msgpack-encode ``obj`` with this encoder's reusable packer."""
        data: bytes = self._packer.pack(obj)
        return data


class ChangeDecoder:
    """Decodes what a `ChangeEncoder` of the same context produced, checking everything.

    After it raises, its tables may hold part of the bad input: the context is over, and
    a link that shares one drops (docs/protocol.md, section 6).
    """

    __slots__ = ("_last", "_name_set", "_names", "_origins", "objects")

    def __init__(self) -> None:
        self.objects = 0  # what the changes decoded so far are made of (`change_objects`)
        self._names: list[tuple[str, int]] = []  # (name, UTF-8 bytes): limits differ by kind
        self._name_set: set[str] = set()
        self._origins: list[bytes] = []
        self._last: dict[bytes, tuple[int, int]] = {}  # exactly the origins in the table

    def change(self, item: object) -> Change:
        """Decode and validate one positional change, as msgpack unpacked it (strict UTF-8)."""
        if not isinstance(item, list) or len(item) < 7 or (len(item) - 4) % 3:
            raise DecodeError("a change is an array of 4 + 3 * n_ops items, n_ops >= 1")
        n_ops = (len(item) - 4) // 3
        if n_ops > MAX_OPS_PER_CHANGE:
            raise InvalidRemoteDataError(f"change holds {n_ops} ops; limit {MAX_OPS_PER_CHANGE}")
        origin, seq, ms = self._head(item[0], item[1], item[2])
        ctr = item[3]
        if type(ctr) is not int or not 0 <= ctr <= _COUNTER_MASK:
            raise DecodeError(f"HLC counter out of range: {ctr!r}")
        hlc = (ms << COUNTER_BITS) | ctr
        if hlc < 1 or hlc + n_ops - 1 > MAX_STAMP:
            raise InvalidRemoteDataError(f"HLC stamp {hlc} out of range for {n_ops} ops")
        ops: list[Op] = []
        names = self._names
        objects = CHANGE_OBJECTS + n_ops
        for i in range(4, len(item), 3):
            # A reference into the table takes the fast path; anything else, and every
            # error, goes through `_name`'s full checks.
            slot = item[i]
            if (
                type(slot) is int
                and 0 <= slot < len(names)
                and names[slot][1] <= MAX_COLLECTION_BYTES
            ):
                collection = names[slot][0]
            else:
                collection = self._name(slot, "collection", MAX_COLLECTION_BYTES)
            key = item[i + 1]
            _check_name("key", key, MAX_KEY_BYTES)
            raw_fields = item[i + 2]
            if raw_fields is None:
                ops.append(Delete(collection=collection, key=key))
            else:
                fields = self._fields(raw_fields, collection, key)
                objects += len(fields)
                ops.append(Put(collection=collection, key=key, fields=fields))
        self.objects += objects
        return Change(origin=origin, seq=seq, hlc=hlc, ops=tuple(ops))

    def _head(self, origin_slot: object, seq: object, ms: object) -> tuple[bytes, int, int]:
        if type(seq) is not int or type(ms) is not int:
            raise DecodeError("seq and ms must be integers")
        if type(origin_slot) is int:
            if not 0 <= origin_slot < len(self._origins):
                raise DecodeError(f"origin reference {origin_slot} is not in the table")
            origin = self._origins[origin_slot]
            last_seq, last_ms = self._last[origin]
            seq, ms = last_seq + seq, last_ms + ms
        elif type(origin_slot) is bytes and len(origin_slot) == NODE_ID_BYTES:
            origin = origin_slot
            if origin not in self._last and len(self._origins) < MAX_TABLE_ORIGINS:
                self._origins.append(origin)
                self._last[origin] = (0, 0)
        else:
            raise DecodeError(f"origin must be a {NODE_ID_BYTES}-byte id or a table reference")
        if not 1 <= seq <= MAX_SEQ:
            raise InvalidRemoteDataError(f"seq out of range: {seq}")
        if not 0 <= ms <= MAX_MS:
            raise InvalidRemoteDataError(f"HLC milliseconds out of range: {ms}")
        if origin in self._last:
            self._last[origin] = (seq, ms)
        return origin, seq, ms

    def _name(self, slot: object, kind: str, max_bytes: int) -> str:
        if type(slot) is int:
            if not 0 <= slot < len(self._names):
                raise DecodeError(f"{kind} reference {slot} is not in the table")
            name, size = self._names[slot]
            # One table serves every kind: a field name may not come back as a longer collection.
            if size > max_bytes:
                raise InvalidRemoteDataError(
                    f"{kind} reference {slot} is {size} bytes; the limit is {max_bytes}"
                )
            return name
        _check_name(kind, slot, max_bytes)
        assert isinstance(slot, str)
        if slot not in self._name_set and len(self._names) < MAX_TABLE_NAMES:
            self._names.append((slot, len(slot.encode("utf-8"))))
            self._name_set.add(slot)
        return slot

    def _fields(self, raw: object, collection: str, key: str) -> dict[str, Value]:
        if not isinstance(raw, list) or len(raw) % 2:
            raise DecodeError(f"fields of {collection}/{key} must be a name/value array")
        if len(raw) > 2 * MAX_FIELDS_PER_PUT:
            raise InvalidRemoteDataError(f"{collection}/{key} has more than {MAX_FIELDS_PER_PUT}")
        fields: dict[str, Value] = {}
        names = self._names
        for j in range(0, len(raw), 2):
            slot = raw[j]
            if type(slot) is int and 0 <= slot < len(names) and names[slot][1] <= MAX_FIELD_BYTES:
                field = names[slot][0]
            else:
                field = self._name(slot, "field", MAX_FIELD_BYTES)
            value = raw[j + 1]
            kind = type(value)
            # Scalars need no walk through `validate_field`: these are valid as decoded.
            if not (
                kind is bool
                or value is None
                or (kind is int and INT_MIN <= value <= INT_MAX)
                or (kind is float and value == value)  # not NaN
                or (kind is str and len(value) < _FAST_STR_CHARS)
            ):
                try:
                    validate_field(collection, key, field, value)
                except ValidationError as exc:
                    raise InvalidRemoteDataError(str(exc)) from None
            fields[field] = value
        if len(fields) * 2 != len(raw):
            raise DecodeError(f"{collection}/{key} repeats a field name")
        return fields


def _check_name(kind: str, name: object, max_bytes: int) -> None:
    try:
        validate_name(kind, name, max_bytes, system=True)
    except ValidationError as exc:
        raise InvalidRemoteDataError(str(exc)) from None


def encode_change(change: Change) -> bytes:
    """The standalone encoding of one change (fresh context): what the log stores."""
    encoder = ChangeEncoder()
    return encoder.pack(encoder.item(change))


def decode_change(data: bytes) -> Change:
    """Decode `encode_change` output."""
    return ChangeDecoder().change(unpack(data, MAX_CHANGE_BYTES))


def encode_batch(changes: Iterable[Change], encoder: ChangeEncoder | None = None) -> bytes:
    """Encode changes as one array, interning names and origins across them."""
    enc = encoder or ChangeEncoder()
    return enc.pack([enc.item(c) for c in changes])


def decode_batch(data: bytes, decoder: ChangeDecoder | None = None) -> list[Change]:
    """Decode `encode_batch` output made with the matching context."""
    items = unpack(data, MAX_BATCH_BYTES)
    if not isinstance(items, list):
        raise DecodeError("a batch is an array of changes")
    dec = decoder or ChangeDecoder()
    return [dec.change(item) for item in items]
